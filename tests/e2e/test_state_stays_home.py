"""Our code paths write only under RAYLOOP_HOME: not $HOME (~/.ray, ~/ray_results), not /tmp/ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

pytestmark = pytest.mark.slow


def test_preprocess_workload_writes_nothing_outside_rayloop_home(tmp_path, rayloop_home):
    fake_home = tmp_path / "home"
    fake_home.mkdir()
    state = rayloop_home / "iso"
    tmp_ray_before = set(os.listdir("/tmp/ray")) if os.path.isdir("/tmp/ray") else None
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update({"HOME": str(fake_home), "RAYLOOP_HOME": str(state), "RAYLOOP_PROGRESS": "0"})
    done = subprocess.run(
        [sys.executable, "-m", "workloads.preprocess", "--set", "data.synthetic.n_rows=3000"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert Path(summary["run_dir"]).is_relative_to(state)
    assert list(fake_home.iterdir()) == []  # no ~/.ray/auth_token, no ~/ray_results, no caches
    assert (state / "auth_token").stat().st_mode & 0o077 == 0  # token readable by its owner only
    assert any((state / "ray").iterdir())  # Ray's session dir went under RAYLOOP_HOME
    tmp_ray_after = set(os.listdir("/tmp/ray")) if os.path.isdir("/tmp/ray") else None
    assert tmp_ray_after == tmp_ray_before


def test_a_bad_config_exits_2_with_the_reason_and_no_traceback(rayloop_home):
    done = subprocess.run(
        [sys.executable, "-m", "workloads.preprocess", "--set", "data.max_reject_ratio=7"],
        cwd=ROOT, env={**os.environ, "RAYLOOP_HOME": str(rayloop_home / "bad")}, capture_output=True, text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "data.max_reject_ratio" in done.stderr and "Traceback" not in done.stderr
