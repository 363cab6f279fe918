"""The replica's side of monitoring: sample, buffer, send in batches, never block a request.

`offer` runs on the request path and only appends to a bounded in-memory buffer (or drops and
counts when it is full). A background task on the replica's event loop sends the buffer to the
DriftMonitor every `send_batch_rows` rows or `send_interval_s`, one batch at a time, each under
a fresh batch id. A batch is kept until the monitor acknowledges it (the monitor writes it
ahead before it answers), and is resent under the same id if the call fails, so a monitor
restart loses nothing that was accepted and counts nothing twice. Labels from /v1/feedback go
the same way; a full label buffer refuses (503) instead of dropping, so no label is lost silently.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from rayloop.monitoring.handle import get_monitor
from rayloop.monitoring.inference_log import label_table

__all__ = ["MonitorClient"]

log = logging.getLogger("ray.serve")
_TS = pa.timestamp("ms", tz="UTC")


@dataclass
class _Entry:
    schema: pa.Schema  # the logged columns of the model version that answered (its inputs, id, time)
    version: str
    ts_ms: int
    rows: list[dict[str, Any]]
    scores: list[float]  # P(positive), the predicted value, or the predicted class's probability
    predicted: list[int] | None  # class codes; None for a regression
    request_ids: list[str]
    class_scores: list[list[float]] | None = None  # a multiclass model's probabilities per row


class MonitorClient:
    def __init__(
        self,
        model_name: str,
        *,
        sample_rate: float,
        buffer_size: int,
        send_batch_rows: int,
        send_interval_s: float,
        on_count: Callable[[str, int], None] = lambda outcome, n: None,
        lookup: Callable[[str], Any] | None = None,
    ) -> None:
        self.model_name = model_name
        self.sample_rate = sample_rate
        self.buffer_size = buffer_size
        self.send_batch_rows = send_batch_rows
        self.send_interval_s = send_interval_s
        self.on_count = on_count
        self._lookup = lookup or get_monitor
        self._rows: deque[_Entry] = deque()
        self._buffered = 0
        self._labels: deque[tuple[str, Any, float]] = deque()
        self._random = random.Random()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._actor: Any = None
        self._next_lookup = 0.0
        self._last_send = 0.0
        self.sent = 0
        self.dropped = 0

    # ---- the request path ---------------------------------------------------------------------
    def offer(
        self,
        schema: pa.Schema,
        version: str,
        rows: Sequence[dict[str, Any]],
        scores: np.ndarray,
        request_ids: Sequence[str],
        predicted: Sequence[int] | None = None,
        class_scores: np.ndarray | None = None,
    ) -> None:
        """Sample rows into the buffer; drop (and count) what does not fit. Never waits."""
        self._ensure_task()
        taken: list[int] | None = None  # None: every row
        if self.sample_rate < 1.0:
            taken = [i for i in range(len(rows)) if self._random.random() < self.sample_rate]
            if not taken:
                return
        n = len(rows) if taken is None else len(taken)
        room = self.buffer_size - self._buffered
        if room < n:
            self.dropped += n - max(room, 0)
            self.on_count("dropped", n - max(room, 0))
            if room <= 0:
                return
            taken = (list(range(len(rows))) if taken is None else taken)[:room]
        score_list = np.asarray(scores, dtype=np.float64).tolist()
        classes = None if class_scores is None else np.asarray(class_scores, dtype=np.float64).tolist()
        if taken is not None:
            rows = [rows[i] for i in taken]
            score_list = [score_list[i] for i in taken]
            request_ids = [request_ids[i] for i in taken]
            predicted = None if predicted is None else [predicted[i] for i in taken]
            classes = None if classes is None else [classes[i] for i in taken]
        entry = _Entry(
            schema,
            version,
            int(time.time() * 1000),
            list(rows),
            score_list,
            None if predicted is None else [int(p) for p in predicted],
            list(request_ids),
            classes,
        )
        self._rows.append(entry)
        self._buffered += len(entry.rows)
        if self._buffered >= self.send_batch_rows and self._wake is not None:
            self._wake.set()

    def offer_label(self, request_id: str, label: Any) -> bool:
        """Queue one label (the task's type, already checked); False when the label buffer is full
        (the caller answers 503)."""
        self._ensure_task()
        if len(self._labels) >= self.buffer_size:
            return False
        self._labels.append((request_id, label, time.time()))
        return True

    # ---- the background sender ----------------------------------------------------------------
    def _ensure_task(self) -> None:
        if self._task is None or self._task.done():
            loop = asyncio.get_running_loop()
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._run())

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.send_interval_s)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                await self._send_rows()
                await self._send_labels()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the monitor is down or restarting: keep the batch, retry later
                log.warning(
                    "monitor unavailable (%s); %d rows and %d labels wait", exc, self._buffered, len(self._labels)
                )
                self._actor = None
                await asyncio.sleep(min(5.0, self.send_interval_s * 4))

    def _handle(self) -> Any:
        if self._actor is None and time.monotonic() >= self._next_lookup:
            self._actor = self._lookup(self.model_name)
            self._next_lookup = time.monotonic() + 2.0
        return self._actor

    async def _send_rows(self) -> None:
        """Full batches, plus whatever is buffered once per interval.

        Not everything that is buffered after each send: under steady load a few rows arrive
        during every round trip, and sending them at once made hundreds of tiny calls a second.
        """
        due = time.monotonic() - self._last_send >= self.send_interval_s
        while self._rows and (due or self._buffered >= self.send_batch_rows):
            due = False
            if self._handle() is None:
                return  # no monitor yet: the buffer fills, then drops and counts
            entries = self._take_same_schema()
            table = await asyncio.to_thread(_rows_table, entries)
            await self._deliver("ingest", table)
            self._last_send = time.monotonic()
            n = table.num_rows
            self._buffered -= n
            self.sent += n
            self.on_count("sent", n)

    def _take_same_schema(self) -> list[_Entry]:
        """Entries from the head of the buffer with one schema (a version change splits batches)."""
        first = self._rows[0]
        taken, rows = [], 0
        while self._rows and self._rows[0].schema is first.schema and rows < 4 * self.send_batch_rows:
            entry = self._rows.popleft()
            taken.append(entry)
            rows += len(entry.rows)
        return taken

    async def _send_labels(self) -> None:
        while self._labels:  # labels are few: everything queued, on every wake
            if self._handle() is None:
                return
            items = [self._labels.popleft() for _ in range(min(len(self._labels), 4 * self.send_batch_rows))]
            table = label_table([i[0] for i in items], [i[1] for i in items], [i[2] for i in items])
            await self._deliver("ingest_labels", table)

    async def _deliver(self, method: str, table: pa.Table) -> None:
        """Call the monitor's `method` under one fresh batch id until it acknowledges: the monitor
        writes the batch ahead before it answers and applies a batch id once, so resending after
        a failure (or across its restart) neither loses nor doubles rows."""
        batch_id = uuid.uuid4().hex
        while True:
            actor = self._handle()
            if actor is None:
                await asyncio.sleep(1.0)
                continue
            try:
                await getattr(actor, method).remote(batch_id, table)
                return
            except Exception as exc:
                log.warning("monitor %s failed (%s); resending batch %s", method, exc, batch_id)
                self._actor = None
                await asyncio.sleep(1.0)


def _rows_table(entries: list[_Entry]) -> pa.Table:
    schema = entries[0].schema
    rows = [row for e in entries for row in e.rows]
    table = pa.Table.from_pylist(rows, schema=schema)
    n = sum(len(e.rows) for e in entries)
    predicted = [p for e in entries for p in (e.predicted if e.predicted is not None else [None] * len(e.rows))]
    columns = {
        "request_id": pa.array([r for e in entries for r in e.request_ids], pa.string()),
        "ts": pa.array([e.ts_ms for e in entries for _ in e.rows], pa.int64()).cast(_TS),
        "model_version": pa.array([e.version for e in entries for _ in e.rows], pa.string()),
        "score": pa.array([p for e in entries for p in e.scores], pa.float64()),
        "predicted_label": pa.array(predicted, pa.int64()) if n else pa.array([], pa.int64()),
    }
    if entries[0].class_scores is not None:  # one schema per batch: every entry has them
        matrix = np.asarray([row for e in entries for row in (e.class_scores or [])], dtype=np.float64)
        for code in range(matrix.shape[1] if matrix.ndim == 2 else 0):
            columns[f"p_{code}"] = pa.array(matrix[:, code], pa.float64())
    for i, (name, values) in enumerate(columns.items()):
        table = table.add_column(i, name, values)
    return table
