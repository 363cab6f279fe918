"""Shared test helpers (plain functions, no fixtures): seeded data, polling, Prometheus's binaries,
and submitting jobs to a real head. Test modules import from here, never from each other."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest
import yaml

from rayloop.config import ConfigSource, load_config
from rayloop.control import jobs
from rayloop.control.head import LocalHead, ray_executable
from rayloop.data.synthetic import generate
from rayloop.features.pipeline import FeaturePipeline
from rayloop.runtime import auth_headers

ROOT = Path(__file__).resolve().parent.parent
RAY = ray_executable()
RAYLOOP_CLI = str(ROOT / ".venv" / "bin" / "rayloop")
SERVE_CLI = str(ROOT / ".venv" / "bin" / "serve")
# where scripts/install-prometheus.sh unpacks Debian's prometheus package when it is not on PATH
PROMETHEUS_TOOLS = ROOT / ".venv" / "tools" / "prometheus" / "usr" / "bin"

T = TypeVar("T")

# The loop's settings for a test that drifts: 300-row windows, two alarmed in a row decide, 1,500
# labelled rows since the drift make a retrain window, and one retrain per test (the cooldown)
QUICK_LOOP = [
    "monitoring.window_size=300",
    "monitoring.consecutive_windows=2",
    "monitoring.min_labels=100",
    "monitoring.cooldown_s=3600",
    "monitoring.flush_interval_s=5",
    "retrain.min_labelled_rows=1500",
    "retrain.max_label_wait_s=120",
]


def fitted_synthetic(n_rows: int, seed: int) -> tuple[Any, Any, Any, Any]:
    """(demo config, raw synthetic table, FittedFeatures, ReferenceProfile), fitted in-process without Ray."""
    config = load_config(None)
    table = generate(n_rows, seed=seed)
    pipeline = FeaturePipeline(
        config.features, config.data.schema_, label_column="label", timestamp_column="event_time", id_column="entity_id"
    )
    fitted, profile = pipeline.fit_table(table)
    return config, table, fitted, profile


def wait_for(condition: Callable[[], T], timeout_s: float, interval_s: float = 0.5, what: str = "condition") -> T:
    """Poll `condition` until it returns something truthy (returned); TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(interval_s)


def prometheus_tool(name: str) -> str:
    """The path of `promtool` or `prometheus`: on PATH, or where `make test` unpacked them. Their
    tests fail (never skip) without it: `make test` installs them."""
    found = shutil.which(name) or (str(PROMETHEUS_TOOLS / name) if (PROMETHEUS_TOOLS / name).is_file() else None)
    if found is None:
        pytest.fail(f"{name} not found: run `make test` (scripts/install-prometheus.sh installs it) or put it on PATH")
    return found


# ---- jobs on a real head (tests/e2e) -------------------------------------------------------------
def ray_job_submit(head: LocalHead, args: list[str], timeout_s: float = 600) -> subprocess.CompletedProcess:
    """`ray job submit ARGS`, retried while the head's job agent is still starting."""
    attempts: list[subprocess.CompletedProcess] = []

    def submitted() -> bool:
        attempts.append(
            subprocess.run(
                [RAY, "job", "submit", "--address", head.dashboard, *args],
                env=head.env,
                capture_output=True,
                text=True,
                timeout=timeout_s,
            )
        )
        return "No available agent" not in attempts[-1].stderr

    try:
        wait_for(submitted, 90, interval_s=2, what="the head's job agent")
    except TimeoutError:
        pass  # the caller reads the last attempt's output
    return attempts[-1]


def run_job(head: LocalHead, submission_id: str, entrypoint: list[str], timeout_s: float = 600) -> str:
    """Submit `entrypoint` with the repository as working dir, wait, assert it succeeded; its log."""
    from ray.job_submission import JobStatus, JobSubmissionClient

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


def on_head(head: LocalHead, args: list[str], timeout_s: float = 300) -> subprocess.CompletedProcess:
    """A command line against `head` as a user runs it: the head's token env, the repository as
    working directory, output captured as text."""
    return subprocess.run(args, env=head.env, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)


def set_args(overrides: list[str]) -> list[str]:
    """Config overrides as the CLI takes them: `--set KEY=VALUE` each."""
    return [arg for item in overrides for arg in ("--set", item)]


def serve_detached(head: LocalHead, overrides: list[str]) -> None:
    """`rayloop serve --detach` (the monitor, then the app) on `head`; asserts it came up."""
    deployed = on_head(head, [RAYLOOP_CLI, "serve", "--address", head.address, "--detach", *set_args(overrides)])
    assert deployed.returncode == 0, deployed.stdout[-2000:] + deployed.stderr[-2000:]


