"""The tabular MLP on Ray Train V2 (TorchTrainer, gloo on CPU) over the preprocess feature tables."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rayloop import paths
from rayloop.training.evaluate import roc_auc
from rayloop.training.torch import build_trainer, load_model
from tests.support import fit_killing_one_worker

pytestmark = pytest.mark.slow


def test_mlp_on_torch_trainer_learns_and_checkpoints_each_epoch(feature_run):
    fitted = feature_run.fitted
    mlp = {"hidden": [64, 32], "epochs": 4, "batch_size": 256, "lr": 3e-3, "patience": 2, "dropout": 0.0}
    model_config = {
        "feature_names": fitted.feature_names,
        "categorical_indices": fitted.categorical_indices,
        "cardinalities": fitted.cardinalities,
    }
    trainer = build_trainer(
        feature_run.datasets(), label="label", mlp=mlp, name=f"mlp-{feature_run.run_id}", **model_config
    )
    outcome = trainer.fit()
    assert outcome.error is None
    assert 1 <= outcome.metrics["epoch"] <= 4
    assert outcome.metrics["validation_auc"] > 0.7
    assert Path(outcome.checkpoint.path).is_relative_to(paths.train_storage())
    model = load_model(outcome.checkpoint, {**model_config, **mlp})
    x, y = feature_run.test_split()
    with torch.no_grad():
        probs = torch.sigmoid(model(torch.from_numpy(x))).numpy()
    assert roc_auc(y, probs) > 0.7


def test_a_killed_mlp_worker_resumes_from_its_last_epoch(feature_run):
    fitted = feature_run.fitted
    # small batches and no early stopping: enough epochs to outlive the kill
    mlp = {"hidden": [32], "epochs": 12, "batch_size": 64, "lr": 1e-3, "patience": 100}
    trainer = build_trainer(
        feature_run.datasets(),
        label="label",
        mlp=mlp,
        name=f"mlp-fault-{feature_run.run_id}",
        max_failures=2,
        feature_names=fitted.feature_names,
        categorical_indices=fitted.categorical_indices,
        cardinalities=fitted.cardinalities,
    )
    final = fit_killing_one_worker(trainer, paths.train_storage() / f"mlp-fault-{feature_run.run_id}")
    assert final.error is None
    assert final.metrics["epoch"] == 12
    assert final.metrics["resumed_from"] > 0  # continued from a checkpointed epoch, not from scratch
