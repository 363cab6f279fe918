"""rayloop.control.jobs against a real head with token auth on: what `ray job submit` does, idempotently."""

from __future__ import annotations

import pytest

from rayloop.config import ConfigSource
from rayloop.control import jobs
from tests.support import ROOT, wait_for

pytestmark = pytest.mark.slow


def test_a_workload_goes_through_the_jobs_api_once_per_submission_id(ray_head):
    submission_id = "jobs-api-e2e"
    args = {
        "source": ConfigSource(overrides=("data.synthetic.n_rows=3000", "data.synthetic.seed=5")),
        "working_dir": str(ROOT),
        "metadata": {"rayloop.reason": "e2e"},
        "address": ray_head.dashboard,
    }
    assert jobs.job_info(submission_id, ray_head.dashboard) is None
    first = jobs.submit_workload("preprocess", submission_id, **args)
    again = jobs.submit_workload("preprocess", submission_id, **args)  # e.g. a restarted submitter
    assert first == again == submission_id
    info = wait_for(
        lambda: (i := jobs.job_info(submission_id, ray_head.dashboard)) is not None and i.finished and i,
        300,
        what="the job to finish",
    )
    assert info.status == "SUCCEEDED", jobs.client(ray_head.dashboard).get_job_logs(submission_id)[-3000:]
    assert info.end_time is not None and info.start_time is not None and info.end_time >= info.start_time
    listed = [j for j in jobs.client(ray_head.dashboard).list_jobs() if j.submission_id == submission_id]
    assert len(listed) == 1 and listed[0].metadata["rayloop.reason"] == "e2e"
