"""LightGBM on Ray Train V2 over the preprocess feature tables: it learns, checkpoints and reports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest

from rayloop import paths
from rayloop.config import load_config
from rayloop.preprocess import load_run, run_preprocess
from rayloop.training.evaluate import roc_auc
from rayloop.training.lightgbm import build_trainer, load_booster

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.slow]


def test_lightgbm_on_ray_train_learns_and_checkpoints_under_rayloop_home():
    import ray.data

    config = load_config(None, ["data.synthetic.n_rows=20000", "data.synthetic.seed=3"])
    result = run_preprocess(config)
    run_dir, fitted, _, _ = load_run(result.run_id)
    split = {
        name: ray.data.read_parquet(str(run_dir / "features" / f"split={name}")) for name in ("train", "validation")
    }
    trainer = build_trainer(
        split,
        feature_names=fitted.feature_names,
        label="label",
        categorical_indices=fitted.categorical_indices,
        params={"learning_rate": 0.1, "num_leaves": 31},
        num_boost_round=120,
        early_stopping_rounds=15,
        checkpoint_every=40,
        name=f"lgb-{result.run_id}",
    )
    outcome = trainer.fit()
    assert outcome.error is None
    assert outcome.metrics["validation_auc"] > 0.75
    assert 1 <= outcome.metrics["rounds"] <= 120
    assert Path(outcome.checkpoint.path).is_relative_to(paths.train_storage())
    booster = load_booster(outcome.checkpoint)
    test = pads.dataset(str(run_dir / "features" / "split=test")).to_table()
    x = np.column_stack([test.column(n).to_numpy() for n in fitted.feature_names]).astype(np.float32)
    auc = roc_auc(test.column("label").to_numpy(), booster.predict(x))
    assert auc > 0.75
