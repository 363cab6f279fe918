"""Model quality on a labelled split: AUC, log loss, accuracy, expected calibration error, per slice.

Pure numpy/scipy (no Ray, no model): the trainers, the registry gate and the monitor's live
quality all score predictions with these same functions, so "AUC" means one thing everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "METRICS",
    "accuracy",
    "evaluate",
    "evaluate_slices",
    "expected_calibration_error",
    "log_loss",
    "paired_difference_interval",
    "roc_auc",
]

_EPS = 1e-15


def _arrays(
    y_true: Sequence[float] | np.ndarray, y_prob: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(y_prob, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels and probabilities differ in length: {y.size} vs {p.size}")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1")
    if np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise ValueError("probabilities must lie in [0, 1]")
    return y, p


def roc_auc(y_true, y_prob) -> float:
    """Area under the ROC curve (Mann-Whitney U with mid-ranks for ties); NaN with one class."""
    y, p = _arrays(y_true, y_prob)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    from scipy.stats import rankdata  # scipy.stats is slow to import: only where a metric is computed

    ranks = rankdata(p)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def log_loss(y_true, y_prob) -> float:
    y, p = _arrays(y_true, y_prob)
    p = np.clip(p, _EPS, 1 - _EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def accuracy(y_true, y_prob, threshold: float = 0.5) -> float:
    y, p = _arrays(y_true, y_prob)
    return float(np.mean((p >= threshold) == (y == 1)))


def expected_calibration_error(y_true, y_prob, n_bins: int = 10) -> float:
    """Weighted mean |observed rate - mean predicted probability| over equal-width probability bins."""
    y, p = _arrays(y_true, y_prob)
    if y.size == 0:
        return float("nan")
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    counts = np.bincount(bins, minlength=n_bins)
    observed = np.bincount(bins, weights=y, minlength=n_bins)
    predicted = np.bincount(bins, weights=p, minlength=n_bins)
    used = counts > 0
    gaps = np.abs(observed[used] - predicted[used]) / counts[used]
    return float(np.sum(gaps * counts[used]) / y.size)


METRICS = {"auc": roc_auc, "logloss": log_loss, "accuracy": accuracy, "ece": expected_calibration_error}


def paired_difference_interval(
    y_true,
    y_prob_a,
    y_prob_b,
    metric: str,
    *,
    level: float = 0.95,
    resamples: int = 500,
    max_rows: int = 10_000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap interval of metric(a) - metric(b) on the same rows, resampled together.

    How much of a gate's margin is noise: on a few hundred holdout rows an AUC difference of 0.02
    can be either sign. Holdouts over `max_rows` are subsampled first (seeded) to bound the cost,
    which makes their interval wider than the whole holdout's would be.
    """
    from scipy.stats import bootstrap

    fn = METRICS[metric]
    y, a = _arrays(y_true, y_prob_a)
    _, b = _arrays(y_true, y_prob_b)
    if y.size < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    if y.size > max_rows:
        keep = rng.choice(y.size, max_rows, replace=False)
        y, a, b = y[keep], a[keep], b[keep]
    result = bootstrap(
        (y, a, b),
        lambda yy, aa, bb: fn(yy, aa) - fn(yy, bb),
        paired=True,
        vectorized=False,
        n_resamples=resamples,
        confidence_level=level,
        method="percentile",
        random_state=rng,
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def evaluate(y_true, y_prob, *, threshold: float = 0.5, n_bins: int = 10) -> dict[str, float]:
    y, p = _arrays(y_true, y_prob)
    return {
        "auc": roc_auc(y, p),
        "logloss": log_loss(y, p),
        "accuracy": accuracy(y, p, threshold),
        "ece": expected_calibration_error(y, p, n_bins),
        "positive_rate": float(y.mean()) if y.size else float("nan"),
        "n": float(y.size),
    }


def evaluate_slices(
    y_true, y_prob, slices: Sequence[Any], *, min_rows: int = 30, threshold: float = 0.5
) -> dict[str, dict[str, float]]:
    """`evaluate` per value of a slicing column (e.g. channel); slices under `min_rows` are skipped."""
    y, p = _arrays(y_true, y_prob)
    keys = np.asarray(["<missing>" if s is None else str(s) for s in slices], dtype=object)
    if keys.size != y.size:
        raise ValueError(f"slice column has {keys.size} values for {y.size} rows")
    result: dict[str, dict[str, float]] = {}
    for key in sorted(set(keys.tolist())):
        mask = keys == key
        if mask.sum() >= min_rows:
            result[key] = evaluate(y[mask], p[mask], threshold=threshold)
    return result
