from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from rayloop.config import FeaturesConfig, load_config
from rayloop.data import synthetic
from rayloop.errors import FeatureError
from rayloop.features.pipeline import (
    MISSING_CODE,
    OOV_CODE,
    FeaturePipeline,
    FittedFeatures,
)


@pytest.fixture(scope="module")
def config():
    return load_config()


@pytest.fixture(scope="module")
def table(config):
    good, _ = config.data.schema_.validate(synthetic.generate(20_000, seed=3))
    return good


@pytest.fixture(scope="module")
def pipeline(config):
    return FeaturePipeline(
        config.features, config.data.schema_, label_column="label", timestamp_column="event_time", id_column="entity_id"
    )


@pytest.fixture(scope="module")
def fitted(pipeline, table):
    return pipeline.fit_table(table)


def test_columns_are_resolved_from_the_schema(pipeline):
    assert "label" not in pipeline.numeric and "entity_id" not in pipeline.numeric
    assert set(pipeline.categorical) == {"channel", "region", "merchant_id", "device_type"}
    assert len(pipeline.numeric) == 9


def test_feature_names_match_the_matrix(fitted, table):
    features, _ = fitted
    matrix = features.transform(table)
    assert matrix.dtype == np.float32 and matrix.flags["C_CONTIGUOUS"]
    assert matrix.shape == (table.num_rows, len(features.feature_names))
    assert "income__missing" in features.feature_names
    assert "event_time__hour_sin" in features.feature_names
    assert np.isfinite(matrix).all()


def test_standardized_numeric_features_have_zero_mean_unit_std_on_train(fitted, table):
    features, _ = fitted
    matrix = features.transform(table)
    j = features.feature_names.index("age")
    assert matrix[:, j].mean() == pytest.approx(0.0, abs=1e-5)
    assert matrix[:, j].std() == pytest.approx(1.0, abs=1e-4)


def test_categorical_codes_for_vocabulary_unseen_and_missing(fitted):
    features, _ = fitted
    channel = next(f for f in features.categorical if f.name == "channel")
    row = {
        "age": 30.0,
        "income": None,
        "account_balance": 1.0,
        "tenure_months": 2.0,
        "credit_utilization": 0.5,
        "num_transactions_30d": 3,
        "avg_session_minutes": 1.0,
        "latency_ms": 100.0,
        "risk_score": 0.0,
        "channel": channel.vocabulary[0],
        "region": "r99-never-seen",
        "merchant_id": None,
        "device_type": "ios",
        "event_time": "2026-01-05T13:00:00Z",
    }
    vector = features.transform(row)[0]
    names = features.feature_names
    assert vector[names.index("channel")] == 2  # first vocabulary entry
    assert vector[names.index("region")] == OOV_CODE
    assert vector[names.index("merchant_id")] == MISSING_CODE
    assert vector[names.index("income__missing")] == 1.0 and vector[names.index("income")] == 0.0
    assert vector[names.index("event_time__hour_sin")] == pytest.approx(np.sin(2 * np.pi * 13 / 24), abs=1e-6)


def test_top_k_and_min_frequency_bound_the_vocabulary(pipeline, table):
    cfg = pipeline.config.model_copy(update={"top_k": 50, "min_frequency": 1})
    small = FeaturePipeline(
        cfg, pipeline.schema, label_column="label", timestamp_column="event_time", id_column="entity_id"
    )
    features, profile = small.fit_table(table)
    merchant = next(f for f in features.categorical if f.name == "merchant_id")
    assert len(merchant.vocabulary) == 50
    counts = pc.value_counts(table.column("merchant_id")).to_pylist()
    top = sorted((c["counts"], c["values"]) for c in counts if c["values"] is not None)[-1][1]
    assert merchant.vocabulary[0] == top
    prof = profile.feature("merchant_id")
    assert prof.n == table.num_rows and prof.other > 0


def test_one_row_transform_equals_the_batch_transform(fitted, table):
    features, _ = fitted
    sample = table.slice(0, 300)
    batch = features.transform(sample)
    rows = np.vstack([features.transform(row) for row in sample.to_pylist()])
    np.testing.assert_array_equal(batch, rows)
    np.testing.assert_array_equal(batch, features.transform(sample.to_pandas()))


def test_json_round_trip_keeps_hash_and_transform(fitted, table):
    features, _ = fitted
    clone = FittedFeatures.from_json(features.to_json())
    assert clone.content_hash == features.content_hash
    np.testing.assert_array_equal(clone.transform(table.slice(0, 500)), features.transform(table.slice(0, 500)))
    changed = json.loads(features.to_json())
    changed["numeric"][0]["mean"] += 1.0
    assert FittedFeatures.model_validate(changed).content_hash != features.content_hash


def test_missing_feature_column_is_a_clear_error(fitted, table):
    features, _ = fitted
    with pytest.raises(FeatureError, match=r"missing feature column\(s\) \['age'\]"):
        features.transform(table.drop_columns(["age"]))


def test_quantile_bin_strategy_yields_bin_indices(pipeline, table):
    cfg = pipeline.config.model_copy(update={"numeric_strategy": "quantile_bins", "n_bins": 4})
    binned = FeaturePipeline(cfg, pipeline.schema, label_column="label", timestamp_column="event_time")
    features, _ = binned.fit_table(table)
    column = features.transform(table)[:, features.feature_names.index("age")]
    assert set(np.unique(column)) <= {-1.0, 0.0, 1.0, 2.0, 3.0}
    counts = np.bincount(column[column >= 0].astype(int))
    assert counts.min() > 0.2 * column.size  # about a quarter each


def test_profile_counts_add_up_and_match_the_data(fitted, table):
    _, profile = fitted
    assert profile.n_rows == table.num_rows
    for feature in profile.numeric:
        assert feature.n == table.num_rows
        assert len(feature.counts) == len(feature.edges) + 1
    age = profile.feature("age")
    assert age.mean == pytest.approx(pc.mean(table.column("age")).as_py())
    channel = profile.feature("channel")
    assert channel.other == 0 and channel.missing == 0
    assert profile.label_rate == pytest.approx(pc.mean(table.column("label")).as_py())


def test_unknown_feature_column_in_config_is_rejected(pipeline):
    with pytest.raises(FeatureError, match="not in the schema"):
        FeaturePipeline(FeaturesConfig(numeric=["nope"]), pipeline.schema, label_column="label")


def test_time_features_accept_naive_and_offset_timestamps(fitted):
    features, _ = fitted
    base = pa.table({c: [None] for c in features.input_columns if c != "event_time"})
    utc = features.transform(base.append_column("event_time", pa.array(["2026-01-05T13:00:00Z"])))
    naive = features.transform(base.append_column("event_time", pa.array(["2026-01-05T13:00:00"])))
    shifted = features.transform(base.append_column("event_time", pa.array(["2026-01-05T15:00:00+02:00"])))
    np.testing.assert_array_equal(utc, naive)
    np.testing.assert_array_equal(utc, shifted)
