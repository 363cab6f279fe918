"""Every metric rayloop exports: name, kind, tags and buckets in one place.

Metrics go through `ray.util.metrics`, so Ray's metrics agent exports them on each node's
metrics-export port with a `ray_` prefix (counters also get `_total`), and the Ray dashboard's
Grafana shows them. `MetricSpec` is plain data (unit-tested without Ray); `create` builds the
Ray object inside an actor or replica, where Ray is running.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "MONITOR",
    "MONITOR_SAMPLES",
    "BATCH_ROWS",
    "FEEDBACK",
    "LATENCY_MS",
    "MODEL_SWAPS",
    "MODEL_VERSION",
    "PARITY_FALLBACKS",
    "PREDICTIONS",
    "REQUESTS",
    "ROWS",
    "SERVING",
    "MetricSpec",
    "create",
    "exported_name",
]

LATENCY_BUCKETS_MS = [0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 75, 100, 150, 250, 500, 1000, 2500]
BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096]
PROBABILITY_BUCKETS = [0.05 * i for i in range(1, 20)]


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: Literal["counter", "gauge", "histogram"]
    description: str
    tags: tuple[str, ...] = ()
    boundaries: tuple[float, ...] = ()


# model_version on the request metrics: the version the replica served the request with (a
# request refused before a model was chosen gets the replica's current version, "none" before
# the first load), so dashboards split traffic, latency and batches by version across a rollout.
REQUESTS = MetricSpec(
    "rayloop_serve_requests",
    "counter",
    "HTTP requests answered, by route, status code and model version",
    ("route", "status", "model_version"),
)
LATENCY_MS = MetricSpec(
    "rayloop_serve_latency_ms",
    "histogram",
    "time in the replica from request to response",
    ("route", "model_version"),
    tuple(LATENCY_BUCKETS_MS),
)
ROWS = MetricSpec("rayloop_serve_rows", "counter", "rows scored", ("model_version",))
BATCH_ROWS = MetricSpec(
    "rayloop_serve_batch_rows",
    "histogram",
    "rows per model call (a batch of requests)",
    ("model_version",),
    tuple(BATCH_BUCKETS),
)
PREDICTIONS = MetricSpec(
    "rayloop_serve_prediction", "histogram", "predicted probabilities", ("model_version",), tuple(PROBABILITY_BUCKETS)
)
MODEL_VERSION = MetricSpec(
    "rayloop_serve_model_version",
    "gauge",
    "the registry version each replica serves (1 = serving)",
    ("model", "version"),
)
MODEL_SWAPS = MetricSpec("rayloop_serve_model_swaps", "counter", "hot swaps, by outcome", ("outcome",))
PARITY_FALLBACKS = MetricSpec(
    "rayloop_serve_parity_fallbacks",
    "counter",
    "optimized backends refused by the parity check or unavailable",
    ("backend", "reason"),
)
FEEDBACK = MetricSpec("rayloop_serve_feedback", "counter", "labels received on /v1/feedback", ("label",))

MONITOR_SAMPLES = MetricSpec(
    "rayloop_serve_monitor_samples",
    "counter",
    "served rows offered to the DriftMonitor: sent, or dropped because the replica's buffer was full",
    ("outcome",),
)

SERVING = (
    REQUESTS,
    LATENCY_MS,
    ROWS,
    BATCH_ROWS,
    PREDICTIONS,
    MODEL_VERSION,
    MODEL_SWAPS,
    PARITY_FALLBACKS,
    FEEDBACK,
    MONITOR_SAMPLES,
)

LAG_BUCKETS_S = [1, 5, 15, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600, 7 * 24 * 3600]

# per feature: the inputs, the model's outputs (prediction, prediction.<class>, predicted_class)
# and the arrived labels (label, tested in windows of labels of their own)
DRIFT_PSI = MetricSpec("rayloop_monitor_drift_psi", "gauge", "PSI of the last closed window, per feature", ("feature",))
DRIFT_JS = MetricSpec(
    "rayloop_monitor_drift_js", "gauge", "Jensen-Shannon distance of the last closed window, per feature", ("feature",)
)
DRIFT_P = MetricSpec(
    "rayloop_monitor_drift_p_adjusted",
    "gauge",
    "smallest Benjamini-Hochberg adjusted p-value of the feature's tests in the last window",
    ("feature",),
)
DRIFT_DRIFTED = MetricSpec(
    "rayloop_monitor_drift_drifted", "gauge", "1 when the feature drifted in the last closed window", ("feature",)
)
WINDOWS = MetricSpec("rayloop_monitor_windows", "counter", "closed drift windows, by alarm", ("alarm",))
ALARMS = MetricSpec("rayloop_monitor_drift_alarms", "counter", "drift alarms, per drifted feature", ("feature",))
LIVE_QUALITY = MetricSpec(
    "rayloop_monitor_live_quality",
    "gauge",
    "live metric over the latest joined labels, per the task's metrics (auc, accuracy, macro_f1, mae, rmse, "
    "interval_coverage)",
    ("metric",),
)
REFERENCE_QUALITY = MetricSpec(
    "rayloop_monitor_reference_quality", "gauge", "the reference version's test metric, per live metric", ("metric",)
)
LABELS = MetricSpec(
    "rayloop_monitor_labels",
    "counter",
    "labels received, by join outcome (joined, late, duplicate, unknown)",
    ("outcome",),
)
LABEL_LAG_S = MetricSpec(
    "rayloop_monitor_label_lag_s", "histogram", "seconds from prediction to its label", (), tuple(LAG_BUCKETS_S)
)
SAMPLES = MetricSpec(
    "rayloop_monitor_rows", "counter", "sampled rows the monitor logged and counted", ("model_version",)
)
SERVING_VERSION = MetricSpec(
    "rayloop_monitor_serving_version", "gauge", "1 for the version the latest samples came from", ("version",)
)
DECISIONS = MetricSpec(
    "rayloop_monitor_decisions",
    "counter",
    "retrain decisions raised or suppressed, with the trigger and the reason",
    ("action", "trigger", "suppressed_by"),
)
PENDING_DECISION = MetricSpec(
    "rayloop_monitor_pending_decision", "gauge", "1 while a raised retrain decision waits to be acted on"
)
OPEN_WINDOW_ROWS = MetricSpec("rayloop_monitor_open_window_rows", "gauge", "rows in the window being filled")
LOG_ROWS = MetricSpec(
    "rayloop_monitor_log_rows", "counter", "rows compacted into the inference log's Parquet files", ()
)
RETRAINS = MetricSpec(
    "rayloop_loop_retrains",
    "counter",
    "retrain jobs finished, by outcome (promoted, refused, failed, timed_out, submit_failed, rollout_failed)",
    ("outcome",),
)
RETRAIN_PHASE = MetricSpec(
    "rayloop_loop_retrain_phase",
    "gauge",
    "1 for the phase of the retrain in flight (waiting_labels, submitted, rolling_out); all 0 when idle",
    ("phase",),
)
RETRAIN_SECONDS = MetricSpec(
    "rayloop_loop_retrain_seconds",
    "histogram",
    "seconds from a retrain decision to its outcome, by outcome",
    ("outcome",),
    (10, 30, 60, 90, 120, 180, 300, 600, 1200, 3600),
)

MONITOR = (
    DRIFT_PSI,
    DRIFT_JS,
    DRIFT_P,
    DRIFT_DRIFTED,
    WINDOWS,
    ALARMS,
    LIVE_QUALITY,
    REFERENCE_QUALITY,
    LABELS,
    LABEL_LAG_S,
    SAMPLES,
    SERVING_VERSION,
    DECISIONS,
    PENDING_DECISION,
    OPEN_WINDOW_ROWS,
    LOG_ROWS,
    RETRAINS,
    RETRAIN_PHASE,
    RETRAIN_SECONDS,
)


def exported_name(spec: MetricSpec) -> str:
    """The name Prometheus sees at Ray's metrics export port."""
    return f"ray_{spec.name}" + ("_total" if spec.kind == "counter" else "")


def create(spec: MetricSpec) -> Any:
    from ray.util import metrics

    if spec.kind == "counter":
        return metrics.Counter(spec.name, description=spec.description, tag_keys=spec.tags)
    if spec.kind == "gauge":
        return metrics.Gauge(spec.name, description=spec.description, tag_keys=spec.tags)
    return metrics.Histogram(
        spec.name, description=spec.description, boundaries=list(spec.boundaries), tag_keys=spec.tags
    )
