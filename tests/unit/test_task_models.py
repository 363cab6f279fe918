"""Every task's models without Ray: bundles (LightGBM and MLP) round trip and answer with the task's
outputs from raw rows, the torch backend passes parity for every output shape, the gate and its
bootstrap read each metric the right way round, and a CSV's types are read off its values."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
import torch

from rayloop.bundle import ModelBundle
from rayloop.data import synthetic
from rayloop.data.io import inspect_source, read_table
from rayloop.data.schema import FeatureSchema
from rayloop.models.mlp import build_model
from rayloop.registry import gate
from rayloop.serving.backends import build_backend, parity, probe_matrix
from rayloop.tasks import Task
from rayloop.training.evaluate import paired_difference_interval
from tests.support import fitted_synthetic

N = 3000
MULTICLASS = Task(kind="multiclass", label="label", label_type="string", classes=["high", "low", "medium"])
REGRESSION = Task(kind="regression", label="label", label_type="float")


@pytest.fixture(scope="module")
def parts():
    """Fitted features of the synthetic table; its rows carry each task's label (same features)."""
    config, table, fitted, profile = fitted_synthetic(N, seed=5)
    labels = {task: synthetic.generate(N, seed=5, task=task).column("label") for task in ("multiclass", "regression")}
    return table, fitted, profile, labels


def _lightgbm(parts, task: Task) -> ModelBundle:
    table, fitted, profile, labels = parts
    y = task.encode(labels[task.kind])
    params = task.lightgbm_params({"num_leaves": 7})
    booster = lgb.train(
        params, lgb.Dataset(fitted.transform(table), y, categorical_feature=fitted.categorical_indices), 20
    )
    return ModelBundle(
        "lightgbm", booster, fitted, synthetic.declared_schema(task.kind), profile, task=task, model_params=params
    )


def _mlp(parts, task: Task) -> ModelBundle:
    _, fitted, profile, _ = parts
    torch.manual_seed(0)
    head = {"multiclass": "softmax", "regression": "linear"}[task.kind]
    params = {"hidden": [16], "dropout": 0.0, "n_outputs": task.n_outputs, "head": head}
    if task.kind == "regression":
        params |= {"target_mean": 100.0, "target_std": 20.0}
    model = build_model(
        {
            "feature_names": fitted.feature_names,
            "categorical_indices": fitted.categorical_indices,
            "cardinalities": fitted.cardinalities,
            **params,
        }
    )
    return ModelBundle(
        "mlp", model, fitted, synthetic.declared_schema(task.kind), profile, task=task, model_params=params
    )


def test_a_multiclass_bundle_answers_with_the_original_classes_and_round_trips(parts, tmp_path):
    table = parts[0]
    bundle = _lightgbm(parts, MULTICLASS)
    loaded = ModelBundle.load(bundle.save(tmp_path / "mc"))
    assert loaded.task == MULTICLASS
    frame = loaded.predict_frame(table.slice(0, 200))
    probabilities = frame[[f"probability.{c}" for c in MULTICLASS.classes]].to_numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-9)
    native = bundle.model.predict(bundle.fitted.transform(table.slice(0, 200)))
    assert np.array_equal(probabilities, native)
    assert frame["label"].tolist() == [MULTICLASS.classes[i] for i in native.argmax(axis=1)]


def test_a_regression_bundle_answers_with_its_value_and_interval_and_round_trips(parts, tmp_path):
    table = parts[0]
    bundle = _lightgbm(parts, REGRESSION)
    bundle.interval_half_width, bundle.interval_coverage = 7.5, 0.9
    loaded = ModelBundle.load(bundle.save(tmp_path / "reg"))
    assert (loaded.interval_half_width, loaded.interval_coverage) == (7.5, 0.9)
    frame = loaded.predict_frame(table.slice(0, 100))
    native = bundle.model.predict(bundle.fitted.transform(table.slice(0, 100)))
    assert np.array_equal(frame["prediction"].to_numpy(), native)
    np.testing.assert_allclose(frame["upper"] - frame["lower"], 15.0)
    np.testing.assert_allclose((frame["upper"] + frame["lower"]) / 2, native)


