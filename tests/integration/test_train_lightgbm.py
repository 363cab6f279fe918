"""LightGBM on Ray Train V2 over the preprocess feature tables: it learns, checkpoints and reports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rayloop import paths
from rayloop.training.evaluate import roc_auc
from rayloop.training.lightgbm import build_trainer, load_booster
from tests.support import fit_killing_one_worker

pytestmark = pytest.mark.slow


def _trainer(run, name: str, **kwargs):
    return build_trainer(
        run.datasets(),
        feature_names=run.fitted.feature_names,
        label="label",
        categorical_indices=run.fitted.categorical_indices,
        name=f"{name}-{run.run_id}",
        **kwargs,
    )


def test_lightgbm_on_ray_train_learns_and_checkpoints_under_rayloop_home(feature_run):
    trainer = _trainer(
        feature_run,
        "lgb",
        params=feature_run.run.task().lightgbm_params({"learning_rate": 0.1, "num_leaves": 31}),
        num_boost_round=120,
        early_stopping_rounds=15,
        checkpoint_every=40,
    )
    outcome = trainer.fit()
    assert outcome.error is None
    assert outcome.metrics["validation_auc"] > 0.75
    assert 1 <= outcome.metrics["rounds"] <= 120
    assert Path(outcome.checkpoint.path).is_relative_to(paths.train_storage())
    booster = load_booster(outcome.checkpoint)
    x, y = feature_run.test_split()
    assert roc_auc(y, booster.predict(x)) > 0.75
    # a local cluster has nothing to preempt: no watcher process per run (rayloop.runtime.ray_env)
    # (the GCS actor table: the state API needs the dashboard, which the test cluster runs without)
    from ray._private.state import actors

    started = {info["ActorClassName"] for info in actors().values()}
    assert "TrainController" in started and "PreemptionWatcher" not in started


def test_a_local_mode_run_checkpoints_into_the_storage_path_and_a_rerun_resumes(feature_run):
    """num_workers=0: the training runs in this process; its checkpoints still land in the run's
    folder under the storage path (Ray's local mode keeps none), and a rerun continues from them."""
    folder = paths.train_storage() / f"lgb-local-{feature_run.run_id}"

    def fit(rounds: int):
        return build_trainer(
            feature_run.datasets(("train",)),  # no validation split: exactly `rounds` rounds
            feature_names=feature_run.fitted.feature_names,
            label="label",
            categorical_indices=feature_run.fitted.categorical_indices,
            params=feature_run.run.task().lightgbm_params({"learning_rate": 0.1, "num_leaves": 15}),
            num_boost_round=rounds,
            early_stopping_rounds=10,
            checkpoint_every=20,
            num_workers=0,
            max_failures=0,
            name=folder.name,
        ).fit()

    first = fit(40)
    assert first.error is None and (first.metrics["rounds"], first.metrics["resumed_from"]) == (40, 0)
    assert Path(first.checkpoint.path).parent == folder
    assert load_booster(first.checkpoint).current_iteration() == 40
    assert len(list(folder.glob("checkpoint_*"))) == 2  # the last two, as a worker run keeps
    again = fit(70)
    assert (again.metrics["rounds"], again.metrics["resumed_from"]) == (70, 40)  # continued, not restarted
    booster = load_booster(again.checkpoint)
    x, y = feature_run.test_split()
    assert booster.current_iteration() == 70 and roc_auc(y, booster.predict(x)) > 0.75
    done = fit(70)  # a rerun of a finished run trains nothing more and returns its model
    assert (done.metrics["rounds"], done.metrics["resumed_from"]) == (70, 70)
    assert np.array_equal(load_booster(done.checkpoint).predict(x), booster.predict(x))


def test_a_killed_worker_resumes_from_the_last_checkpoint(feature_run):
    trainer = _trainer(
        feature_run,
        "lgb-fault",
        params=feature_run.run.task().lightgbm_params({"learning_rate": 0.01, "num_leaves": 15}),
        num_boost_round=600,
        early_stopping_rounds=10_000,  # never stop early: the run must outlive the kill
        checkpoint_every=30,
        max_failures=2,
    )
    final = fit_killing_one_worker(trainer, paths.train_storage() / f"lgb-fault-{feature_run.run_id}")
    assert final.error is None
    assert final.metrics["rounds"] == 600
    assert final.metrics["resumed_from"] > 0  # the restarted worker continued, not started over


def test_two_workers_stop_early_together_on_the_whole_validation_split(feature_run):
    # validation is not sharded: both ranks see the same metric, stop at the same round, and the
    # reported metrics cover every validation row (a split validation set deadlocked here)
    trainer = _trainer(
        feature_run,
        "lgb-2w",
        params=feature_run.run.task().lightgbm_params({"learning_rate": 0.3, "num_leaves": 63}),
        num_boost_round=400,
        early_stopping_rounds=5,
        num_workers=2,
        cpus_per_worker=0.5,  # leaves a CPU for the dataset's column selection on this 2-CPU cluster
    )
    outcome = trainer.fit()
    assert outcome.error is None
    assert outcome.metrics["best_iteration"] < 400  # it did stop early
    validation_rows = sum(1 for _ in feature_run.datasets(["validation"])["validation"].iter_rows())
    assert outcome.metrics["validation_n"] == validation_rows
