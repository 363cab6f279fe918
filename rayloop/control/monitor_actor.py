"""The DriftMonitor actor: one per model, named, detached, restarted forever.

A thin Ray layer over `MonitorCore` (which holds the logic and the state that survives
restarts): it serializes calls with a lock, compacts the inference log on a timer, exports
Prometheus metrics through `ray.util.metrics`, writes alarms and decisions to the audit trail and
acts on retrain decisions (`rayloop.monitoring.retrain_steps`, with the Jobs API and the rollout as
its effects). Serve replicas find it by name (`rayloop.monitoring.handle`) and send it batches with
`ingest` / `ingest_labels`; calls carry batch ids, so the retries that Ray makes across a restart
(`max_task_retries=-1`) are applied once.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from rayloop import audit, metrics, paths, registry
from rayloop.config import ConfigSource, RayloopConfig
from rayloop.constants import HOME_ENV_VAR
from rayloop.control import jobs
from rayloop.control.rollout import roll_out_promotion
from rayloop.monitoring import retrain_steps
from rayloop.monitoring.core import MonitorCore, Reference, clear_stop_mark, rows_by_version, write_stop_mark
from rayloop.monitoring.handle import NAMESPACE, actor_name, get_monitor
from rayloop.tasks import LIVE_METRICS

__all__ = [
    "DriftMonitor",
    "MonitorArgs",
    "monitor_root",
    "start_model_monitor",
    "start_monitor",
    "stop_model_monitor",
    "stop_monitor",
    "yield_cpu",
]

log = logging.getLogger(__name__)


class MonitorArgs(BaseModel):
    """What the actor is started with: the app's config source (loaded once in the actor: the
    monitoring and retrain settings, the model's name) and where the starter keeps its state."""

    model_config = ConfigDict(extra="forbid")

    source: ConfigSource
    home: str  # RAYLOOP_HOME of whoever started it: the audit trail and the default storage
    tracking_uri: str
    reference_ref: str = registry.CHAMPION  # the version whose profile is the first reference
    app_name: str = "tabular"  # the Serve application a promotion rolls out to
    jobs_address: str | None = None  # the Jobs API (dashboard URL); default: this cluster's


