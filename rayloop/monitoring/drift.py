"""Drift statistics: one window of live rows against the reference profile (pure, no Ray).

Everything works on bin counts over the reference profile's bins (fine quantile bins per numeric
feature with exact reference counts, category frequencies with an out-of-vocabulary bucket, and
the held-out score histogram). A window is therefore a handful of small count vectors: it adds up
batch by batch, persists as JSON, and never holds raw rows.

Per feature, against the reference:
- numeric and prediction: a rank test for location (Mann-Whitney U against the reference, via
  ridits of the reference bins; exact with ties), a rank test for spread (distance of the ridit
  from the median), two-sample Kolmogorov-Smirnov at the bin edges, a chi-square test of
  homogeneity on bins merged to suit the window size (shape), and Fisher's exact test on the
  missing rate where either side has missing values;
- categorical: chi-square of homogeneity over categories, the out-of-vocabulary bucket and missing;
- effect sizes for people: PSI and Jensen-Shannon distance on the same merged bins.

All p-values of a window form one family, controlled with Benjamini-Hochberg
(`scipy.stats.false_discovery_control`): the chance that a window from the reference distribution
alarms is at most `alpha`, whatever the window size, while a shift that shows in several tests or
features keeps its power. A feature drifts when one of its decision tests rejects and its PSI is
at least `min_psi` (zero by default: big windows then flag small but real shifts).

With `prediction_share` the scores' tests form a family of their own with that share of `alpha`,
the features the rest (a Bonferroni split between "do the scores drift?" and "do the inputs
drift?"): a shift only the scores show (a change of the label prior) then alarms sooner, input
shifts a little later. One family stays the default (benchmarks/README.md, drift).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy import special

from rayloop.config import DEFAULT_PREDICTION_SHARE
from rayloop.features.profile import (
    CategoricalProfile,
    Histogram,
    NumericProfile,
    ReferenceProfile,
)
from rayloop.features.stats import numeric_values

__all__ = [
    "DEFAULT_PREDICTION_SHARE",
    "LABEL",
    "NUMERIC_TESTS",
    "PREDICTED_CLASS",
    "PREDICTION",
    "DriftDetector",
    "DriftReport",
    "FeatureDrift",
    "WindowCounts",
    "chi2_homogeneity",
    "family_adjusted",
    "family_min_q",
    "js_distance",
    "ks_binned",
    "label_detector",
    "merge_groups",
    "missing_test",
    "psi",
    "psi_null_quantile",
    "rank_test",
    "scale_test",
]

PREDICTION = "prediction"  # the pseudo-feature of model scores: P(positive), or a regression's values
PREDICTED_CLASS = "predicted_class"  # a multiclass model's predicted classes (their frequencies)
LABEL = "label"  # the pseudo-feature of arrived labels (label drift), in a detector of its own
NUMERIC_TESTS = ("rank", "scale", "ks", "chi2")
Kind = Literal["numeric", "categorical", "prediction"]
_EPS = 1e-4  # smoothing of empty bins for PSI (the usual choice; keeps log finite)


# ---- statistics on count vectors ---------------------------------------------------------------


def _scipy_stats():
    """scipy.stats, imported on the first window test: it is slow to import, and processes that
    only read the monitor's state (the CLI) never test a window."""
    from scipy import stats

    return stats


