"""The task's rules (rayloop.tasks): reading it off the label, labels that do not fit, codes and
back, feedback labels, LightGBM's objective, metric defaults and directions; and the per-task
metrics and split-conformal intervals of rayloop.training.evaluate."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from sklearn import metrics as skm

from rayloop.errors import LabelError
from rayloop.tasks import Task, better, check_known_task, quality_shortfall, resolve_task, summarize_labels
from rayloop.training.evaluate import conformal_half_width, evaluate_task


def _resolve(values: list, requested: str = "auto", dtype: str | None = None, max_classes: int = 50, **splits) -> Task:
    array = pa.array(values)
    dtype = dtype or {"int64": "int64", "double": "float64", "string": "string", "bool": "bool"}[str(array.type)]
    summaries = {"train": summarize_labels(array, max_classes)}
    summaries |= {name: summarize_labels(pa.array(v, array.type), max_classes) for name, v in splits.items()}
    return resolve_task(requested, label="y", dtype=dtype, splits=summaries, max_classes=max_classes)


# ---- auto ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("values", "kind", "classes"),
    [
        ([0, 1, 1, 0], "binary", [0, 1]),
        ([True, False, True], "binary", [False, True]),
        (["no", "yes", "yes"], "binary", ["no", "yes"]),
        ([3, 1, 2, 2], "multiclass", [1, 2, 3]),
        (["b", "a", "c"], "multiclass", ["a", "b", "c"]),
        ([1.0, 2.0, 0.0, 2.0], "multiclass", [0, 1, 2]),  # whole floats: classes, as ints
        ([0.5, 1.7, 2.25], "regression", []),
    ],
)
def test_auto_reads_the_task_off_the_labels(values, kind, classes):
    task = _resolve(values)
    assert task.kind == kind and task.classes == classes


def test_a_whole_number_label_with_more_values_than_max_classes_is_a_regression():
    task = _resolve(list(range(60)), max_classes=50)
    assert task.kind == "regression" and task.label_type == "int"


# ---- labels that do not fit, before any training ---------------------------------------------------
def test_a_string_label_for_a_regression_names_the_column_the_rule_and_the_values():
    with pytest.raises(LabelError, match=r"label column 'y': a regression needs a numeric label.*'cheap'") as err:
        _resolve(["cheap", "dear"], "regression")
    assert err.value.rule == "numeric"


def test_a_label_with_one_class_only_is_a_clear_error():
    with pytest.raises(LabelError, match=r"at least two classes; the train split has only 'a' \(3 rows\)") as err:
        _resolve(["a", "a", "a"], "multiclass")
    assert err.value.rule == "one_class"


def test_fractional_floats_for_a_classifier_are_refused():
    with pytest.raises(LabelError, match="fractional float values") as err:
        _resolve([0.2, 0.7, 1.0], "multiclass")
    assert err.value.rule == "float_label"


def test_too_many_string_classes_are_refused():
    with pytest.raises(LabelError, match=r"more than data.max_classes=5") as err:
        _resolve([f"c{i}" for i in range(9)], max_classes=5)
    assert err.value.rule == "too_many_classes"


def test_a_class_the_train_split_lacks_is_refused_naming_the_split():
    with pytest.raises(LabelError, match=r"the test split has classes the train split lacks: \['d'\]") as err:
        _resolve(["a", "b", "c"], test=["a", "d"])
    assert err.value.rule == "unseen_class"


def test_a_binary_task_with_three_classes_is_refused():
    with pytest.raises(LabelError, match="exactly two classes, found 3"):
        _resolve([0, 1, 2], "binary")


def test_a_retrain_keeps_the_champions_classes():
    task = _resolve(["a", "b", "c"])
    check_known_task(task, {"train": summarize_labels(pa.array(["a", "c"]), 50)})
    with pytest.raises(LabelError, match="a new class needs a new pipeline run"):
        check_known_task(task, {"train": summarize_labels(pa.array(["a", "z"]), 50)})


def test_missing_and_non_finite_labels_are_counted_not_classes():
    summary = summarize_labels(pa.array([1.0, None, float("nan"), 2.0, float("inf")]), 50)
    assert summary.missing == 3 and summary.counts == {1.0: 1, 2.0: 1} and summary.rows == 5


# ---- codes and back --------------------------------------------------------------------------------
def test_labels_encode_to_codes_in_class_order_and_decode_back():
    task = _resolve(["low", "high", "medium"])
    codes = task.encode(pa.array(["medium", "low", "high"]))
    assert codes.tolist() == [2, 1, 0] and task.decode(codes) == ["medium", "low", "high"]
    with pytest.raises(LabelError, match=r"values \['huge'\] are not among the classes"):
        task.encode(["huge"])
    probs = np.array([[0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    assert task.decode(task.predicted_codes(probs)) == ["medium", "high"]


def test_feedback_labels_parse_in_the_tasks_type_and_booleans_are_not_numbers():
    regression = _resolve([0.5, 1.5, 2.5])
    assert regression.parse_label(3) == 3.0
    for bad in (True, "3.0", float("nan"), None):
        with pytest.raises(LabelError) as err:
            regression.parse_label(bad)
        assert err.value.rule == "type"
    classes = _resolve([1, 2, 3])
    assert classes.parse_label(2) == 2 and classes.parse_label(2.0) == 2
    with pytest.raises(LabelError) as err:
        classes.parse_label(7)
    assert err.value.rule == "unknown_class"
    for bad in (True, "2", 2.5):
        with pytest.raises(LabelError) as err:
            classes.parse_label(bad)
        assert err.value.rule == "type"


def test_lightgbm_objective_follows_the_task_and_a_regression_may_pick_its_loss():
    multiclass = _resolve(["a", "b", "c"])
    assert multiclass.lightgbm_params({"num_leaves": 7}) | {} == {
        "verbosity": -1,
        "metric": ["multi_logloss"],
        "objective": "multiclass",
        "num_class": 3,
        "num_leaves": 7,
    }
    assert _resolve([0.5, 1.5]).lightgbm_params({"objective": "huber"})["objective"] == "huber"
    with pytest.raises(LabelError, match="does not fit a binary task"):
        _resolve([0, 1]).lightgbm_params({"objective": "regression"})


# ---- metrics, defaults and directions --------------------------------------------------------------
def test_metric_defaults_per_task_and_a_metric_of_another_task_is_refused():
    assert _resolve([0, 1]).check_metric(None, "gate") == "auc"
    assert _resolve(["a", "b", "c"]).check_metric(None, "gate") == "macro_f1"
    assert _resolve([0.5, 1.5]).check_metric(None, "gate") == "rmse"
    with pytest.raises(LabelError, match="gate metric 'auc' does not apply to a regression task"):
        _resolve([0.5, 1.5]).check_metric("auc", "gate")


def test_directions_and_a_relative_shortfall_for_errors_in_label_units():
    assert better("rmse", 1.0, 2.0) and not better("rmse", 2.0, 1.0)
    assert better("macro_f1", 0.9, 0.8) and better("multi_logloss", 0.3, 0.5)
    assert quality_shortfall("auc", 0.70, 0.80) == pytest.approx(0.10)  # absolute
    assert quality_shortfall("mae", 12.0, 10.0) == pytest.approx(0.20)  # relative: 20% worse
    assert quality_shortfall("mae", 9.0, 10.0) <= 0.0


def test_multiclass_and_regression_metrics_agree_with_scikit_learn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 400)
    probs = rng.dirichlet([1, 1, 1], 400)
    probs[np.arange(400), y] += 0.5
    probs /= probs.sum(axis=1, keepdims=True)
    got = evaluate_task("multiclass", y, probs, classes=["a", "b", "c"])
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, probs.argmax(axis=1)))
    assert got["macro_f1"] == pytest.approx(skm.f1_score(y, probs.argmax(axis=1), average="macro"))
    assert got["multi_logloss"] == pytest.approx(skm.log_loss(y, probs))
    assert got["recall.b"] == pytest.approx(skm.recall_score(y, probs.argmax(axis=1), average=None)[1])

    target = rng.normal(50, 10, 500)
    predicted = target + rng.normal(0, 3, 500)
    got = evaluate_task("regression", target, predicted, lower=predicted - 5, upper=predicted + 5)
    assert got["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(target, predicted)))
    assert got["mae"] == pytest.approx(skm.mean_absolute_error(target, predicted))
    assert got["r2"] == pytest.approx(skm.r2_score(target, predicted))
    assert got["interval_coverage"] == pytest.approx(np.mean(np.abs(target - predicted) <= 5))
    assert got["interval_width"] == pytest.approx(10.0)


def test_split_conformal_intervals_hold_their_coverage_on_new_rows():
    rng = np.random.default_rng(1)
    calibration, new = rng.standard_t(4, 2000), rng.standard_t(4, 20_000)  # heavy-tailed residuals
    for coverage in (0.8, 0.9, 0.95):
        half = conformal_half_width(calibration, coverage)
        held = np.mean(np.abs(new) <= half)
        # at least the target in expectation; a 2000-row calibration set is within ~1.5 points of it
        assert coverage - 0.015 <= held <= coverage + 0.02, (coverage, held)
    assert np.isnan(conformal_half_width(np.array([]), 0.9))
    # the ceil((n + 1) * coverage)-th smallest |residual|: with 9 residuals and 0.9, the 9th
    assert conformal_half_width(np.arange(1.0, 10.0), 0.9) == 9.0
