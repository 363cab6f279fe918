"""One local Ray for the whole integration session, stopped at the end whatever happens."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow.dataset as pads
import pytest


@pytest.fixture(scope="session")
def ray_session(rayloop_home) -> Iterator[int]:
    """The local cluster; yields its metrics export port."""
    import ray

    from rayloop.runtime import init_ray
    from tests.support import free_port

    metrics_port = free_port()
    # HAProxy's fixed listener ports would clash with any other cluster on this machine
    os.environ.setdefault("RAY_SERVE_HAPROXY_METRICS_PORT", str(free_port()))
    os.environ.setdefault("RAY_SERVE_HAPROXY_STATS_PORT", str(free_port()))
    started = init_ray(num_cpus=2, metrics_export_port=metrics_port)
    try:
        yield metrics_port
    finally:
        if started:
            ray.shutdown()


@dataclass(frozen=True)
class FeatureRun:
    """One preprocess run on demo data, shared by the trainer tests."""

    run_id: str
    run_dir: Path
    fitted: Any

    def datasets(self, splits=("train", "validation")) -> dict:
        import ray.data

        return {n: ray.data.read_parquet(str(self.run_dir / "features" / f"split={n}")) for n in splits}

    def test_split(self) -> tuple[np.ndarray, np.ndarray]:
        """(float32 features, labels) of the test split, read without Ray."""
        table = pads.dataset(str(self.run_dir / "features" / "split=test")).to_table()
        x = np.column_stack([table.column(n).to_numpy() for n in self.fitted.feature_names]).astype(np.float32)
        return x, table.column("label").to_numpy()


@pytest.fixture(scope="session")
def feature_run(ray_session) -> FeatureRun:
    from rayloop.config import load_config
    from rayloop.preprocess import load_run, run_preprocess

    result = run_preprocess(load_config(None, ["data.synthetic.n_rows=20000", "data.synthetic.seed=3"]))
    run_dir, fitted, _, _ = load_run(result.run_id)
    return FeatureRun(result.run_id, run_dir, fitted)


def fit_killing_one_worker(trainer, storage: Path, timeout_s: float = 600):
    """Run `trainer.fit()`, SIGKILL one training worker once a checkpoint is registered, return the Result."""
    outcome: dict = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except Exception as exc:  # surfaced by the assertion below
            outcome["error"] = exc

    thread = threading.Thread(target=fit)
    thread.start()
    deadline = time.monotonic() + 180
    # the controller writes this snapshot once it has registered a reported checkpoint: only
    # then does a restarted worker group get it back from `get_checkpoint()`
    snapshot = storage / "checkpoint_manager_snapshot.json"
    while not snapshot.exists() and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.2)
    assert snapshot.exists(), "no checkpoint was registered"
    # Ray titles each actor process "ray::<Class>..."; the state API would need the dashboard.
    # Only this session's cluster: its raylet, and so its workers, descend from this process.
    workers = [p for p in psutil.Process().children(recursive=True) if _title(p).startswith("ray::RayTrainWorker")]
    assert workers, "no training worker to kill"
    os.kill(workers[0].pid, signal.SIGKILL)
    thread.join(timeout=timeout_s)
    assert "error" not in outcome, repr(outcome.get("error"))
    return outcome["result"]


def _title(process) -> str:
    try:
        return (process.cmdline() or [""])[0]
    except psutil.Error:  # gone in between
        return ""
