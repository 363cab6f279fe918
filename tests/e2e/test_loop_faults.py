"""What goes wrong in the loop stays contained: a failing retrain job, a worse challenger and a
monitor killed mid-retrain, each against a real head, a real DriftMonitor and real Jobs API jobs
(`loop_driver` feeds the monitor drifted rows as replicas would)."""

from __future__ import annotations

import json
import sys

import pytest

from rayloop import audit
from rayloop.control import jobs
from rayloop.runtime import free_port
from tests.support import on_head, set_args, stop_loop, stop_monitor

pytestmark = pytest.mark.slow

FAST = [
    "data.synthetic.n_rows=6000",
    "data.synthetic.seed=61",
    "tuning.enabled=false",
    "training.lightgbm.num_boost_round=60",
    "training.refit=none",  # what is tested here is the gate and the loop, not the refit
    "monitoring.window_size=200",
    "monitoring.consecutive_windows=2",
    "monitoring.min_labels=100",
    "retrain.min_labelled_rows=1500",
    "retrain.max_label_wait_s=60",
]


def _drive(head, model: str, *extra: str, scenario: str = "covariate+concept", kill: str | None = None) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "tests.e2e.loop_driver",
        "--address",
        head.address,
        "--model",
        model,
        "--scenario",
        scenario,
        *(["--kill-monitor-when", kill] if kill else []),
    ]
    cmd += set_args([*FAST, f"serving.port={free_port()}", *extra])
    done = on_head(head, cmd, 600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["record"] is not None, f"no retrain finished: {done.stderr[-3000:]}"
    return out


def test_a_failing_retrain_job_leaves_the_champion_and_says_why(ray_head):
    model = "e2e-fault-fails"
    try:
        # the job refuses to train on fewer labelled rows than it was told it needs: exit 2, FAILED
        out = _drive(ray_head, model, "retrain.min_labelled_rows=100000", "retrain.max_label_wait_s=0")
    finally:
        stop_monitor(ray_head, [f"registry.model_name={model}"])
    record = out["record"]
    assert record["outcome"] == "failed" and record["job_status"] == "FAILED", record
    assert out["champion"] == out["first_champion"]
    info = jobs.job_info(record["submission_id"], ray_head.dashboard)
    assert info is not None and info.status == "FAILED"
    logs = jobs.client(ray_head.dashboard).get_job_logs(record["submission_id"])
    assert "min_labelled_rows=100000" in logs
    outcomes = [e for e in audit.read(event="retrain_outcome") if e.get("submission_id") == record["submission_id"]]
    assert outcomes and outcomes[-1]["outcome"] == "failed"


def test_a_worse_challenger_is_refused_by_the_gate(ray_head):
    model = "e2e-fault-worse"
    try:
        # covariate drift only (the champion's concept still holds) and a one-split, one-round challenger
        out = _drive(
            ray_head,
            model,
            "training.lightgbm.num_boost_round=1",
            "training.lightgbm.num_leaves=2",
            "retrain.reference_ratio=0",
            scenario="covariate",
        )
    finally:
        stop_monitor(ray_head, [f"registry.model_name={model}"])
    record = out["record"]
    assert record["outcome"] == "refused", record
    assert record["gate"]["decision"] == "refused"
    assert record["gate"]["challenger_score"] < record["gate"]["champion_score"]
    assert out["champion"] == out["first_champion"]


def test_a_monitor_killed_while_its_retrain_job_runs_sees_the_job_through_and_promotes(ray_head):
    model = "e2e-fault-killed"
    try:
        out = _drive(ray_head, model, "registry.gate_metric=accuracy", kill="submitted")  # see test_loop.py
    finally:
        stop_loop(ray_head, [f"registry.model_name={model}"])
    record = out["record"]
    assert out["killed_pid"] is not None and out["monitor_pid"] != out["killed_pid"] and out["restarts"] >= 1
    assert record["outcome"] == "promoted", record
    assert out["champion"] == record["version"] != out["first_champion"]
    info = jobs.job_info(record["submission_id"], ray_head.dashboard)
    assert info is not None and info.status == "SUCCEEDED"
