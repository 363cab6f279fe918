"""The inference log: served rows, their predictions and their late labels as Parquet (no Ray).

Two streams, `predictions` (request id, time, model version, score, predicted class and the raw
features; rayloop.monitoring.core names the columns) and `labels` (request id, the label as the
task writes it, time received), each partitioned by the row's
date and hour (`date=YYYY-MM-DD/hour=HH/part-*.parquet`, Hive style, so Ray Data, pyarrow and
Spark read them as one table).

Nothing acknowledged is lost: `append` first writes the batch as one Arrow IPC file in the
stream's write-ahead folder (`_wal/`, by batch id) and only then returns. `flush` (by rows or by
age) compacts the write-ahead files into Parquet parts whose names derive from the batch ids,
then deletes them; a crash in between replays into the same part names, so a restart neither
loses nor duplicates rows. Works on any pyarrow filesystem (local, s3://, gs://).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

__all__ = ["STREAMS", "InferenceLog", "LogStream", "epoch_hours", "label_table", "labels_from", "open_filesystem"]

STREAMS = ("predictions", "labels")
TIME_COLUMN = {"predictions": "ts", "labels": "label_ts"}
_WAL = "_wal"
_TS = pa.timestamp("ms", tz="UTC")


def _dictionary_columns(schema: pa.Schema) -> list[str]:
    """Columns worth dictionary-encoding in a part: the strings (categories, model versions), not
    request ids (unique per row) and not numbers. Parquet's default tries a dictionary for every
    column, which writes slower and larger parts (benchmarks/README.md, monitoring)."""
    return [f.name for f in schema if pa.types.is_string(f.type) and f.name != "request_id"]


def open_filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local path or a URI such as s3://bucket/prefix."""
    if "://" not in uri:
        local = pafs.LocalFileSystem()
        return local, uri
    return pafs.FileSystem.from_uri(uri)


def label_table(
    request_ids: Iterable[str], labels: Iterable[object], received: Iterable[float] | None = None
) -> pa.Table:
    """A batch of labels: their type is the task's (a class value: int, string or bool; a number)."""
    ids = list(request_ids)
    times = list(received) if received is not None else [time.time()] * len(ids)
    return pa.table(
        {
            "request_id": pa.array(ids, pa.string()),
            "label": pa.array(list(labels)),
            "label_ts": pa.array([int(t * 1000) for t in times], pa.int64()).cast(_TS),
        }
    )


@dataclass
class _Pending:
    batch_id: str
    path: str
    rows: int
    written: float
    table: pa.Table  # the batch as written (or read back after a restart), held until compaction


