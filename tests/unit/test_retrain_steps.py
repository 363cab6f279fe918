"""The retrain state machine, step by step, with plain functions standing in for the world."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from rayloop.config import RetrainConfig
from rayloop.monitoring.retrain_steps import Effects, JobView, LoopState, advance, new_record, since_for

CONFIG = RetrainConfig(min_labelled_rows=100, max_label_wait_s=60, timeout_s=300)
DECISION = {
    "window": 7,
    "trigger": "drift",
    "reason": "drift in 2 consecutive windows",
    "numbers": {"consecutive_drift": 2},
}


@dataclass
class World:
    labelled: int = 0
    jobs: dict[str, JobView] = field(default_factory=dict)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    submit_error: Exception | None = None
    rollout_errors: int = 0
    calls: list[tuple] = field(default_factory=list)

    def effects(self) -> Effects:
        def submit(record):
            self.calls.append(("submit", record.submission_id))
            if self.submit_error:
                raise self.submit_error
            self.jobs.setdefault(record.submission_id, JobView("PENDING"))

        def rollout(version):
            self.calls.append(("rollout", version))
            if self.rollout_errors:
                self.rollout_errors -= 1
                raise RuntimeError("serve controller unavailable")

        return Effects(
            labelled_since=lambda since: self.labelled,
            flush=lambda: self.calls.append(("flush",)),
            submit=submit,
            job=lambda sid: self.jobs.get(sid),
            stop=lambda sid: self.calls.append(("stop", sid)),
            result=lambda sid: self.results.get(sid),
            rollout=rollout,
            rebase=lambda version: self.calls.append(("rebase", version)),
            rollback=lambda version: self.calls.append(("rollback", version)),
            event=lambda name, fields: self.calls.append(("event", name)),
        )


def _record():
    return new_record(DECISION, "sid-1", since=1000.0, now=2000.0)


def test_waits_for_labels_then_submits_follows_the_job_and_rolls_out():
    world = World(labelled=40)
    fx = world.effects()
    record = advance(_record(), CONFIG, fx, now=2010.0)
    assert record.phase == "waiting_labels" and record.labelled == 40 and ("submit", "sid-1") not in world.calls
    world.labelled = 120
    record = advance(record, CONFIG, fx, now=2020.0)
    assert record.phase == "submitted" and world.calls[:2] == [("flush",), ("submit", "sid-1")]
    world.jobs["sid-1"] = JobView("RUNNING")
    record = advance(record, CONFIG, fx, now=2030.0)
    assert record.phase == "submitted" and record.job_status == "RUNNING"
    world.jobs["sid-1"] = JobView("SUCCEEDED")
    world.results["sid-1"] = {"version": "4", "decision": "promoted", "reason": "auc 0.80 >= 0.70 - 0.005"}
    record = advance(record, CONFIG, fx, now=2040.0)
    assert record.phase == "rolling_out" and record.version == "4"
    record = advance(record, CONFIG, fx, now=2050.0)
    assert record.phase == "finished" and record.outcome == "promoted" and record.seconds == 50.0
    assert world.calls[-2:] == [("rollout", "4"), ("rebase", "4")]


def test_submits_anyway_after_the_label_wait_and_the_job_decides():
    world = World(labelled=10)
    record = advance(_record(), CONFIG, world.effects(), now=2061.0)
    assert record.phase == "submitted" and record.labelled == 10


@pytest.mark.parametrize(
    ("job", "result", "outcome", "detail"),
    [
        (JobView("FAILED", "Job entrypoint command failed with exit code 2"), None, "failed", "exit code 2"),
        (JobView("STOPPED"), None, "failed", "STOPPED"),
        (JobView("SUCCEEDED"), None, "failed", "registered no model version"),
        (
            JobView("SUCCEEDED"),
            {"version": "5", "decision": "refused", "reason": "auc 0.6 < 0.7"},
            "refused",
            "0.6 < 0.7",
        ),
    ],
)
def test_failed_and_refused_jobs_finish_without_touching_serve(job, result, outcome, detail):
    world = World(labelled=500)
    fx = world.effects()
    record = advance(_record(), CONFIG, fx, now=2001.0)
    world.jobs["sid-1"] = job
    if result:
        world.results["sid-1"] = result
    record = advance(record, CONFIG, fx, now=2100.0)
    assert record.phase == "finished" and record.outcome == outcome and detail in record.detail
    assert not [c for c in world.calls if c[0] in ("rollout", "rebase")]


def test_a_job_past_its_timeout_is_stopped():
    world = World(labelled=500)
    fx = world.effects()
    record = advance(_record(), CONFIG, fx, now=2001.0)
    world.jobs["sid-1"] = JobView("RUNNING")
    assert advance(record, CONFIG, fx, now=2200.0).phase == "submitted"
    record = advance(record, CONFIG, fx, now=2302.0)
    assert record.outcome == "timed_out" and ("stop", "sid-1") in world.calls


def test_a_failed_submission_frees_the_slot_with_the_error():
    world = World(labelled=500, submit_error=ConnectionError("dashboard unreachable"))
    record = advance(_record(), CONFIG, world.effects(), now=2001.0)
    assert record.outcome == "submit_failed" and "dashboard unreachable" in record.detail


def test_a_lost_submission_is_submitted_again_with_the_same_id():
    world = World(labelled=500)
    fx = world.effects()
    record = advance(_record(), CONFIG, fx, now=2001.0)
    world.jobs.clear()
    record = advance(record, CONFIG, fx, now=2002.0)
    assert record.phase == "submitted" and world.calls.count(("submit", "sid-1")) == 2


def test_rollout_is_retried_then_the_registry_is_rolled_back():
    world = World(labelled=500, rollout_errors=2)
    fx = world.effects()
    record = _record().model_copy(update={"phase": "rolling_out", "version": "6"})
    record = advance(record, CONFIG, fx, now=2001.0)
    assert record.phase == "rolling_out" and record.rollout_attempts == 1
    record = advance(advance(record, CONFIG, fx, now=2002.0), CONFIG, fx, now=2003.0)
    assert record.outcome == "promoted"  # the third attempt went through
    world.rollout_errors = 5
    record = _record().model_copy(update={"phase": "rolling_out", "version": "7"})
    for step in range(3):
        record = advance(record, CONFIG, fx, now=2010.0 + step)
    assert record.outcome == "rollout_failed" and ("rollback", "7") in world.calls


def test_the_record_survives_a_json_round_trip_mid_flight():
    world = World(labelled=500)
    record = advance(_record(), CONFIG, world.effects(), now=2001.0)
    state = LoopState(active=record)
    again = LoopState.model_validate_json(state.model_dump_json())
    assert again.active == record and again.done(record).active is None and again.done(record).finished == [record]


def test_the_recent_window_starts_at_the_first_window_of_the_drift_streak():
    history = [{"window": w, "start": 100.0 * w} for w in range(10)]
    assert since_for(DECISION, history, fallback=0.0) == 600.0
    quality = {"window": 9, "numbers": {"consecutive_drift": 0}}
    assert since_for(quality, history, fallback=0.0) == 900.0
    assert since_for(DECISION, [], fallback=42.0) == 42.0


def test_the_retrain_driver_reserves_a_cpu_only_where_the_monitors_node_has_none():
    from rayloop.monitoring.retrain_steps import driver_cpus

    # a cluster head (--num-cpus 0): one CPU sends the driver to a worker node
    assert driver_cpus("auto", 0.0) == 1.0
    # one node with CPUs (a laptop head): the driver stays beside the monitor, reserving nothing
    assert driver_cpus("auto", 4.0) == 0.0
    # a number is taken as it is
    assert driver_cpus(2.0, 0.0) == 2.0 and driver_cpus(0.0, 0.0) == 0.0
