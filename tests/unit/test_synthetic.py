"""Tests for rayloop.data.synthetic: schema, determinism, realism and drift ground truth."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError
from scipy.stats import ks_2samp, mannwhitneyu

from rayloop.data import synthetic as syn
from rayloop.data.synthetic import (
    CATEGORICAL_COLUMNS,
    CHANNELS,
    CORRUPTION_KINDS,
    DEVICE_TYPES,
    ID_COLUMN,
    LABEL_COLUMN,
    N_MERCHANTS,
    NON_NULLABLE_COLUMNS,
    NULLABLE_COLUMNS,
    NUMERIC_COLUMNS,
    REGIONS,
    SCHEMA,
    TIMESTAMP_COLUMN,
    Scenario,
    chunk_seed,
    corrupt,
    drift_intensity,
    generate,
    true_probability,
    write_parquet,
)

START = datetime(2026, 1, 1, tzinfo=timezone.utc)
SPAN = timedelta(days=28)


def _np(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy(zero_copy_only=False)


def _halves(table: pa.Table, onset: float = 0.5) -> tuple[pa.Table, pa.Table]:
    """Rows before / after the onset (positions are spread uniformly over row order)."""
    cut = int(round(onset * table.num_rows))
    return table.slice(0, cut), table.slice(cut)


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    pos, neg = score[y == 1], score[y == 0]
    return float(mannwhitneyu(pos, neg).statistic / (len(pos) * len(neg)))


def _rate(table: pa.Table, mask: np.ndarray) -> float:
    return float(_np(table, LABEL_COLUMN)[mask].mean())


@pytest.fixture(scope="module")
def base() -> pa.Table:
    return generate(100_000, seed=11)


# ---------------------------------------------------------------- schema & content
def test_schema_names_types_and_column_constants(base: pa.Table) -> None:
    assert base.schema.equals(SCHEMA)
    assert base.column_names == [ID_COLUMN, TIMESTAMP_COLUMN, *NUMERIC_COLUMNS, *CATEGORICAL_COLUMNS, LABEL_COLUMN]
    assert base.schema.field(TIMESTAMP_COLUMN).type == pa.timestamp("us", tz="UTC")
    assert base.schema.field(ID_COLUMN).type == pa.int64()
    assert base.schema.field(LABEL_COLUMN).type == pa.int64()
    assert base.schema.field("num_transactions_30d").type == pa.int64()
    for name in NUMERIC_COLUMNS:
        if name != "num_transactions_30d":
            assert base.schema.field(name).type == pa.float64(), name
    for name in CATEGORICAL_COLUMNS:
        assert base.schema.field(name).type == pa.string(), name
    assert len(NUMERIC_COLUMNS) == 9 and len(CATEGORICAL_COLUMNS) == 4


def test_nullability(base: pa.Table) -> None:
    for name in NON_NULLABLE_COLUMNS:
        assert base.column(name).null_count == 0, name
    for name in NULLABLE_COLUMNS:
        assert base.column(name).null_count > 0, name


def test_missing_value_rates(base: pa.Table) -> None:
    n = base.num_rows
    for name, rate in NULLABLE_COLUMNS.items():
        observed = base.column(name).null_count / n
        tol = 4 * np.sqrt(rate * (1 - rate) / n)
        assert abs(observed - rate) < tol, (name, observed, rate)
    assert NULLABLE_COLUMNS == {"income": 0.05, "tenure_months": 0.03, "latency_ms": 0.01, "device_type": 0.02}


def test_value_domains(base: pa.Table) -> None:
    age = _np(base, "age")
    assert age.min() >= 18.0 and age.max() <= 95.0 and 38 < age.mean() < 44
    income = pc.drop_null(base.column("income")).to_numpy()
    assert income.min() > 0 and income.mean() > np.median(income) * 1.1  # right-skewed
    balance = _np(base, "account_balance")
    assert (balance < 0).mean() > 0.05 and np.abs(balance).max() > 50_000  # heavy tails, negatives
    tenure = pc.drop_null(base.column("tenure_months")).to_numpy()
    assert tenure.min() >= 0 and 25 < tenure.mean() < 35
    util = _np(base, "credit_utilization")
    assert util.min() >= 0 and util.max() <= 1 and abs(util.mean() - 2 / 7) < 0.01
    ntx = _np(base, "num_transactions_30d")
    assert ntx.dtype == np.int64 and ntx.min() >= 0
    assert _np(base, "avg_session_minutes").min() > 0
    assert pc.drop_null(base.column("latency_ms")).to_numpy().min() > 0
    risk = _np(base, "risk_score")
    assert risk.min() < -2 and risk.max() > 3
    assert set(pc.unique(base.column("channel")).to_pylist()) == set(CHANNELS)
    assert set(pc.unique(base.column("region")).to_pylist()) == set(REGIONS)
    assert set(pc.unique(pc.drop_null(base.column("device_type"))).to_pylist()) == set(DEVICE_TYPES)
    assert set(np.unique(_np(base, LABEL_COLUMN)).tolist()) == {0, 1}


def test_transactions_rate_depends_on_channel(base: pa.Table) -> None:
    ntx = _np(base, "num_transactions_30d")
    channel = _np(base, "channel")
    means = {c: ntx[channel == c].mean() for c in CHANNELS}
    assert means["mobile"] > means["web"] > means["store"] > means["phone"]


def test_merchant_high_cardinality_zipf(base: pa.Table) -> None:
    counts = pc.value_counts(base.column("merchant_id")).field("counts").to_numpy()
    assert len(counts) > 1000
    assert counts.max() > 50 * np.median(counts)
    ids = pc.unique(base.column("merchant_id")).to_pylist()
    assert all(len(m) == 6 and m.startswith("m") and 0 <= int(m[1:]) < N_MERCHANTS for m in ids)


def test_repeat_customers(base: pa.Table) -> None:
    ids = _np(base, ID_COLUMN)
    n_distinct = len(np.unique(ids))
    assert 0.25 * len(ids) < n_distinct < 0.34 * len(ids)  # pool of n/3, most drawn at least once


def test_event_time_sorted_within_span() -> None:
    start = datetime(2025, 6, 1, 12, tzinfo=timezone.utc)
    span = timedelta(hours=5)
    table = generate(30_000, seed=4, start=start, span=span)
    ts = pc.cast(table.column(TIMESTAMP_COLUMN), pa.int64()).to_numpy()
    assert np.all(np.diff(ts) >= 0)
    start_us = int(start.timestamp() * 1_000_000)
    span_us = span // timedelta(microseconds=1)
    assert ts.min() >= start_us and ts.max() < start_us + span_us
    assert ts.min() - start_us < span_us * 0.001 and start_us + span_us - ts.max() < span_us * 0.001


def test_label_rate_nonlinear_and_not_trivial(base: pa.Table) -> None:
    y = _np(base, LABEL_COLUMN)
    assert 0.25 <= y.mean() <= 0.35
    assert abs(y.mean() - syn.BASE_POSITIVE_RATE) < 0.015
    p = true_probability(base)
    assert np.all((p > 0) & (p < 1))
    assert abs(p.mean() - y.mean()) < 0.01  # labels are Bernoulli(true_probability)
    assert 0.8 < _auc(y, p) < 0.9  # oracle AUC: learnable but noisy
    for name in NUMERIC_COLUMNS:  # no single column gives the label away
        x = base.column(name)
        x = pc.fill_null(x, pc.approximate_median(x)).to_numpy().astype(float)
        auc = _auc(y, x)
        assert max(auc, 1 - auc) < 0.76, name
    # non-monotone age effect: the rate goes up and down across age bins
    age = _np(base, "age")
    rates = np.array([y[(age >= lo) & (age < lo + 5)].mean() for lo in range(20, 70, 5)])
    d = np.diff(rates)
    assert (d > 0.01).any() and (d < -0.01).any()


# ---------------------------------------------------------------- determinism
def test_determinism_same_seed_identical_different_seed_differs() -> None:
    a = generate(20_000, seed=5)
    b = generate(20_000, seed=5)
    c = generate(20_000, seed=6)
    assert a.equals(b)
    assert not a.equals(c)
    assert not np.array_equal(_np(a, "age"), _np(c, "age"))
    sc = Scenario(kind="prior", mode="gradual")
    assert generate(20_000, 5, sc).equals(generate(20_000, 5, sc))


def test_empty_and_invalid_arguments() -> None:
    empty = generate(0, seed=1)
    assert empty.num_rows == 0 and empty.schema.equals(SCHEMA)
    with pytest.raises(ValueError):
        generate(10, seed=1, timeline=(0.6, 0.4))
    with pytest.raises(ValueError):
        generate(-1, seed=1)
    with pytest.raises(ValueError):
        generate(10, seed=-3)


# ---------------------------------------------------------------- chunked writer
def test_write_parquet_chunked_contiguous(tmp_path: Path) -> None:
    out = tmp_path / "nested" / "ds"
    paths = write_parquet(out, 30_000, seed=9, rows_per_file=10_000)
    assert [Path(p).name for p in paths] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    tables = [pq.read_table(p) for p in paths]
    assert all(t.schema.equals(SCHEMA) for t in tables)
    assert [t.num_rows for t in tables] == [10_000] * 3
    whole = pa.concat_tables(tables)
    assert pq.read_table(out).num_rows == 30_000
    ts = pc.cast(whole.column(TIMESTAMP_COLUMN), pa.int64()).to_numpy()
    assert np.all(np.diff(ts) >= 0)
    start_us = int(START.timestamp() * 1_000_000)
    span_us = SPAN // timedelta(microseconds=1)
    assert ts.min() >= start_us and ts.max() < start_us + span_us
    # contiguous: no gap between files larger than a typical within-file step
    boundaries = [
        tables[i + 1].column(TIMESTAMP_COLUMN)[0].value - tables[i].column(TIMESTAMP_COLUMN)[-1].value for i in range(2)
    ]
    assert all(0 <= g < 3 * span_us / 30_000 for g in boundaries)
    # customers repeat across files (one pool for the whole dataset)
    ids = [set(_np(t, ID_COLUMN).tolist()) for t in tables]
    assert len(ids[0] & ids[2]) > 500
    # each file is reproducible in memory from chunk_seed
    again = generate(10_000, chunk_seed(9, 1), timeline=(1 / 3, 2 / 3), n_entities=10_000)
    assert again.equals(tables[1])
    with pytest.raises(FileExistsError):
        write_parquet(out, 300, seed=9, rows_per_file=100)
    assert len(write_parquet(out, 300, seed=9, rows_per_file=200, overwrite=True)) == 2
    assert sorted(p.name for p in out.iterdir()) == ["part-00000.parquet", "part-00001.parquet"]


def test_write_parquet_bad_row_fraction(tmp_path: Path) -> None:
    paths = write_parquet(tmp_path, 3_000, seed=1, rows_per_file=1_000, bad_row_fraction=0.02)
    for i, p in enumerate(paths):
        table = pq.read_table(p)
        assert table.schema.equals(SCHEMA)
        assert table.column(LABEL_COLUMN).null_count == 5  # 20 bad rows per file, every 4th a null label
        assert pc.sum(pc.equal(table.column("channel"), "fax")).as_py() == 5
        clean = generate(1_000, chunk_seed(1, i), timeline=(i / 3, (i + 1) / 3), n_entities=1_000)
        assert table.equals(corrupt(clean, 0.02, chunk_seed(1, i))[0])
    with pytest.raises(ValueError):
        write_parquet(tmp_path / "x", 10, seed=1, bad_row_fraction=2.0)


def test_write_parquet_onset_relative_to_whole_dataset(tmp_path: Path) -> None:
    sc = Scenario(kind="prior", onset=0.5, magnitude=1.0)
    paths = write_parquet(tmp_path, 40_000, seed=2, scenario=sc, rows_per_file=10_000)
    rates = [float(np.mean(_np(pq.read_table(p), LABEL_COLUMN))) for p in paths]
    assert max(rates[:2]) < 0.36 and min(rates[2:]) > 0.52


# ---------------------------------------------------------------- drift intensity
def test_drift_intensity_abrupt_and_gradual() -> None:
    pos = np.array([0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 1.0])
    assert np.array_equal(drift_intensity(pos, None), np.zeros(7))
    abrupt = drift_intensity(pos, Scenario(kind="concept", onset=0.4))
    assert abrupt.tolist() == [0, 0, 1, 1, 1, 1, 1]
    gradual = drift_intensity(pos, Scenario(kind="concept", onset=0.4, mode="gradual", width=0.2))
    np.testing.assert_allclose(gradual, [0, 0, 0, 0.5, 1, 1, 1])


def test_gradual_mode_gives_intermediate_rates() -> None:
    sc = Scenario(kind="prior", onset=0.3, mode="gradual", width=0.4, magnitude=1.0)
    table = generate(60_000, seed=8, scenario=sc)
    y = _np(table, LABEL_COLUMN)
    n = len(y)
    before = y[: int(0.3 * n)].mean()
    ramp_mid = y[int(0.45 * n) : int(0.55 * n)].mean()  # intensity ~0.5
    after = y[int(0.7 * n) :].mean()
    p0 = syn.BASE_POSITIVE_RATE
    assert abs(before - p0) < 0.02
    assert abs(after - (p0 + 0.3)) < 0.02
    assert abs(ramp_mid - (p0 + 0.15)) < 0.03
    assert before + 0.08 < ramp_mid < after - 0.08


# ---------------------------------------------------------------- covariate
def test_covariate_shift_detected_only_with_scenario() -> None:
    drifted_before, drifted_after = _halves(generate(40_000, 1, Scenario(kind="covariate")))
    assert ks_2samp(_np(drifted_before, "age"), _np(drifted_after, "age")).pvalue < 1e-6
    clean_before, clean_after = _halves(generate(40_000, 1))
    assert ks_2samp(_np(clean_before, "age"), _np(clean_after, "age")).pvalue > 0.001
    # the documented default set shifts in the documented direction
    assert _np(drifted_after, "age").mean() > _np(drifted_before, "age").mean() + 7
    assert _np(drifted_after, "credit_utilization").mean() > _np(drifted_before, "credit_utilization").mean() + 0.15
    assert _np(drifted_after, "credit_utilization").max() <= 1.0
    assert _np(drifted_after, "age").max() <= 95.0
    mobile = [float(np.mean(_np(t, "channel") == "mobile")) for t in (drifted_before, drifted_after)]
    assert mobile[1] > mobile[0] + 0.15
    inc = [np.nanmedian(_np(t, "income")) for t in (drifted_before, drifted_after)]
    assert inc[1] > 1.3 * inc[0]
    # a column outside the default set keeps its distribution
    assert ks_2samp(_np(drifted_before, "risk_score"), _np(drifted_after, "risk_score")).pvalue > 0.001


def test_covariate_shift_keeps_label_given_x() -> None:
    table = generate(60_000, 2, Scenario(kind="covariate", magnitude=1.5))
    before, after = _halves(table)
    for part in (before, after):
        # labels stay Bernoulli(f_old(shifted x)): calibration of the unchanged concept holds
        assert abs(_np(part, LABEL_COLUMN).mean() - true_probability(part).mean()) < 0.012
    # ... even though the marginal positive rate moved
    assert abs(_np(before, LABEL_COLUMN).mean() - _np(after, LABEL_COLUMN).mean()) > 0.02


def test_covariate_only_selected_features_shift() -> None:
    sc = Scenario(kind="covariate", features=("age",))
    before, after = _halves(generate(60_000, 3, sc))
    assert ks_2samp(_np(before, "age"), _np(after, "age")).pvalue < 1e-6
    for name in ("income", "credit_utilization", "latency_ms", "tenure_months"):
        a = pc.drop_null(before.column(name)).to_numpy()
        b = pc.drop_null(after.column(name)).to_numpy()
        assert ks_2samp(a, b).pvalue > 0.001, name
    # P(y | age) in a narrow age bin is unchanged
    rates = []
    for part in (before, after):
        age = _np(part, "age")
        rates.append(_rate(part, (age >= 45) & (age < 50)))
    assert abs(rates[0] - rates[1]) < 0.04


# ---------------------------------------------------------------- prior
def test_prior_shift_changes_rate_not_class_conditionals() -> None:
    sc = Scenario(kind="prior", onset=0.5, magnitude=0.5)
    before, after = _halves(generate(60_000, 4, sc))
    y0, y1 = _np(before, LABEL_COLUMN), _np(after, LABEL_COLUMN)
    expected = syn.PRIOR_SHIFT_PER_MAGNITUDE * 0.5
    assert abs((y1.mean() - y0.mean()) - expected) < 0.02
    assert abs(y0.mean() - syn.BASE_POSITIVE_RATE) < 0.015
    for cls in (0, 1):
        for name in ("age", "risk_score", "credit_utilization"):
            a, b = _np(before, name)[y0 == cls], _np(after, name)[y1 == cls]
            assert ks_2samp(a, b).pvalue > 0.001, (name, cls)
    # the marginal of a label-related feature does move
    assert ks_2samp(_np(before, "risk_score"), _np(after, "risk_score")).pvalue < 1e-6
    # rows are not duplicated by the resampling pool
    assert len(pc.unique(after.column("risk_score"))) == after.num_rows  # continuous, unrounded


def test_prior_rate_is_capped() -> None:
    table = generate(20_000, 4, Scenario(kind="prior", onset=0.0, magnitude=10.0))
    assert abs(_np(table, LABEL_COLUMN).mean() - 0.95) < 0.01


# ---------------------------------------------------------------- concept
def test_concept_shift_keeps_features_flips_interaction() -> None:
    sc = Scenario(kind="concept", onset=0.5)
    table = generate(80_000, 6, sc)
    # P(x) unchanged: identical features to the undrifted table with the same seed
    clean = generate(80_000, 6)
    assert table.drop_columns([LABEL_COLUMN]).equals(clean.drop_columns([LABEL_COLUMN]))
    before, after = _halves(table)
    for name in ("age", "credit_utilization", "risk_score"):
        assert ks_2samp(_np(before, name), _np(after, name)).pvalue > 0.001, name
    gaps = []
    for part in (before, after):
        util = _np(part, "credit_utilization")
        web = _np(part, "channel") == "web"
        high = util > 0.5
        gaps.append(_rate(part, high & web) - _rate(part, high & ~web))
    assert gaps[0] > 0.08  # high utilization on web is riskier before the onset ...
    assert gaps[1] < -0.08  # ... and safer after it


def test_concept_magnitude_zero_is_no_drift() -> None:
    a = generate(10_000, 3, Scenario(kind="concept", magnitude=0.0))
    assert a.equals(generate(10_000, 3))


# ---------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "covariate", "features": ("age", "nope")},
        {"kind": "covariate", "onset": 1.5},
        {"kind": "covariate", "onset": -0.1},
        {"kind": "concept", "width": 0.0},
        {"kind": "concept", "magnitude": -1.0},
        {"kind": "concept", "mode": "sudden"},
        {"kind": "label"},
        {"kind": "prior", "unknown_field": 1},
        {"kind": "prior", "features": ("age",)},
        {"kind": "covariate", "features": ()},
        {"kind": "concept", "onset": float("nan")},
    ],
)
def test_scenario_validation_errors(kwargs: dict) -> None:
    with pytest.raises(ValidationError):
        Scenario(**kwargs)


def test_scenario_error_names_bad_and_allowed_features() -> None:
    with pytest.raises(ValidationError) as info:
        Scenario(kind="covariate", features=("age", "agee"))
    message = str(info.value)
    assert "agee" in message and "credit_utilization" in message and "merchant_id" in message


def test_scenario_is_frozen_and_defaults() -> None:
    sc = Scenario(kind="covariate")
    assert (sc.onset, sc.mode, sc.width, sc.magnitude, sc.features) == (0.5, "abrupt", 0.2, 1.0, None)
    assert len([f for f in sc.shifted_features if f in NUMERIC_COLUMNS]) >= 3
    assert len([f for f in sc.shifted_features if f in CATEGORICAL_COLUMNS]) >= 1
    with pytest.raises(ValidationError):
        sc.onset = 0.1  # type: ignore[misc]
    assert Scenario(kind="covariate", features=["age", "channel"]).features == ("age", "channel")


# ---------------------------------------------------------------- corrupt
def test_corrupt_injects_documented_violations() -> None:
    table = generate(20_000, 12)
    bad, idx = corrupt(table, 0.01, seed=3)
    assert bad.schema.equals(table.schema)
    assert bad.num_rows == table.num_rows
    assert idx.dtype == np.int64 and len(idx) == 200
    assert np.all(np.diff(idx) > 0) and idx.min() >= 0 and idx.max() < table.num_rows
    # untouched rows are identical
    keep = np.setdiff1d(np.arange(table.num_rows), idx)
    assert bad.take(keep).equals(table.take(keep))
    changed_column = {
        "age_out_of_range": "age",
        "credit_utilization_out_of_range": "credit_utilization",
        "unknown_channel": "channel",
        "null_label": LABEL_COLUMN,
    }
    for j, row in enumerate(idx.tolist()):
        kind = CORRUPTION_KINDS[j % len(CORRUPTION_KINDS)]
        new, old = bad.slice(row, 1).to_pylist()[0], table.slice(row, 1).to_pylist()[0]
        col = changed_column[kind]
        assert {k for k in new if new[k] != old[k]} == {col}, (row, kind)
        if kind == "age_out_of_range":
            assert new["age"] in (-5.0, 500.0)
        elif kind == "credit_utilization_out_of_range":
            assert new["credit_utilization"] == 1.7
        elif kind == "unknown_channel":
            assert new["channel"] == "fax" and "fax" not in CHANNELS
        else:
            assert new[LABEL_COLUMN] is None
    ages = _np(bad, "age")[idx[0::4]]
    assert set(ages.tolist()) == {-5.0, 500.0}
    assert bad.column(LABEL_COLUMN).null_count == 50


def test_corrupt_edge_cases_and_determinism() -> None:
    table = generate(1_000, 1)
    one, idx = corrupt(table, 1e-9, seed=0)
    assert len(idx) == 1 and _np(one, "age")[idx[0]] == -5.0
    none, idx0 = corrupt(table, 0.0, seed=0)
    assert len(idx0) == 0 and none.equals(table)
    a, ia = corrupt(table, 0.1, seed=4)
    b, ib = corrupt(table, 0.1, seed=4)
    _, ic = corrupt(table, 0.1, seed=5)
    assert a.equals(b) and np.array_equal(ia, ib) and not np.array_equal(ia, ic)
    with pytest.raises(ValueError):
        corrupt(table, 1.5, seed=0)


# ---------------------------------------------------------------- both at once
def test_covariate_and_concept_shift_together() -> None:
    sc = Scenario(kind="covariate+concept", onset=0.5)
    assert sc.shifted_features == syn.DEFAULT_COVARIATE_FEATURES
    both = generate(60_000, 4, sc)
    covariate_only = generate(60_000, 4, Scenario(kind="covariate", onset=0.5))
    # the inputs move exactly as in the covariate scenario ...
    assert both.drop_columns([LABEL_COLUMN]).equals(covariate_only.drop_columns([LABEL_COLUMN]))
    before, after = _halves(both)
    assert ks_2samp(_np(before, "age"), _np(after, "age")).pvalue < 1e-6
    # ... and the label function changes at the onset, as in the concept scenario
    gaps = []
    for part in (before, after):
        util, web = _np(part, "credit_utilization"), _np(part, "channel") == "web"
        gaps.append(_rate(part, (util > 0.5) & web) - _rate(part, (util > 0.5) & ~web))
    assert gaps[0] > 0.08 and gaps[1] < -0.08, gaps
    labels_differ = np.mean(_np(both, LABEL_COLUMN)[30_000:] != _np(covariate_only, LABEL_COLUMN)[30_000:])
    assert labels_differ > 0.05
