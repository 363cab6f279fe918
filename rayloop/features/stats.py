"""Mergeable column statistics: computed per block, combined in any order, finalized once.

Pure numpy/pyarrow (no Ray): Ray Data runs these through one AggregateFnV2 (aggregates.py);
tests and baselines can run them over a plain table. Numeric columns keep count, moments
(Chan's parallel update), min/max, missing count and a KLL quantile sketch (datasketches,
vectorized updates); categorical columns keep value counts, bounded by pruning the rarest.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasketches import kll_doubles_sketch

__all__ = [
    "numeric_values",
    "numeric_block_stats",
    "merge_numeric",
    "numeric_summary",
    "categorical_block_stats",
    "merge_categorical",
    "block_stats",
    "merge_stats",
    "histogram_counts",
]

NumericStats = dict[str, Any]
CategoricalStats = dict[str, Any]


def numeric_values(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """float64 values with NaN for every missing or non-finite entry (one definition of missing)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    values = column.cast(pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    if not np.isfinite(values).all():
        values = np.where(np.isfinite(values), values, np.nan)
    return values


def numeric_block_stats(values: np.ndarray, precision: int) -> NumericStats:
    finite = values[~np.isnan(values)]
    sketch = kll_doubles_sketch(precision)
    if finite.size:
        sketch.update(finite)
    n = int(finite.size)
    mean = float(finite.mean()) if n else 0.0
    m2 = float(((finite - mean) ** 2).sum()) if n else 0.0
    return {
        "n": n,
        "missing": int(values.size - n),
        "mean": mean,
        "m2": m2,
        "min": float(finite.min()) if n else None,
        "max": float(finite.max()) if n else None,
        "sketch": sketch.serialize(),
    }


def merge_numeric(a: NumericStats, b: NumericStats) -> NumericStats:
    n = a["n"] + b["n"]
    if n == 0:
        mean, m2 = 0.0, 0.0
    else:
        delta = b["mean"] - a["mean"]
        mean = a["mean"] + delta * b["n"] / n
        m2 = a["m2"] + b["m2"] + delta * delta * a["n"] * b["n"] / n
    sketch = kll_doubles_sketch.deserialize(a["sketch"])
    sketch.merge(kll_doubles_sketch.deserialize(b["sketch"]))
    return {
        "n": n,
        "missing": a["missing"] + b["missing"],
        "mean": mean,
        "m2": m2,
        "min": _opt(min, a["min"], b["min"]),
        "max": _opt(max, a["max"], b["max"]),
        "sketch": sketch.serialize(),
    }


def numeric_summary(stats: NumericStats, quantiles: Iterable[float]) -> dict[str, Any]:
    """mean, std (population), min, max, missing count and the requested quantiles."""
    n = stats["n"]
    qs = list(quantiles)
    sketch = kll_doubles_sketch.deserialize(stats["sketch"])
    return {
        "n": n,
        "missing": stats["missing"],
        "mean": stats["mean"],
        "std": float(np.sqrt(stats["m2"] / n)) if n else 0.0,
        "min": stats["min"],
        "max": stats["max"],
        "quantiles": [float(q) for q in sketch.get_quantiles(qs)] if n else [],
    }


def categorical_block_stats(column: pa.Array | pa.ChunkedArray) -> CategoricalStats:
    counts = pc.value_counts(column.cast(pa.string()) if not pa.types.is_dictionary(column.type) else column)
    if isinstance(counts, pa.ChunkedArray):
        counts = counts.combine_chunks()
    values = counts.field("values").to_pylist()
    freqs = counts.field("counts").to_pylist()
    result: dict[str, int] = {}
    missing = 0
    for value, count in zip(values, freqs):
        if value is None:
            missing += count
        else:
            result[str(value)] = count
    return {"counts": result, "missing": missing, "pruned": 0}


def merge_categorical(a: CategoricalStats, b: CategoricalStats, max_tracked: int) -> CategoricalStats:
    counts = dict(a["counts"])
    for value, count in b["counts"].items():
        counts[value] = counts.get(value, 0) + count
    pruned = a["pruned"] + b["pruned"]
    if len(counts) > max_tracked:
        # Keep the most frequent values; the top-K vocabulary never reaches this tail.
        keep = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:max_tracked]
        pruned += sum(counts.values()) - sum(c for _, c in keep)
        counts = dict(keep)
    return {"counts": counts, "missing": a["missing"] + b["missing"], "pruned": pruned}


def block_stats(table: pa.Table, numeric: Iterable[str], categorical: Iterable[str], precision: int) -> dict[str, Any]:
    """Statistics of every feature column of one block."""
    return {
        "rows": table.num_rows,
        "numeric": {name: numeric_block_stats(numeric_values(table.column(name)), precision) for name in numeric},
        "categorical": {name: categorical_block_stats(table.column(name)) for name in categorical},
    }


def merge_stats(a: Mapping[str, Any], b: Mapping[str, Any], max_tracked: int) -> dict[str, Any]:
    return {
        "rows": a["rows"] + b["rows"],
        "numeric": {k: merge_numeric(v, b["numeric"][k]) for k, v in a["numeric"].items()},
        "categorical": {k: merge_categorical(v, b["categorical"][k], max_tracked) for k, v in a["categorical"].items()},
    }


def histogram_counts(values: np.ndarray, edges: np.ndarray) -> tuple[list[int], int]:
    """Counts per bin for interior `edges` (open-ended first and last bins) and the missing count.

    Bin i holds edges[i-1] < x <= edges[i] (bin 0: x <= edges[0]; last: x > edges[-1]).
    """
    missing = np.isnan(values)
    present = values[~missing]
    index = np.searchsorted(edges, present, side="left")
    counts = np.bincount(index, minlength=len(edges) + 1)
    return [int(c) for c in counts], int(missing.sum())


def _opt(fn, a, b):
    if a is None:
        return b
    if b is None:
        return a
    return fn(a, b)
