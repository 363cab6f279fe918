"""The model bundle: save/load round trips predict identically, from raw rows, for both model kinds."""

from __future__ import annotations

import json

import lightgbm as lgb
import numpy as np
import pytest
import torch

from rayloop import audit
from rayloop.bundle import ModelBundle, prediction_histogram
from rayloop.errors import BundleError
from rayloop.lineage import code_version, data_fingerprint
from rayloop.models.mlp import build_model
from tests.support import fitted_synthetic


@pytest.fixture(scope="module")
def fitted_data():
    return fitted_synthetic(3000, seed=5)


def _lightgbm_bundle(fitted_data) -> ModelBundle:
    config, table, fitted, profile = fitted_data
    x, y = fitted.transform(table), table.column("label").to_numpy()
    booster = lgb.train(
        {"objective": "binary", "verbosity": -1, "num_leaves": 7},
        lgb.Dataset(x, y, categorical_feature=fitted.categorical_indices),
        num_boost_round=20,
    )
    return ModelBundle("lightgbm", booster, fitted, config.data.schema_, profile, model_params={"num_leaves": 7})


def test_a_lightgbm_bundle_round_trips_and_predicts_from_raw_rows(fitted_data, tmp_path):
    _, table, fitted, _ = fitted_data
    bundle = _lightgbm_bundle(fitted_data)
    bundle.metrics, bundle.lineage = {"auc": 0.8}, {"data_fingerprint": "abc"}
    loaded = ModelBundle.load(bundle.save(tmp_path / "b"))
    native = bundle.model.predict(fitted.transform(table))
    assert np.array_equal(loaded.predict_proba(table), native)
    # every accepted input form gives the same answer as the Arrow table
    rows = table.slice(0, 5)
    assert np.array_equal(loaded.predict_proba(rows.to_pylist()), native[:5])
    assert np.array_equal(loaded.predict_proba(rows.to_pandas()), native[:5])
    assert loaded.metrics == {"auc": 0.8} and loaded.lineage == {"data_fingerprint": "abc"}
    assert loaded.fitted.content_hash == fitted.content_hash
    assert "label" not in loaded.input_columns


def test_an_mlp_bundle_round_trips(fitted_data, tmp_path):
    config, table, fitted, profile = fitted_data
    params = {"hidden": [16], "dropout": 0.0}
    model = build_model(
        {
            "feature_names": fitted.feature_names,
            "categorical_indices": fitted.categorical_indices,
            "cardinalities": fitted.cardinalities,
            **params,
        }
    ).eval()
    bundle = ModelBundle("mlp", model, fitted, config.data.schema_, profile, model_params=params)
    loaded = ModelBundle.load(bundle.save(tmp_path / "m"))
    with torch.no_grad():
        native = torch.sigmoid(model(torch.from_numpy(fitted.transform(table)))).numpy()
    np.testing.assert_allclose(loaded.predict_proba(table), native, rtol=0, atol=1e-6)


def test_a_directory_without_a_bundle_is_a_clear_error(tmp_path):
    with pytest.raises(BundleError, match="is not a rayloop model bundle"):
        ModelBundle.load(tmp_path)
    (tmp_path / "bundle.json").write_text(json.dumps({"format": 99}))
    with pytest.raises(BundleError, match="bundle format 99"):
        ModelBundle.load(tmp_path)


def test_the_prediction_histogram_has_equal_mass_bins_over_zero_to_one():
    scores = np.random.default_rng(0).beta(0.5, 4.0, 10_000)  # crowded near 0, as real scores are
    hist = prediction_histogram(scores, bins=20)
    assert hist.edges[0] == 0.0 and hist.edges[-1] == 1.0 and len(hist.counts) == 20
    assert sum(hist.counts) == 10_000
    assert max(hist.counts) - min(hist.counts) <= 2  # each bin holds about 1/20 of the scores
    edge_case = prediction_histogram(np.array([0.0, 0.5, 1.0, 1.0]), bins=4)
    assert sum(edge_case.counts) == 4 and edge_case.counts[-1] >= 2  # 1.0 falls in the last bin


def test_the_data_fingerprint_follows_the_files(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"a": [1, 2, 3]}), tmp_path / "x.parquet")
    first = data_fingerprint(tmp_path)
    assert data_fingerprint(tmp_path) == first
    pq.write_table(pa.table({"a": [1, 2, 4]}), tmp_path / "x.parquet")
    assert data_fingerprint(tmp_path) != first
    assert len(code_version()["source_sha256"]) == 16


def test_the_audit_log_appends_and_filters():
    audit.record("promoted", model="m", version="1")
    audit.record("rolled_back", model="m", version="0")
    entries = audit.read()
    assert [e["event"] for e in entries[-2:]] == ["promoted", "rolled_back"]
    assert audit.read(event="promoted")[-1]["version"] == "1"
    assert len(audit.read(limit=1)) == 1