def _proportions(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    return counts / total if total else np.zeros_like(counts, dtype=np.float64)


def psi(window: np.ndarray, reference: np.ndarray, eps: float = _EPS) -> float:
    """Population stability index of two count vectors over the same bins."""
    p = np.maximum(_proportions(np.asarray(window, dtype=np.float64)), eps)
    q = np.maximum(_proportions(np.asarray(reference, dtype=np.float64)), eps)
    return float(np.sum((p - q) * np.log(p / q)))


def js_distance(window: np.ndarray, reference: np.ndarray) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) of two count vectors over the same bins."""
    p = _proportions(np.asarray(window, dtype=np.float64))
    q = _proportions(np.asarray(reference, dtype=np.float64))
    if not p.any() or not q.any():
        return 0.0
    from scipy.spatial import distance  # slow to import, like scipy.stats (see _scipy_stats)

    return float(distance.jensenshannon(p, q, base=2.0))


def psi_null_quantile(n: int, n_reference: int, bins: int, alpha: float) -> float:
    """The PSI that a window of `n` reference rows exceeds with probability about `alpha`.

    Under no drift n·PSI is about chi-square with bins-1 degrees of freedom (scaled by 1/n + 1/N),
    so a fixed PSI cut (0.1, 0.25) alarms on nearly every small window and misses real shifts in
    big ones. This is the threshold to read a PSI against at that window size.
    """
    if n <= 0 or bins < 2:
        return math.inf
    scale = 1.0 / n + (1.0 / n_reference if n_reference else 0.0)
    return float(special.chdtri(bins - 1, alpha) * scale)  # chi2.isf without the distribution overhead


def merge_groups(reference: np.ndarray, min_share: float, ordered: bool) -> list[np.ndarray]:
    """Groups of bin indices, each holding at least `min_share` of the reference.

    Ordered bins (numeric) merge with their neighbours; unordered ones (categories) keep their
    large members and pool the small ones into one group.
    """
    ref = np.asarray(reference, dtype=np.float64)
    total = ref.sum()
    if total <= 0 or len(ref) == 0:
        return [np.arange(len(ref))]
    share = ref / total
    if not ordered:
        big = [np.array([i]) for i in np.flatnonzero(share >= min_share)]
        small = np.flatnonzero(share < min_share)
        if len(small):
            if share[small].sum() >= min_share or not big:
                big.append(small)
            else:  # too little even pooled: join the smallest big group
                smallest = min(range(len(big)), key=lambda g: share[big[g]].sum())
                big[smallest] = np.sort(np.concatenate([big[smallest], small]))
        return big
    groups: list[list[int]] = []
    current: list[int] = []
    mass = 0.0
    for i, s in enumerate(share):
        current.append(i)
        mass += s
        if mass >= min_share:
            groups.append(current)
            current, mass = [], 0.0
    if current:
        if groups:
            groups[-1].extend(current)
        else:
            groups.append(current)
    return [np.asarray(g) for g in groups]


def _group_index(groups: Sequence[np.ndarray], bins: int) -> np.ndarray:
    """bin -> the index of its group in `groups` (which cover every bin once)."""
    index = np.empty(bins, dtype=np.intp)
    for g, members in enumerate(groups):
        index[members] = g
    return index


def _grouped(counts: np.ndarray, index: np.ndarray, n_groups: int) -> np.ndarray:
    """Counts summed per group: one bincount (exact for counts, which are whole numbers)."""
    return np.bincount(index, weights=counts, minlength=n_groups)


def chi2_homogeneity(window: np.ndarray, reference: np.ndarray) -> tuple[float, float, int]:
    """Chi-square test that window and reference counts come from one distribution: (stat, p, dof).

    `scipy.stats.chi2_contingency(table, correction=False)` computed directly (its wrapper costs
    half a millisecond per call, a few hundred calls a second at full sampling).
    """
    table = np.vstack([np.asarray(window, dtype=np.float64), np.asarray(reference, dtype=np.float64)])
    table = table[:, table.sum(axis=0) > 0]
    rows = table.sum(axis=1)
    if table.shape[1] < 2 or rows[0] == 0 or rows[1] == 0:
        return 0.0, 1.0, 0
    expected = np.outer(rows, table.sum(axis=0)) / rows.sum()
    stat = float(np.sum((table - expected) ** 2 / expected))
    dof = table.shape[1] - 1
    return stat, float(special.chdtrc(dof, stat)), dof


def ks_binned(window: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov on ordered bins: D at the bin edges and its asymptotic p-value.

    D is the largest gap between the two empirical CDFs at the reference's bin edges, so it is at
    most the D of the raw values and the test is conservative by the width of one bin.
    """
    d, en = _ks_statistic(window, reference)
    return d, _ks_p_values([d], [en])[0]


