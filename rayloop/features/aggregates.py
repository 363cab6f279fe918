"""Ray Data wiring for the feature statistics: two AggregateFnV2s over the pure functions in stats.py.

Ray's built-in ApproximateQuantile / ApproximateTopK update their sketches one Python value at
a time; these update whole columns with numpy, and compute every column in one pass.
Accumulators travel as pickled bytes so Ray can store them in any block format.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import ray.data
from ray.data.aggregate import AggregateFnV2
from ray.data.block import BlockAccessor

from rayloop.features import stats as st

__all__ = ["FeatureStatsAggregation", "HistogramAggregation", "compute_stats", "compute_histograms"]

MAX_TRACKED_CATEGORIES = 100_000


class FeatureStatsAggregation(AggregateFnV2):
    def __init__(
        self, numeric: Sequence[str], categorical: Sequence[str], precision: int, max_tracked: int
    ) -> None:
        self._numeric = list(numeric)
        self._categorical = list(categorical)
        self._precision = precision
        self._max_tracked = max_tracked
        super().__init__("feature_stats", zero_factory=lambda: None, on=None, ignore_nulls=True)

    def aggregate_block(self, block) -> bytes:
        table = BlockAccessor.for_block(block).to_arrow()
        return pickle.dumps(st.block_stats(table, self._numeric, self._categorical, self._precision))

    def combine(self, current: bytes, new: bytes) -> bytes:
        return pickle.dumps(st.merge_stats(pickle.loads(current), pickle.loads(new), self._max_tracked))

    def finalize(self, accumulator: bytes) -> Any:
        return accumulator


class HistogramAggregation(AggregateFnV2):
    def __init__(self, edges: Mapping[str, Sequence[float]]) -> None:
        self._edges = {k: np.asarray(v, dtype=np.float64) for k, v in edges.items()}
        super().__init__("histograms", zero_factory=lambda: None, on=None, ignore_nulls=True)

    def aggregate_block(self, block) -> bytes:
        table = BlockAccessor.for_block(block).to_arrow()
        return pickle.dumps(
            {name: st.histogram_counts(st.numeric_values(table.column(name)), e) for name, e in self._edges.items()}
        )

    def combine(self, current: bytes, new: bytes) -> bytes:
        a, b = pickle.loads(current), pickle.loads(new)
        return pickle.dumps(
            {k: ([x + y for x, y in zip(a[k][0], b[k][0])], a[k][1] + b[k][1]) for k in a}
        )

    def finalize(self, accumulator: bytes) -> Any:
        return accumulator


def compute_stats(
    ds: ray.data.Dataset,
    numeric: Sequence[str],
    categorical: Sequence[str],
    precision: int,
    max_tracked: int = MAX_TRACKED_CATEGORIES,
) -> dict[str, Any]:
    result = ds.aggregate(FeatureStatsAggregation(numeric, categorical, precision, max_tracked))["feature_stats"]
    if result is None:  # no blocks at all
        empty = st.block_stats(_empty_table(numeric, categorical), numeric, categorical, precision)
        return empty
    return pickle.loads(result)


def compute_histograms(ds: ray.data.Dataset, edges: Mapping[str, Sequence[float]]) -> dict[str, tuple[list[int], int]]:
    result = ds.aggregate(HistogramAggregation(edges))["histograms"]
    if result is None:
        return {k: ([0] * (len(v) + 1), 0) for k, v in edges.items()}
    return pickle.loads(result)


def _empty_table(numeric: Sequence[str], categorical: Sequence[str]):
    import pyarrow as pa

    return pa.table(
        {**{n: pa.array([], pa.float64()) for n in numeric}, **{c: pa.array([], pa.string()) for c in categorical}}
    )
