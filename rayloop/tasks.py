"""The task of a model: binary, multiclass or regression, and everything that follows from it.

One place for the task's rules (no Ray, no model): how `data.task: auto` is read off the label,
which labels fit a task, how labels become the codes a model trains on and back, the objective
and evaluation metric of LightGBM, the MLP's head, the metrics of a test split and which way each
is better, and the defaults of the gate, tuning and live quality. Every stage asks the `Task` that
the preprocess run resolved and the bundle carries; none tests `label in (0, 1)`.

`auto` reads the label's type and distinct values on the train split:
- a string or bool label is a classification: 2 classes binary, 3..`max_classes` multiclass;
- an int label, or a float label whose values are all whole numbers, is a classification when it
  has at most `max_classes` distinct values (2: binary), else a regression;
- any other float label is a regression.
A label with one value, or a string label with more than `max_classes` values, is an error.

Classes are the label's distinct values on the train split in sorted order; a model predicts
class codes 0..K-1 in that order, and serving answers with the original values. For a binary
task the positive class is the second one (1 of 0/1, True of False, "yes" of "no"/"yes").
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from rayloop.errors import LabelError

__all__ = [
    "TASK_KINDS",
    "LabelSummary",
    "Task",
    "TaskKind",
    "better",
    "check_known_task",
    "higher_is_better",
    "quality_shortfall",
    "resolve_task",
    "summarize_labels",
]

TaskKind = Literal["binary", "multiclass", "regression"]
TASK_KINDS: tuple[str, ...] = ("binary", "multiclass", "regression")
LabelType = Literal["int", "float", "string", "bool"]
ClassValue = bool | int | float | str

# metrics where a smaller value is better; every other metric is better when larger
LOWER_IS_BETTER = frozenset({"logloss", "multi_logloss", "ece", "rmse", "mae", "interval_width"})
# the metrics a task reports, and the ones the gate, tuning and live quality may use
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "binary": ("auc", "logloss", "accuracy", "ece"),
    "multiclass": ("accuracy", "macro_f1", "multi_logloss", "ece"),
    "regression": ("rmse", "mae", "r2"),
}
# the metrics of live quality from feedback (no calibration over a few hundred labels)
LIVE_METRICS: dict[str, tuple[str, ...]] = {
    "binary": ("auc", "accuracy"),
    "multiclass": ("accuracy", "macro_f1"),
    "regression": ("mae", "rmse", "interval_coverage"),
}
DEFAULT_GATE_METRIC = {"binary": "auc", "multiclass": "macro_f1", "regression": "rmse"}
DEFAULT_TUNE_METRIC = {"binary": "auc", "multiclass": "multi_logloss", "regression": "rmse"}
DEFAULT_LIVE_METRIC = {"binary": "auc", "multiclass": "accuracy", "regression": "mae"}
# the first is the loss early stopping watches; the others are recorded per round beside it
_LIGHTGBM_METRIC = {"binary": ["binary_logloss", "auc"], "multiclass": ["multi_logloss"], "regression": ["rmse"]}


# errors whose size depends on the label's units: a quality drop is judged relative to them
RELATIVE_METRICS = frozenset({"rmse", "mae"})


def higher_is_better(metric: str) -> bool:
    return metric not in LOWER_IS_BETTER


def quality_shortfall(metric: str, live: float, reference: float) -> float:
    """How much worse `live` is than `reference` (positive: worse): the difference for a score,
    the relative increase for an error in the label's units (rmse, mae)."""
    if metric in RELATIVE_METRICS:
        return (live - reference) / reference if reference > 0 else 0.0
    return reference - live if higher_is_better(metric) else live - reference


def shortfall_se(metric: str, se: float, reference: float) -> float:
    """The standard error of `quality_shortfall` when the live metric's is `se` (the reference is
    taken as exact: it was measured once, on the held-out rows)."""
    if metric in RELATIVE_METRICS:
        return se / reference if reference > 0 else math.inf
    return se


def better(metric: str, a: float, b: float) -> bool:
    """Whether `a` is strictly better than `b` on `metric`."""
    return a > b if higher_is_better(metric) else a < b


