"""Ray Data wiring for the feature statistics: a map over blocks, a merge on the driver.

Each task turns its batch into one small accumulator (features.stats: moments, KLL sketches,
bounded value counts, histogram counts) right after the read, in the same fused task, so only
a few kilobytes per batch reach the object store; the driver merges them as they stream in.

Why not `Dataset.aggregate` with AggregateFnV2: in Ray 2.60 a global aggregate runs a hash
shuffle (map tasks plus an aggregator actor), which moves every training row through the
object store and buffers blocks outside backpressure, so memory grows with the data
(benchmarks/README.md, preprocessing). Ray's built-in ApproximateQuantile / ApproximateTopK
also update their sketches one value at a time.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from rayloop.data.io import fusable_map_args
from rayloop.features import stats as st

if TYPE_CHECKING:
    import ray.data

__all__ = ["compute_stats", "compute_histograms", "map_reduce"]

MAX_TRACKED_CATEGORIES = 100_000
_ACC = "accumulator"


def map_reduce(
    ds: ray.data.Dataset,
    summarize: Callable[[pa.Table], Any],
    merge: Callable[[Any, Any], Any],
) -> Any:
    """summarize(batch) for every batch in Ray tasks; merge(a, b) over the results on the driver.

    `merge` must be associative and commutative: batches arrive in any order. Returns None for
    an empty dataset.
    """

    def one_row(batch: pa.Table) -> pa.Table:
        return pa.table({_ACC: pa.array([pickle.dumps(summarize(batch))], pa.binary())})

    result = None
    # no batch_size: the map then fuses into the read task (see fusable_map_args)
    for row in ds.map_batches(one_row, **fusable_map_args()).iter_rows():
        part = pickle.loads(row[_ACC])
        result = part if result is None else merge(result, part)
    return result


def compute_stats(
    ds: ray.data.Dataset,
    numeric: Sequence[str],
    categorical: Sequence[str],
    precision: int,
    *,
    max_tracked: int = MAX_TRACKED_CATEGORIES,
) -> dict[str, Any]:
    numeric, categorical = list(numeric), list(categorical)
    result = map_reduce(
        ds,
        lambda batch: st.block_stats(batch, numeric, categorical, precision),
        lambda a, b: st.merge_stats(a, b, max_tracked),
    )
    if result is None:  # no rows at all
        empty = pa.table(
            {**{n: pa.array([], pa.float64()) for n in numeric}, **{c: pa.array([], pa.string()) for c in categorical}}
        )
        return st.block_stats(empty, numeric, categorical, precision)
    return result


def compute_histograms(ds: ray.data.Dataset, edges: Mapping[str, Sequence[float]]) -> dict[str, tuple[list[int], int]]:
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in edges.items()}

    def summarize(batch: pa.Table) -> dict[str, tuple[list[int], int]]:
        return {name: st.histogram_counts(st.numeric_values(batch.column(name)), e) for name, e in arrays.items()}

    def merge(a, b):
        return {k: ([x + y for x, y in zip(a[k][0], b[k][0])], a[k][1] + b[k][1]) for k in a}

    result = map_reduce(ds, summarize, merge)
    return result if result is not None else {k: ([0] * (len(v) + 1), 0) for k, v in edges.items()}
