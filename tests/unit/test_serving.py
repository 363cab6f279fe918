"""Serving logic without Ray: request validation from the schema, backends and their parity check."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from rayloop.bundle import ModelBundle
from rayloop.models.mlp import build_model
from rayloop.serving.api import Feedback, RecordParser, RequestError
from rayloop.serving.backends import (
    Backend,
    _chunked,
    build_backend,
    graph_sizes,
    parity,
    probe_matrix,
    resolve_choice,
)
from tests.support import fitted_synthetic


@pytest.fixture(scope="module")
def parts():
    return fitted_synthetic(2000, seed=8)


@pytest.fixture(scope="module")
def parser(parts):
    config, _, fitted, _ = parts
    return RecordParser(config.data.schema_, fitted.input_columns, max_records=8, max_body_bytes=4096)


def _row(parts) -> dict:
    _, table, fitted, _ = parts
    row = table.select(fitted.input_columns).slice(0, 1).to_pylist()[0]
    row["event_time"] = row["event_time"].isoformat()
    return row


def test_a_valid_record_parses_to_typed_row_dicts(parser, parts):
    row = _row(parts)
    one = parser.parse(json.dumps(row).encode(), "application/json; charset=utf-8")
    assert len(one) == 1 and one[0]["event_time"].tzinfo is not None
    many = parser.parse(json.dumps([row, {**row, "region": None}]).encode(), "application/json")
    assert len(many) == 2 and many[1]["region"] is None
    naive = parser.parse(json.dumps({**row, "event_time": "2026-01-02T03:04:05"}).encode(), "application/json")
    assert naive[0]["event_time"].utcoffset().total_seconds() == 0  # naive timestamps are UTC


@pytest.mark.parametrize(
    ("mutate", "status", "field", "rule"),
    [
        (lambda r: {**r, "age": -1}, 422, "record.age", "range"),
        (lambda r: {**r, "credit_utilization": 1.5}, 422, "record.credit_utilization", "range"),
        (lambda r: {**r, "num_transactions_30d": "many"}, 422, "record.num_transactions_30d", "int_type"),
        (lambda r: {**r, "unknown": 1}, 422, "record.unknown", "extra_forbidden"),
        (lambda r: {k: v for k, v in r.items() if k != "channel"}, 422, "record.channel", "missing"),
        (lambda r: [r] * 9, 422, "body", "too_long"),
    ],
)
def test_rule_violations_name_the_field_and_the_rule(parser, parts, mutate, status, field, rule):
    with pytest.raises(RequestError) as caught:
        parser.parse(json.dumps(mutate(_row(parts))).encode(), "application/json")
    assert caught.value.status == status
    assert {"field": field, "rule": rule} == {k: caught.value.errors[0][k] for k in ("field", "rule")}


@pytest.mark.parametrize(
    "value",
    [
        "0",
        "120",
        "0.5",
        "7",
        "1.5e1",
        '"3.5"',
        "null",
        "NaN",
        "-1",
        "121",
        "Infinity",
        "-Infinity",
        "1e400",
        '"x"',
        "true",
    ],
)
def test_the_fast_path_agrees_with_the_full_rules_on_every_value(parser, parts, value):
    """The native fast types only shortcut: each value parses to what the full rules give, or
    fails with the full rules' error (age: nullable float in [0, 120], infinities refused)."""
    body = json.dumps([{**_row(parts), "age": None}]).replace('"age": null', f'"age": {value}', 1).encode()
    try:
        expected = parser._many.validate_json(body)
    except ValidationError:  # the full rules refuse: parse must answer their 422 on that field
        with pytest.raises(RequestError) as caught:
            parser.parse(body, "application/json")
        assert caught.value.status == 422
        assert caught.value.errors[0]["field"] == "records[0].age"
        return
    assert parser.parse(body, "application/json") == expected
    assert value != "NaN" or expected[0]["age"] is None  # NaN means missing in a nullable column


def test_transport_errors_are_400_413_415(parser, parts):
    row = json.dumps(_row(parts)).encode()
    for body, content_type, status in [
        (row, "text/csv", 415),
        (row, None, 415),
        (b"x" * 5000, "application/json", 413),
        (b"[1, 2", "application/json", 400),
        (b"true", "application/json", 400),
    ]:
        with pytest.raises(RequestError) as caught:
            parser.parse(body, content_type)
        assert caught.value.status == status


def test_feedback_needs_a_request_id_and_a_binary_label():
    assert Feedback.model_validate({"request_id": "ab" * 16, "label": 0}).label == 0
    for bad in ({"request_id": "AB" * 16, "label": 0}, {"request_id": "ab" * 16, "label": 3}, {"label": 1}):
        with pytest.raises(ValueError):
            Feedback.model_validate(bad)


