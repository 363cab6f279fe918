"""Drift statistics against scipy on known distributions, and the detector's decisions."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from scipy import stats

from rayloop.bundle import prediction_histogram
from rayloop.data.synthetic import generate
from rayloop.monitoring.drift import (
    PREDICTION,
    DriftDetector,
    WindowCounts,
    chi2_homogeneity,
    family_adjusted,
    family_min_q,
    js_distance,
    ks_binned,
    merge_groups,
    missing_test,
    psi,
    psi_null_quantile,
    rank_test,
    scale_test,
)
from tests.support import fitted_synthetic

RNG = np.random.default_rng(5)
EDGES = np.quantile(RNG.normal(size=200_000), np.linspace(0, 1, 201)[1:-1])  # 200 fine reference bins


def _binned(values: np.ndarray) -> np.ndarray:
    return np.bincount(np.searchsorted(EDGES, values, side="left"), minlength=len(EDGES) + 1)


@pytest.mark.parametrize("shift", [0.0, 0.1, 0.3])
def test_rank_test_matches_scipy_mann_whitney_on_the_same_bins(shift):
    reference = RNG.normal(size=50_000)
    window = RNG.normal(loc=shift, size=800)
    z, p = rank_test(_binned(window), _binned(reference))
    ref_bins = np.searchsorted(EDGES, reference, side="left")
    win_bins = np.searchsorted(EDGES, window, side="left")
    expected = stats.mannwhitneyu(win_bins, ref_bins, method="asymptotic", use_continuity=False)
    assert p == pytest.approx(expected.pvalue, rel=0.05, abs=1e-6)
    if shift > 0:
        assert z > 0  # the window's values rank above the reference's
    else:  # seeded: this window from the reference distribution is not called shifted
        assert p > 0.05


@pytest.mark.parametrize("scale", [1.0, 1.2, 1.5])
def test_scale_test_agrees_with_scipy_ansari_bradley(scale):
    reference = RNG.normal(size=50_000)
    window = RNG.normal(scale=scale, size=600)
    z, p = scale_test(_binned(window), _binned(reference))
    expected = stats.ansari(window, reference[:20_000]).pvalue  # scipy's exact-ish test on raw values
    assert (p < 0.01) == (expected < 0.01)
    assert np.log10(max(p, 1e-300)) == pytest.approx(np.log10(max(expected, 1e-300)), abs=1.0)
    if scale > 1.0:
        assert z > 0  # wider than the reference


@pytest.mark.parametrize(
    "k, n, big_k, m",
    [
        (1, 100, 0, 100_000),
        (0, 100, 0, 100_000),
        (7, 1000, 50, 100_000),
        (60, 1000, 5000, 100_000),
        (0, 5000, 5000, 100_000),
        (250, 5000, 5000, 100_000),
        (3, 20, 1, 40),
    ],
)
def test_missing_test_is_scipys_fisher_exact(k, n, big_k, m):
    expected = stats.fisher_exact([[k, n - k], [big_k, m - big_k]]).pvalue
    assert missing_test(k, n, big_k, m) == pytest.approx(expected, rel=1e-9, abs=1e-300)


def test_one_missing_value_where_the_reference_had_none_is_not_an_alarm():
    assert missing_test(1, 100, 0, 100_000) == pytest.approx(stats.fisher_exact([[1, 99], [0, 100_000]]).pvalue)
    assert missing_test(1, 100, 0, 100_000) == pytest.approx(100 / 100_100, rel=0.01)  # n / (n + N), not ~0
    assert missing_test(40, 100, 0, 100_000) < 1e-10


@pytest.mark.parametrize("scale", [1.0, 1.3])
def test_binned_ks_is_scipy_ks_up_to_one_bin(scale):
    reference = RNG.normal(size=50_000)
    window = RNG.normal(scale=scale, size=2000)
    d, p = ks_binned(_binned(window), _binned(reference))
    expected = stats.ks_2samp(window, reference)
    assert expected.statistic - 0.01 <= d <= expected.statistic + 1e-12  # at most the raw D, within a bin
    assert np.log10(p) == pytest.approx(np.log10(expected.pvalue), abs=0.5)


def test_chi2_homogeneity_is_scipys_contingency_test_and_ignores_empty_bins():
    window, reference = np.array([30, 50, 0, 20]), np.array([300, 400, 0, 300])
    stat, p, dof = chi2_homogeneity(window, reference)
    expected = stats.chi2_contingency(np.array([[30, 50, 20], [300, 400, 300]]), correction=False)
    assert (stat, dof) == (pytest.approx(expected.statistic), 2) and p == pytest.approx(expected.pvalue)
    far = chi2_homogeneity(np.array([90, 5, 5]), np.array([300, 400, 300]))
    assert far[1] == pytest.approx(
        stats.chi2_contingency(np.array([[90, 5, 5], [300, 400, 300]]), correction=False).pvalue
    )


def test_p_values_are_uniform_when_nothing_drifts():
    """Calibration: under no drift each test's p-values spread evenly over [0, 1]."""
    reference = _binned(RNG.normal(size=100_000))
    rank_p, chi_p = [], []
    for _ in range(300):
        window = _binned(RNG.normal(size=500))
        rank_p.append(rank_test(window, reference)[1])
        groups = merge_groups(reference, 0.05, ordered=True)
        chi_p.append(chi2_homogeneity([window[g].sum() for g in groups], [reference[g].sum() for g in groups])[1])
    assert stats.kstest(rank_p, "uniform").pvalue > 0.01
    assert stats.kstest(chi_p, "uniform").pvalue > 0.01


