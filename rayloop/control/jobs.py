"""Submitting and tracking rayloop workloads through the Ray Jobs API: what `ray job submit` does.

Token-aware (the cluster token travels as a bearer header), idempotent (a submission id names the
reason for the job, so submitting the same decision twice, e.g. after the submitter restarted,
finds the first job instead of starting a second), and usable from inside the cluster (a
DriftMonitor actor) or from a laptop (the dashboard URL).
"""

from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import dataclass
from typing import Any

from rayloop.config import ConfigSource
from rayloop.constants import DRIVER_CPUS_ENV_VAR, SUBMISSION_ID_ENV_VAR
from rayloop.runtime import auth_headers

__all__ = ["FINISHED", "JobInfo", "client", "job_info", "last_json", "retrain_submission_id", "submit_workload"]

FINISHED = ("SUCCEEDED", "FAILED", "STOPPED")


@dataclass(frozen=True)
class JobInfo:
    submission_id: str
    status: str
    message: str | None
    start_time: float | None
    end_time: float | None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


def client(address: str | None = None) -> Any:
    """A JobSubmissionClient with the cluster token; `address` defaults to RAY_API_SERVER_ADDRESS /
    RAY_ADDRESS, else (inside a Ray worker) this cluster's own dashboard."""
    import ray
    from ray.job_submission import JobSubmissionClient

    if address is None and not (os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")):
        if ray.is_initialized():
            address = ray.get_runtime_context().gcs_address
    return JobSubmissionClient(address, headers=auth_headers())


def retrain_submission_id(model_name: str, window: int, started: float) -> str:
    """One id per decision: the model, the monitor's start and the window that raised it."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "-", model_name)
    return f"rayloop-retrain-{safe}-{int(started)}-w{window}"


def submit_workload(
    name: str,
    submission_id: str,
    *,
    source: ConfigSource,
    working_dir: str | None = None,
    env: dict[str, str] | None = None,
    metadata: dict[str, str] | None = None,
    address: str | None = None,
    driver_cpus: float = 0.0,
) -> str:
    """`ray job submit --submission-id ID [--entrypoint-num-cpus N] -- python -m workloads.<name>
    --config ... --set ...`; returns the submission id (also when a job with that id already exists).
    `driver_cpus` reserve CPUs for the driver (it then runs on a node that has them free) and
    tell it so (DRIVER_CPUS_ENV_VAR)."""
    jobs = client(address)
    if job_info(submission_id, client_=jobs) is not None:
        # already submitted (by us before a restart, or by another submitter): the same job. Checked
        # first because two submissions of one id in quick succession can fail both (ray#31356).
        return submission_id
    args = ["python", "-m", f"workloads.{name}", *source.cli_args()]
    env_vars = {SUBMISSION_ID_ENV_VAR: submission_id, **(env or {})}
    if driver_cpus:
        env_vars[DRIVER_CPUS_ENV_VAR] = f"{driver_cpus:g}"
    runtime_env: dict[str, Any] = {"env_vars": env_vars}
    if working_dir:
        runtime_env["working_dir"] = working_dir
    try:
        return jobs.submit_job(
            entrypoint=shlex.join(args),
            submission_id=submission_id,
            runtime_env=runtime_env,
            metadata=metadata,
            entrypoint_num_cpus=driver_cpus or None,
        )
    except RuntimeError as exc:
        if "already exists" in str(exc):
            return submission_id
        raise


def job_info(submission_id: str, address: str | None = None, *, client_: Any = None) -> JobInfo | None:
    """The job's status, or None when no job has that submission id."""
    try:
        info = (client_ or client(address)).get_job_info(submission_id)
    except RuntimeError as exc:
        if "does not exist" in str(exc) or "404" in str(exc) or "not found" in str(exc).lower():
            return None
        raise
    return JobInfo(
        submission_id=submission_id,
        status=str(info.status.value if hasattr(info.status, "value") else info.status),
        message=info.message,
        start_time=(info.start_time / 1000.0) if info.start_time else None,
        end_time=(info.end_time / 1000.0) if info.end_time else None,
    )


def last_json(logs: str) -> dict[str, Any]:
    """The JSON document a workload (or `rayloop status --json`) prints last in its job log."""
    # the document starts with a "{" line, which may be the log's first: "\n" + logs finds both,
    # and its index there is the "{"'s in logs
    start = f"\n{logs}".rindex("\n{\n")
    return json.loads(logs[start : logs.rindex("}") + 1])