class Task(BaseModel):
    """A model's task, resolved once on the train split and carried by the run and the bundle."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: TaskKind
    label: str = Field(description="the label column")
    label_type: LabelType = Field(description="how a label is written: feedback parses it so")
    classes: list[ClassValue] = Field(default_factory=list, description="classifiers: labels in code order")

    # ---- what it is --------------------------------------------------------------------------
    @property
    def is_classifier(self) -> bool:
        return self.kind != "regression"

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def n_outputs(self) -> int:
        """Columns of a prediction: K probabilities for multiclass, one number otherwise."""
        return self.n_classes if self.kind == "multiclass" else 1

    @property
    def positive_class(self) -> ClassValue:
        if self.kind != "binary":
            raise ValueError(f"a {self.kind} task has no positive class")
        return self.classes[1]

    def metrics(self) -> tuple[str, ...]:
        return TASK_METRICS[self.kind]

    def check_metric(self, metric: str | None, what: str, allowed: Sequence[str] | None = None) -> str:
        """`metric`, or the task's default for `what` (gate, tune, live), checked against the task."""
        defaults = {"gate": DEFAULT_GATE_METRIC, "tune": DEFAULT_TUNE_METRIC, "live": DEFAULT_LIVE_METRIC}
        chosen = metric or defaults[what][self.kind]
        options = tuple(allowed or (LIVE_METRICS if what == "live" else TASK_METRICS)[self.kind])
        if chosen not in options:
            raise LabelError(
                self.label,
                "metric",
                f"{what} metric {chosen!r} does not apply to a {self.kind} task; choose one of {list(options)}",
            )
        return chosen

    # ---- labels <-> codes ----------------------------------------------------------------------
    def encode(self, values: pa.Array | pa.ChunkedArray | Sequence[Any]) -> np.ndarray:
        """Labels -> what a model trains on: class codes (int64) or floats (regression, NaN for a
        missing label). A value outside the classes raises LabelError naming it."""
        array = _array(values)
        if self.kind == "regression":
            if not (
                pa.types.is_integer(array.type) or pa.types.is_floating(array.type) or pa.types.is_null(array.type)
            ):
                raise LabelError(self.label, "numeric", f"a regression label must be a number, got {array.type}")
            return np.asarray(array.cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
        typed = _as_label_type(array, self.label_type, self.label)
        codes = pc.index_in(typed, value_set=pa.array(self.classes, typed.type))
        unknown = pc.and_(pc.is_valid(typed), pc.is_null(codes))
        if pc.any(unknown).as_py():
            seen = sorted({str(v) for v in typed.filter(unknown).to_pylist()})[:10]
            raise LabelError(
                self.label,
                "unknown_class",
                f"values {seen} are not among the classes the model was trained on {self.classes}",
            )
        if typed.null_count:
            raise LabelError(self.label, "null", "a missing label cannot be encoded")
        return np.asarray(codes.to_numpy(zero_copy_only=False), dtype=np.int64)

    def decode(self, codes: np.ndarray) -> list[ClassValue]:
        """Class codes -> the original label values."""
        return [self.classes[int(i)] for i in np.asarray(codes).ravel()]

    def predicted_codes(self, scores: np.ndarray, threshold: float = 0.5) -> np.ndarray:
        """A classifier's predicted class code per row from its scores."""
        scores = np.asarray(scores, dtype=np.float64)
        if self.kind == "binary":
            return (scores.ravel() >= threshold).astype(np.int64)
        if self.kind == "multiclass":
            return np.argmax(scores.reshape(len(scores), -1), axis=1).astype(np.int64)
        raise ValueError("a regression has no classes")

    def parse_label(self, value: Any) -> ClassValue | float:
        """One label as written in feedback (JSON), in the task's type; LabelError on a wrong type or
        an unknown class. Booleans are never numbers."""
        if self.kind == "regression":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise LabelError(self.label, "type", f"a regression label is a finite number, got {value!r}")
            return float(value)
        expected = {"int": int, "float": float, "string": str, "bool": bool}[self.label_type]
        ok = isinstance(value, expected) and (expected is bool or not isinstance(value, bool))
        if expected is int and isinstance(value, float) and value.is_integer():
            value, ok = int(value), True
        if not ok:
            raise LabelError(self.label, "type", f"a {self.label_type} label, one of {self.classes}; got {value!r}")
        if value not in self.classes:
            raise LabelError(self.label, "unknown_class", f"{value!r} is not one of the classes {self.classes}")
        return value

    # ---- training -------------------------------------------------------------------------------
    def lightgbm_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The objective and evaluation metrics for LightGBM, under the user's parameters (an
        `objective` such as huber, l1 or quantile is kept for a regression)."""
        base: dict[str, Any] = {"verbosity": -1, "metric": list(_LIGHTGBM_METRIC[self.kind])}
        if self.kind == "binary":
            base["objective"] = "binary"
        elif self.kind == "multiclass":
            base |= {"objective": "multiclass", "num_class": self.n_classes}
        else:
            base["objective"] = "regression"
        merged = {**base, **params}
        if self.is_classifier and merged["objective"] != base["objective"]:
            raise LabelError(
                self.label,
                "objective",
                f"training.lightgbm.objective={merged['objective']!r} does not fit a {self.kind} task",
            )
        return merged


# ---- reading the task off the data -------------------------------------------------------------
@dataclass
class LabelSummary:
    """What a split's labels look like, mergeable across batches: distinct values and their counts
    (up to `cap` of them), whether floats are all whole, rows and missing labels."""

    counts: dict[Any, int] = field(default_factory=dict)
    overflow: bool = False  # more distinct values than the cap
    integral: bool = True  # every finite float is a whole number
    rows: int = 0
    missing: int = 0

    def merge(self, other: LabelSummary, cap: int) -> LabelSummary:
        counts = dict(self.counts)
        for value, n in other.counts.items():
            counts[value] = counts.get(value, 0) + n
        overflow = self.overflow or other.overflow or len(counts) > cap
        if len(counts) > cap:
            counts = dict(sorted(counts.items(), key=lambda kv: -kv[1])[:cap])
        return LabelSummary(
            counts, overflow, self.integral and other.integral, self.rows + other.rows, self.missing + other.missing
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "counts": [[k, v] for k, v in sorted(self.counts.items(), key=lambda kv: str(kv[0]))],
            "overflow": self.overflow,
            "integral": self.integral,
            "rows": self.rows,
            "missing": self.missing,
        }


def summarize_labels(values: pa.Array | pa.ChunkedArray, cap: int) -> LabelSummary:
    """One batch's LabelSummary (`cap`: keep at most this many distinct values)."""
    array = _array(values)
    missing = array.null_count
    integral = True
    if pa.types.is_floating(array.type):
        finite = array.filter(pc.is_finite(array).fill_null(False))
        missing += len(array) - array.null_count - len(finite)
        integral = bool(pc.all(pc.equal(pc.floor(finite), finite)).as_py() in (True, None))
        array = finite
    valid = array.drop_null()
    counted = pc.value_counts(valid).to_pylist()
    overflow = len(counted) > cap
    counted = sorted(counted, key=lambda item: -item["counts"])[:cap]
    return LabelSummary(
        {item["values"]: int(item["counts"]) for item in counted}, overflow, integral, len(values), missing
    )


