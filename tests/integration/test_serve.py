"""The Serve app over real HTTP: parity with the pyfunc bundle, malformed requests, hot swap, overload."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import lightgbm as lgb
import mlflow
import numpy as np
import pytest
import ray
from prometheus_client.parser import text_string_to_metric_families
from ray import serve

from rayloop import metrics, registry
from rayloop.bundle import ModelBundle
from rayloop.config import ConfigSource
from rayloop.control.deploy import wait_for_version
from rayloop.control.monitor_actor import stop_monitor
from rayloop.control.rollout import follows_champion, rollout
from rayloop.control.up import up
from rayloop.data.synthetic import generate
from rayloop.runtime import free_port
from rayloop.serving.app_args import TabularAppArgs
from serve_apps.tabular import app_builder
from tests.support import fitted_synthetic, wait_for

pytestmark = pytest.mark.slow

NAME = "serve-test"


def _records(table) -> list[dict]:
    rows = table.drop_columns(["label", "entity_id"]).to_pylist()
    for row in rows:
        row["event_time"] = row["event_time"].isoformat()
    return rows


def _register(bundle: ModelBundle) -> str:
    registry.client()
    with mlflow.start_run(experiment_id=registry.experiment_id("serve-tests")):
        return registry.log_bundle(bundle, model_name=NAME)


@pytest.fixture(scope="module")
def models():
    config, train, fitted, profile = fitted_synthetic(5000, seed=41)
    x, y = fitted.transform(train), train.column("label").to_numpy()

    def bundle(rounds: int, leaves: int) -> ModelBundle:
        booster = lgb.train(
            {"objective": "binary", "verbosity": -1, "num_leaves": leaves, "seed": 3},
            lgb.Dataset(x, y, categorical_feature=fitted.categorical_indices),
            num_boost_round=rounds,
        )
        return ModelBundle("lightgbm", booster, fitted, config.data.schema_, profile)

    v1 = _register(bundle(40, 15))
    holdout = generate(400, seed=42)
    assert registry.promote(NAME, v1, holdout).promote
    v2 = _register(bundle(80, 31))
    return v1, v2, holdout


@pytest.fixture(scope="module")
def server(ray_session, models):
    overrides = [
        f"registry.model_name={NAME}",
        "serving.min_replicas=1",
        "serving.max_replicas=1",
        "serving.max_records_per_request=64",
        "serving.max_body_bytes=65536",
        f"serving.port={free_port()}",
    ]
    source = ConfigSource(overrides=tuple(overrides))
    base = up(source)
    try:
        yield base, source
    finally:
        serve.shutdown()
        stop_monitor(NAME)


def test_predictions_equal_the_pyfunc_bundle_for_the_same_rows(server, models):
    base, _ = server
    v1, _, holdout = models
    rows = _records(holdout.slice(0, 50))
    got = httpx.post(f"{base}/v1/predict", json=rows, timeout=30)
    assert got.status_code == 200, got.text
    predictions = got.json()["predictions"]
    assert [p["model_version"] for p in predictions] == [v1] * 50
    answer = mlflow.pyfunc.load_model(registry.model_uri(NAME, v1)).predict(holdout.slice(0, 50).to_pandas())
    expected = answer["probability"].to_numpy()
    np.testing.assert_allclose([p["probability"] for p in predictions], expected, rtol=0, atol=1e-12)
    assert [p["label"] for p in predictions] == [int(p >= 0.5) for p in expected]
    assert len({p["request_id"] for p in predictions}) == 50
    one = httpx.post(f"{base}/v1/predict", json=rows[0], timeout=30).json()["predictions"]
    assert one[0]["probability"] == pytest.approx(expected[0], abs=1e-12)
    info = httpx.get(f"{base}/v1/model", timeout=10).json()
    assert info["version"] == v1 and info["backend"] == "native" and info["kind"] == "lightgbm"
    assert httpx.get(f"{base}/healthz", timeout=10).json() == {"status": "ok", "model_version": v1}
    openapi = httpx.get(f"{base}/openapi.json", timeout=10).json()
    record = openapi["paths"]["/v1/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]["oneOf"][0]
    # every input is required; the training table's other columns are accepted, optional, ignored
    assert set(record["required"]) == set(info["input_columns"]) and record["additionalProperties"] is False
    assert set(record["properties"]) == {*info["input_columns"], "entity_id", "event_time", "label"}
    answer = openapi["paths"]["/v1/predict"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert set(answer["properties"]["predictions"]["items"]["properties"]) >= {"probability", "label"}
    assert info["task"] == "binary" and info["classes"] == [0, 1]
    training_row = holdout.slice(0, 1).to_pylist()[0]  # a row of the training table, label and id included
    training_row["event_time"] = training_row["event_time"].isoformat()
    scored = httpx.post(f"{base}/v1/predict", json=training_row, timeout=30)
    assert scored.status_code == 200 and scored.json()["predictions"][0]["probability"] == pytest.approx(expected[0])
    assert httpx.get(f"{base}/docs", timeout=10).status_code == 200


def _malformed_cases(row: dict) -> list[tuple[str, dict, int, str | None]]:
    """(name, httpx kwargs, expected status, field the error must name)."""
    j = {"headers": {"content-type": "application/json"}}

    def body(value) -> dict:
        return {"content": json.dumps(value), **j}

    def raw(text: str) -> dict:
        return {"content": text, **j}

    return [
        ("wrong type", body({**row, "age": "old"}), 422, "record.age"),
        ("missing field", body({k: v for k, v in row.items() if k != "income"}), 422, "record.income"),
        ("extra field", body({**row, "agee": 30}), 422, "record.agee"),
        ("empty list", body([]), 422, "body"),
        ("too many rows", body([row] * 65), 422, "body"),
        ("out of range", body({**row, "age": 500}), 422, "record.age"),
        (
            "infinity not allowed",
            raw(json.dumps({**row, "income": 1}).replace('"income": 1', '"income": Infinity')),
            422,
            "record.income",
        ),
        ("huge number", raw(json.dumps({**row, "age": 1}).replace('"age": 1', '"age": 1e999')), 422, "record.age"),
        ("integer overflow", body({**row, "num_transactions_30d": 10**30}), 422, "record.num_transactions_30d"),
        ("boolean for a number", body({**row, "age": True}), 422, "record.age"),
        ("fractional integer", body({**row, "num_transactions_30d": 2.5}), 422, "record.num_transactions_30d"),
        (
            "NaN timestamp",
            raw(json.dumps({**row, "event_time": 1}).replace('"event_time": 1', '"event_time": NaN')),
            422,
            "record.event_time",
        ),
        ("null in a non-null column", body({**row, "event_time": None}), 422, "record.event_time"),
        ("bad timestamp", body({**row, "event_time": "yesterday"}), 422, "record.event_time"),
        ("nested object", body({**row, "region": {"a": 1}}), 422, "record.region"),
        ("string too long", body({**row, "merchant_id": "m" * 5000}), 422, "record.merchant_id"),
        ("row not an object", body([row, 7]), 422, "records[1]"),
        ("second row bad", body([row, {**row, "age": -3}]), 422, "records[1].age"),
        ("invalid JSON", raw('{"age": 3,'), 400, None),
        ("JSON scalar", raw("5"), 400, "body"),
        (
            "wrong content type",
            {"content": json.dumps(row), "headers": {"content-type": "text/plain"}},
            415,
            "content-type",
        ),
        ("no content type", {"content": json.dumps(row).encode()}, 415, "content-type"),
        ("body too large", body([{**row, "merchant_id": "m" * 1000}] * 64), 413, "body"),
    ]


def test_malformed_requests_get_their_documented_4xx_and_the_server_keeps_serving(server, models):
    base, _ = server
    _, _, holdout = models
    row = _records(holdout.slice(0, 1))[0]
    cases = _malformed_cases(row)
    assert len(cases) >= 15
    with httpx.Client(base_url=base, timeout=30) as client:
        for name, kwargs, status, field in cases:
            got = client.post("/v1/predict", **kwargs)
            assert got.status_code == status, f"{name}: {got.status_code} {got.text[:300]}"
            if field is not None:
                assert field in [d["field"] for d in got.json()["detail"]], f"{name}: {got.text[:300]}"
        # JSON's NaN where the column is nullable means missing; an unseen category is out-of-vocabulary
        nan = json.dumps({**row, "age": 1}).replace('"age": 1', '"age": NaN')
        assert client.post("/v1/predict", content=nan, headers={"content-type": "application/json"}).status_code == 200
        unseen = client.post("/v1/predict", json={**row, "channel": "carrier-pigeon", "merchant_id": "never-seen"})
        assert unseen.status_code == 200 and 0 <= unseen.json()["predictions"][0]["probability"] <= 1
        assert client.get("/v1/predict").status_code == 405
        bad_feedback = [
            ({"request_id": "x", "label": 1}, 422),
            ({"request_id": "a" * 32, "label": 2}, 422),
            ({"request_id": "a" * 32, "label": 1, "extra": 0}, 422),
        ]
        for payload, status in bad_feedback:
            assert client.post("/v1/feedback", json=payload).status_code == status
        request_id = client.post("/v1/predict", json=row).json()["predictions"][0]["request_id"]
        assert client.post("/v1/feedback", json={"request_id": request_id, "label": 1}).status_code == 202
        assert client.post("/v1/predict", json=row).status_code == 200  # still serving


@contextmanager
def _steady_load(base: str, rows: list[dict], threads: int) -> Iterator[tuple[Counter, list[tuple[float, str]]]]:
    """Threads posting `rows` back to back until the block ends: (statuses, [(sent at, version)]).
    Threads finish out of order, so answers carry their send time."""
    statuses: Counter = Counter()
    answers: list[tuple[float, str]] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=base, timeout=30) as client:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    got = client.post("/v1/predict", json=rows)
                except httpx.HTTPError as exc:
                    statuses[type(exc).__name__] += 1
                    continue
                statuses[got.status_code] += 1
                if got.status_code == 200:
                    answers.append((sent, got.json()["predictions"][0]["model_version"]))

    workers = [threading.Thread(target=load, daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    try:
        yield statuses, answers
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=60)


def test_hot_swap_under_load_drops_no_request_and_later_answers_carry_the_new_version(server, models):
    base, source = server
    v1, v2, holdout = models
    with _steady_load(base, _records(holdout.slice(0, 4)), threads=4) as (statuses, answers):
        wait_for(lambda: len(answers) >= 20, 30, what="answers before the rollout")
        replicas = _replicas(base)
        # the rollout: same app, same code and args, only the user config names the new version
        assert rollout(source, v2) == base
        rolled_out = time.monotonic()  # every replica reconfigured: the app is RUNNING again
        wait_for(lambda: sum(sent > rolled_out for sent, _ in answers) >= 20, 30, what="answers after the rollout")
    assert set(statuses) == {200}, statuses
    answers.sort()
    assert answers[0][1] == v1 and answers[-1][1] == v2
    # a request sent after the rollout returned is answered by the new version on every replica
    after = {version for sent, version in answers if sent > rolled_out}
    assert after == {v2}, Counter(version for sent, version in answers if sent > rolled_out)
    assert httpx.get(f"{base}/v1/model", timeout=10).json()["version"] == v2
    # reconfigured in place (loaded beside, probed, swapped), not replaced by new replicas
    assert replicas and None not in replicas and _replicas(base) == replicas


def test_replicas_follow_the_champion_alias_without_a_serve_config_change(server, models):
    """A promotion moves `champion` in the registry; replicas serving the alias swap by themselves
    within serving.follow_alias_s, so the loop's rollout changes no Serve config (no HAProxy reload)."""
    base, source = server
    v1, v2, holdout = models
    serving = source.load().serving
    assert follows_champion(serving)
    client = registry.client()
    client.set_registered_model_alias(NAME, "champion", v1)
    rollout(source, "champion")  # the app serves the alias again (the test above pinned v2)
    wait_for_version(serving, v1)

    def deployed_user_config() -> dict:
        details = ray.get(serve.context._get_global_client()._controller.get_serve_instance_details.remote())
        return details["applications"]["tabular"]["deployed_app_config"]["deployments"][0]["user_config"]

    before_config, replicas = deployed_user_config(), _replicas(base)
    assert before_config == {"model_ref": "champion"}
    with _steady_load(base, _records(holdout.slice(0, 2)), threads=2) as (statuses, answers):
        wait_for(lambda: len(answers) >= 10, 30, what="answers before the promotion")
        client.set_registered_model_alias(NAME, "champion", v2)  # what the gate does on promotion
        seen = wait_for_version(serving, v2, timeout_s=60)
        confirmed = time.monotonic()
        wait_for(lambda: sum(sent > confirmed for sent, _ in answers) >= 10, 30, what="answers after the swap")
    assert set(statuses) == {200}, statuses
    assert set(seen.values()) == {v2}
    assert {v for sent, v in answers if sent > confirmed} == {v2}
    assert deployed_user_config() == before_config  # no Serve config change ...
    assert _replicas(base) == replicas  # ... and the same replicas