class LogStream:
    """One append-only stream: write-ahead files, compacted into date/hour Parquet parts."""

    def __init__(self, fs: pafs.FileSystem, root: str, name: str, time_column: str) -> None:
        self.fs, self.root, self.name, self.time_column = fs, root.rstrip("/"), name, time_column
        self.dir = f"{self.root}/{name}"
        self.wal = f"{self.dir}/{_WAL}"
        self.fs.create_dir(self.wal, recursive=True)
        self.pending: list[_Pending] = []
        self.rows_written = 0  # rows compacted into Parquet by this process

    # ---- write-ahead ------------------------------------------------------------------------
    def append(self, batch_id: str, table: pa.Table) -> bool:
        """Persist one batch before acknowledging it; False when that batch id is already here."""
        safe = _safe_id(batch_id)
        path = f"{self.wal}/{safe}.arrow"
        if any(p.batch_id == batch_id for p in self.pending):
            return False
        tmp = f"{self.wal}/.{safe}.{uuid.uuid4().hex}.tmp"
        with self.fs.open_output_stream(tmp) as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        self.fs.move(tmp, path)
        # kept in memory too: compaction then never reads back what was just written
        self.pending.append(_Pending(batch_id, path, table.num_rows, time.time(), table))
        return True

    def recover(self) -> list[tuple[str, pa.Table]]:
        """Batches written ahead but not yet compacted (after a restart): (batch id, table), oldest first."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.wal, allow_not_found=True))
        found = []
        for info in infos:
            if info.type != pafs.FileType.File:
                continue
            if info.base_name.startswith("."):  # a write that never finished: it was never acknowledged
                self.fs.delete_file(info.path)
                continue
            if not info.base_name.endswith(".arrow"):
                continue
            with self.fs.open_input_file(info.path) as source:
                table = pa.ipc.open_file(source).read_all()
            batch_id = _unsafe_id(info.base_name[: -len(".arrow")])
            mtime = info.mtime.timestamp() if info.mtime else time.time()
            found.append((mtime, batch_id, info.path, table))
        found.sort(key=lambda item: (item[0], item[1]))
        self.pending = [_Pending(b, p, t.num_rows, m, t) for m, b, p, t in found]
        return [(b, t) for _, b, _, t in found]

    @property
    def pending_rows(self) -> int:
        return sum(p.rows for p in self.pending)

    def due(self, max_rows: int, max_age_s: float, now: float | None = None) -> bool:
        if not self.pending:
            return False
        now = time.time() if now is None else now
        return self.pending_rows >= max_rows or now - min(p.written for p in self.pending) >= max_age_s

    # ---- compaction -------------------------------------------------------------------------
    def flush(self) -> int:
        """Compact every write-ahead batch into Parquet parts; returns the rows written."""
        if not self.pending:
            return 0
        batches = list(self.pending)
        tables = [item.table for item in batches]
        table = pa.concat_tables(tables, promote_options="permissive")
        part = hashlib.sha256("\n".join(p.batch_id for p in batches).encode()).hexdigest()[:20]
        hours = epoch_hours(table.column(self.time_column))
        unique = np.unique(hours).tolist()
        for hour in unique:
            piece = table if len(unique) == 1 else table.filter(pa.array(hours == hour))
            folder = f"{self.dir}/{_partition(hour)}"
            self.fs.create_dir(folder, recursive=True)
            tmp = f"{folder}/.part-{part}.{uuid.uuid4().hex}.tmp"
            with self.fs.open_output_stream(tmp) as sink:
                pq.write_table(piece, sink, use_dictionary=_dictionary_columns(piece.schema))
            self.fs.move(tmp, f"{folder}/part-{part}.parquet")  # the same name again after a replay
        for item in batches:
            self.fs.delete_file(item.path)
        self.pending = [p for p in self.pending if p not in batches]
        self.rows_written += table.num_rows
        return table.num_rows

    # ---- reading ----------------------------------------------------------------------------
    def files(self) -> list[str]:
        infos = self.fs.get_file_info(pafs.FileSelector(self.dir, recursive=True, allow_not_found=True))
        return sorted(
            i.path
            for i in infos
            if i.type == pafs.FileType.File and i.base_name.startswith("part-") and i.base_name.endswith(".parquet")
        )

    def read(
        self, columns: list[str] | None = None, include_pending: bool = True, since_hour: int | None = None
    ) -> pa.Table:
        """Everything in the stream (compacted parts, then write-ahead batches), schemas unified;
        with `since_hour`, only the parts of that hour (whole hours since the epoch, UTC) and later."""
        tables = [
            self._read_part(path, columns)
            for path in self.files()
            if since_hour is None or _partition_hour(path) >= since_hour
        ]
        if include_pending:
            for item in self.pending:
                t = item.table
                tables.append(t.select(columns) if columns else t)
        if not tables:
            return pa.table({})
        return pa.concat_tables(tables, promote_options="permissive")

    def _read_part(self, path: str, columns: list[str] | None) -> pa.Table:
        with self.fs.open_input_file(path) as source:
            return pq.read_table(source, columns=columns)

    def read_newest(self, columns: list[str], rows: int) -> pa.Table:
        """At least the newest `rows` rows (write-ahead batches and the latest hours' parts, whole
        hours), oldest first: what a restart needs, without reading the whole history."""
        pending = [item.table.select(columns) for item in self.pending]
        have = sum(t.num_rows for t in pending)
        by_hour: dict[int, list[str]] = {}
        for path in self.files():
            by_hour.setdefault(_partition_hour(path), []).append(path)
        tables = []
        for hour in sorted(by_hour, reverse=True):
            if have >= rows:
                break
            for path in by_hour[hour]:
                tables.append(self._read_part(path, columns))
                have += tables[-1].num_rows
        tables = tables[::-1] + pending
        if not tables:
            return pa.table({})
        return pa.concat_tables(tables, promote_options="permissive").sort_by(self.time_column)


class InferenceLog:
    """The two streams under one root (default RAYLOOP_HOME/inference_log)."""

    def __init__(self, root: str) -> None:
        self.fs, self.root = open_filesystem(root)
        self.streams = {name: LogStream(self.fs, self.root, name, TIME_COLUMN[name]) for name in STREAMS}

    @property
    def predictions(self) -> LogStream:
        return self.streams["predictions"]

    @property
    def labels(self) -> LogStream:
        return self.streams["labels"]

    def flush_due(self, max_rows: int, max_age_s: float) -> int:
        return sum(s.flush() for s in self.streams.values() if s.due(max_rows, max_age_s))

    def flush(self) -> int:
        return sum(s.flush() for s in self.streams.values())

    def joined(self, since: float | None = None) -> pa.Table:
        """Predictions with their first label (null where none arrived yet): the retrain window.

        With `since` (epoch seconds), parts of earlier hours are not read (rows of the hour
        `since` falls in may still be older), nor labels before `labels_from` that hour.
        """
        hour = None if since is None else int(since) // 3600
        predictions = self.predictions.read(since_hour=hour)
        if predictions.num_rows == 0:
            return predictions
        labels = self.labels.read(
            ["request_id", "label", "label_ts"], since_hour=None if hour is None else labels_from(hour)
        )
        if labels.num_rows == 0:
            return predictions.append_column("label", pa.nulls(predictions.num_rows)).append_column(
                "label_ts", pa.nulls(predictions.num_rows, _TS)
            )
        labels = labels.sort_by([("label_ts", "ascending")])
        first = labels.group_by("request_id", use_threads=False).aggregate([("label", "first"), ("label_ts", "first")])
        first = first.rename_columns(["request_id", "label", "label_ts"])
        return predictions.join(first, "request_id", join_type="left outer").sort_by([("ts", "ascending")])


def labels_from(prediction_hour: int) -> int:
    """The first hour whose label parts can hold labels of predictions from `prediction_hour` on:
    a label arrives after its prediction, but an hour earlier is kept, since the replica that
    took the label may run a little behind the one that served the prediction."""
    return prediction_hour - 1


def epoch_hours(ts: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Whole hours since the epoch (UTC) per timestamp: the partition of each row.

    Integer division, not `pc.strftime`, which formats a string per row and dominated compaction.
    """
    unit = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[ts.type.unit]
    return np.floor_divide(ts.cast(pa.int64()).to_numpy(), 3600 * unit)


def _partition(hour: int) -> str:
    return datetime.fromtimestamp(hour * 3600, timezone.utc).strftime("date=%Y-%m-%d/hour=%H")


def _partition_hour(path: str) -> int:
    """The hour (since the epoch) of a part's date=/hour= folder: `_partition`'s inverse."""
    folder = "/".join(path.split("/")[-3:-1])
    at = datetime.strptime(folder, "date=%Y-%m-%d/hour=%H").replace(tzinfo=timezone.utc)
    return int(at.timestamp()) // 3600


def _safe_id(batch_id: str) -> str:
    return batch_id.replace("/", "%2F")


def _unsafe_id(name: str) -> str:
    return name.replace("%2F", "/")