def resolve_task(
    requested: str,
    *,
    label: str,
    dtype: str,
    splits: Mapping[str, LabelSummary],
    max_classes: int,
) -> Task:
    """The task of `data.task` (`auto` reads it off the train split), checked against every split:
    LabelError (naming the column, the rule and the values found) before any training."""
    train = splits["train"]
    shown = _shown(train)
    if train.rows - train.missing == 0:
        raise LabelError(label, "empty", "the train split has no labelled row")
    kind = requested
    numeric = dtype in ("int64", "float64")
    whole = dtype == "int64" or (dtype == "float64" and train.integral)
    if requested == "auto":
        if dtype in ("string", "bool"):
            if train.overflow:
                raise LabelError(
                    label,
                    "too_many_classes",
                    f"a {dtype} label with more than data.max_classes={max_classes} distinct values; values "
                    f"found include {shown}. Use a numeric label for a regression, or raise data.max_classes",
                )
            kind = "binary" if len(train.counts) <= 2 else "multiclass"
        elif whole and not train.overflow:
            kind = "binary" if len(train.counts) <= 2 else "multiclass"
        else:
            kind = "regression"
    if kind == "regression":
        if not numeric:
            raise LabelError(label, "numeric", f"a regression needs a numeric label, got {dtype} values {shown}")
        return Task(kind="regression", label=label, label_type="float" if dtype == "float64" else "int")
    # a classifier
    if dtype == "float64" and not train.integral:
        raise LabelError(
            label,
            "float_label",
            f"a {kind} task needs class labels, got fractional float values such as {shown}; "
            "use data.task=regression, or integer classes",
        )
    if train.overflow or len(train.counts) > max_classes:
        raise LabelError(
            label,
            "too_many_classes",
            f"more than data.max_classes={max_classes} distinct values on the train split (found {shown}, ...)",
        )
    classes = sorted(train.counts, key=_sort_key)
    if len(classes) < 2:
        raise LabelError(
            label, "one_class", f"a {kind} task needs at least two classes; the train split has only {shown}"
        )
    if kind == "binary" and len(classes) != 2:
        raise LabelError(label, "classes", f"a binary task needs exactly two classes, found {len(classes)}: {shown}")
    label_type: LabelType = {"int64": "int", "float64": "int", "string": "string", "bool": "bool"}[dtype]
    if label_type == "int":
        classes = [int(c) for c in classes]
    for name, summary in splits.items():
        unseen = sorted({(int(v) if label_type == "int" else v) for v in summary.counts} - set(classes), key=_sort_key)
        if unseen or summary.overflow:
            raise LabelError(
                label,
                "unseen_class",
                f"the {name} split has classes the train split lacks: {[str(v) for v in unseen][:10]}"
                f"{' (and more)' if summary.overflow else ''}; train has {classes}",
            )
    return Task(kind=kind, label=label, label_type=label_type, classes=classes)  # type: ignore[arg-type]


