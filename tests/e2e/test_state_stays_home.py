"""Our code paths write only under RAYLOOP_HOME: not $HOME (~/.ray, ~/ray_results), not /tmp/ray."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT, last_json

pytestmark = pytest.mark.slow


def test_the_pipeline_workload_writes_nothing_outside_rayloop_home(tmp_path, rayloop_home):
    """Ray, Ray Train, Ray Tune and MLflow all keep to RAYLOOP_HOME: no ~/.ray, ~/ray_results, ./mlruns."""
    fake_home = tmp_path / "home"
    fake_home.mkdir()
    state = rayloop_home / "iso"
    tmp_ray_before = set(os.listdir("/tmp/ray")) if os.path.isdir("/tmp/ray") else None
    project_before = set(os.listdir(ROOT))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update({"HOME": str(fake_home), "RAYLOOP_HOME": str(state), "RAYLOOP_PROGRESS": "0"})
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "workloads.pipeline",
            "--set",
            "data.synthetic.n_rows=3000",
            "--set",
            "tuning.num_samples=2",
            "--set",
            "training.lightgbm.num_boost_round=30",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = last_json(done.stdout)
    assert summary["promoted"] and summary["champion"] == summary["version"]
    assert Path(summary["training"]["checkpoint"]).is_relative_to(state / "train")
    assert (state / "mlflow.db").exists() and any((state / "mlartifacts").iterdir())
    assert any((state / "tune").iterdir())
    assert set(os.listdir(ROOT)) == project_before  # no ./mlruns, no ./ray_results
    assert list(fake_home.iterdir()) == []  # no ~/.ray/auth_token, no ~/ray_results, no caches
    assert (state / "auth_token").stat().st_mode & 0o077 == 0  # token readable by its owner only
    assert any((state / "ray").iterdir())  # Ray's session dir went under RAYLOOP_HOME
    tmp_ray_after = set(os.listdir("/tmp/ray")) if os.path.isdir("/tmp/ray") else None
    assert tmp_ray_after == tmp_ray_before


def test_a_bad_config_exits_2_with_the_reason_and_no_traceback(rayloop_home):
    done = subprocess.run(
        [sys.executable, "-m", "workloads.preprocess", "--set", "data.max_reject_ratio=7"],
        cwd=ROOT,
        env={**os.environ, "RAYLOOP_HOME": str(rayloop_home / "bad")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "data.max_reject_ratio" in done.stderr and "Traceback" not in done.stderr
