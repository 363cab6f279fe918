"""`ray job submit` of the preprocess workload against a real head with token auth on."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from rayloop.runtime import auth_headers
from tests.support import last_json, run_job

pytestmark = pytest.mark.slow


def test_jobs_api_refuses_a_client_without_the_token(ray_head):
    assert httpx.get(f"{ray_head.dashboard}/api/jobs/", timeout=5).status_code == 401
    ok = httpx.get(f"{ray_head.dashboard}/api/jobs/", headers=auth_headers(), timeout=5)
    assert ok.status_code == 200


def test_ray_job_submit_runs_the_preprocess_workload(ray_head, rayloop_home):
    logs = run_job(
        ray_head,
        "preprocess-e2e",
        [
            "python",
            "-m",
            "workloads.preprocess",
            "--config",
            "configs/demo.yaml",
            "--set",
            "data.synthetic.n_rows=4000",
            "--set",
            "data.synthetic.seed=21",
        ],
    )
    summary = last_json(logs)
    assert summary["rows_total"] == 4000
    assert summary["rows_rejected"] == 40  # demo config corrupts 1% of rows
    run_dir = Path(summary["run_dir"])
    assert run_dir.is_relative_to(rayloop_home)
    assert (run_dir / "fitted_features.json").exists()
