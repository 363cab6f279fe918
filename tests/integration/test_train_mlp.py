"""The tabular MLP on Ray Train V2 (TorchTrainer, gloo on CPU) over the preprocess feature tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest
import torch

from rayloop import paths
from rayloop.config import load_config
from rayloop.preprocess import load_run, run_preprocess
from rayloop.training.evaluate import roc_auc
from rayloop.training.torch import build_trainer, load_model

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.slow]


def test_mlp_on_torch_trainer_learns_and_checkpoints_each_epoch():
    import ray.data

    config = load_config(None, ["data.synthetic.n_rows=20000", "data.synthetic.seed=5"])
    result = run_preprocess(config)
    run_dir, fitted, _, _ = load_run(result.run_id)
    split = {n: ray.data.read_parquet(str(run_dir / "features" / f"split={n}")) for n in ("train", "validation")}
    mlp = {"hidden": [64, 32], "epochs": 4, "batch_size": 256, "lr": 3e-3, "patience": 2, "dropout": 0.0}
    trainer = build_trainer(
        split,
        feature_names=fitted.feature_names,
        label="label",
        categorical_indices=fitted.categorical_indices,
        cardinalities=fitted.cardinalities,
        mlp=mlp,
        name=f"mlp-{result.run_id}",
    )
    outcome = trainer.fit()
    assert outcome.error is None
    assert 1 <= outcome.metrics["epoch"] <= 4
    assert outcome.metrics["validation_auc"] > 0.7
    assert Path(outcome.checkpoint.path).is_relative_to(paths.train_storage())
    model = load_model(
        outcome.checkpoint,
        {"feature_names": fitted.feature_names, "categorical_indices": fitted.categorical_indices,
         "cardinalities": fitted.cardinalities, **mlp},
    )
    test = pads.dataset(str(run_dir / "features" / "split=test")).to_table()
    x = torch.tensor(np.column_stack([test.column(n).to_numpy() for n in fitted.feature_names]), dtype=torch.float32)
    with torch.no_grad():
        probs = torch.sigmoid(model(x)).numpy()
    assert roc_auc(test.column("label").to_numpy(), probs) > 0.7
