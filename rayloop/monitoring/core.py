"""What the DriftMonitor knows and does, without Ray: windows, the label join, live quality,
the policy, and the state that survives a restart.

`MonitorCore` is event-sourced. Every batch of served rows or labels is written ahead to the
inference log (under its batch id) before it is applied. The small state (window counts,
counters, live-quality pairs, policy, recent window summaries, recently seen batch ids) is saved
atomically when a window closes and otherwise on a timer: whatever a save misses is still
written ahead, and compaction deletes write-ahead files only after a save. After a restart
`MonitorCore.open` reloads the state, replays every written-ahead batch the state has not seen
and rebuilds the label-join index from the log, so windows, counters and audit trail continue
where they were and no acknowledged row is lost or counted twice. The Ray actor (`monitor.py`)
only adds locking, a timer and metrics."""

from __future__ import annotations

import json
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic_core import to_json

from rayloop import paths
from rayloop.config import MonitoringConfig
from rayloop.errors import LabelError
from rayloop.features.profile import ReferenceProfile
from rayloop.monitoring import policy
from rayloop.monitoring.drift import (
    LABEL,
    PREDICTED_CLASS,
    PREDICTION,
    DriftDetector,
    DriftReport,
    WindowCounts,
    label_detector,
)
from rayloop.monitoring.inference_log import (
    InferenceLog,
    epoch_hours,
    labels_from,
    open_filesystem,
)
from rayloop.tasks import LIVE_METRICS, Task
from rayloop.training.evaluate import accuracy, macro_f1_codes, mae, rmse, roc_auc

__all__ = [
    "LABEL_OUTCOMES",
    "PREDICTION_COLUMNS",
    "MonitorCore",
    "Reference",
    "WindowSummary",
    "clear_stop_mark",
    "live_metric_se",
    "live_metrics",
    "read_stop_mark",
    "rows_by_version",
    "summarize_state",
    "write_stop_mark",
]

# what a replica sends besides the raw feature columns: `score` is P(positive) (binary), the
# predicted value (regression) or the predicted class's probability (multiclass, which also sends
# one `p_<code>` column per class); `predicted_label` is the predicted class code (null: regression)
PREDICTION_COLUMNS = ("request_id", "ts", "model_version", "score", "predicted_label")
LABEL_OUTCOMES = ("joined", "late", "duplicate", "unknown")
STATE_FORMAT = 1
HISTORY = 100  # window summaries kept in the state
SEEN_BATCHES = 4096  # batch ids remembered for idempotent retries
STOP_MARK = "stopped.json"  # beside state.json: the monitor was stopped on purpose


_BINARY = Task(kind="binary", label="label", label_type="int", classes=[0, 1])


@dataclass(frozen=True)
class Reference:
    """What live traffic is compared with: one registered version's task, profile and test metrics."""

    version: str
    profile: ReferenceProfile
    metrics: dict[str, float]
    task: Task = _BINARY
    interval_half_width: float | None = None  # a regression's prediction interval (coverage from feedback)


@dataclass
class WindowSummary:
    window: int
    start: float
    end: float
    rows: int
    alarm: bool
    drifted: list[str]
    scores: dict[str, dict[str, float]]  # feature -> psi, js, p (smallest adjusted p-value)
    live_metric: float | None
    live_labels: int
    reference_version: str
    decision: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class _Pending:
    ts: float
    value: float  # binary P(positive), multiclass the predicted class code, regression the prediction
    labeled: bool = False


@dataclass
class _State:
    reference_version: str
    task: dict[str, Any] = field(default_factory=lambda: _BINARY.model_dump(mode="json"))  # the reference's
    interval_half_width: float | None = None
    reference_since: float = 0.0  # epoch seconds of the last rebase: live quality counts rows served after it
    windows_seen: int = 0
    window: dict[str, Any] = field(default_factory=lambda: {"rows": 0, "bins": {}})
    window_start: float | None = None
    rows_received: int = 0
    rows_by_version: dict[str, int] = field(default_factory=dict)
    alarms: int = 0
    alarms_by_feature: dict[str, int] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LABEL_OUTCOMES, 0))
    label_lag_s: list[float] = field(default_factory=list)  # recent joined-label lags
    quality_pairs: list[list[float]] = field(default_factory=list)  # [_Pending.value, label value or code]
    # label drift: windows of `window_size` joined labels against the reference's held-out labels
    label_window: dict[str, Any] = field(default_factory=lambda: {"rows": 0, "bins": {}})
    label_windows_seen: int = 0
    label_drift: dict[str, Any] | None = None  # the last closed label window's test
    serving_version: str | None = None
    policy: dict[str, Any] = field(default_factory=dict)
    loop: dict[str, Any] = field(default_factory=dict)  # the retrain in flight and the last ones (loop.LoopState)
    history: list[dict[str, Any]] = field(default_factory=list)
    seen_batches: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    restarts: int = 0