class DriftMonitor:
    def __init__(self, args: dict[str, Any]) -> None:
        self.args = MonitorArgs.model_validate(args)
        os.environ[HOME_ENV_VAR] = self.args.home
        os.environ["MLFLOW_TRACKING_URI"] = self.args.tracking_uri
        self.config: RayloopConfig = self.args.source.load()
        self.model_name = self.config.registry.model_name
        self.monitoring = self.config.monitoring
        self.lock = threading.Lock()
        self.m = {spec.name: metrics.create(spec) for spec in metrics.MONITOR}
        root = self.monitoring.storage or self.args.home
        self.core = MonitorCore.open(self.monitoring, self.model_name, root, self._reference, on_event=self._event)
        self._export_reference()
        self._stop = threading.Event()
        threading.Thread(target=self._timer, name="monitor-timer", daemon=True).start()
        self._effects = self._loop_effects()
        threading.Thread(target=self._retrain_loop, name="monitor-retrain", daemon=True).start()
        # below the replicas from here on (starting up at full priority: a busy core must not
        # stall a restart): its window tests, log writes and state saves compete with requests
        # on a shared core, and no request waits for this actor (replicas buffer)
        yield_cpu(self.monitoring.niceness)
        log.info(
            "DriftMonitor for %s: reference version %s, %d windows so far (restart %d)",
            self.model_name,
            self.core.reference.version,
            self.core.state.windows_seen,
            self.core.state.restarts,
        )

    # ---- Ray-facing API ---------------------------------------------------------------------
    def ingest(self, batch_id: str, table: pa.Table) -> dict[str, Any]:
        with self.lock:
            result = self.core.ingest(batch_id, table)
        if result["accepted"]:
            for version, n in rows_by_version(table).items():
                self.m[metrics.SAMPLES.name].inc(n, tags={"model_version": version})
            self._export_version()
        for window in result["windows"]:
            self._export_window(window)
        return {"accepted": result["accepted"], "windows": len(result["windows"])}

    def ingest_labels(self, batch_id: str, table: pa.Table) -> dict[str, int]:
        with self.lock:
            closed = self.core.state.label_windows_seen
            outcome = self.core.ingest_labels(batch_id, table)
            lags = list(self.core.last_label_lags)
            label_drift = self.core.state.label_drift if self.core.state.label_windows_seen > closed else None
        if label_drift is not None:  # the label pseudo-feature, beside the inputs' drift gauges
            tags = {"feature": label_drift["name"]}
            self.m[metrics.DRIFT_PSI.name].set(label_drift["psi"], tags=tags)
            self.m[metrics.DRIFT_JS.name].set(label_drift["js"], tags=tags)
            self.m[metrics.DRIFT_P.name].set(label_drift["p"], tags=tags)
            self.m[metrics.DRIFT_DRIFTED.name].set(int(label_drift["drifted"]), tags=tags)
            if label_drift["drifted"]:
                self.m[metrics.ALARMS.name].inc(1, tags=tags)
        for kind, n in outcome.items():
            if n and kind != "duplicate_batch":
                self.m[metrics.LABELS.name].inc(n, tags={"outcome": kind})
        for lag in lags:
            self.m[metrics.LABEL_LAG_S.name].observe(lag)
        self._export_quality()
        return outcome

    def summary(self) -> dict[str, Any]:
        with self.lock:
            return self.core.summary()

    def history(self, limit: int = 50) -> list[dict[str, Any]]:
        with self.lock:
            return self.core.history(limit)

    def last_report(self) -> dict[str, Any] | None:
        with self.lock:
            return self.core.last_report.to_dict() if self.core.last_report else None

    def pending_decision(self) -> dict[str, Any] | None:
        with self.lock:
            pending = self.core.policy_state.pending
            return pending.model_dump(mode="json") if pending else None

    def take_decision(self) -> dict[str, Any] | None:
        """The next issue's retrain submitter: take the raised decision (then report the job)."""
        with self.lock:
            return self.core.take_decision()

    def retrain_started(self, job_id: str) -> None:
        with self.lock:
            self.core.retrain_started(job_id)

    def retrain_finished(self, job_id: str) -> None:
        with self.lock:
            self.core.retrain_finished(job_id)

    def rebase(self, version: str) -> str:
        """Compare with `version`'s profile from now on (after a promotion)."""
        reference = self._reference(version)
        with self.lock:
            self.core.rebase(reference)
        self._export_reference()
        return reference.version

    def retrains(self) -> dict[str, Any]:
        """The retrain in flight and the last finished ones (retrain_steps.LoopState as JSON)."""
        with self.lock:
            return self._loop_state().model_dump(mode="json")

    def flush(self) -> int:
        """Save the state and compact the whole inference log now."""
        with self.lock:
            return self.core.flush()

    def save(self) -> None:
        """Save the state now (the timer does it every second)."""
        with self.lock:
            self.core.persist()

    def ping(self) -> str:
        return self.core.reference.version

    def ping_pid(self) -> int:
        """The actor's process id (fault tests kill it)."""
        return os.getpid()

    # ---- internals --------------------------------------------------------------------------
    def _reference(self, version: str | None) -> Reference:
        ref = version or self.args.reference_ref
        resolved = registry.resolve_version(self.model_name, ref)
        if resolved is None:
            raise LookupError(f"model {self.model_name!r} has no version or alias {ref!r} to monitor against")
        bundle = registry.load_bundle(self.model_name, resolved)
        return Reference(
            version=resolved,
            profile=bundle.profile,
            metrics=dict(bundle.metrics),
            task=bundle.task,
            interval_half_width=bundle.interval_half_width,
        )

    def _event(self, event: str, fields: dict[str, Any]) -> None:
        audit.record(event, **fields)
        if event in ("retrain_decision", "retrain_suppressed"):
            self.m[metrics.DECISIONS.name].inc(
                1,
                tags={
                    "action": str(fields.get("action")),
                    "trigger": str(fields.get("trigger")),
                    "suppressed_by": str(fields.get("suppressed_by") or ""),
                },
            )

    def _export_window(self, window: dict[str, Any]) -> None:
        self.m[metrics.WINDOWS.name].inc(1, tags={"alarm": str(bool(window["alarm"])).lower()})
        drifted = set(window["drifted"])
        for name, score in window["scores"].items():
            tags = {"feature": name}
            self.m[metrics.DRIFT_PSI.name].set(score["psi"], tags=tags)
            self.m[metrics.DRIFT_JS.name].set(score["js"], tags=tags)
            self.m[metrics.DRIFT_P.name].set(score["p"], tags=tags)
            self.m[metrics.DRIFT_DRIFTED.name].set(1 if name in drifted else 0, tags=tags)
        for name in drifted:
            self.m[metrics.ALARMS.name].inc(1, tags={"feature": name})
        self._export_quality()

    def _export_quality(self) -> None:
        with self.lock:
            live = self.core.live_metrics()
        for name, value in live.items():
            if value is not None:
                self.m[metrics.LIVE_QUALITY.name].set(value, tags={"metric": name})

    def _export_reference(self) -> None:
        for name in LIVE_METRICS[self.core.reference.task.kind]:
            value = self.core.reference.metrics.get(name)
            if value is not None:
                self.m[metrics.REFERENCE_QUALITY.name].set(float(value), tags={"metric": name})

    def _export_version(self) -> None:
        version = self.core.state.serving_version
        if version is not None:
            self.m[metrics.SERVING_VERSION.name].set(1, tags={"version": version})

    # ---- the closed loop: acting on decisions ------------------------------------------------
    def _loop_state(self) -> retrain_steps.LoopState:
        return (
            retrain_steps.LoopState.model_validate(self.core.state.loop)
            if self.core.state.loop
            else retrain_steps.LoopState()
        )

    def _set_loop(self, state: retrain_steps.LoopState) -> None:
        self.core.state.loop = state.model_dump(mode="json")
        self.core.save()

    def _retrain_loop(self) -> None:
        """Take a raised decision, then move its retrain one step a second (see `retrain_steps`)."""
        while not self._stop.wait(1.0):
            try:
                now = time.time()
                with self.lock:
                    state = self._loop_state()
                    if (
                        state.active is None
                        and self.config.retrain.enabled
                        and self.core.policy_state.pending is not None
                    ):
                        decision = self.core.take_decision()
                        if decision is not None:
                            sid = jobs.retrain_submission_id(
                                self.model_name, decision["window"], self.core.state.started
                            )
                            self.core.retrain_started(sid)  # right after taking it: no window slips between
                            since = retrain_steps.since_for(decision, self.core.state.history, fallback=now - 600)
                            state = retrain_steps.LoopState(
                                active=retrain_steps.new_record(decision, sid, since, now), finished=state.finished
                            )
                            self._set_loop(state)
                    active = state.active
                if active is None:
                    self._export_phase(None)
                    continue
                updated = retrain_steps.advance(active, self.config.retrain, self._effects)
                if updated == active:
                    continue
                with self.lock:
                    state = self._loop_state()
                    if updated.phase == "finished":
                        self.core.retrain_finished(updated.submission_id)
                        self._set_loop(state.done(updated))
                    else:
                        self._set_loop(retrain_steps.LoopState(active=updated, finished=state.finished))
                self._export_phase(None if updated.phase == "finished" else updated.phase)
                if updated.phase == "finished":
                    self.m[metrics.RETRAINS.name].inc(1, tags={"outcome": str(updated.outcome)})
                    if updated.seconds is not None:
                        self.m[metrics.RETRAIN_SECONDS.name].observe(
                            updated.seconds, tags={"outcome": str(updated.outcome)}
                        )
                    self._event(
                        "retrain_outcome",
                        {
                            "model": self.model_name,
                            "submission_id": updated.submission_id,
                            "outcome": updated.outcome,
                            "version": updated.version,
                            "detail": updated.detail,
                            "seconds": updated.seconds,
                            "gate": updated.gate,
                        },
                    )
            except Exception:  # keep the loop alive; the next second retries the same step
                log.exception("retrain loop")

    def _export_phase(self, phase: str | None) -> None:
        for name in retrain_steps.PHASES:
            self.m[metrics.RETRAIN_PHASE.name].set(1 if name == phase else 0, tags={"phase": name})

    def _loop_effects(self) -> retrain_steps.Effects:
        args, name = self.args, self.model_name

        def locked(fn):
            def call(*a):
                with self.lock:
                    return fn(*a)

            return call

        def submit(record: retrain_steps.RetrainRecord) -> None:
            jobs.submit_workload(
                "retrain",
                record.submission_id,
                source=args.source.with_overrides(f"retrain.since={record.since}"),
                working_dir=self.config.retrain.working_dir,
                env={HOME_ENV_VAR: args.home, "MLFLOW_TRACKING_URI": args.tracking_uri},
                metadata={
                    "rayloop.model": name,
                    "rayloop.window": str(record.window),
                    "rayloop.trigger": str(record.trigger),
                    "rayloop.reason": record.reason[:500],
                },
                address=args.jobs_address,
                driver_cpus=retrain_steps.driver_cpus(self.config.retrain.driver_cpus, _own_node_cpus()),
            )

        def job(sid: str) -> retrain_steps.JobView | None:
            info = jobs.job_info(sid, args.jobs_address)
            return None if info is None else retrain_steps.JobView(info.status, info.message)

        def stop(sid: str) -> None:
            jobs.client(args.jobs_address).stop_job(sid)

        return retrain_steps.Effects(
            labelled_since=locked(lambda since: self.core.labelled_since(since)),
            flush=locked(lambda: self.core.flush()),
            submit=submit,
            job=job,
            stop=stop,
            result=lambda sid: registry.retrain_result(name, sid),
            rollout=lambda version: roll_out_promotion(args.source, version, name=args.app_name),
            rebase=lambda version: self.rebase(version),
            rollback=lambda version: registry.rollback(name),
            event=lambda event, fields: self._event(event, {"model": name, **fields}),
        )

    def _timer(self) -> None:
        while not self._stop.wait(1.0):
            try:
                with self.lock:
                    written = self.core.tick()
                    open_rows = self.core.state.window["rows"]
                    pending = self.core.policy_state.pending is not None
                if written:
                    self.m[metrics.LOG_ROWS.name].inc(written)
                self.m[metrics.OPEN_WINDOW_ROWS.name].set(open_rows)
                self.m[metrics.PENDING_DECISION.name].set(1 if pending else 0)
                self._export_version()  # re-set so the series never goes stale
            except Exception:  # keep the timer alive; the next tick retries
                log.exception("monitor timer")


