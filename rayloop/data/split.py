"""Train / validation / test assignment, one pure function per batch.

Time-based when a timestamp exists (train on the past, test on the most recent rows, as
production does); otherwise by a stable hash of the entity id, so one entity never lands
in two splits and a row's split never changes between runs or machines; with neither, by a
stable hash of the row's content (the usual CSV export), the same for the same data every run.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["SPLIT_COLUMN", "SPLITS", "assign_by_content", "assign_by_hash", "assign_by_time", "time_cutoff_quantiles"]

SPLIT_COLUMN = "split"
SPLITS = ("train", "validation", "test")
_SPLIT_NAMES = pa.array(SPLITS, pa.string())


def time_cutoff_quantiles(fractions: Sequence[float]) -> list[float]:
    """Quantiles of the timestamp that end the train and validation periods."""
    train, validation = fractions[0], fractions[1]
    return [train, train + validation]


def assign_by_time(timestamps: pa.Array | pa.ChunkedArray, cutoffs_us: Sequence[int]) -> pa.Array:
    """Rows at or before cutoffs[0] train, at or before cutoffs[1] validation, the rest test."""
    micros = _epoch_micros(timestamps)
    index = np.searchsorted(np.asarray(cutoffs_us, dtype=np.int64), micros, side="left")
    return _SPLIT_NAMES.take(pa.array(index.astype(np.int32)))


def assign_by_hash(ids: pa.Array | pa.ChunkedArray, fractions: Sequence[float], seed: int = 0) -> pa.Array:
    """Deterministic split by entity id: pandas' stable SipHash of the value, salted by seed."""
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    key = f"rayloop{seed:09d}"[:16]
    if pa.types.is_integer(ids.type) and ids.null_count == 0:
        # pandas ignores hash_key for numbers: salt the values with a seed-derived constant instead
        salt = pd.util.hash_array(np.array([str(seed)], dtype=object), hash_key=key)[0]
        hashed = pd.util.hash_array(ids.cast(pa.int64()).to_numpy().view(np.uint64) ^ salt)
    else:  # strings (and anything else) hash by their text
        values = pd.Series(ids.to_pylist(), dtype=object).astype(str).to_numpy(dtype=object)
        hashed = pd.util.hash_array(values, hash_key=key)
    return _by_unit((hashed >> np.uint64(11)).astype(np.float64) / float(1 << 53), fractions)


def assign_by_content(table: pa.Table, columns: Sequence[str], fractions: Sequence[float], seed: int = 0) -> pa.Array:
    """Deterministic split by the row's values in `columns` (pandas' SipHash of each row, salted by
    seed): the same row lands in the same split on every run; identical rows share a split."""
    frame = table.select(list(columns)).to_pandas()
    hashed = pd.util.hash_pandas_object(frame, index=False, hash_key=f"rayloop{seed:09d}"[:16]).to_numpy()
    return _by_unit((hashed >> np.uint64(11)).astype(np.float64) / float(1 << 53), fractions)


def _by_unit(unit: np.ndarray, fractions: Sequence[float]) -> pa.Array:
    bounds = np.cumsum(np.asarray(fractions[:2], dtype=np.float64))
    index = np.searchsorted(bounds, unit, side="right")
    return _SPLIT_NAMES.take(pa.array(index.astype(np.int32)))


def _epoch_micros(timestamps: pa.Array | pa.ChunkedArray) -> np.ndarray:
    if isinstance(timestamps, pa.ChunkedArray):
        timestamps = timestamps.combine_chunks()
    if pc.any(pc.is_null(timestamps)).as_py():
        raise ValueError("time-based split needs a timestamp on every row; declare the column nullable: false")
    return timestamps.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy()
