"""A traffic simulator for the Serve app (`rayloop traffic`): rows at a steady rate, their true
labels posted back after a delay, for every task.

Two sources of rows:
- synthetic (`task`: binary, multiclass or regression), switching to a drift scenario at a
  chosen time;
- a real table (`source`: Parquet or CSV), replayed once in time order (its timestamp column, or
  `order_by` any column to make it drift along that column), so a user can backtest the loop on
  their own data: the label column is held back and posted as feedback after the delay.

Open loop: requests leave on schedule whatever the server does (a slow server gets a queue of
in-flight requests, up to `concurrency`, and then the simulator counts what it could not send as
`skipped`), so throughput and errors describe the server, not the client. Every response is
recorded with its model version and how good it was (right or wrong for a class, the absolute
error for a value), so the loop's effect shows as quality per second and per version. No Ray
here: plain HTTP (httpx) and threads.
"""

from __future__ import annotations

import heapq
import math
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, model_validator

from rayloop.constants import DEFAULT_SERVE_TOKEN_ENV_VAR
from rayloop.data.io import inspect_source, read_table
from rayloop.data.schema import FeatureSchema
from rayloop.data.synthetic import LABEL_COLUMN, Scenario, generate
from rayloop.latency import percentile

__all__ = ["MAX_POOL_ROWS", "TrafficConfig", "TrafficStats", "replay_rows", "request_rows", "run_traffic"]

MAX_POOL_ROWS = 500_000
# what a resend may cure: no answer (0), a replica or node lost mid-request (500: Serve's HAProxy
# turns 502-504 into 500), the gateway's own errors and backpressure
RETRIABLE = frozenset({0, 500, 502, 503, 504})


class TrafficConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field("http://127.0.0.1:8000", description="the app's base URL")
    rate: float = Field(50.0, gt=0, description="requests per second")
    duration_s: float = Field(60.0, gt=0, description="seconds to send (a replayed table may end sooner)")
    rows_per_request: int = Field(1, ge=1)
    task: Literal["binary", "multiclass", "regression"] = Field(
        "binary", description="the synthetic rows' label (rayloop.data.synthetic)"
    )
    source: str | None = Field(None, description="a table to replay instead of synthetic rows (Parquet/CSV URI)")
    label_column: str = Field(LABEL_COLUMN, description="the replayed table's label, held back and posted as feedback")
    order_by: str | None = Field(
        None, description="replay ordered by this column (default: the timestamp column, else the file order)"
    )
    timestamp_column: str | None = Field("event_time", description="the replayed table's time, if it has one")
    drift_at_s: float | None = Field(
        None, ge=0, description="synthetic: switch to the drift scenario this many seconds in; replay: mark answers"
    )
    scenario: Scenario = Scenario(kind="covariate+concept", onset=0.0, magnitude=3.0)
    label_delay_s: float = Field(2.0, ge=0, description="a request's true label is posted this long after its answer")
    label_fraction: float = Field(1.0, ge=0, le=1, description="share of requests whose label arrives")
    concurrency: int = Field(64, ge=1, description="requests in flight at most")
    pool_rows: int = Field(
        20_000,
        ge=100,
        description="synthetic rows per phase at least; more when the run needs more (rows never repeat)",
    )
    seed: int = 11
    timeout_s: float = Field(10.0, gt=0)
    retries: int = Field(
        0,
        ge=0,
        description="resend a predict that got no answer or a 5xx up to this many times (a predict changes "
        "nothing on the server but its sampled log row, so a resend is safe)",
    )
    retry_backoff_s: float = Field(0.1, ge=0, description="wait before the first resend; doubles with each")
    keep_request_ids: bool = Field(False, description="keep every answered row's request id and time (fault tests)")
    token_env: str | None = Field(
        DEFAULT_SERVE_TOKEN_ENV_VAR, description="bearer token for the app, read from this variable"
    )

    @model_validator(mode="after")
    def _one_source(self) -> TrafficConfig:
        if self.order_by is not None and self.source is None:
            raise ValueError("order_by applies to a replayed table (source)")
        return self

    @property
    def regression(self) -> bool:
        return self.task == "regression"


