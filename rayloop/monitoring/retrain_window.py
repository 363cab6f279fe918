"""The retrain job's data window, from the labelled inference log (pure: pyarrow in, pyarrow out).

1. the recent window: inference-log rows served since the drift began (`retrain.since`), joined
   with their first label (`recent_rows`);
2. the gate's holdout: the most recent `holdout_fraction` of the labelled recent rows
   (`split_recent`);
3. the training window: the other labelled recent rows, each repeated `recent_weight` times, plus
   a random sample of the original training data, `reference_ratio` rows per recent row, so the
   old data informs but cannot drown the new (`sample_rows`, `assemble`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from rayloop.config import RetrainConfig
from rayloop.data.schema import FeatureSchema
from rayloop.errors import RetrainError

__all__ = ["RecentSplit", "RetrainData", "assemble", "recent_rows", "sample_rows", "split_recent"]


@dataclass
class RetrainData:
    train: pa.Table  # schema columns, reference sample + weighted recent rows
    holdout: pa.Table  # schema columns, the most recent labelled rows
    recent: pa.Table  # schema columns, every recent row (label null where none arrived): the new profile
    # recent rows no fit trained on (the holdout + the unlabelled rows): what the new version's
    # output histogram is measured on, so live scores are compared with out-of-sample scores
    unseen: pa.Table
    counts: dict[str, int] = field(default_factory=dict)


def recent_rows(log_table: pa.Table, since: float | None) -> pa.Table:
    """Inference-log rows (joined with labels) served at or after `since` (epoch seconds), oldest first."""
    if log_table.num_rows == 0 or "ts" not in log_table.column_names:
        return log_table
    if since is not None:
        cutoff = pa.scalar(int(since * 1000), pa.int64()).cast(pa.timestamp("ms", tz="UTC"))
        log_table = log_table.filter(
            pc.greater_equal(log_table.column("ts").cast(pa.timestamp("ms", tz="UTC")), cutoff)
        )
    return log_table.sort_by([("ts", "ascending")])


def _entity_ids(request_ids: pa.ChunkedArray | pa.Array) -> pa.Array:
    # logged requests carry no entity id: a stable one per request keeps a row's repeats in one split
    hashed = pd.util.hash_array(np.asarray(request_ids.to_pylist(), dtype=object), hash_key="rayloopretrain00")
    return pa.array((hashed >> np.uint64(2)).astype(np.int64))


def _as_schema_rows(
    recent: pa.Table, schema: FeatureSchema, *, label: str, id_column: str | None, timestamp_column: str | None
) -> pa.Table:
    """Log rows -> the training data's columns: the label from the feedback join; the entity id
    and the event time as the request sent them, else an id made up per request and the serving
    time."""
    target = schema.arrow_schema()
    columns = {}
    for name in target.names:
        kind = target.field(name).type
        if name == label:
            values = recent.column("label") if "label" in recent.column_names else pa.nulls(recent.num_rows)
        elif name == id_column:
            values = _entity_ids(recent.column("request_id")).cast(kind)
            if name in recent.column_names:  # sent with the request where it was
                values = pc.coalesce(pc.cast(recent.column(name), kind, safe=False), values)
        elif name == timestamp_column:
            values = recent.column("ts").cast(kind)
            if name in recent.column_names:
                values = pc.coalesce(pc.cast(recent.column(name), kind, safe=False), values)
        elif name in recent.column_names:
            values = recent.column(name)
        else:
            values = pa.nulls(recent.num_rows)
        columns[name] = pc.cast(values, kind, safe=False)
    return pa.table(columns, schema=target)


class RecentSplit(NamedTuple):
    rows: pa.Table  # every recent row
    train: pa.Table  # labelled rows to train on
    holdout: pa.Table  # the newest labelled rows
    unlabelled: pa.Table


def split_recent(
    recent: pa.Table,
    schema: FeatureSchema,
    config: RetrainConfig,
    *,
    label: str,
    id_column: str | None,
    timestamp_column: str | None,
) -> RecentSplit:
    """The recent rows in the training data's columns, split for the retrain. Raises RetrainError
    when too few recent rows are labelled."""
    rows = _as_schema_rows(recent, schema, label=label, id_column=id_column, timestamp_column=timestamp_column)
    has_label = pc.is_valid(rows.column(label))
    labelled = rows.filter(has_label)
    if labelled.num_rows < config.min_labelled_rows:
        raise RetrainError(
            f"only {labelled.num_rows} labelled rows in the recent window (retrain.min_labelled_rows="
            f"{config.min_labelled_rows}); the champion keeps serving"
        )
    n_holdout = max(1, math.ceil(labelled.num_rows * config.holdout_fraction))
    # the newest labelled rows are the gate's holdout: the most like tomorrow's traffic
    return RecentSplit(
        rows,
        labelled.slice(0, labelled.num_rows - n_holdout),
        labelled.slice(labelled.num_rows - n_holdout),
        rows.filter(pc.invert(has_label)),
    )


def sample_rows(batches: Iterable[pa.RecordBatch | pa.Table], fraction: float, seed: int) -> pa.Table | None:
    """A seeded Bernoulli sample of a stream of batches, holding only the sample in memory."""
    rng = np.random.default_rng(seed)
    kept = []
    for batch in batches:
        table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
        kept.append(table.filter(pa.array(rng.random(table.num_rows) < fraction)))
    return pa.concat_tables(kept, promote_options="permissive") if kept else None


def assemble(reference_sample: pa.Table, split: RecentSplit, config: RetrainConfig) -> RetrainData:
    """The training window (the reference sample + the recent labelled rows, repeated
    `recent_weight` times) and the gate's holdout, from `split_recent`'s split; see the module docstring."""
    rows, recent_train, holdout, unlabelled = split
    sample = reference_sample.select(rows.column_names).cast(rows.schema, safe=False)
    train = pa.concat_tables([sample, *([recent_train] * config.recent_weight)])
    counts = {
        "recent_rows": rows.num_rows,
        "recent_labelled": recent_train.num_rows + holdout.num_rows,
        "recent_train": recent_train.num_rows,
        "holdout": holdout.num_rows,
        "reference_kept": sample.num_rows,
        "train_rows": train.num_rows,
        "recent_weight": config.recent_weight,
    }
    unseen = pa.concat_tables([holdout, unlabelled])
    return RetrainData(train=train, holdout=holdout, recent=rows, unseen=unseen, counts=counts)
