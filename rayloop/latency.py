"""Latency summaries, shared by the traffic simulator and every benchmark (no dependencies).

One percentile definition (nearest rank), so a p99 in one results file means the same as a p99
in another.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["percentile", "percentiles"]


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (`q` in 0..100) of already sorted values; None when there are none.

    The smallest value with at least q% of the values at or below it: always one of the observed
    values, never an interpolation between two.
    """
    if not 0 <= q <= 100:
        raise ValueError(f"q must be within 0..100, got {q}")
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def percentiles(values: Sequence[float], qs: Sequence[float] = (50, 90, 95, 99)) -> dict[str, float | None]:
    """`{"p50": ..., "p99": ...}` of unsorted values."""
    ordered = sorted(values)
    return {f"p{q:g}": percentile(ordered, q) for q in qs}
