"""Latency summaries and stage timings, shared by the library and every benchmark (no dependencies).

One percentile definition (nearest rank), so a p99 in one results file means the same as a p99
in another; one stopwatch (`Laps`) for the seconds each step of a stage took.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

__all__ = ["Laps", "percentile", "percentiles"]


class Laps:
    """Seconds between successive marks, by name: `lap("read")` records the time since the
    previous mark (or since creation) under "read"; `seconds` holds them in order."""

    def __init__(self, digits: int = 3) -> None:
        self.seconds: dict[str, float] = {}
        self._digits = digits
        self._clock = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self._clock, self._digits)
        self._clock = now


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
