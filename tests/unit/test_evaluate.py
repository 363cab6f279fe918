from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import mannwhitneyu

from rayloop.training.evaluate import (
    accuracy,
    evaluate,
    evaluate_slices,
    expected_calibration_error,
    log_loss,
    roc_auc,
)


def _pairwise_auc(y, p):
    pos, neg = p[y == 1], p[y == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (pos.size * neg.size)


def test_auc_equals_the_pairwise_definition_and_scipy_mann_whitney():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    p = np.round(np.clip(0.3 * y + rng.normal(0.4, 0.2, 500), 0, 1), 2)  # rounding makes ties
    auc = roc_auc(y, p)
    assert auc == pytest.approx(_pairwise_auc(y, p), abs=1e-12)
    u = mannwhitneyu(p[y == 1], p[y == 0]).statistic
    assert auc == pytest.approx(u / ((y == 1).sum() * (y == 0).sum()), abs=1e-12)


def test_auc_extremes_and_single_class():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert roc_auc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert np.isnan(roc_auc([1, 1], [0.2, 0.3]))


def test_log_loss_accuracy_and_calibration():
    assert log_loss([1, 0], [0.5, 0.5]) == pytest.approx(np.log(2))
    assert log_loss([1], [0.0]) == pytest.approx(-np.log(1e-15))  # clipped, finite
    assert accuracy([1, 0, 1, 0], [0.9, 0.1, 0.4, 0.6]) == 0.5
    rng = np.random.default_rng(1)
    p = rng.uniform(size=200_000)
    calibrated = (rng.uniform(size=p.size) < p).astype(int)
    assert expected_calibration_error(calibrated, p) < 0.01
    overconfident = np.where(p > 0.5, 1.0, 0.0)
    assert expected_calibration_error(calibrated, overconfident) > 0.2


def test_evaluate_and_slices():
    y = np.array([0, 1] * 50 + [1, 0] * 10)
    p = np.array([0.2, 0.8] * 50 + [0.3, 0.7] * 10)
    slices = ["web"] * 100 + ["store"] * 19 + [None]
    report = evaluate(y, p)
    assert set(report) == {"auc", "logloss", "accuracy", "ece", "positive_rate", "n"}
    per = evaluate_slices(y, p, slices, min_rows=10)
    assert set(per) == {"web", "store"}  # the one-row missing slice is under min_rows
    assert per["web"]["auc"] == 1.0 and per["store"]["auc"] == pytest.approx(0.0, abs=0.06)


@pytest.mark.parametrize(
    "y, p, message",
    [([0, 1], [0.5], "differ in length"), ([0, 2], [0.1, 0.2], "0 or 1"), ([0, 1], [0.1, 1.2], r"\[0, 1\]")],
)
def test_bad_inputs_are_explained(y, p, message):
    with pytest.raises(ValueError, match=message):
        evaluate(y, p)


def test_the_paired_bootstrap_interval_brackets_the_difference_and_is_zero_for_the_same_model():
    from rayloop.training.evaluate import paired_difference_interval, roc_auc

    rng = np.random.default_rng(3)
    y = (rng.random(400) < 0.4).astype(float)
    signal = y + rng.normal(0, 1.0, 400)
    strong = 1 / (1 + np.exp(-signal))
    weak = 1 / (1 + np.exp(-(signal + rng.normal(0, 3.0, 400))))  # much noisier scores
    lo, hi = paired_difference_interval(y, strong, weak, "auc")
    assert 0 < lo <= roc_auc(y, strong) - roc_auc(y, weak) <= hi  # clearly better: the interval excludes 0
    assert paired_difference_interval(y, strong, weak, "auc") == (lo, hi)  # seeded
    assert paired_difference_interval(y, strong, strong, "accuracy") == (0.0, 0.0)
    twin = 1 / (1 + np.exp(-(signal + rng.normal(0, 0.05, 400))))  # nearly the same model
    lo, hi = paired_difference_interval(y, twin, strong, "logloss")
    assert lo < 0 < hi  # indistinguishable: the interval straddles 0