def _ks_statistic(window: np.ndarray, reference: np.ndarray) -> tuple[float, int]:
    """KS's D on ordered bins and its effective sample size (0 when either side is empty)."""
    w = np.asarray(window, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    n, m = w.sum(), r.sum()
    if n == 0 or m == 0:
        return 0.0, 0
    d = float(np.max(np.abs(np.cumsum(w)[:-1] / n - np.cumsum(r)[:-1] / m), initial=0.0))
    return d, max(1, round(n * m / (n + m)))


def _ks_p_values(d: Sequence[float], en: Sequence[int]) -> list[float]:
    """`kstwo.sf` of many statistics in one call: its argument checks cost as much as one
    p-value, so a window's features share them (the values are the same as one call each)."""
    d_arr, en_arr = np.asarray(d, dtype=np.float64), np.asarray(en, dtype=np.int64)
    out = np.ones(len(d_arr))
    tested = en_arr > 0
    if tested.any():
        out[tested] = _scipy_stats().kstwo.sf(d_arr[tested], en_arr[tested])
    return [float(p) for p in out]


def _score_test(window: np.ndarray, reference: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """z and two-sided p of the window's mean bin score against the reference's (two-sample, exact
    mean and variance under no drift from the reference bins)."""
    w = np.asarray(window, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    n, m = w.sum(), r.sum()
    if n == 0 or m == 0:
        return 0.0, 1.0
    q = r / m
    expected = float(np.dot(q, scores))
    variance = float(np.dot(q, (scores - expected) ** 2))
    if variance <= 0:
        return 0.0, 1.0
    z = (float(np.dot(w, scores)) / n - expected) / math.sqrt(variance * (1.0 / n + 1.0 / m))
    return z, float(2.0 * special.ndtr(-abs(z)))


def _ridits(reference: np.ndarray) -> np.ndarray:
    r = np.asarray(reference, dtype=np.float64)
    q = r / r.sum() if r.sum() else r
    return np.cumsum(q) - q / 2.0


def rank_test(window: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """Mann-Whitney U of the window against the reference on ordered bins: (z, two-sided p).

    Each bin scores its reference ridit (share of the reference below it plus half its own), so
    ties are exact and a window from the reference scores 0.5 on average. z > 0: the window sits
    higher than the reference.
    """
    return _score_test(window, reference, _ridits(reference))


def scale_test(window: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """A rank test for spread (Ansari-Bradley style) on ordered bins: (z, two-sided p).

    Each bin scores its ridit's distance from the reference median, |ridit - 0.5|; z > 0: the
    window spreads wider than the reference. Location tests are nearly blind to a change of
    variance with the same centre; this one is not.
    """
    return _score_test(window, reference, np.abs(_ridits(reference) - 0.5))


def missing_test(window_missing: int, window_rows: int, reference_missing: int, reference_rows: int) -> float:
    """Fisher's exact test that the window's missing rate equals the reference's (two-sided p).

    Exact, because missing values are often rare: one missing value in a window whose reference
    never had any is p ~ n/(n+N), not the p ~ 0 a chi-square cell with a tiny expectation claims.
    """
    # scipy.stats.fisher_exact's two-sided p (the sum of the hypergeometric probabilities of every
    # table no likelier than the observed one), over the whole support at once from log-gamma:
    # fisher_exact and hypergeom.pmf are far slower a call at these sizes
    k, n, big_k, m = window_missing, window_rows, reference_missing, reference_rows
    total, missing = n + m, k + big_k
    support = np.arange(max(0, missing - m), min(missing, n) + 1, dtype=np.float64)
    log_pmf = _log_choose(missing, support) + _log_choose(total - missing, n - support) - _log_choose(total, n)
    observed = log_pmf[k - int(support[0])]
    return float(min(1.0, np.exp(log_pmf[log_pmf <= observed + 1e-7]).sum()))


def _log_choose(a: float | np.ndarray, b: float | np.ndarray) -> np.ndarray:
    return special.gammaln(np.add(a, 1)) - special.gammaln(np.add(b, 1)) - special.gammaln(np.subtract(a, b) + 1)


# ---- windows ----------------------------------------------------------------------------------
@dataclass
class WindowCounts:
    """Bin counts of one window per feature; a numeric feature's last slot is its missing count."""

    rows: int = 0
    bins: dict[str, np.ndarray] = field(default_factory=dict)

    def __add__(self, other: WindowCounts) -> WindowCounts:
        merged = dict(self.bins)
        for name, counts in other.bins.items():
            merged[name] = merged[name] + counts if name in merged else counts.copy()
        return WindowCounts(self.rows + other.rows, merged)

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "bins": {k: v.astype(int).tolist() for k, v in self.bins.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WindowCounts:
        return cls(int(data["rows"]), {k: np.asarray(v, dtype=np.int64) for k, v in data["bins"].items()})


@dataclass(frozen=True)
class FeatureDrift:
    name: str
    kind: Kind
    n: int
    psi: float
    js: float
    psi_null: float  # the PSI a reference window of this size exceeds with probability alpha
    statistics: dict[str, float]  # rank z, scale z, ks D, chi2, missing rate
    p_values: dict[str, float]  # raw, per test
    p_adjusted: dict[str, float]  # Benjamini-Hochberg over the whole window
    drifted: bool

    @property
    def p_min(self) -> float:
        return min(self.p_adjusted.values(), default=1.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "n": self.n,
            "psi": round(self.psi, 6),
            "js": round(self.js, 6),
            "psi_null": round(self.psi_null, 6),
            "statistics": {k: round(v, 6) for k, v in self.statistics.items()},
            "p_values": {k: float(f"{v:.4g}") for k, v in self.p_values.items()},
            "p_adjusted": {k: float(f"{v:.4g}") for k, v in self.p_adjusted.items()},
            "drifted": self.drifted,
        }


@dataclass(frozen=True)
class DriftReport:
    rows: int
    alpha: float
    features: list[FeatureDrift]

    @property
    def drifted(self) -> list[str]:
        """Drifted features, strongest (smallest adjusted p) first."""
        return [f.name for f in sorted(self.features, key=lambda f: f.p_min) if f.drifted]

    @property
    def alarm(self) -> bool:
        return any(f.drifted for f in self.features)

    def feature(self, name: str) -> FeatureDrift:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "alpha": self.alpha,
            "alarm": self.alarm,
            "drifted": self.drifted,
            "features": [f.to_dict() for f in self.features],
        }


# ---- the detector -----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Ref:
    name: str
    kind: Kind
    counts: np.ndarray  # reference counts per bin (numeric/prediction: + missing slot at the end)
    edges: np.ndarray  # numeric: interior edges; prediction: interior edges; categorical: empty
    vocabulary: pa.Array | None  # categorical: the reference categories, in slot order
    score: bool = False  # a test of the model's outputs (prediction_share splits them from the inputs')


def _numeric_ref(p: NumericProfile) -> _Ref:
    counts = np.asarray([*p.counts, p.missing], dtype=np.float64)
    return _Ref(p.name, "numeric", counts, np.asarray(p.edges, dtype=np.float64), None)


def _categorical_ref(p: CategoricalProfile) -> _Ref:
    counts = np.asarray([*p.counts, p.other, p.missing], dtype=np.float64)
    return _Ref(p.name, "categorical", counts, np.empty(0), pa.array(p.categories, type=pa.string()))


def _prediction_ref(name: str, h: Histogram) -> _Ref:
    counts = np.asarray([*h.counts, 0], dtype=np.float64)  # scores are never missing
    return _Ref(name, "prediction", counts, np.asarray(h.edges[1:-1], dtype=np.float64), None, score=True)


def _predicted_class_ref(classes: Sequence[str], counts: Sequence[int]) -> _Ref:
    slots = np.asarray([*counts, 0, 0], dtype=np.float64)  # no "other" class, never missing
    return _Ref(PREDICTED_CLASS, "categorical", slots, np.empty(0), pa.array(list(classes), pa.string()), score=True)


def family_adjusted(
    p_values: Sequence[float], is_prediction: Sequence[bool], prediction_share: float | None
) -> np.ndarray:
    """Adjusted p-values, to compare with alpha: BH within the scores' tests and within the
    features' tests, each scaled by its share of alpha (one BH family when the share is None, or
    when the window has only one of the two: then it gets all of alpha)."""
    p = np.clip(np.asarray(p_values, dtype=np.float64), 0.0, 1.0)
    if not p.size:
        return p
    mask = np.asarray(is_prediction, dtype=bool)
    if prediction_share is None or mask.all() or not mask.any():
        return _scipy_stats().false_discovery_control(p, method="bh")
    out = np.empty_like(p)
    for members, share in ((mask, prediction_share), (~mask, 1.0 - prediction_share)):
        if members.any():
            out[members] = np.minimum(_scipy_stats().false_discovery_control(p[members], method="bh") / share, 1.0)
    return out


def family_min_q(p_values: Sequence[float], is_prediction: Sequence[bool], prediction_share: float | None) -> float:
    """The smallest adjusted p of a window: the window alarms when it is below alpha."""
    adjusted = family_adjusted(p_values, is_prediction, prediction_share)
    return float(adjusted.min()) if adjusted.size else 1.0


class DriftDetector:
    """Tests windows of live rows (and their scores) against one reference profile.

    `count` turns a batch into WindowCounts (cheap: a searchsorted and a bincount per column);
    counts of several batches add up; `test` judges a finished window.
    """

    def __init__(
        self,
        profile: ReferenceProfile,
        *,
        alpha: float = 0.01,
        numeric_tests: Sequence[str] = NUMERIC_TESTS,
        min_psi: float = 0.0,
        prediction_share: float | None = DEFAULT_PREDICTION_SHARE,
        min_expected: float = 5.0,
        max_test_bins: int = 20,
        psi_bins: int = 10,
    ) -> None:
        unknown = set(numeric_tests) - set(NUMERIC_TESTS)
        if unknown or not numeric_tests:
            raise ValueError(f"numeric_tests must be a non-empty subset of {NUMERIC_TESTS}, got {list(numeric_tests)}")
        self.profile = profile
        self.alpha = alpha
        self.numeric_tests = tuple(numeric_tests)
        if prediction_share is not None and not 0.0 < prediction_share < 1.0:
            raise ValueError(f"prediction_share must be in (0, 1) or None (one family), got {prediction_share}")
        self.min_psi = min_psi
        self.prediction_share = prediction_share
        self.min_expected = min_expected
        self.max_test_bins = max_test_bins
        self.psi_bins = psi_bins
        # (feature, share, ordered) -> (bin -> group, the reference's grouped counts): they depend on
        # the reference and the window size only, so every full window reuses them
        self._groupings: dict[tuple[str, float, bool], tuple[np.ndarray, np.ndarray]] = {}
        self.refs: dict[str, _Ref] = {p.name: _numeric_ref(p) for p in profile.numeric}
        self.refs.update({p.name: _categorical_ref(p) for p in profile.categorical})
        if profile.prediction_histogram is not None:
            self.refs[PREDICTION] = _prediction_ref(PREDICTION, profile.prediction_histogram)
        for name, histogram in profile.class_histograms.items():  # a multiclass model: one per class
            self.refs[f"{PREDICTION}.{name}"] = _prediction_ref(f"{PREDICTION}.{name}", histogram)
        if profile.predicted_class_counts is not None:
            classes = list(profile.class_histograms)
            self.refs[PREDICTED_CLASS] = _predicted_class_ref(classes, profile.predicted_class_counts)

    @property
    def features(self) -> list[str]:
        return list(self.refs)

    # ---- counting --------------------------------------------------------------------------
    def count(self, table: pa.Table, predictions: np.ndarray | Mapping[str, Any] | None = None) -> WindowCounts:
        """Counts of one batch of raw rows and the model's outputs (`predictions`: the scores of
        the `prediction` pseudo-feature, or a mapping of output name -> values, e.g. one
        `prediction.<class>` per class and `predicted_class`); a feature whose column is absent
        is not counted."""
        rows = table.num_rows
        outputs = {PREDICTION: predictions} if isinstance(predictions, np.ndarray) else dict(predictions or {})
        bins: dict[str, np.ndarray] = {}
        for name, ref in self.refs.items():
            if ref.kind == "prediction":
                if outputs.get(name) is None:
                    continue
                values = np.asarray(outputs[name], dtype=np.float64)
                index = np.searchsorted(ref.edges, values, side="right")
                bins[name] = np.bincount(index, minlength=len(ref.counts)).astype(np.int64)
            elif ref.kind == "numeric":
                if name not in table.column_names:
                    continue
                values = numeric_values(table.column(name))
                missing = np.isnan(values)
                index = np.searchsorted(ref.edges, values[~missing], side="left")
                counts = np.bincount(index, minlength=len(ref.counts)).astype(np.int64)
                counts[-1] = int(missing.sum())
                bins[name] = counts
            else:
                if name in outputs:
                    column = pa.array([str(v) for v in outputs[name]], pa.string())
                elif name in table.column_names:
                    column = table.column(name).cast(pa.string())
                else:
                    continue
                other, miss = len(ref.counts) - 2, len(ref.counts) - 1
                found = pc.index_in(column, value_set=ref.vocabulary).to_numpy(zero_copy_only=False)
                absent = pc.is_null(column).to_numpy(zero_copy_only=False)
                slots = np.where(absent, miss, np.where(np.isnan(found), other, np.nan_to_num(found))).astype(np.int64)
                bins[name] = np.bincount(slots, minlength=len(ref.counts)).astype(np.int64)
        return WindowCounts(rows, bins)

    def empty(self) -> WindowCounts:
        return WindowCounts(0, {name: np.zeros(len(ref.counts), dtype=np.int64) for name, ref in self.refs.items()})

    # ---- testing ---------------------------------------------------------------------------
    def _grouping(self, ref: _Ref, reference: np.ndarray, share: float, ordered: bool) -> tuple[np.ndarray, np.ndarray]:
        key = (ref.name, share, ordered)
        cached = self._groupings.get(key)
        if cached is None:
            if len(self._groupings) >= 1024:  # many window sizes (partial windows): start over
                self._groupings.clear()
            groups = merge_groups(reference, share, ordered=ordered)
            index = _group_index(groups, len(reference))
            cached = self._groupings[key] = (index, _grouped(reference, index, len(groups)))
        return cached

    def _feature_tests(
        self, ref: _Ref, window: np.ndarray, ks_pending: list[tuple[dict[str, float], float, int]]
    ) -> tuple[dict[str, float], dict[str, float], float, float, float]:
        n = float(window.sum())
        m = float(ref.counts.sum())
        statistics: dict[str, float] = {}
        p_values: dict[str, float] = {}
        ordered = ref.kind != "categorical"
        test_share = max(self.min_expected / n, 1.0 / self.max_test_bins) if n else 1.0
        if ordered:
            # location, spread, KS and shape on the present values; missingness on its own (exact)
            w_present, r_present = window[:-1], ref.counts[:-1]
            index, r_test = self._grouping(ref, r_present, test_share, ordered=True)
            z, p = rank_test(w_present, r_present)
            statistics["rank_z"], p_values["rank"] = z, p
            z, p = scale_test(w_present, r_present)
            statistics["scale_z"], p_values["scale"] = z, p
            d, en = _ks_statistic(w_present, r_present)
            statistics["ks_d"], p_values["ks"] = d, math.nan  # filled for all features at once (`test`)
            ks_pending.append((p_values, d, en))
            stat, p, _ = chi2_homogeneity(_grouped(w_present, index, len(r_test)), r_test)
            statistics["chi2"], p_values["chi2"] = stat, p
            if window[-1] or ref.counts[-1]:
                p_values["missing"] = missing_test(int(window[-1]), int(n), int(ref.counts[-1]), int(m))
                statistics["missing_rate"] = float(window[-1] / n)
            psi_index, r_psi_present = self._grouping(ref, r_present, 1.0 / self.psi_bins, ordered=True)
            w_psi = np.append(_grouped(w_present, psi_index, len(r_psi_present)), window[-1])
            r_psi = np.append(r_psi_present, ref.counts[-1])
        else:
            index, r_test = self._grouping(ref, ref.counts, test_share, ordered=False)
            w_test = _grouped(window, index, len(r_test))
            stat, p, _ = chi2_homogeneity(w_test, r_test)
            statistics["chi2"], p_values["chi2"] = stat, p
            w_psi, r_psi = w_test, r_test
        bins_used = int(np.count_nonzero((w_psi + r_psi) > 0))
        return (
            statistics,
            p_values,
            psi(w_psi, r_psi),
            js_distance(w_psi, r_psi),
            psi_null_quantile(int(n), int(m), bins_used, self.alpha),
        )

    def decides(self, kind: Kind, test: str) -> bool:
        """Whether a test of a feature of this kind is in the window's alarm family."""
        return kind == "categorical" or test == "missing" or test in self.numeric_tests

    def test(self, window: WindowCounts) -> DriftReport:
        """Judge one window: every feature's tests, one Benjamini-Hochberg family."""
        partial = []
        ks_pending: list[tuple[dict[str, float], float, int]] = []  # (the feature's p-values, D, size)
        for name, ref in self.refs.items():
            counts = window.bins.get(name)
            if counts is None or counts.sum() == 0:
                continue
            partial.append(
                (name, ref, int(counts.sum()), *self._feature_tests(ref, counts.astype(np.float64), ks_pending))
            )
        ks_p = _ks_p_values([d for _, d, _ in ks_pending], [en for _, _, en in ks_pending])
        for (p_values, _, _), p in zip(ks_pending, ks_p):
            p_values["ks"] = p
        family = [
            (i, test, p)
            for i, (_, ref, _, _, p_values, *_rest) in enumerate(partial)
            for test, p in p_values.items()
            if self.decides(ref.kind, test)
        ]
        is_prediction = [partial[i][1].score for i, _, _ in family]
        adjusted = family_adjusted([p for *_, p in family], is_prediction, self.prediction_share)
        by_feature: dict[int, dict[str, float]] = {}
        for (i, test, _), q in zip(family, adjusted):
            by_feature.setdefault(i, {})[test] = float(q)
        features = []
        for i, (name, ref, n, statistics, p_values, psi_value, js_value, psi_null) in enumerate(partial):
            p_adj = by_feature.get(i, {})
            significant = any(q < self.alpha for q in p_adj.values())
            features.append(
                FeatureDrift(
                    name=name,
                    kind=ref.kind,
                    n=n,
                    psi=psi_value,
                    js=js_value,
                    psi_null=psi_null,
                    statistics=statistics,
                    p_values=p_values,
                    p_adjusted=p_adj,
                    drifted=significant and psi_value >= self.min_psi,
                )
            )
        return DriftReport(rows=window.rows, alpha=self.alpha, features=features)

    def check(self, table: pa.Table, predictions: np.ndarray | Mapping[str, Any] | None = None) -> DriftReport:
        return self.test(self.count(table, predictions))


def label_detector(profile: ReferenceProfile, classes: Sequence[Any], **options: Any) -> DriftDetector | None:
    """A detector of one pseudo-feature, `label`: windows of arrived labels against the held-out
    labels the model was judged on; count them with `count(table, {LABEL: values})` (class values,
    or a regression's values). None for a profile without labels (a bundle from before they were
    profiled)."""
    if profile.label_class_counts is not None:
        counts = list(profile.label_class_counts)
        ref = _categorical_ref(
            CategoricalProfile(name=LABEL, categories=[str(c) for c in classes], counts=counts, other=0, missing=0)
        )
    elif profile.label_histogram is not None:
        ref = _prediction_ref(LABEL, profile.label_histogram)  # numpy.histogram's bins, as the scores'
    else:
        return None
    detector = DriftDetector(ReferenceProfile(n_rows=int(ref.counts.sum()), numeric=[], categorical=[]), **options)
    detector.refs = {LABEL: ref}
    return detector
