"""Model quality on a labelled split, for every task, per slice, and the gate's bootstrap interval.

Pure numpy/scipy/scikit-learn (no Ray, no model): the trainers, the registry gate and the
monitor's live quality all score predictions with these same functions, so "AUC" means one thing
everywhere. Predictions are a task's scores (`rayloop.tasks`): P(positive) per row for binary,
an (n, K) probability matrix for multiclass, the predicted value for regression; labels are class
codes (0..K-1) or numbers.

- binary: AUC, log loss, accuracy, expected calibration error (hand-written and fast: live
  quality recomputes AUC every window);
- multiclass: accuracy, macro-F1, log loss (`multi_logloss`), recall per class and the top-label
  calibration error (`ece`: the confidence of the predicted class against how often it is right);
- regression: RMSE, MAE, R², residual quantiles and, with prediction intervals, their coverage.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "METRICS",
    "accuracy",
    "conformal_half_width",
    "evaluate",
    "evaluate_multiclass",
    "evaluate_regression",
    "evaluate_slices",
    "evaluate_task",
    "expected_calibration_error",
    "log_loss",
    "macro_f1",
    "macro_f1_codes",
    "mae",
    "metric_function",
    "paired_difference_interval",
    "rmse",
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
    scores_a,
    scores_b,
    metric: str,
    *,
    kind: str = "binary",
    level: float = 0.95,
    resamples: int = 500,
    max_rows: int = 10_000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap interval of metric(a) - metric(b) on the same rows, resampled together
    (any task: the rows are resampled by index, so scores may be one number or K per row).

    How much of a gate's margin is noise: on a few hundred holdout rows an AUC difference of 0.02
    can be either sign. Holdouts over `max_rows` are subsampled first (seeded) to bound the cost,
    which makes their interval wider than the whole holdout's would be.
    """
    from scipy.stats import bootstrap

    fn = metric_function(kind, metric)
    y, a, b = np.asarray(y_true), np.asarray(scores_a, dtype=np.float64), np.asarray(scores_b, dtype=np.float64)
    if len(y) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    rows = np.arange(len(y))
    if len(y) > max_rows:
        rows = rng.choice(rows, max_rows, replace=False)
    result = bootstrap(
        (rows,),
        lambda index: fn(y[index], a[index]) - fn(y[index], b[index]),
        vectorized=False,
        n_resamples=resamples,
        confidence_level=level,
        method="percentile",
        random_state=rng,
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def evaluate(y_true, y_prob, *, threshold: float = 0.5, n_bins: int = 10) -> dict[str, float]:
    """A binary classifier's metrics (labels 0/1, scores P(label = 1))."""
    y, p = _arrays(y_true, y_prob)
    return {
        "auc": roc_auc(y, p),
        "logloss": log_loss(y, p),
        "accuracy": accuracy(y, p, threshold),
        "ece": expected_calibration_error(y, p, n_bins),
        "positive_rate": float(y.mean()) if y.size else float("nan"),
        "n": float(y.size),
    }


# ---- multiclass ------------------------------------------------------------------------------------
def _probabilities(y_true, probs) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(np.int64).ravel()
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != y.size:
        raise ValueError(f"multiclass scores are one row of class probabilities per label: {p.shape} for {y.size}")
    if y.size and (y.min() < 0 or y.max() >= p.shape[1]):
        raise ValueError(f"class codes must lie in 0..{p.shape[1] - 1}")
    return y, p


def multiclass_accuracy(y_true, probs) -> float:
    y, p = _probabilities(y_true, probs)
    return float(np.mean(np.argmax(p, axis=1) == y)) if y.size else float("nan")


def macro_f1(y_true, probs) -> float:
    """F1 per class, averaged with equal weight (a class the split lacks counts only if predicted)."""
    y, p = _probabilities(y_true, probs)
    return macro_f1_codes(y, np.argmax(p, axis=1), p.shape[1])


def macro_f1_codes(y_true: np.ndarray, predicted: np.ndarray, n_classes: int) -> float:
    """Macro-F1 of predicted class codes over the classes present in labels or predictions."""
    from sklearn.metrics import f1_score

    labels = np.arange(n_classes)
    present = np.union1d(y_true, predicted)
    if not present.size:
        return float("nan")
    return float(f1_score(y_true, predicted, labels=labels[np.isin(labels, present)], average="macro", zero_division=0))


def multi_log_loss(y_true, probs) -> float:
    y, p = _probabilities(y_true, probs)
    picked = np.clip(p[np.arange(y.size), y], _EPS, 1.0)
    return float(-np.mean(np.log(picked))) if y.size else float("nan")


def top_label_calibration_error(y_true, probs, n_bins: int = 10) -> float:
    """Expected calibration error of the predicted class: its probability against how often it is right."""
    y, p = _probabilities(y_true, probs)
    if y.size == 0:
        return float("nan")
    confidence = p.max(axis=1)
    right = (np.argmax(p, axis=1) == y).astype(np.float64)
    return expected_calibration_error(right, confidence, n_bins)


def evaluate_multiclass(y_true, probs, *, classes: Sequence[Any] | None = None) -> dict[str, float]:
    """Accuracy, macro-F1, log loss, top-label calibration error and recall per class
    (`recall.<class>`, for the classes present in the split)."""
    y, p = _probabilities(y_true, probs)
    names = [str(c) for c in (classes if classes is not None else range(p.shape[1]))]
    predicted = np.argmax(p, axis=1)
    out = {
        "accuracy": multiclass_accuracy(y, p),
        "macro_f1": macro_f1(y, p),
        "multi_logloss": multi_log_loss(y, p),
        "ece": top_label_calibration_error(y, p),
        "n": float(y.size),
    }
    for code, name in enumerate(names):
        mask = y == code
        if mask.any():
            out[f"recall.{_metric_key(name)}"] = float(np.mean(predicted[mask] == code))
    return out


# ---- regression ------------------------------------------------------------------------------------
def _values(y_true, predicted) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.float64).ravel()
    f = np.asarray(predicted, dtype=np.float64).ravel()
    if y.shape != f.shape:
        raise ValueError(f"labels and predictions differ in length: {y.size} vs {f.size}")
    return y, f