@dataclass
class TrafficStats:
    started: float = field(default_factory=time.time)
    sent: int = 0
    skipped: int = 0
    statuses: Counter = field(default_factory=Counter)
    labels_posted: int = 0
    label_errors: int = 0
    resent: int = 0  # predicts sent again after no answer or a 5xx (retries > 0)
    recovered: int = 0  # requests answered only after a resend
    # (seconds since start, request id) of every answered row, with keep_request_ids
    answered_ids: list[tuple[float, str]] = field(default_factory=list)
    # accuracy of the answered classes, or the mean absolute error of answered values (regression)
    metric: Literal["accuracy", "mae"] = "accuracy"
    # one entry per answered request: [seconds since start, latency ms, version, right answers or the
    # sum of absolute errors, rows, drift]
    answers: list[list[Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status != 200)

    @property
    def higher_is_better(self) -> bool:
        return self.metric == "accuracy"

    def timeline(self, bucket_s: float = 5.0) -> list[dict[str, Any]]:
        """Per bucket: requests, errors, p99 latency, quality and the versions that answered."""
        buckets: dict[int, list[list[Any]]] = {}
        with self.lock:
            for answer in self.answers:
                buckets.setdefault(int(answer[0] // bucket_s), []).append(answer)
        out = []
        for key in sorted(buckets):
            rows = buckets[key]
            latencies = sorted(a[1] for a in rows)
            score, total = sum(a[3] for a in rows), sum(a[4] for a in rows)
            out.append(
                {
                    "t": key * bucket_s,
                    "answers": len(rows),
                    "p99_ms": percentile(latencies, 99),
                    "quality": score / total if total else None,
                    "versions": dict(Counter(a[2] for a in rows)),
                    "drift": any(a[5] for a in rows),
                }
            )
        return out

    def quality(self, *, version: str | None = None, drift: bool | None = None, after_s: float = 0.0) -> float | None:
        """The `metric` (accuracy, or MAE for a regression) of the answers that match; None when none do."""
        with self.lock:
            rows = [
                a
                for a in self.answers
                if (version is None or a[2] == version) and (drift is None or a[5] == drift) and a[0] >= after_s
            ]
        total = sum(a[4] for a in rows)
        return sum(a[3] for a in rows) / total if total else None

    def summary(self) -> dict[str, Any]:
        with self.lock:
            latencies = sorted(a[1] for a in self.answers)
            versions = dict(Counter(a[2] for a in self.answers))
        return {
            "sent": self.sent,
            "skipped": self.skipped,
            "statuses": {str(k): v for k, v in self.statuses.items()},
            "errors": self.errors,
            "resent": self.resent,
            "recovered": self.recovered,
            "labels_posted": self.labels_posted,
            "label_errors": self.label_errors,
            "metric": self.metric,
            "p50_ms": percentile(latencies, 50),
            "p99_ms": percentile(latencies, 99),
            "versions": versions,
            # per version: a backtest's before and after, in the order the versions first answered
            "quality_by_version": {v: self.quality(version=v) for v in versions},
        }


def request_rows(
    table: pa.Table, label: str = LABEL_COLUMN, drop: tuple[str, ...] = ("entity_id",)
) -> tuple[list[dict], list[Any]]:
    """Rows as JSON request records (timestamps as ISO strings, the label held back) and their labels."""
    labels = table.column(label).to_pylist()
    records = table.drop_columns([c for c in (label, *drop) if c in table.column_names]).to_pylist()
    for record in records:
        for key, value in record.items():
            if hasattr(value, "isoformat"):
                record[key] = value.isoformat()
            elif isinstance(value, float) and math.isnan(value):
                record[key] = None
    return records, labels


def replay_rows(config: TrafficConfig) -> tuple[list[dict], list[Any], bool]:
    """A real table's rows in replay order, typed as its inferred schema (CSV text becomes numbers),
    rows without a label left out; and whether the labels are numbers (a regression)."""
    assert config.source is not None
    info = inspect_source(config.source)
    table = read_table(info)
    if config.label_column not in table.column_names:
        raise ValueError(f"the replayed table has no label column {config.label_column!r}: {table.column_names}")
    typed, _ = FeatureSchema.infer(info.schema).validate(table, source=config.source)
    typed = typed.filter(pc.is_valid(typed.column(config.label_column)))
    order = config.order_by or (config.timestamp_column if config.timestamp_column in typed.column_names else None)
    if order is not None:
        if order not in typed.column_names:
            raise ValueError(f"order_by={order!r} is not a column of the replayed table: {typed.column_names}")
        typed = typed.sort_by([(order, "ascending")])
    label_type = typed.schema.field(config.label_column).type
    numeric = pa.types.is_floating(label_type)
    records, labels = request_rows(typed, config.label_column, drop=())
    return records, labels, numeric


def _shuffled(table: pa.Table, seed: int) -> pa.Table:
    # generated rows come in event-time order; live traffic is a mix at every moment (else a window
    # of consecutive rows would cover a few hours of the month and its time features would "drift")
    return table.take(np.random.default_rng(seed).permutation(table.num_rows))


def _served_task(client) -> str | None:
    """The served model's task from `GET /v1/model`; None when the app does not answer (yet)."""
    import httpx

    try:
        response = client.get("/v1/model")
        return response.json().get("task") if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


def _judge(predictions: list[dict], labels: list[Any], regression: bool) -> float:
    """Right answers (classes), or the sum of absolute errors (values)."""
    if regression:
        return float(sum(abs(float(p["prediction"]) - float(y)) for p, y in zip(predictions, labels)))
    return float(sum(int(p["label"] == y) for p, y in zip(predictions, labels)))


def run_traffic(
    config: TrafficConfig,
    *,
    stop: threading.Event | None = None,
    on_second: Callable[[TrafficStats, float], None] | None = None,
    stats: TrafficStats | None = None,
) -> TrafficStats:
    """Send `config.rate` requests a second for `config.duration_s` (or until `stop` is set, or a
    replayed table runs out)."""
    import httpx

    stop = stop or threading.Event()
    n = config.rows_per_request
    if config.source is not None:
        records, labels, regression = replay_rows(config)
        clean = drifted = (records, labels)
        cycle = False  # each row once, in order
    else:
        regression = config.regression
        # rows never repeat within a run (up to MAX_POOL_ROWS): a row the model was retrained on
        # coming back would flatter the retrained model
        needed = int(config.rate * config.duration_s * n) + n + 1
        pool = min(max(config.pool_rows, needed), MAX_POOL_ROWS)
        clean = request_rows(_shuffled(generate(pool, config.seed, task=config.task), config.seed))
        scenario_rows = generate(pool, config.seed + 1, config.scenario, task=config.task)
        drifted = request_rows(_shuffled(scenario_rows, config.seed + 1))
        cycle = True
    token = os.environ.get(config.token_env) if config.token_env else None
    headers = {"authorization": f"Bearer {token}"} if token else {}
    client = httpx.Client(
        base_url=config.url,
        timeout=config.timeout_s,
        headers=headers,
        limits=httpx.Limits(max_connections=config.concurrency + 4),
    )
    served = _served_task(client)  # the model's own task, where the app answers, beats a guess
    if served is not None:
        regression = served == "regression"
    stats = stats or TrafficStats()
    stats.metric = "mae" if regression else "accuracy"
    due: list[tuple[float, str, Any]] = []  # (post at, request id, label)
    due_lock = threading.Lock()
    in_flight = threading.Semaphore(config.concurrency)
    done_sending = threading.Event()
    thinning = random.Random(config.seed)  # which labels arrive (label_fraction)

    def post(records: list[dict]) -> tuple[int, Any]:
        try:
            response = client.post("/v1/predict", json=records if len(records) > 1 else records[0])
            return response.status_code, response
        except httpx.HTTPError:
            return 0, None  # no answer: connection refused, reset or timed out

    def one(records: list[dict], labels: list[Any], is_drift: bool) -> None:
        try:
            sent_at = time.perf_counter()
            status, response = post(records)
            attempt = 0
            while status in RETRIABLE and attempt < config.retries and not stop.is_set():
                time.sleep(config.retry_backoff_s * 2**attempt)
                attempt += 1
                with stats.lock:
                    stats.resent += 1
                status, response = post(records)
            latency_ms = (time.perf_counter() - sent_at) * 1000
            with stats.lock:
                stats.statuses[status] += 1
                stats.recovered += attempt > 0 and status == 200
            if status != 200:
                return
            predictions = response.json()["predictions"]
            score = _judge(predictions, labels, regression)
            with stats.lock:
                if config.keep_request_ids:
                    now = time.time() - stats.started
                    stats.answered_ids.extend((now, p["request_id"]) for p in predictions)
                stats.answers.append(
                    [
                        time.time() - stats.started,
                        latency_ms,
                        predictions[0]["model_version"],
                        score,
                        len(predictions),
                        is_drift,
                    ]
                )
            with due_lock:
                for p, y in zip(predictions, labels):
                    if thinning.random() < config.label_fraction:
                        heapq.heappush(due, (time.time() + config.label_delay_s, p["request_id"], y))
        finally:
            in_flight.release()

    def post_labels() -> None:
        while not (done_sending.is_set() and not due):
            with due_lock:
                ready = []
                while due and due[0][0] <= time.time():
                    ready.append(heapq.heappop(due))
            for _, rid, y in ready:
                try:
                    ok = client.post("/v1/feedback", json={"request_id": rid, "label": y}).is_success  # 202
                except httpx.HTTPError:
                    ok = False
                with stats.lock:
                    stats.labels_posted += ok
                    stats.label_errors += not ok
            if not ready:
                time.sleep(0.05)
            if stop.is_set() and done_sending.is_set():
                break

    labeller = threading.Thread(target=post_labels, name="traffic-labels", daemon=True)
    labeller.start()
    executor = ThreadPoolExecutor(max_workers=config.concurrency, thread_name_prefix="traffic")
    start = time.perf_counter()
    interval = 1.0 / config.rate
    i = 0
    next_tick = 1.0
    try:
        while not stop.is_set():
            elapsed = time.perf_counter() - start
            if elapsed >= config.duration_s:
                break
            is_drift = config.drift_at_s is not None and elapsed >= config.drift_at_s
            records, labels = drifted if is_drift else clean
            if cycle:
                at = (i * n) % (len(records) - n)
            else:
                at = i * n
                if at >= len(records):
                    break  # the replayed table is done
            if in_flight.acquire(blocking=False):
                stats.sent += 1
                executor.submit(one, records[at : at + n], labels[at : at + n], is_drift)
            else:
                stats.skipped += 1
            i += 1
            if on_second is not None and elapsed >= next_tick:
                on_second(stats, elapsed)
                next_tick += 1.0
            time.sleep(max(0.0, start + i * interval - time.perf_counter()))
    finally:
        executor.shutdown(wait=True)
        done_sending.set()
        labeller.join(timeout=config.label_delay_s + 30)
        client.close()
    return stats