def _mlp_bundle(parts) -> ModelBundle:
    config, _, fitted, profile = parts
    torch.manual_seed(0)
    model = build_model(
        {
            "feature_names": fitted.feature_names,
            "categorical_indices": fitted.categorical_indices,
            "cardinalities": fitted.cardinalities,
            "hidden": [16],
            "dropout": 0.0,
        }
    ).eval()
    return ModelBundle(
        "mlp", model, fitted, config.data.schema_, profile, model_params={"hidden": [16], "dropout": 0.0}
    )


def test_probe_matrix_has_the_feature_layout(parts):
    _, _, fitted, _ = parts
    probe = probe_matrix(fitted, rows=50)
    assert probe.shape == (50, len(fitted.feature_names)) and probe.dtype == np.float32
    for index, cardinality in zip(fitted.categorical_indices, fitted.cardinalities):
        assert probe[:, index].min() >= 0 and probe[:, index].max() < cardinality
    assert np.array_equal(probe, probe_matrix(fitted, rows=50))  # deterministic


def test_the_torch_backend_passes_parity_and_serves(parts):
    bundle = _mlp_bundle(parts)
    backend = build_backend(bundle, "torch", max_batch_size=16, tolerance=1e-5)
    assert backend.name == "torch" and backend.max_abs_diff <= 1e-5
    x = probe_matrix(bundle.fitted, rows=20, seed=3)
    assert parity(bundle.predict_matrix(x), backend.predict(x)) <= 1e-6