def _replicas(base: str) -> set[str]:
    return {httpx.get(f"{base}/v1/model", timeout=10).json()["replica"] for _ in range(5)}


def test_overload_gets_fast_503s_or_answers_never_hangs_and_the_app_recovers(server, models):
    base, source = server
    _, _, holdout = models
    tight = [
        *source.overrides,
        "serving.max_ongoing_requests=2",
        "serving.max_batch_size=2",
        "serving.max_queued_requests=2",
    ]
    serve.run(app_builder(TabularAppArgs(overrides=tight)), name="small", route_prefix="/small")
    rows = _records(holdout.slice(0, 64))

    def call(_: int) -> tuple[int | str, str | None]:
        try:  # a hang shows up as a timeout here
            got = httpx.post(f"{base}/small/v1/predict", json=rows, timeout=30)
        except httpx.HTTPError as exc:
            return type(exc).__name__, None
        return got.status_code, got.headers.get("retry-after")

    try:
        with ThreadPoolExecutor(64) as pool:
            results = list(pool.map(call, range(256)))
        statuses = Counter(status for status, _ in results)
        assert set(statuses) <= {200, 503}, statuses  # no timeouts, no other 5xx
        assert statuses[503] > 0 and statuses[200] > 0, statuses
        assert {retry for status, retry in results if status == 503} == {"1"}  # serving.retry_after_s
        after = httpx.post(f"{base}/small/v1/predict", json=rows[:1], timeout=30)
        assert after.status_code == 200
    finally:
        serve.delete("small")


