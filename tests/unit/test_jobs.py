"""Pure parts of rayloop.control.jobs (the Jobs API itself is exercised in tests/e2e/test_jobs_api.py)."""

from __future__ import annotations

from rayloop.control import jobs


def test_retrain_submission_ids_are_stable_per_decision_and_safe():
    first = jobs.retrain_submission_id("my model/v2", 7, 1_790_000_000.5)
    assert first == jobs.retrain_submission_id("my model/v2", 7, 1_790_000_000.9)  # same decision, same id
    assert first != jobs.retrain_submission_id("my model/v2", 8, 1_790_000_000.5)
    assert first == "rayloop-retrain-my-model-v2-1790000000-w7"


def test_job_info_knows_when_a_job_is_finished():
    running = jobs.JobInfo("s", "RUNNING", None, 1.0, None)
    assert not running.finished
    assert all(jobs.JobInfo("s", status, None, 1.0, 2.0).finished for status in jobs.FINISHED)
