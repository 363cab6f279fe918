"""One local Ray for the whole integration session, stopped at the end whatever happens."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.dataset as pads
import pytest
import ray
import ray.data

from rayloop.config import load_config
from rayloop.preprocess import PreprocessRun, run_preprocess
from rayloop.runtime import free_port, init_ray


@pytest.fixture(scope="session")
def ray_session(rayloop_home) -> Iterator[int]:
    """The local cluster; yields its metrics export port."""
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

    run: PreprocessRun
    fitted: Any

    @property
    def run_id(self) -> str:
        return self.run.run_id

    @property
    def run_dir(self) -> Path:
        return self.run.directory

    def datasets(self, splits=("train", "validation")) -> dict:
        return {n: ray.data.read_parquet(str(self.run.split_dir(n))) for n in splits}

    def test_split(self) -> tuple[np.ndarray, np.ndarray]:
        """(float32 features, labels) of the test split, read without Ray."""
        table = pads.dataset(str(self.run.split_dir("test"))).to_table()
        x = np.column_stack([table.column(n).to_numpy() for n in self.fitted.feature_names]).astype(np.float32)
        return x, table.column("label").to_numpy()


@pytest.fixture(scope="session")
def feature_run(ray_session) -> FeatureRun:
    result = run_preprocess(load_config(None, ["data.synthetic.n_rows=20000", "data.synthetic.seed=3"]))
    run = PreprocessRun.open(result.run_id)
    return FeatureRun(run, run.fitted())