def _own_node_cpus() -> float:
    """Logical CPUs of the node this process runs on (0 on a cluster head started with --num-cpus 0)."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    node = next((n for n in ray.nodes() if n.get("NodeID") == node_id and n.get("Alive")), None)
    return float((node or {}).get("Resources", {}).get("CPU", 0.0))


def yield_cpu(niceness: int | str) -> None:
    """Put every thread of this process below the replicas ("idle": SCHED_IDLE; a number: nice +n).

    Thread by thread: on Linux both the nice value and the policy belong to one thread, and Ray's
    core-worker threads (which receive the replicas' calls) exist before `__init__` runs, so an
    `os.nice` there left them at the workers' priority. Threads started later inherit it. Under
    SCHED_IDLE a saturated core leaves the monitor almost nothing (replicas then drop samples).
    """
    tids = [int(t) for t in os.listdir("/proc/self/task")] if os.path.isdir("/proc/self/task") else []
    if not tids or (niceness == "idle" and not hasattr(os, "SCHED_IDLE")):
        os.nice(19 if niceness == "idle" else int(niceness))  # one call for the whole process here (macOS)
        return
    for tid in tids:
        try:
            if niceness == "idle":
                os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
            else:
                os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + int(niceness)))
        except (ProcessLookupError, PermissionError):  # a thread that ended meanwhile
            continue


# ---- starting and stopping it ------------------------------------------------------------------
def monitor_root(config: RayloopConfig) -> str:
    """Where the model's monitor keeps its state: `monitoring.storage`, else RAYLOOP_HOME."""
    return config.monitoring.storage or str(paths.home())


def start_model_monitor(
    source: ConfigSource, *, app_name: str = "tabular", wait_s: float = 120.0, on_purpose: bool = True
) -> Any:
    """Get or start the model's DriftMonitor (detached), comparing with the current champion. It
    keeps the app's config source to submit retrain jobs with and to roll out with. A start on
    purpose (a person's, not a keeper's) clears the mark of an earlier `stop_model_monitor`."""
    if on_purpose:
        config = source.load()
        if clear_stop_mark(monitor_root(config), config.registry.model_name):
            audit.record("monitor_started", model=config.registry.model_name)
    args = MonitorArgs(
        source=source, home=str(paths.home()), tracking_uri=paths.mlflow_tracking_uri(), app_name=app_name
    )
    return start_monitor(args, wait_s=wait_s)


def stop_model_monitor(source: ConfigSource, *, by: str) -> bool:
    """Stop the model's monitor on purpose: a mark beside its state tells whatever keeps it running
    (the RayService's keeper app) to leave it stopped until a start on purpose; then
    `stop_monitor`. Whether a monitor was running."""
    config = source.load()
    name = config.registry.model_name
    write_stop_mark(monitor_root(config), name, by=by)
    audit.record("monitor_stopped", model=name, by=by)
    return stop_monitor(name)


def start_monitor(args: MonitorArgs, *, wait_s: float = 120.0) -> Any:
    """Get or create the model's monitor (detached: it outlives this driver) and wait until it answers."""
    import ray

    remote = ray.remote(DriftMonitor).options(
        name=actor_name(args.source.load().registry.model_name),
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        max_restarts=-1,
        max_task_retries=-1,
        num_cpus=0,  # mostly waiting; must not take a CPU slot from a replica or a trainer
        # on the head node: it submits retrain jobs to the Jobs API, which a cluster keeps on the
        # head's 127.0.0.1 (cluster/launcher); a worker node could not reach it
        resources={"node:__internal_head__": 0.001},
        max_concurrency=4,  # status calls answer while a window is being tested; the lock orders writes
    )
    handle = remote.remote(args.model_dump(mode="json"))
    ray.get(handle.ping.remote(), timeout=wait_s)
    return handle


def stop_monitor(model_name: str) -> bool:
    """Flush the log and kill the monitor for good (its saved state stays for the next one)."""
    import ray

    handle = get_monitor(model_name)
    if handle is None:
        return False
    try:
        ray.get(handle.flush.remote(), timeout=30)
    finally:
        ray.kill(handle, no_restart=True)
    deadline = time.monotonic() + 10
    while get_monitor(model_name) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    return True
