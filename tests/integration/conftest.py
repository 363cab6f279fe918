"""One local Ray for the whole integration session, stopped at the end whatever happens."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.dataset as pads
import pytest


@pytest.fixture(scope="session")
def ray_session(rayloop_home) -> Iterator[None]:
    import ray

    from rayloop.runtime import init_ray

    started = init_ray(num_cpus=2)
    try:
        yield
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
