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


REQUESTS = MetricSpec(
    "rayloop_serve_requests", "counter", "HTTP requests answered, by route and status code", ("route", "status")
)
LATENCY_MS = MetricSpec(
    "rayloop_serve_latency_ms", "histogram", "time in the replica from request to response", ("route",),
    tuple(LATENCY_BUCKETS_MS),
)
ROWS = MetricSpec("rayloop_serve_rows", "counter", "rows scored", ("model_version",))
BATCH_ROWS = MetricSpec(
    "rayloop_serve_batch_rows", "histogram", "rows per model call (a batch of requests)", (), tuple(BATCH_BUCKETS)
)
PREDICTIONS = MetricSpec(
    "rayloop_serve_prediction", "histogram", "predicted probabilities", ("model_version",), tuple(PROBABILITY_BUCKETS)
)
MODEL_VERSION = MetricSpec(
    "rayloop_serve_model_version", "gauge", "the registry version each replica serves (1 = serving)", ("model", "version")
)
MODEL_SWAPS = MetricSpec("rayloop_serve_model_swaps", "counter", "hot swaps, by outcome", ("outcome",))
PARITY_FALLBACKS = MetricSpec(
    "rayloop_serve_parity_fallbacks", "counter", "optimized backends refused by the parity check or unavailable",
    ("backend", "reason"),
)
FEEDBACK = MetricSpec("rayloop_serve_feedback", "counter", "labels received on /v1/feedback", ("label",))

SERVING = (REQUESTS, LATENCY_MS, ROWS, BATCH_ROWS, PREDICTIONS, MODEL_VERSION, MODEL_SWAPS, PARITY_FALLBACKS, FEEDBACK)


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
