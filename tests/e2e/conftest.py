"""A real Ray head started with `ray start` on 127.0.0.1, token auth on, stopped at the end.

Only the processes of this head are stopped (matched by its session dir): `ray stop` would
also kill the integration tests' cluster when both run in one pytest session.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rayloop import paths
from rayloop.runtime import ray_env
from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")


@dataclass(frozen=True)
class Head:
    address: str  # GCS address for ray.init / RAY_ADDRESS
    dashboard: str  # Jobs API / dashboard URL
    env: dict[str, str]  # what a client needs: token auth and RAYLOOP_HOME


def _stop(session_dir: str) -> None:
    from rayloop.demo import stop_session

    stop_session(session_dir, grace_s=10)


def wait_for(condition, timeout_s: float, interval_s: float = 0.5, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")


@pytest.fixture(scope="session")
def ray_head(rayloop_home) -> Iterator[Head]:
    port, dash, agent = free_port(), free_port(), free_port()
    # its own temp dir: a local ray.init must never find this head through ray_current_cluster
    temp_dir = paths.ensure_ray_temp_dir(rayloop_home / "ray-head")
    env = {**os.environ, **ray_env(), "RAYLOOP_HOME": str(rayloop_home), "RAY_TMPDIR": str(temp_dir)}
    # job entrypoints run `python` from the PATH Ray was started with, as in an activated venv
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("RAY_ADDRESS", None)
    # Serve's HAProxy listeners get their own ports: another local cluster may hold the defaults
    env["RAY_SERVE_HAPROXY_METRICS_PORT"], env["RAY_SERVE_HAPROXY_STATS_PORT"] = str(free_port()), str(free_port())
    cmd = [
        RAY,
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}",
        # the agent's default port (52365) is taken when another local cluster runs
        f"--dashboard-agent-listen-port={agent}",
        f"--ray-client-server-port={free_port()}",
        # 4 logical CPUs on 2 cores: a Serve replica (1) and a retrain job (a Train worker and its
        # Ray Data reads) must fit beside each other, as on any real cluster
        "--num-cpus=4",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    started = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    # this head's processes all name its session dir; the integration tests' cluster shares
    # the temp dir but not the session
    session = str(temp_dir / os.readlink(temp_dir / "session_latest"))
    if started.returncode != 0:
        _stop(session)
        raise RuntimeError(f"ray start failed:\n{started.stdout}\n{started.stderr}")
    head = Head(address=f"127.0.0.1:{port}", dashboard=f"http://127.0.0.1:{dash}", env=env)
    try:
        wait_for(lambda: _up(f"{head.dashboard}/api/version"), 60, what="the dashboard")
        yield head
    finally:
        _stop(session)


def ray_job_submit(head: Head, args: list[str], timeout_s: float = 600) -> subprocess.CompletedProcess:
    """`ray job submit ARGS`, retried while the head's job agent is still starting."""
    deadline = time.monotonic() + 90
    while True:
        done = subprocess.run(
            [RAY, "job", "submit", "--address", head.dashboard, *args],
            env=head.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        if "No available agent" not in done.stderr or time.monotonic() > deadline:
            return done
        time.sleep(2)


def _up(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=2).status_code < 500
    except httpx.HTTPError:
        return False


def run_job(head: Head, submission_id: str, entrypoint: list[str], timeout_s: float = 600) -> str:
    """Submit `entrypoint` with the repository as working dir, wait, assert it succeeded; its log."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    from rayloop.runtime import auth_headers

    done = ray_job_submit(
        head, ["--submission-id", submission_id, "--working-dir", str(ROOT), "--", *entrypoint], timeout_s=timeout_s
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    client = JobSubmissionClient(head.dashboard, headers=auth_headers())
    finished = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
    status = wait_for(
        lambda: (s := client.get_job_status(submission_id)) in finished and s, 120, what="the job to finish"
    )
    logs = client.get_job_logs(submission_id)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    return logs


def last_json(logs: str) -> dict:
    """The JSON document a workload prints last."""
    import json

    return json.loads(logs[logs.rindex("\n{\n") + 1 : logs.rindex("}") + 1])
