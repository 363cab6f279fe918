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


def test_a_killed_worker_resumes_from_the_last_checkpoint():
    import os
    import signal
    import threading
    import time

    import psutil
    import ray.data

    config = load_config(None, ["data.synthetic.n_rows=20000", "data.synthetic.seed=4"])
    result = run_preprocess(config)
    run_dir, fitted, _, _ = load_run(result.run_id)
    split = {n: ray.data.read_parquet(str(run_dir / "features" / f"split={n}")) for n in ("train", "validation")}
    name = f"lgb-fault-{result.run_id}"
    trainer = build_trainer(
        split,
        feature_names=fitted.feature_names,
        label="label",
        categorical_indices=fitted.categorical_indices,
        params={"learning_rate": 0.01, "num_leaves": 15},
        num_boost_round=600,
        early_stopping_rounds=10_000,  # never stop early: the run must outlive the kill
        checkpoint_every=30,
        max_failures=2,
        name=name,
    )
    outcome: dict = {}
    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except Exception as exc:  # surfaced by the assertion below
            outcome["error"] = exc

    thread = threading.Thread(target=fit)
    thread.start()
    storage = paths.train_storage() / name
    deadline = time.monotonic() + 180
    while not any(storage.rglob("checkpoint_*")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert any(storage.rglob("checkpoint_*")), "no checkpoint appeared"
    time.sleep(3)  # the controller registers a reported checkpoint on its next poll (about 2 s)
    # Ray titles each actor process "ray::<Class>..."; the state API would need the dashboard
    workers = [
        p for p in psutil.process_iter(["cmdline"]) if (p.info["cmdline"] or [""])[0].startswith("ray::RayTrainWorker")
    ]
    assert workers, "no training worker to kill"
    os.kill(workers[0].pid, signal.SIGKILL)
    thread.join(timeout=600)
    assert "error" not in outcome, repr(outcome.get("error"))
    final = outcome["result"]
    assert final.error is None
    assert final.metrics["rounds"] == 600
    assert final.metrics["resumed_from"] > 0  # the restarted worker continued, not started over