def test_psi_and_js_on_known_distributions():
    same = np.array([25, 25, 25, 25])
    assert psi(same, same * 10) == pytest.approx(0.0) and js_distance(same, same) == pytest.approx(0.0)
    p, q = np.array([0.4, 0.6]), np.array([0.6, 0.4])
    assert psi(p * 100, q * 100) == pytest.approx(float(np.sum((p - q) * np.log(p / q))))
    assert js_distance([1, 0], [0, 1]) == pytest.approx(1.0)
    assert js_distance(p, q) == pytest.approx(
        float(stats.entropy(p, (p + q) / 2, base=2) / 2 + stats.entropy(q, (p + q) / 2, base=2) / 2) ** 0.5
    )


def test_the_psi_threshold_grows_as_windows_shrink_and_holds_its_false_alarm_rate():
    reference = _binned(RNG.normal(size=200_000))
    groups = merge_groups(reference, 0.1, ordered=True)
    ref10 = np.array([reference[g].sum() for g in groups])
    assert psi_null_quantile(100, 200_000, 10, 0.05) > 0.1 > psi_null_quantile(5000, 200_000, 10, 0.05)
    threshold = psi_null_quantile(300, int(ref10.sum()), len(ref10), 0.05)
    values = [
        psi(np.array([w[g].sum() for g in groups]), ref10) for w in (_binned(RNG.normal(size=300)) for _ in range(400))
    ]
    assert 0.01 <= np.mean(np.array(values) > threshold) <= 0.10


def test_merge_groups_cover_every_bin_once_with_the_minimum_share():
    counts = np.array([50, 1, 1, 30, 2, 200, 3, 3])
    for ordered in (True, False):
        groups = merge_groups(counts, 0.05, ordered=ordered)
        assert sorted(np.concatenate(groups).tolist()) == list(range(len(counts)))
        assert all(counts[g].sum() / counts.sum() >= 0.05 for g in groups)


@pytest.fixture(scope="module")
def detector():
    _, table, _, profile = fitted_synthetic(40_000, seed=21)
    scores = _score(table)
    profile = profile.model_copy(update={"prediction_histogram": prediction_histogram(scores)})
    return DriftDetector(profile, alpha=0.01)


def _score(table: pa.Table) -> np.ndarray:
    risk = np.nan_to_num(table.column("risk_score").to_numpy(zero_copy_only=False).astype(float))
    return 1 / (1 + np.exp(-risk))


def test_the_detector_keeps_quiet_on_reference_windows(detector):
    live = generate(20_000, seed=22)
    alarms = [detector.check(live.slice(i * 1000, 1000), _score(live.slice(i * 1000, 1000))).alarm for i in range(20)]
    assert sum(alarms) <= 2  # alpha 0.01 per window


def test_the_detector_names_the_shifted_features(detector):
    live = generate(1000, seed=23)
    sd = detector.profile.feature("age").std
    shifted = live.set_column(live.schema.get_field_index("age"), "age", pc.add(live.column("age"), 0.5 * sd))
    channels = pa.array(["store"] * 600 + live.column("channel").to_pylist()[600:])
    shifted = shifted.set_column(shifted.schema.get_field_index("channel"), "channel", channels)
    report = detector.check(shifted, _score(shifted))
    assert report.alarm and set(report.drifted) == {"age", "channel"}
    assert report.feature("age").statistics["rank_z"] > 0 and report.feature("age").psi > 0.1


def test_scores_alone_reveal_a_shift_the_features_are_not_given(detector):
    live = generate(2000, seed=24)
    risky = live.filter(pc.greater(live.column("risk_score"), 0.0))  # only high-score rows: a prior shift
    report = detector.test(detector.count(risky.select(["channel"]), _score(risky)))
    assert PREDICTION in report.drifted


def test_a_window_with_one_missing_value_keeps_quiet(detector):
    live = generate(500, seed=25)
    ages = live.column("age").to_pylist()
    ages[0] = None
    live = live.set_column(live.schema.get_field_index("age"), "age", pa.array(ages, pa.float64()))
    report = detector.check(live, _score(live))
    assert "age" not in report.drifted and "missing" in report.feature("age").p_values