def test_serving_metrics_reach_the_ray_metrics_export_port(server, ray_session):
    base, _ = server
    # the earlier tests sent 200s and 4xx; one more of each, then wait for the export (5-20 s late)
    httpx.post(f"{base}/v1/predict", content=b"{", headers={"content-type": "application/json"}, timeout=10)

    def samples() -> dict[str, list]:
        try:
            page = httpx.get(f"http://127.0.0.1:{ray_session}/metrics", timeout=10).text
        except httpx.HTTPError:
            return {}
        return {f.name: f.samples for f in text_string_to_metric_families(page)}

    wanted = {
        metrics.exported_name(s).removesuffix("_total")
        for s in (metrics.REQUESTS, metrics.LATENCY_MS, metrics.BATCH_ROWS, metrics.MODEL_VERSION, metrics.PREDICTIONS)
    }
    requests_name = metrics.exported_name(metrics.REQUESTS).removesuffix("_total")

    def exported() -> dict[str, list]:
        found = samples()
        ready = wanted <= set(found) and any(s.labels.get("status") == "400" for s in found[requests_name])
        return found if ready else {}

    found = wait_for(exported, 90, interval_s=2, what=f"{sorted(wanted)} on the metrics export port")
    requests = found[metrics.exported_name(metrics.REQUESTS).removesuffix("_total")]
    statuses = {s.labels["status"] for s in requests if s.labels.get("route") == "predict"}
    assert {"200", "400", "422", "415", "413"} <= statuses
    versions = {s.labels["version"]: s.value for s in found[metrics.exported_name(metrics.MODEL_VERSION)]}
    assert 1.0 in versions.values()
    # every request and batch series says which model version answered (the dashboard splits by it)
    serving_now = httpx.get(f"{base}/v1/model", timeout=10).json()["version"]
    for spec in (metrics.REQUESTS, metrics.LATENCY_MS, metrics.BATCH_ROWS, metrics.PREDICTIONS):
        series = found[metrics.exported_name(spec).removesuffix("_total")]
        assert series and all("model_version" in s.labels for s in series), spec.name
        assert serving_now in {s.labels["model_version"] for s in series}, spec.name
