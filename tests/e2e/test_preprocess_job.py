"""`ray job submit` of the preprocess workload against a real head with token auth on."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from rayloop.runtime import auth_headers

from .conftest import ROOT, ray_job_submit, wait_for

pytestmark = pytest.mark.slow


def test_jobs_api_refuses_a_client_without_the_token(ray_head):
    assert httpx.get(f"{ray_head.dashboard}/api/jobs/", timeout=5).status_code == 401
    ok = httpx.get(f"{ray_head.dashboard}/api/jobs/", headers=auth_headers(), timeout=5)
    assert ok.status_code == 200


def test_ray_job_submit_runs_the_preprocess_workload(ray_head, rayloop_home):
    from ray.job_submission import JobStatus, JobSubmissionClient

    submission_id = "preprocess-e2e"
    done = ray_job_submit(ray_head, [
        "--submission-id", submission_id, "--working-dir", str(ROOT), "--",
        "python", "-m", "workloads.preprocess", "--config", "configs/demo.yaml",
        "--set", "data.synthetic.n_rows=4000", "--set", "data.synthetic.seed=21",
    ])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    client = JobSubmissionClient(ray_head.dashboard, headers=auth_headers())
    status = wait_for(
        lambda: (s := client.get_job_status(submission_id)) in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED} and s,
        120,
        what="the job to finish",
    )
    logs = client.get_job_logs(submission_id)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    summary = json.loads(logs[logs.index("{\n") : logs.rindex("}") + 1])
    assert summary["rows_total"] == 4000
    assert summary["rows_rejected"] == 40  # demo config corrupts 1% of rows
    run_dir = Path(summary["run_dir"])
    assert run_dir.is_relative_to(rayloop_home)
    assert (run_dir / "fitted_features.json").exists()