def check_known_task(task: Task, splits: Mapping[str, LabelSummary]) -> None:
    """LabelError when a split's labels fall outside a known classifier's classes (a retrain keeps
    its champion's task: a new class needs a new pipeline run)."""
    if not task.is_classifier:
        return
    allowed = set(task.classes)
    for name, summary in splits.items():
        values = {(int(v) if task.label_type == "int" else v) for v in summary.counts}
        unseen = sorted(values - allowed, key=_sort_key)
        if unseen or summary.overflow:
            raise LabelError(
                task.label,
                "unseen_class",
                f"the {name} split has labels outside the model's classes {task.classes}: "
                f"{[str(v) for v in unseen][:10]}; a new class needs a new pipeline run",
            )


def _shown(summary: LabelSummary, limit: int = 8) -> str:
    """The most frequent values, as `'a' (3 rows), 'b' (2 rows)`."""
    top = sorted(summary.counts.items(), key=lambda kv: -kv[1])[:limit]
    return ", ".join(f"{v!r} ({n} rows)" for v, n in top)


def _sort_key(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, (bool, int, float)) else (1, str(value))


def _array(values: pa.Array | pa.ChunkedArray | Sequence[Any]) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks()
    if isinstance(values, pa.Array):
        return values
    return pa.array(list(values))


def _as_label_type(array: pa.Array, label_type: LabelType, column: str) -> pa.Array:
    target = {"int": pa.int64(), "float": pa.float64(), "string": pa.string(), "bool": pa.bool_()}[label_type]
    if array.type == target or pa.types.is_null(array.type):
        return array.cast(target)
    if label_type == "int" and pa.types.is_floating(array.type):
        finite = pc.is_finite(array).fill_null(True)
        whole = pc.equal(pc.floor(array), array).fill_null(True)
        if not pc.all(pc.and_(finite, whole)).as_py():
            raise LabelError(column, "type", "class labels are whole numbers; got fractional values")
        return array.cast(pa.int64())
    if label_type == "int" and pa.types.is_integer(array.type):
        return array.cast(pa.int64())
    raise LabelError(column, "type", f"labels of type {array.type} for a task whose classes are {label_type} values")