class MonitorCore:
    def __init__(
        self,
        config: MonitoringConfig,
        model_name: str,
        reference: Reference,
        root: str,
        *,
        clock: Callable[[], float] = time.time,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.config = config
        self._config_dump = config.model_dump(mode="json")  # saved with every state (it never changes)
        self.model_name = model_name
        self.reference = reference
        self.clock = clock
        self.on_event = on_event or (lambda event, fields: None)
        self.fs, root_path = open_filesystem(root)
        self.state_dir = paths.monitor_state_dir(root_path, model_name)
        self.fs.create_dir(self.state_dir, recursive=True)
        self.log = InferenceLog(paths.inference_log_root(root, model_name))
        self.detector = self._detector(reference)
        self.label_detector = self._label_detector(reference)
        self.state = _State(
            reference_version=reference.version,
            task=reference.task.model_dump(mode="json"),
            interval_half_width=reference.interval_half_width,
        )
        self.pending: OrderedDict[str, _Pending] = OrderedDict()
        self._seen: set[str] = set()
        self.last_report: DriftReport | None = None
        self._dirty = False
        self.last_label_lags: list[float] = []  # lags of the last label batch (for the lag histogram)

    def _detector(self, reference: Reference) -> DriftDetector:
        c = self.config
        return DriftDetector(
            reference.profile,
            alpha=c.p_value,
            numeric_tests=c.numeric_tests,
            min_psi=c.min_psi,
            prediction_share=c.prediction_share,
        )

    def _label_detector(self, reference: Reference) -> DriftDetector | None:
        return label_detector(reference.profile, reference.task.classes, alpha=self.config.p_value)

    # ---- persistence ------------------------------------------------------------------------
    @property
    def state_path(self) -> str:
        return f"{self.state_dir}/state.json"

    def save(self) -> None:
        self._dirty = False
        # with the settings it runs with: `rayloop status` reads this file, not the actor's config;
        # pydantic-core's serializer, several times faster than json.dumps on a state this size
        payload = to_json(
            {"format": STATE_FORMAT, **self.state.__dict__, "monitoring": self._config_dump}, fallback=float
        )
        tmp = f"{self.state_dir}/.state.{uuid.uuid4().hex}.tmp"
        with self.fs.open_output_stream(tmp) as sink:
            sink.write(payload)
        self.fs.move(tmp, self.state_path)

    @classmethod
    def read_state(cls, root: str, model_name: str) -> dict[str, Any] | None:
        """The saved state as plain data (for `rayloop status` when the actor is not running)."""
        fs, path = open_filesystem(root)
        target = f"{paths.monitor_state_dir(path, model_name)}/state.json"
        try:
            with fs.open_input_stream(target) as source:
                return json.loads(source.read())
        except FileNotFoundError:
            return None

    @classmethod
    def open(
        cls,
        config: MonitoringConfig,
        model_name: str,
        root: str,
        load_reference: Callable[[str | None], Reference],
        **kwargs: Any,
    ) -> MonitorCore:
        """A fresh monitor, or the one saved under `root` brought back to where it was."""
        saved = cls.read_state(root, model_name)
        reference = load_reference(saved["reference_version"] if saved else None)
        core = cls(config, model_name, reference, root, **kwargs)
        if saved:
            saved.pop("format", None)
            known = set(_State.__dataclass_fields__)
            core.state = _State(**{k: v for k, v in saved.items() if k in known})
            core.state.restarts += 1
        core._seen = set(core.state.seen_batches)
        core._recover()
        return core

    def _recover(self) -> None:
        """Replay written-ahead batches the saved state has not applied; rebuild the join index."""
        predictions = self.log.predictions.recover()
        labels = self.log.labels.recover()
        self._rebuild_index(skip_label_batches={b for b, _ in labels if b not in self._seen})
        for batch_id, table in predictions:
            if batch_id not in self._seen:
                self._apply_rows(batch_id, table, index=False)
        for batch_id, table in labels:
            if batch_id not in self._seen:
                self._apply_labels(batch_id, table)
        self.save()

    def _rebuild_index(self, skip_label_batches: set[str]) -> None:
        """The label join's index as it was: the newest `max_pending_labels` predictions (all it
        holds while running) and which of them have a label. Only the latest hours of the log are
        read: reading all of it made every restart slower and larger as the log grew."""
        rows = self.log.predictions.read_newest(
            ["request_id", "ts", "score", "predicted_label"], self.config.max_pending_labels
        )
        since_hour = None
        if rows.num_rows:
            rows = rows.slice(max(0, rows.num_rows - self.config.max_pending_labels))
            self._index(rows)
            since_hour = labels_from(int(epoch_hours(rows.column("ts").slice(0, 1))[0]))
        labeled = self.log.labels.read(["request_id"], include_pending=False, since_hour=since_hour)
        ids = labeled.column("request_id").to_pylist() if labeled.num_rows else []
        for item in self.log.labels.pending:
            if item.batch_id in skip_label_batches:
                continue
            ids.extend(item.table.column("request_id").to_pylist())
        for rid in ids:
            entry = self.pending.get(rid)
            if entry is not None:
                entry.labeled = True

    # ---- served rows ------------------------------------------------------------------------
    def ingest(self, batch_id: str, table: pa.Table) -> dict[str, Any]:
        """Log one batch of sampled rows (durably, first), then count it into windows."""
        if batch_id in self._seen:
            return {"accepted": 0, "duplicate_batch": True, "windows": []}
        missing = [c for c in PREDICTION_COLUMNS if c not in table.column_names]
        if missing:
            raise ValueError(
                f"batch {batch_id}: columns {missing} are missing (need {list(PREDICTION_COLUMNS)} and the features)"
            )
        self.log.predictions.append(batch_id, table)
        closed = self._apply_rows(batch_id, table, index=True)
        if closed:
            self.save()  # a closed window has emitted its events: never replay it
        else:
            self._dirty = True  # the write-ahead copy covers it until the next save
        return {"accepted": table.num_rows, "duplicate_batch": False, "windows": [w.to_dict() for w in closed]}

    def _remember(self, batch_id: str) -> None:
        self._seen.add(batch_id)
        self.state.seen_batches.append(batch_id)
        if len(self.state.seen_batches) > SEEN_BATCHES:
            dropped = self.state.seen_batches[:-SEEN_BATCHES]
            self.state.seen_batches = self.state.seen_batches[-SEEN_BATCHES:]
            self._seen.difference_update(dropped)

    def _apply_rows(self, batch_id: str, table: pa.Table, *, index: bool) -> list[WindowSummary]:
        self._remember(batch_id)
        n = table.num_rows
        if n == 0:
            return []
        s = self.state
        s.rows_received += n
        for version, count in rows_by_version(table).items():
            s.rows_by_version[version] = s.rows_by_version.get(version, 0) + count
        s.serving_version = str(table.column("model_version")[n - 1].as_py())
        if index:
            self._index(table)
        closed = []
        offset = 0
        while offset < n:
            room = self.config.window_size - s.window["rows"]
            piece = table.slice(offset, room)
            offset += piece.num_rows
            if s.window_start is None:
                s.window_start = _seconds(piece.column("ts")[0])
            counts = WindowCounts.from_dict(s.window) + self.detector.count(piece, self._outputs(piece))
            s.window = counts.to_dict()
            if counts.rows >= self.config.window_size:
                closed.append(self._close_window(counts, end=_seconds(piece.column("ts")[piece.num_rows - 1])))
        return closed

    def _outputs(self, table: pa.Table) -> dict[str, np.ndarray]:
        """The model's outputs in a batch, by the drift detector's pseudo-feature names."""
        score = table.column("score").to_numpy(zero_copy_only=False)
        task = self.reference.task
        if task.kind != "multiclass":
            return {PREDICTION: score}
        outputs: dict[str, Any] = {}
        for code, name in enumerate(task.classes):
            column = f"p_{code}"
            if column in table.column_names:
                outputs[f"{PREDICTION}.{name}"] = table.column(column).to_numpy(zero_copy_only=False)
        codes = table.column("predicted_label").to_numpy(zero_copy_only=False)
        outputs[PREDICTED_CLASS] = [str(task.classes[int(c)]) if 0 <= c < task.n_classes else "?" for c in codes]
        return outputs

    def _index(self, table: pa.Table) -> None:
        ts = _epoch_seconds(table.column("ts"))
        use_code = self.reference.task.kind == "multiclass"
        for rid, t, score, code in zip(
            table.column("request_id").to_pylist(),
            ts,
            table.column("score").to_pylist(),
            table.column("predicted_label").to_pylist(),
        ):
            self.pending[rid] = _Pending(float(t), float(code if use_code else score))
        while len(self.pending) > self.config.max_pending_labels:
            self.pending.popitem(last=False)

    def _close_window(self, counts: WindowCounts, end: float) -> WindowSummary:
        s = self.state
        report = self.detector.test(counts)
        self.last_report = report
        live, n_live = self.live_quality()
        summary = WindowSummary(
            window=s.windows_seen,
            start=float(s.window_start or end),
            end=end,
            rows=counts.rows,
            alarm=report.alarm,
            drifted=report.drifted,
            scores={f.name: {"psi": round(f.psi, 5), "js": round(f.js, 5), "p": f.p_min} for f in report.features},
            live_metric=live,
            live_labels=n_live,
            reference_version=self.reference.version,
        )
        if report.alarm:
            s.alarms += 1
            for name in report.drifted:
                s.alarms_by_feature[name] = s.alarms_by_feature.get(name, 0) + 1
            self.on_event(
                "drift_alarm",
                {
                    "model": self.model_name,
                    "version": self.reference.version,
                    "window": summary.window,
                    "rows": summary.rows,
                    "features": report.drifted,
                    "psi": {name: summary.scores[name]["psi"] for name in report.drifted},
                    "p_adjusted": {name: summary.scores[name]["p"] for name in report.drifted},
                },
            )
        observation = policy.Observation(
            window=summary.window,
            time=end,
            drift_alarm=report.alarm,
            drifted_features=report.drifted,
            drift_scores={name: summary.scores[name]["psi"] for name in report.drifted},
            live_metric=live,
            live_labels=n_live,
            live_metric_se=self.live_quality_se() if live is not None else None,
            reference_metric=self.reference.metrics.get(self.quality_metric),
            metric=self.quality_metric,
        )
        state, decision = policy.decide(self.policy_state, observation, self.config)
        s.policy = state.model_dump(mode="json")
        if decision.audit_event is not None:
            summary.decision = decision.model_dump(mode="json")
            self.on_event(
                decision.audit_event,
                {"model": self.model_name, "version": self.reference.version, **decision.audit_fields()},
            )
        s.history = [*s.history, summary.to_dict()][-HISTORY:]
        s.windows_seen += 1
        s.window = {"rows": 0, "bins": {}}
        s.window_start = None
        return summary

    # ---- labels -----------------------------------------------------------------------------
    def ingest_labels(self, batch_id: str, table: pa.Table) -> dict[str, int]:
        """Log one batch of labels (durably, first), then join them by request id."""
        if batch_id in self._seen:
            return {"duplicate_batch": 1}
        self.log.labels.append(batch_id, table)
        outcome = self._apply_labels(batch_id, table)
        self._dirty = True
        return outcome

    def _apply_labels(self, batch_id: str, table: pa.Table) -> dict[str, int]:
        self._remember(batch_id)
        s = self.state
        outcome = dict.fromkeys(LABEL_OUTCOMES, 0)
        received = _epoch_seconds(table.column("label_ts"))
        values = label_values(self.reference.task, table.column("label"))
        lags = []
        arrived = []  # labels of rows the reference model served: the label window's
        for rid, label, at in zip(table.column("request_id").to_pylist(), values, received):
            entry = self.pending.get(rid)
            if entry is None:
                kind = "unknown"
            elif entry.labeled:
                kind = "duplicate"
            else:
                entry.labeled = True
                lag = max(0.0, float(at) - entry.ts)
                if lag > self.config.label_horizon_s:
                    kind = "late"  # logged for retraining; too old to describe the model serving now
                else:
                    kind = "joined"
                    lags.append(lag)
                    if entry.ts >= s.reference_since and not math.isnan(label):  # the model compared with now
                        s.quality_pairs.append([entry.value, float(label)])
                        arrived.append(float(label))
            outcome[kind] += 1
        for kind, count in outcome.items():
            s.labels[kind] = s.labels.get(kind, 0) + count
        keep = max(self.config.window_size, self.config.min_labels)
        s.quality_pairs = s.quality_pairs[-keep:]
        s.label_lag_s = [*s.label_lag_s, *lags][-1000:]
        self.last_label_lags = lags
        if arrived:
            self._count_labels(arrived)
        return outcome

    def _count_labels(self, labels: list[float]) -> None:
        """Add joined labels to the label window; test it once it holds `window_size` labels."""
        if self.label_detector is None:
            return
        task, s = self.reference.task, self.state
        values = labels if task.kind == "regression" else [str(task.classes[int(code)]) for code in labels]
        counts = WindowCounts.from_dict(s.label_window) + self.label_detector.count(
            pa.table({LABEL: pa.nulls(len(values))}), {LABEL: values}
        )
        if counts.rows < self.config.window_size:
            s.label_window = counts.to_dict()
            return
        found = self.label_detector.test(counts).feature(LABEL)
        s.label_drift = {
            "window": s.label_windows_seen,
            "end": self.clock(),
            "reference_version": self.reference.version,
            **found.to_dict(),
            "p": found.p_min,
        }
        s.label_windows_seen += 1
        s.label_window = {"rows": 0, "bins": {}}
        if found.drifted:
            self.on_event(
                "label_drift",
                {
                    "model": self.model_name,
                    "version": self.reference.version,
                    "window": s.label_drift["window"],
                    "labels": found.n,
                    "psi": round(found.psi, 5),
                    "p_adjusted": found.p_min,
                },
            )

    @property
    def quality_metric(self) -> str:
        """`monitoring.quality_metric`, or the task's default live metric."""
        return self.reference.task.check_metric(self.config.quality_metric, "live")

    def live_quality(self) -> tuple[float | None, int]:
        """The configured metric over the most recent joined labels, once there are min_labels."""
        return self.live_metrics()[self.quality_metric], len(self.state.quality_pairs)

    def live_quality_se(self) -> float | None:
        """The configured live metric's standard error (a seeded bootstrap of the joined labels)."""
        return live_metric_se(
            self.reference.task,
            self.state.quality_pairs,
            self.quality_metric,
            self.config.min_labels,
            self.reference.interval_half_width,
        )

    def live_metrics(self) -> dict[str, float | None]:
        return live_metrics(
            self.reference.task, self.state.quality_pairs, self.config.min_labels, self.reference.interval_half_width
        )

    def labelled_since(self, since: float) -> int:
        """Served rows at or after `since` whose label has arrived: the retrain window's supply."""
        return sum(1 for entry in self.pending.values() if entry.labeled and entry.ts >= since)

    # ---- policy hand-off (the retrain submitter calls these) --------------------------------
    @property
    def policy_state(self) -> policy.PolicyState:
        return policy.PolicyState.model_validate(self.state.policy) if self.state.policy else policy.PolicyState()

    def take_decision(self) -> dict[str, Any] | None:
        state, decision = policy.take_pending(self.policy_state)
        self.state.policy = state.model_dump(mode="json")
        self.save()
        return decision.model_dump(mode="json") if decision else None

    def retrain_started(self, job_id: str) -> None:
        self.state.policy = policy.retrain_started(self.policy_state, job_id, self.clock()).model_dump(mode="json")
        self.save()

    def retrain_finished(self, job_id: str) -> None:
        self.state.policy = policy.retrain_finished(self.policy_state, job_id).model_dump(mode="json")
        self.save()

    def rebase(self, reference: Reference) -> None:
        """Compare from now on with another version's profile (after a promotion); the open window restarts."""
        self.reference = reference
        self.detector = self._detector(reference)
        self.label_detector = self._label_detector(reference)
        self.state.reference_version = reference.version
        self.state.task = reference.task.model_dump(mode="json")
        self.state.interval_half_width = reference.interval_half_width
        self.state.reference_since = self.clock()
        self.state.window = {"rows": 0, "bins": {}}
        self.state.window_start = None
        self.state.label_window = {"rows": 0, "bins": {}}
        # drift streaks and live quality measured the previous model against the previous reference
        self.state.quality_pairs = []
        self.state.policy = policy.reset_streak(self.policy_state).model_dump(mode="json")
        self.save()

    # ---- housekeeping -----------------------------------------------------------------------
    def persist(self) -> None:
        """Save the state if batches were applied since the last save."""
        if self._dirty:
            self.save()

    def tick(self) -> int:
        """Save, then compact the inference log when due (by rows or age); returns rows written.

        The state is saved first: a written-ahead batch may be deleted only once the saved state
        includes it, since after a restart only the write-ahead files are replayed.
        """
        self.persist()
        c = self.config
        return self.log.flush_due(c.flush_rows, c.flush_interval_s)

    def flush(self) -> int:
        self.persist()
        return self.log.flush()

    def summary(self) -> dict[str, Any]:
        summary = summarize_state(self.model_name, self.state.__dict__, self.config)
        summary["reference_metrics"] = {
            k: self.reference.metrics.get(k) for k in LIVE_METRICS[self.reference.task.kind]
        }
        summary["log_rows_pending"] = {name: stream.pending_rows for name, stream in self.log.streams.items()}
        return summary

    def history(self, limit: int = 50) -> list[dict[str, Any]]:
        return self.state.history[-limit:]


def label_values(task: Task, labels: pa.ChunkedArray | pa.Array) -> list[float]:
    """Labels as the numbers live quality compares: class codes, or values (regression); NaN for a
    label the task cannot read (a class the reference model does not know)."""
    array = labels.combine_chunks() if isinstance(labels, pa.ChunkedArray) else labels
    if task.kind == "regression":
        return [math.nan if v is None else float(v) for v in array.cast(pa.float64()).to_pylist()]
    try:
        return [float(c) for c in task.encode(array)]
    except LabelError:  # one unknown label in the batch: read them one by one
        out = []
        for value in array.to_pylist():
            try:
                out.append(float(task.encode([value])[0]))
            except LabelError:
                out.append(math.nan)
        return out


def live_metrics(
    task: Task, pairs: list[list[float]] | np.ndarray, min_labels: int, interval_half_width: float | None = None
) -> dict[str, float | None]:
    """The task's live metrics over joined pairs (rayloop.tasks.LIVE_METRICS: binary AUC and
    accuracy from (P(positive), label); multiclass accuracy and macro-F1 from (predicted code,
    code); regression MAE, RMSE and interval coverage from (prediction, value)); None until there
    are min_labels."""
    names = LIVE_METRICS[task.kind]
    if len(pairs) < min_labels:
        return dict.fromkeys(names)
    arr = np.asarray(pairs, dtype=np.float64)
    predicted, actual = arr[:, 0], arr[:, 1]
    if task.kind == "binary":
        auc = roc_auc(actual, predicted)
        return {"auc": None if math.isnan(auc) else float(auc), "accuracy": float(accuracy(actual, predicted))}
    if task.kind == "multiclass":
        return {
            "accuracy": float(np.mean(predicted == actual)),
            "macro_f1": macro_f1_codes(actual.astype(np.int64), predicted.astype(np.int64), task.n_classes),
        }
    coverage = None
    if interval_half_width is not None:
        coverage = float(np.mean(np.abs(actual - predicted) <= interval_half_width))
    return {"mae": mae(actual, predicted), "rmse": rmse(actual, predicted), "interval_coverage": coverage}


def live_metric_se(
    task: Task,
    pairs: list[list[float]] | np.ndarray,
    metric: str,
    min_labels: int,
    interval_half_width: float | None = None,
    resamples: int = 200,
    seed: int = 0,
) -> float | None:
    """The standard error of one live metric over `pairs`: the spread of the metric over seeded
    bootstrap resamples of the pairs; None until there are min_labels (or when it is undefined)."""
    if len(pairs) < max(min_labels, 2):
        return None
    arr = np.asarray(pairs, dtype=np.float64)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        value = live_metrics(task, arr[rng.integers(0, len(arr), len(arr))], 0, interval_half_width)[metric]
        if value is not None and not math.isnan(value):
            values.append(value)
    return float(np.std(values, ddof=1)) if len(values) > 1 else None


# ---- stopped on purpose ----------------------------------------------------------------------
# `rayloop monitor --stop` leaves a mark beside the monitor's state, where whatever keeps a monitor
# running (the RayService's keeper app) looks before starting one again; an explicit start clears it.
def _stop_mark_path(root: str, model_name: str) -> tuple[Any, str]:
    fs, path = open_filesystem(root)
    return fs, f"{paths.monitor_state_dir(path, model_name)}/{STOP_MARK}"


def write_stop_mark(root: str, model_name: str, **fields: Any) -> dict[str, Any]:
    """Record that the model's monitor was stopped on purpose (when, by what), for keepers to honour."""
    fs, target = _stop_mark_path(root, model_name)
    fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
    mark = {"stopped_at": time.time(), **fields}
    with fs.open_output_stream(target) as sink:
        sink.write(json.dumps(mark).encode())
    return mark


def read_stop_mark(root: str, model_name: str) -> dict[str, Any] | None:
    """The mark of a monitor stopped on purpose, or None."""
    fs, target = _stop_mark_path(root, model_name)
    try:
        with fs.open_input_stream(target) as source:
            return json.loads(source.read())
    except FileNotFoundError:
        return None


def clear_stop_mark(root: str, model_name: str) -> bool:
    """Forget the mark (a monitor is being started on purpose); whether there was one."""
    fs, target = _stop_mark_path(root, model_name)
    try:
        fs.delete_file(target)
    except FileNotFoundError:
        return False
    return True


def summarize_state(model_name: str, state: dict[str, Any], config: MonitoringConfig) -> dict[str, Any]:
    """What `rayloop status` shows, from the live actor's state or the one saved on disk (whose
    monitoring settings win over `config`: they are the ones the running monitor uses)."""
    if state.get("monitoring"):
        config = MonitoringConfig.model_validate(state["monitoring"])
    task = Task.model_validate(state["task"]) if state.get("task") else _BINARY
    pol = policy.PolicyState.model_validate(state["policy"]) if state.get("policy") else policy.PolicyState()
    lags = state.get("label_lag_s") or []
    return {
        "model": model_name,
        "reference_version": state["reference_version"],
        "serving_version": state.get("serving_version"),
        "windows_seen": state["windows_seen"],
        "open_window_rows": state["window"]["rows"],
        "window_size": config.window_size,
        "rows_received": state["rows_received"],
        "alarms": state["alarms"],
        "alarms_by_feature": state["alarms_by_feature"],
        "labels": state["labels"],
        "live_labels": len(state["quality_pairs"]),
        "task": task.kind,
        "live": live_metrics(task, state["quality_pairs"], config.min_labels, state.get("interval_half_width")),
        "label_lag_p50_s": float(np.median(lags)) if lags else None,
        "label_drift": state.get("label_drift"),
        "last_window": state["history"][-1] if state["history"] else None,
        "pending_decision": pol.pending.model_dump(mode="json") if pol.pending else None,
        "in_flight": pol.in_flight,
        "decisions": pol.decisions,
        "suppressed": pol.suppressed,
        "retrain": state.get("loop") or {},
        "restarts": state["restarts"],
        "started": datetime.fromtimestamp(state["started"], tz=timezone.utc).isoformat(timespec="seconds"),
    }


def rows_by_version(table: pa.Table) -> dict[str, int]:
    """Rows per model version in a batch of served rows."""
    counts = pc.value_counts(table.column("model_version")).to_pylist()
    return {str(item["values"]): int(item["counts"]) for item in counts}


def _epoch_seconds(column: pa.ChunkedArray) -> list[float]:
    """Epoch seconds of a timestamp column (any unit or zone)."""
    return pc.divide(pc.cast(pc.cast(column, pa.timestamp("ms")), pa.int64()), 1000.0).to_pylist()


def _seconds(value: pa.Scalar) -> float:
    ts = value.as_py()
    if isinstance(ts, datetime):
        return ts.timestamp()
    return float(ts)