def test_an_unavailable_or_inexact_backend_falls_back_to_the_reference_and_says_so(parts):
    bundle = _mlp_bundle(parts)
    calls: list[tuple[str, str]] = []
    if not torch.cuda.is_available():
        backend = build_backend(bundle, "tensorrt", on_fallback=lambda *a: calls.append(a))
        assert backend.name == "native" and calls[-1] == ("tensorrt", "unavailable")
    # a tolerance no float computation meets: bf16-free eager still differs by 0 -> use a perturbed model
    perturbed = _mlp_bundle(parts)
    with torch.no_grad():
        perturbed.model.model.body[-1].bias.add_(0.5)
    original = bundle.model
    bundle.model = perturbed.model  # the candidate is built from this one ...
    reference = original

    def reference_predict(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return reference(torch.from_numpy(x)).numpy().astype(np.float64)  # the head included

    bundle.predict_matrix = reference_predict  # ... the reference stays the original
    backend = build_backend(bundle, "torch", tolerance=1e-3, on_fallback=lambda *a: calls.append(a))
    assert backend.name == "native" and calls[-1] == ("torch", "parity")


def test_auto_picks_native_for_trees_and_on_cpu():
    assert resolve_choice("lightgbm", "auto") == "native"
    assert resolve_choice("lightgbm", "tensorrt") == "native"
    if not torch.cuda.is_available():
        assert resolve_choice("mlp", "auto") == "native"
    assert resolve_choice("mlp", "torch_compile") == "torch_compile"
    assert resolve_choice("mlp", "cuda_graph") == "cuda_graph"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback where no CUDA device is visible")
def test_cuda_graphs_without_cuda_fall_back_to_the_reference(parts):
    calls: list[tuple[str, str]] = []
    backend = build_backend(_mlp_bundle(parts), "cuda_graph", on_fallback=lambda *a: calls.append(a))
    assert backend.name == "native" and calls == [("cuda_graph", "unavailable")]


def test_graph_sizes_cover_every_row_count_up_to_max_rows():
    assert graph_sizes(1) == [1] and graph_sizes(5) == [1, 2, 4, 8]
    assert graph_sizes(1024)[-1] == 1024 and graph_sizes(1000)[-1] == 1024 and len(graph_sizes(1024)) == 11


def test_a_shape_bound_backend_scores_large_inputs_in_chunks():
    seen: list[int] = []

    def engine(x: np.ndarray) -> np.ndarray:
        assert len(x) <= 4, "the engine was given more rows than its shape range"
        seen.append(len(x))
        return x[:, 0].astype(np.float64) * 2

    backend = _chunked(Backend("engine", engine), max_rows=4)
    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    assert np.array_equal(backend.predict(x), x[:, 0] * 2) and seen == [4, 4, 2]
    assert np.array_equal(backend.predict(x[:3]), x[:3, 0] * 2) and seen[-1] == 3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")
@pytest.mark.parametrize("name", ["torch", "torch_compile", "cuda_graph", "tensorrt"])
def test_cuda_backends_serve_only_after_passing_parity(parts, name, tmp_path):
    from rayloop.serving.backends import _has_tensorrt

    bundle = _mlp_bundle(parts)
    calls: list[tuple[str, str]] = []
    # max_rows 100: the 300 rows below also go through the chunked path of the shape-bound backends
    backend = build_backend(
        bundle,
        name,
        max_batch_size=64,
        max_rows=100,
        tolerance=2e-3,
        cache_dir=tmp_path,
        on_fallback=lambda *a: calls.append(a),
    )
    assert resolve_choice("mlp", "auto") == ("tensorrt" if _has_tensorrt() else "cuda_graph")
    if name == "tensorrt" and not _has_tensorrt():
        assert backend.name == "native" and calls == [("tensorrt", "unavailable")]
        return
    assert backend.name == name and backend.device == "cuda" and calls == []
    x = probe_matrix(bundle.fitted, rows=300, seed=9)
    got = np.concatenate([backend.predict(x[i : i + 64]) for i in range(0, 300, 64)])
    assert parity(bundle.predict_matrix(x), got) <= 2e-3
    for rows in (1, 3, 37, 300):  # padded up to a captured size, or chunked
        assert parity(bundle.predict_matrix(x[:rows]), backend.predict(x[:rows])) <= 2e-3
    if name == "tensorrt":
        assert any(tmp_path.iterdir())  # the engine was cached for the next replica


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")
def test_a_new_cuda_graph_backend_builds_in_a_thread_while_the_old_one_serves(parts):
    """A hot swap loads the next version in a worker thread (server.reconfigure) while the event
    loop keeps replaying the serving version's graphs: capture must not break either."""
    import threading

    bundle = _mlp_bundle(parts)
    serving = build_backend(bundle, "cuda_graph", max_batch_size=64, tolerance=2e-3)
    assert serving.name == "cuda_graph"
    x = probe_matrix(bundle.fitted, rows=64, seed=11)
    want = bundle.predict_matrix(x)
    built: list = []
    loader = threading.Thread(target=lambda: built.append(build_backend(bundle, "cuda_graph", tolerance=2e-3)))
    loader.start()
    served = 0
    while loader.is_alive() or served < 50:
        rows = 1 + served % 64
        assert parity(want[:rows], serving.predict(x[:rows])) <= 2e-3
        served += 1
    loader.join()
    assert built[0].name == "cuda_graph" and parity(want, built[0].predict(x)) <= 2e-3


def test_the_bearer_token_is_checked_only_when_its_env_var_is_set():
    from types import SimpleNamespace

    from starlette.requests import Request

    from rayloop.serving.server import TabularServer

    cls = TabularServer.func_or_class
    check = cls._unauthorized

    def request(header: str | None) -> Request:
        headers = [(b"authorization", header.encode())] if header is not None else []
        return Request({"type": "http", "method": "POST", "path": "/v1/predict", "headers": headers})

    assert check(SimpleNamespace(_token=None), request(None)) is None  # no token configured: open
    guarded = SimpleNamespace(_token="s3cret")
    assert check(guarded, request("Bearer s3cret")) is None
    for header in (None, "Bearer wrong", "Basic s3cret", "s3cret"):
        refused = check(guarded, request(header))
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"


def test_response_json_round_trips_floats_exactly_and_never_writes_nan():
    import json
    import math

    from rayloop.serving.api import json_bytes

    rng = np.random.default_rng(4)
    probabilities = [float(p) for p in rng.uniform(size=500)] + [1e-300, 0.1 + 0.2]
    assert json.loads(json_bytes({"p": probabilities}))["p"] == probabilities  # exact, not approximate
    text = json_bytes({"a": math.nan, "b": math.inf, "c": [1, "x", None]})
    assert json.loads(text) == {"a": None, "b": None, "c": [1, "x", None]}  # valid JSON, NaN as null


def test_the_apps_url_for_any_interface_is_haproxys_bind_host_of_this_node(monkeypatch):
    from rayloop.config import ServingConfig
    from rayloop.constants import HAPROXY_BIND_HOST_ENV_VAR
    from rayloop.control.deploy import app_url

    monkeypatch.delenv(HAPROXY_BIND_HOST_ENV_VAR, raising=False)
    assert app_url(ServingConfig(host="0.0.0.0", port=8000)) == "http://127.0.0.1:8000"
    monkeypatch.setenv(HAPROXY_BIND_HOST_ENV_VAR, "10.213.1.2")  # a node of a cluster
    assert app_url(ServingConfig(host="0.0.0.0", port=8000), "/v2/") == "http://10.213.1.2:8000/v2"
    assert app_url(ServingConfig(host="127.0.0.1", port=8000)) == "http://127.0.0.1:8000"
