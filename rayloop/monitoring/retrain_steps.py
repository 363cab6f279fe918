"""Acting on a retrain decision: wait for labels, submit the job, follow it, roll out, rebase.

One retrain at a time moves through phases, and the record of where it is lives in the monitor's
saved state, so a monitor restarted mid-retrain picks up where it was (the submission id is fixed
when the decision is taken, and submitting it again finds the same job):

    waiting_labels -> submitted -> rolling_out -> finished
                 \\-> finished (submit_failed)    \\-> finished (refused, failed, timed_out)

`advance` makes one step. It is pure over `Effects`, the handful of calls that touch the world
(the Jobs API, the registry, Serve, the monitor's own log), so the state machine is unit-tested with
plain functions and the DriftMonitor wires in the real ones. Every outcome leaves the champion
serving unless it is `promoted`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rayloop.config import RetrainConfig

__all__ = [
    "OUTCOMES",
    "Effects",
    "JobView",
    "LoopState",
    "RetrainRecord",
    "advance",
    "driver_cpus",
    "new_record",
    "since_for",
]

Phase = Literal["waiting_labels", "submitted", "rolling_out", "finished"]
Outcome = Literal["promoted", "refused", "failed", "timed_out", "submit_failed", "rollout_failed"]
OUTCOMES: tuple[str, ...] = ("promoted", "refused", "failed", "timed_out", "submit_failed", "rollout_failed")
PHASES: tuple[str, ...] = ("waiting_labels", "submitted", "rolling_out")
KEEP_FINISHED = 20
ROLLOUT_ATTEMPTS = 3


class RetrainRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    submission_id: str
    window: int
    trigger: str | None
    reason: str
    since: float = Field(description="epoch seconds: the recent window starts here (the drift's first window)")
    decided_at: float
    phase: Phase = "waiting_labels"
    labelled: int = 0
    submitted_at: float | None = None
    job_status: str | None = None
    job_finished_at: float | None = None
    version: str | None = None
    outcome: Outcome | None = None
    detail: str | None = None
    gate: dict[str, Any] = Field(default_factory=dict)
    rollout_attempts: int = 0
    finished_at: float | None = None

    @property
    def seconds(self) -> float | None:
        return None if self.finished_at is None else round(self.finished_at - self.decided_at, 2)


class LoopState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    active: RetrainRecord | None = None
    finished: list[RetrainRecord] = Field(default_factory=list)

    def done(self, record: RetrainRecord) -> LoopState:
        return LoopState(active=None, finished=[*self.finished, record][-KEEP_FINISHED:])


@dataclass(frozen=True)
class JobView:
    status: str
    message: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in ("SUCCEEDED", "FAILED", "STOPPED")


@dataclass
class Effects:
    """What a step may do to the world; each raises on failure (the step records it)."""

    labelled_since: Callable[[float], int]  # labelled rows served since then
    flush: Callable[[], Any]  # make the inference log readable by the job
    submit: Callable[[RetrainRecord], None]  # idempotent by submission id
    job: Callable[[str], JobView | None]  # None: no job with that id
    stop: Callable[[str], None]
    result: Callable[[str], dict[str, Any] | None]  # the registered challenger + gate tags of a job
    rollout: Callable[[str], None]  # every replica to this version
    rebase: Callable[[str], None]  # the monitor compares with this version from now on
    rollback: Callable[[str], None]  # the registry's champion back to the one still serving
    event: Callable[[str, dict[str, Any]], None]  # audit trail


def since_for(decision: dict[str, Any], history: list[dict[str, Any]], fallback: float) -> float:
    """Where the recent window starts: the first window of the drift streak that raised `decision`."""
    streak = int((decision.get("numbers") or {}).get("consecutive_drift") or 0)
    first = int(decision["window"]) - max(streak, 1) + 1
    starts = {int(h["window"]): float(h["start"]) for h in history if "start" in h}
    return starts.get(first, starts.get(int(decision["window"]), fallback))


def driver_cpus(setting: float | Literal["auto"], monitor_node_cpus: float) -> float:
    """CPUs to reserve for the retrain job's driver (`retrain.driver_cpus`). The Jobs API starts a
    driver beside the monitor, on the head, unless it reserves CPUs; a head without CPUs (a real
    cluster's) would make every retrain a worker group, whose start costs more than a small window's
    training (benchmarks/README.md), so there one CPU sends the driver to a worker node, where it
    can train in local mode."""
    if setting != "auto":
        return float(setting)
    return 0.0 if monitor_node_cpus > 0 else 1.0


def new_record(decision: dict[str, Any], submission_id: str, since: float, now: float) -> RetrainRecord:
    return RetrainRecord(
        submission_id=submission_id,
        window=int(decision["window"]),
        trigger=decision.get("trigger"),
        reason=str(decision.get("reason", "")),
        since=since,
        decided_at=now,
    )


def _finish(record: RetrainRecord, outcome: Outcome, detail: str | None, now: float) -> RetrainRecord:
    return record.model_copy(update={"phase": "finished", "outcome": outcome, "detail": detail, "finished_at": now})


def advance(record: RetrainRecord, config: RetrainConfig, fx: Effects, now: float | None = None) -> RetrainRecord:
    """One step of the retrain in flight; returns the updated record (phase `finished` at the end)."""
    now = time.time() if now is None else now
    sid = record.submission_id
    if record.phase == "waiting_labels":
        labelled = fx.labelled_since(record.since)
        waited = now - record.decided_at
        if labelled < config.min_labelled_rows and waited < config.max_label_wait_s:
            return record.model_copy(update={"labelled": labelled})
        try:
            fx.flush()
            fx.submit(record)
        except Exception as exc:  # the Jobs API is down, the token is wrong, ...
            fx.event("retrain_submit_failed", {"submission_id": sid, "error": f"{type(exc).__name__}: {exc}"})
            return _finish(record, "submit_failed", f"{type(exc).__name__}: {exc}", now)
        fx.event(
            "retrain_submitted",
            {"submission_id": sid, "labelled_rows": labelled, "since": record.since, "waited_s": round(waited, 2)},
        )
        return record.model_copy(update={"phase": "submitted", "labelled": labelled, "submitted_at": now})

    if record.phase == "submitted":
        job = fx.job(sid)
        if job is None:  # the submission was lost (e.g. the head restarted): submit the same id again
            fx.submit(record)
            return record
        if not job.finished:
            if now - (record.submitted_at or now) > config.timeout_s:
                fx.stop(sid)
                fx.event("retrain_timed_out", {"submission_id": sid, "timeout_s": config.timeout_s})
                return _finish(
                    record.model_copy(update={"job_status": "STOPPED"}),
                    "timed_out",
                    f"still {job.status} after {config.timeout_s:g}s; stopped",
                    now,
                )
            return record.model_copy(update={"job_status": job.status})
        record = record.model_copy(update={"job_status": job.status, "job_finished_at": now})
        if job.status != "SUCCEEDED":  # the message ends with the job's last log lines: keep the end
            return _finish(record, "failed", (job.message or job.status)[-600:], now)
        result = fx.result(sid)
        if result is None:
            return _finish(record, "failed", "the job succeeded but registered no model version", now)
        record = record.model_copy(update={"version": str(result["version"]), "gate": dict(result)})
        if result.get("decision") != "promoted":
            return _finish(record, "refused", str(result.get("reason") or "refused by the gate"), now)
        return record.model_copy(update={"phase": "rolling_out"})

    if record.phase == "rolling_out":
        assert record.version is not None
        try:
            fx.rollout(record.version)
            fx.rebase(record.version)
        except Exception as exc:
            attempts = record.rollout_attempts + 1
            fx.event(
                "rollout_error",
                {
                    "submission_id": sid,
                    "version": record.version,
                    "attempt": attempts,
                    "error": f"{type(exc).__name__}: {exc}",
                },
            )
            if attempts >= ROLLOUT_ATTEMPTS:
                # Serve still runs the old champion: point the registry back at it, so they agree
                try:
                    fx.rollback(record.version)
                except Exception as again:
                    fx.event("rollback_error", {"submission_id": sid, "error": f"{type(again).__name__}: {again}"})
                return _finish(
                    record.model_copy(update={"rollout_attempts": attempts}),
                    "rollout_failed",
                    f"{type(exc).__name__}: {exc}",
                    now,
                )
            return record.model_copy(update={"rollout_attempts": attempts})
        return _finish(record, "promoted", f"version {record.version} serving", now)
    return record