def rmse(y_true, predicted) -> float:
    y, f = _values(y_true, predicted)
    return float(np.sqrt(np.mean((y - f) ** 2))) if y.size else float("nan")


def mae(y_true, predicted) -> float:
    y, f = _values(y_true, predicted)
    return float(np.mean(np.abs(y - f))) if y.size else float("nan")


def r2(y_true, predicted) -> float:
    from sklearn.metrics import r2_score

    y, f = _values(y_true, predicted)
    return float(r2_score(y, f)) if y.size >= 2 else float("nan")


def evaluate_regression(
    y_true, predicted, *, lower: np.ndarray | None = None, upper: np.ndarray | None = None
) -> dict[str, float]:
    """RMSE, MAE, R², quantiles of the residual (label - prediction) and, given prediction
    intervals, the share of labels inside them and their mean width."""
    y, f = _values(y_true, predicted)
    residual = y - f
    out = {"rmse": rmse(y, f), "mae": mae(y, f), "r2": r2(y, f), "n": float(y.size)}
    for q in (0.05, 0.5, 0.95):
        out[f"residual_q{int(q * 100):02d}"] = float(np.quantile(residual, q)) if y.size else float("nan")
    if lower is not None and upper is not None:
        lo, hi = np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64)
        out["interval_coverage"] = float(np.mean((y >= lo) & (y <= hi))) if y.size else float("nan")
        out["interval_width"] = float(np.mean(hi - lo)) if y.size else float("nan")
    return out


def conformal_half_width(residuals: np.ndarray, coverage: float) -> float:
    """Split-conformal: the ceil((n + 1) * coverage)-th smallest |residual| of a calibration split,
    so a new row's label lies within prediction +- it with probability at least `coverage`."""
    scores = np.sort(np.abs(np.asarray(residuals, dtype=np.float64)))
    if not scores.size:
        return float("nan")
    rank = min(scores.size, math.ceil((scores.size + 1) * coverage))
    return float(scores[rank - 1])


# ---- by task ---------------------------------------------------------------------------------------
METRICS: dict[tuple[str, str], Any] = {
    ("binary", "auc"): roc_auc,
    ("binary", "logloss"): log_loss,
    ("binary", "accuracy"): accuracy,
    ("binary", "ece"): expected_calibration_error,
    ("multiclass", "accuracy"): multiclass_accuracy,
    ("multiclass", "macro_f1"): macro_f1,
    ("multiclass", "multi_logloss"): multi_log_loss,
    ("multiclass", "ece"): top_label_calibration_error,
    ("regression", "rmse"): rmse,
    ("regression", "mae"): mae,
    ("regression", "r2"): r2,
}


def metric_function(kind: str, metric: str):
    """`fn(labels, scores) -> float` of one metric of a task."""
    try:
        return METRICS[(kind, metric)]
    except KeyError:
        known = sorted(m for k, m in METRICS if k == kind)
        raise ValueError(f"no metric {metric!r} for a {kind} task; known: {known}") from None


def evaluate_task(
    kind: str,
    y_true,
    scores,
    *,
    classes: Sequence[Any] | None = None,
    threshold: float = 0.5,
    lower: np.ndarray | None = None,
    upper: np.ndarray | None = None,
) -> dict[str, float]:
    """Every metric of a task on one labelled split."""
    if kind == "binary":
        return evaluate(y_true, scores, threshold=threshold)
    if kind == "multiclass":
        return evaluate_multiclass(y_true, scores, classes=classes)
    return evaluate_regression(y_true, scores, lower=lower, upper=upper)


def evaluate_slices(
    y_true,
    scores,
    slices: Sequence[Any],
    *,
    kind: str = "binary",
    classes: Sequence[Any] | None = None,
    min_rows: int = 30,
    threshold: float = 0.5,
) -> dict[str, dict[str, float]]:
    """`evaluate_task` per value of a slicing column (e.g. channel); slices under `min_rows` are skipped."""
    y, p = np.asarray(y_true), np.asarray(scores)
    keys = np.asarray(["<missing>" if s is None else str(s) for s in slices], dtype=object)
    if keys.size != len(y):
        raise ValueError(f"slice column has {keys.size} values for {len(y)} rows")
    result: dict[str, dict[str, float]] = {}
    for key in sorted(set(keys.tolist())):
        mask = keys == key
        if mask.sum() >= min_rows:
            result[key] = evaluate_task(kind, y[mask], p[mask], classes=classes, threshold=threshold)
    return result


def _metric_key(name: str) -> str:
    """A class value as part of an MLflow metric name (letters, digits, _ - . space /)."""
    return "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in name)[:60] or "_"