@pytest.mark.parametrize("task", [MULTICLASS, REGRESSION], ids=lambda t: t.kind)
def test_an_mlp_bundle_of_every_head_round_trips_and_the_torch_backend_passes_parity(parts, task, tmp_path):
    table = parts[0]
    bundle = _mlp(parts, task)
    loaded = ModelBundle.load(bundle.save(tmp_path / task.kind))
    scores = loaded.predict_scores(table.slice(0, 64))
    np.testing.assert_allclose(scores, bundle.predict_scores(table.slice(0, 64)), rtol=0, atol=1e-6)
    if task.kind == "multiclass":
        assert scores.shape == (64, 3)
        np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-5)
    else:  # the standardized output scaled back: values around the target's mean, not around 0
        assert scores.shape == (64,) and 40 < float(np.mean(scores)) < 160
    backend = build_backend(loaded, "torch", max_batch_size=16, tolerance=1e-5)
    assert backend.name == "torch"
    x = probe_matrix(loaded.fitted, rows=40, seed=3)
    assert parity(loaded.predict_matrix(x), backend.predict(x)) <= 1e-5


def test_the_gate_reads_an_error_metric_the_other_way_round():
    assert gate("rmse", challenger=9.0, champion=10.0, tolerance=0.0).promote
    assert not gate("rmse", challenger=11.0, champion=10.0, tolerance=0.5).promote
    assert gate("macro_f1", challenger=0.80, champion=0.81, tolerance=0.02).promote


@pytest.mark.parametrize(
    ("metric", "kind"), [("macro_f1", "multiclass"), ("multi_logloss", "multiclass"), ("rmse", "regression")]
)
def test_the_bootstrap_interval_covers_a_real_difference_in_every_metric(metric, kind):
    rng = np.random.default_rng(0)
    n = 2000
    if kind == "multiclass":
        y = rng.integers(0, 3, n)
        good = rng.dirichlet([1, 1, 1], n)
        good[np.arange(n), y] += 1.0
        good /= good.sum(axis=1, keepdims=True)
        bad = rng.dirichlet([1, 1, 1], n)
    else:
        y = rng.normal(0, 10, n)
        good, bad = y + rng.normal(0, 2, n), y + rng.normal(0, 6, n)
    lo, hi = paired_difference_interval(y, good, bad, metric, kind=kind)
    better_is_higher = metric == "macro_f1"
    assert (lo > 0) if better_is_higher else (hi < 0), (metric, lo, hi)  # the better model, clearly
    same_lo, same_hi = paired_difference_interval(y, good, good, metric, kind=kind)
    assert same_lo == same_hi == 0.0


def test_a_csv_without_a_schema_gets_its_types_from_the_values(tmp_path):
    path = tmp_path / "export.csv"
    path.write_text(
        "id,count,price,active,when,city\n"
        "1,3,2.5,true,2026-01-02 10:00:00,Oslo\n"
        "2,4,3.25,false,2026-01-03 11:30:00,Bergen\n"
    )
    info = inspect_source(str(path))
    types = {f.name: f.type for f in info.schema}
    assert pa.types.is_integer(types["count"]) and pa.types.is_floating(types["price"])
    assert pa.types.is_boolean(types["active"]) and pa.types.is_timestamp(types["when"])
    assert pa.types.is_string(types["city"]) or pa.types.is_large_string(types["city"])
    # read as text (so a bad cell becomes a reject with its reason), then typed by the inferred schema
    typed, rejects = FeatureSchema.infer(info.schema).validate(read_table(info))
    assert rejects.num_rows == 0 and typed.column("price").to_pylist() == [2.5, 3.25]
    assert typed.column("active").to_pylist() == [True, False]
    pacsv.write_csv(typed, tmp_path / "again.csv")  # written back, read the same way
    assert inspect_source(str(tmp_path / "again.csv")).schema.field("count").type == types["count"]