def test_a_wider_spread_with_the_same_centre_is_found(detector):
    live = generate(1000, seed=26)
    mean = detector.profile.feature("age").mean
    wider = pc.add(pc.multiply(pc.subtract(live.column("age"), mean), 1.5), mean)
    report = detector.check(live.set_column(live.schema.get_field_index("age"), "age", wider), None)
    age = report.feature("age")
    assert "age" in report.drifted and age.statistics["scale_z"] > 0 and age.p_adjusted["scale"] < 0.01


def test_unseen_categories_and_missing_values_fill_their_buckets(detector):
    table = pa.table({"channel": ["web", "fax", None, "telex"], "age": [30.0, None, float("nan"), 40.0]})
    counts = detector.count(table)
    channel = counts.bins["channel"]
    assert channel[-2] == 2 and channel[-1] == 1  # out-of-vocabulary, missing
    assert counts.bins["age"][-1] == 2 and "income" not in counts.bins  # absent columns are not counted
    again = WindowCounts.from_dict(counts.to_dict()) + counts
    assert again.rows == 8 and again.bins["channel"][-2] == 4


# ---- the two families: the scores' tests and the features' tests ------------------------------
def test_one_family_is_plain_benjamini_hochberg():
    p = RNG.uniform(size=30)
    assert np.allclose(family_adjusted(p, [False] * 30, None), stats.false_discovery_control(p, method="bh"))


def test_each_family_is_adjusted_on_its_own_and_scaled_by_its_share():
    p = np.array([0.001, 0.02, 0.3, 0.004, 0.5, 0.6, 0.7])
    is_pred = np.array([True, True, True, False, False, False, False])
    out = family_adjusted(p, is_pred, 0.25)
    assert np.allclose(out[is_pred], np.minimum(stats.false_discovery_control(p[is_pred], method="bh") / 0.25, 1))
    assert np.allclose(out[~is_pred], np.minimum(stats.false_discovery_control(p[~is_pred], method="bh") / 0.75, 1))


def test_a_shift_only_the_scores_show_alarms_with_the_split_and_not_in_one_family():
    # 4 score tests, 50 feature tests: one clear score signal drowns in one family of 54
    p = np.array([0.002, 0.4, 0.6, 0.8, *np.linspace(0.1, 0.99, 50)])
    is_pred = np.array([True] * 4 + [False] * 50)
    assert family_min_q(p, is_pred, None) > 0.05
    assert family_min_q(p, is_pred, 0.5) < 0.05


@pytest.mark.parametrize("share", [None, 0.5, 0.2])
def test_the_split_keeps_the_false_alarm_rate_at_alpha_when_nothing_drifts(share):
    rng = np.random.default_rng(9)
    windows, alpha = 4000, 0.05
    is_pred = np.array([True] * 4 + [False] * 40)
    alarms = sum(family_min_q(rng.uniform(size=44), is_pred, share) < alpha for _ in range(windows))
    # no more alarms than alpha allows, beyond sampling error
    assert stats.binomtest(alarms, windows, alpha, alternative="greater").pvalue > 0.001


def test_a_share_outside_zero_and_one_is_refused(detector):
    with pytest.raises(ValueError, match="prediction_share"):
        DriftDetector(detector.profile, prediction_share=1.0)


def test_a_score_only_shift_weighs_more_with_the_split_than_in_one_family(detector):
    # a mild label-prior shift seen only through the scores: a fifth of the low-scored rows go
    live = generate(6000, seed=31)
    scores = _score(live)
    rng = np.random.default_rng(3)
    keep = (scores >= np.median(scores)) | (rng.uniform(size=len(scores)) < 0.8)
    split = DriftDetector(detector.profile, alpha=0.01, prediction_share=0.5)
    single = DriftDetector(detector.profile, alpha=0.01)  # the default: one family
    counts = split.count(live.slice(0, 1000), scores[keep][:1000])  # features from unshifted rows
    reports = split.test(counts), single.test(counts)
    q_split, q_single = (min(q for f in r.features for q in f.p_adjusted.values()) for r in reports)
    assert reports[0].drifted == [PREDICTION]
    assert q_split < q_single / 2


def test_a_window_without_scores_gives_the_features_all_of_alpha():
    p = np.array([0.001, 0.2, 0.5])
    assert np.allclose(family_adjusted(p, [False] * 3, 0.5), stats.false_discovery_control(p, method="bh"))


def test_a_reused_detector_judges_every_window_size_as_a_fresh_one_does(detector):
    """The grouping of bins is cached per feature and window size: a detector that has seen other
    sizes (and the same size before) must report exactly what a new detector reports."""
    live = generate(3000, seed=31)
    for rows in (1000, 40, 1000, 250, 3000, 40):
        window = live.slice(0, rows)
        got = detector.check(window, _score(window)).to_dict()
        fresh = DriftDetector(detector.profile, alpha=0.01).check(window, _score(window)).to_dict()
        assert got == fresh, rows