def stop_monitor(head: LocalHead, overrides: list[str]) -> None:
    """`rayloop monitor --stop` for the model the overrides name."""
    on_head(head, [RAYLOOP_CLI, "monitor", "--address", head.address, "--stop", *set_args(overrides)], 120)


def stop_loop(head: LocalHead, overrides: list[str]) -> None:
    """Stop what a loop test started: the model's DriftMonitor, then every Serve app."""
    stop_monitor(head, overrides)
    on_head(head, [SERVE_CLI, "shutdown", "-y", "--address", head.dashboard], 120)


def loop_state(root: str | Path, model: str) -> dict[str, Any]:
    """The retrain loop's record (`active`, `finished`) in the model's saved monitor state; {} before any."""
    from rayloop.monitoring.core import MonitorCore

    return (MonitorCore.read_state(str(root), model) or {}).get("loop") or {}


def pipeline_job(head: LocalHead, submission_id: str, overrides: list[str]) -> None:
    """`workloads.pipeline` through the Jobs API with the repository as working dir; waits for it
    and asserts it succeeded (its log's tail otherwise)."""
    jobs.submit_workload(
        "pipeline",
        submission_id,
        source=ConfigSource(overrides=tuple(overrides)),
        working_dir=str(ROOT),
        address=head.dashboard,
    )
    info = wait_for(
        lambda: (i := jobs.job_info(submission_id, head.dashboard)) and i.finished and i,
        400,
        interval_s=2,
        what="the pipeline job",
    )
    assert info.status == "SUCCEEDED", jobs.client(head.dashboard).get_job_logs(submission_id)[-3000:]


def last_json(logs: str) -> dict:
    """The JSON document a workload prints last."""
    return jobs.last_json(logs)


# ---- faults (tests/integration) ---------------------------------------------------------------
def fit_killing_one_worker(trainer, storage: Path, timeout_s: float = 600):
    """Run `trainer.fit()`, SIGKILL one training worker once a checkpoint is registered, return the Result."""
    outcome: dict = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except Exception as exc:  # surfaced by the assertion below
            outcome["error"] = exc

    thread = threading.Thread(target=fit)
    thread.start()
    # the controller writes this snapshot once it has registered a reported checkpoint: only
    # then does a restarted worker group get it back from `get_checkpoint()`
    snapshot = storage / "checkpoint_manager_snapshot.json"
    wait_for(lambda: snapshot.exists() or not thread.is_alive(), 180, interval_s=0.2, what="a registered checkpoint")
    assert snapshot.exists(), f"no checkpoint was registered: {outcome.get('error')!r}"
    # Ray titles each actor process "ray::<Class>..."; the state API would need the dashboard.
    # Only this session's cluster: its raylet, and so its workers, descend from this process.
    workers = [p for p in psutil.Process().children(recursive=True) if _title(p).startswith("ray::RayTrainWorker")]
    assert workers, "no training worker to kill"
    os.kill(workers[0].pid, signal.SIGKILL)
    thread.join(timeout=timeout_s)
    assert "error" not in outcome, repr(outcome.get("error"))
    return outcome["result"]


def _title(process) -> str:
    try:
        return (process.cmdline() or [""])[0]
    except psutil.Error:  # gone in between
        return ""


# ---- Prometheus and Grafana files (configs/prometheus, configs/grafana) ---------------------------
PROMETHEUS_DIR = ROOT / "configs" / "prometheus"
PROMETHEUS_YML = PROMETHEUS_DIR / "prometheus.yml"
ALERTS_YML = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST_YML = PROMETHEUS_DIR / "alerts.test.yml"
DASHBOARD = ROOT / "configs" / "grafana" / "rayloop.json"

ALERTS = {
    "RayloopDriftSustained",
    "RayloopHighErrorRate",
    "RayloopLatencyP99OverSLO",
    "RayloopRetrainFailed",
    "RayloopMonitorDown",
}
# Grafana's interval variables, replaced by plain durations so promtool can parse the expression
GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}


def alert_rules() -> list[dict]:
    groups = yaml.safe_load(ALERTS_YML.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_panels() -> list[dict]:
    """Every panel, rows included, also those nested in collapsed rows."""
    out = []
    for panel in dashboard()["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def dashboard_exprs() -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and every Prometheus annotation."""
    for panel in dashboard_panels():
        for target in panel.get("targets", []):
            yield f"panel {panel['id']} {panel['title']!r} target {target.get('refId')}", target["expr"]
    for annotation in dashboard()["annotations"]["list"]:
        if "expr" in annotation:
            yield f"annotation {annotation['name']!r}", annotation["expr"]


def promql(expr: str) -> str:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    return expr
