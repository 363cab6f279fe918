"""The Serve app with its DriftMonitor attached, over real HTTP: quiet on reference traffic, an alarm
naming the shifted features, live AUC from /v1/feedback, metrics, and a monitor killed mid-traffic."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import lightgbm as lgb
import mlflow
import psutil
import pytest
import ray
import yaml
from prometheus_client.parser import text_string_to_metric_families
from ray import serve
from ray._private.ray_constants import PROMETHEUS_SERVICE_DISCOVERY_FILE
from typer.testing import CliRunner

from rayloop import audit, metrics, registry
from rayloop.bundle import ModelBundle, prediction_histogram
from rayloop.cli import app as cli
from rayloop.config import ConfigSource
from rayloop.control.monitor_actor import stop_monitor
from rayloop.control.up import up
from rayloop.data.synthetic import Scenario, generate
from rayloop.monitoring.core import MonitorCore
from rayloop.monitoring.handle import get_monitor
from rayloop.monitoring.inference_log import InferenceLog
from rayloop.runtime import free_port
from rayloop.training.evaluate import roc_auc
from tests.support import (
    ALERTS,
    PROMETHEUS_DIR,
    dashboard_exprs,
    fitted_synthetic,
    prometheus_tool,
    promql,
    wait_for,
)

pytestmark = pytest.mark.slow

NAME = "monitor-test"
WINDOW = 400


def _records(table) -> list[dict]:
    rows = table.drop_columns(["label", "entity_id"]).to_pylist()
    for row in rows:
        row["event_time"] = row["event_time"].isoformat()
    return rows


@pytest.fixture(scope="module")
def champion():
    config, train, fitted, profile = fitted_synthetic(8000, seed=51)
    x, y = fitted.transform(train), train.column("label").to_numpy()
    booster = lgb.train(
        {"objective": "binary", "verbosity": -1, "num_leaves": 15, "seed": 3},
        lgb.Dataset(x, y, categorical_feature=fitted.categorical_indices),
        num_boost_round=40,
    )
    bundle = ModelBundle("lightgbm", booster, fitted, config.data.schema_, profile)
    holdout = generate(2000, seed=52)
    bundle.profile = profile.model_copy(
        update={"prediction_histogram": prediction_histogram(bundle.predict_proba(holdout))}
    )
    bundle.metrics = {"auc": roc_auc(holdout.column("label").to_numpy(), bundle.predict_proba(holdout))}
    registry.client()
    with mlflow.start_run(experiment_id=registry.experiment_id("monitor-tests")):
        version = registry.log_bundle(bundle, model_name=NAME)
    assert registry.promote(NAME, version, holdout).promote
    return version


@pytest.fixture(scope="module")
def app(ray_session, champion):
    overrides = [
        f"registry.model_name={NAME}",
        "serving.min_replicas=1",
        "serving.max_replicas=1",
        f"serving.port={free_port()}",
        f"monitoring.window_size={WINDOW}",
        "monitoring.send_batch_rows=50",
        "monitoring.send_interval_s=0.2",
        "monitoring.min_labels=100",
        "monitoring.flush_interval_s=2",
        "monitoring.consecutive_windows=2",
    ]
    source = ConfigSource(overrides=tuple(overrides))
    config = source.load()
    base = up(source)
    try:
        yield base, get_monitor(NAME), config, source
    finally:
        serve.shutdown()
        stop_monitor(NAME)


def _serve(base: str, table, rows_per_request: int = 20, workers: int = 4) -> list[tuple[str, int, float]]:
    """Send the rows; returns (request id, true label, probability) of every answered row."""
    records, labels = _records(table), table.column("label").to_pylist()
    chunks = [
        (records[i : i + rows_per_request], labels[i : i + rows_per_request])
        for i in range(0, len(records), rows_per_request)
    ]

    def call(chunk):
        body, truth = chunk
        with httpx.Client(timeout=30) as client:
            r = client.post(f"{base}/v1/predict", json=body)
        assert r.status_code == 200, r.text
        return [(p["request_id"], y, p["probability"]) for p, y in zip(r.json()["predictions"], truth)]

    with ThreadPoolExecutor(workers) as pool:
        return [row for part in pool.map(call, chunks) for row in part]


def _wait(monitor, predicate, timeout: float = 60.0) -> dict:
    """The monitor's summary once `predicate` holds for it."""
    last: dict = {}

    def holds() -> dict | None:
        last["summary"] = ray.get(monitor.summary.remote())
        return last["summary"] if predicate(last["summary"]) else None

    try:
        return wait_for(holds, timeout, interval_s=0.3, what="the monitor's summary")
    except TimeoutError:
        raise AssertionError(json.dumps(last.get("summary"), indent=1, default=str)) from None


def test_reference_traffic_is_quiet_a_covariate_shift_alarms_and_labels_give_live_auc(app):
    base, monitor, *_ = app
    start = ray.get(monitor.summary.remote())
    served = _serve(base, generate(2 * WINDOW, seed=53))
    quiet = _wait(monitor, lambda s: s["windows_seen"] >= start["windows_seen"] + 2)
    assert quiet["alarms"] == start["alarms"] == 0
    assert quiet["serving_version"] is not None and quiet["rows_received"] >= 2 * WINDOW

    scenario = Scenario(kind="covariate", onset=0.0, magnitude=1.0)
    _serve(base, generate(2 * WINDOW, seed=54, scenario=scenario))
    shifted = _wait(monitor, lambda s: s["windows_seen"] >= quiet["windows_seen"] + 2)
    assert shifted["alarms"] >= 1
    history = ray.get(monitor.history.remote(2))
    named = set(history[-1]["drifted"])
    assert named & set(scenario.shifted_features), (named, scenario.shifted_features)
    alarms = audit.read(event="drift_alarm")
    assert alarms and alarms[-1]["model"] == NAME and set(alarms[-1]["features"]) == named

    with httpx.Client(timeout=30) as client:
        for request_id, label, _ in served[:300]:
            r = client.post(f"{base}/v1/feedback", json={"request_id": request_id, "label": label})
            assert r.status_code == 202 and r.json()["monitored"] is True
    live = _wait(monitor, lambda s: s["labels"]["joined"] >= 300)
    expected = roc_auc([y for _, y, _ in served[:300]], [p for *_, p in served[:300]])
    assert live["live"]["auc"] == pytest.approx(expected, abs=1e-9)
    assert live["labels"]["unknown"] == 0

    ray.get(monitor.save.remote())  # status reads the saved state (saved every second)
    opts = ["--set", f"registry.model_name={NAME}", "--set", "monitoring.min_labels=100"]
    shown = CliRunner().invoke(cli, ["status", *opts], terminal_width=250)
    assert shown.exit_code == 0, shown.output
    assert (
        f"windows seen   │ {live['windows_seen']}" in shown.output
        or f"{live['windows_seen']} (open window" in shown.output
    )
    assert "drift:" in shown.output and sorted(named)[0] in shown.output
    assert f"auc {expected:.4f}" in shown.output


def test_monitor_metrics_reach_the_ray_metrics_export_port(app, ray_session):
    wanted = {
        metrics.exported_name(s) for s in (metrics.DRIFT_PSI, metrics.WINDOWS, metrics.LIVE_QUALITY, metrics.SAMPLES)
    }

    def exported() -> set[str]:
        text = httpx.get(f"http://127.0.0.1:{ray_session}/metrics", timeout=10).text
        found = {s.name for f in text_string_to_metric_families(text) for s in f.samples if s.name in wanted}
        return found if wanted <= found else set()

    wait_for(exported, 60, interval_s=2, what=f"{sorted(wanted)} on the metrics export port")
    text = httpx.get(f"http://127.0.0.1:{ray_session}/metrics", timeout=10).text
    features = {
        s.labels.get("feature")
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == metrics.exported_name(metrics.DRIFT_PSI)
    }
    assert {"age", "channel", "prediction"} <= features


def _worker_niceness() -> int:
    return os.nice(0)


def test_every_thread_of_the_monitor_runs_below_the_priority_of_rays_workers(app):
    _, monitor, config, _ = app
    pid = ray.get(monitor.ping_pid.remote())
    worker = ray.get(ray.remote(num_cpus=0)(_worker_niceness).remote())
    assert config.monitoring.niceness == 10
    threads = os.listdir(f"/proc/{pid}/task")
    assert len(threads) > 5  # Ray's core-worker threads, the actor's task threads and its timers
    assert {os.getpriority(os.PRIO_PROCESS, int(tid)) for tid in threads} == {
        min(19, worker + config.monitoring.niceness)
    }


def test_a_killed_monitor_restarts_with_its_state_and_the_log_has_every_acknowledged_row(app, rayloop_home):
    base, monitor, *_ = app
    before = _wait(monitor, lambda s: True)
    trail_before = audit.read()
    table = generate(6 * 100, seed=55)
    served: list = []
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(_serve, base, table, 20, 2)
        # mid-traffic: some of this table's rows have reached the monitor, more are on their way
        _wait(monitor, lambda s: s["rows_received"] > before["rows_received"], timeout=30)
        pid = ray.get(monitor.ping_pid.remote())
        os.kill(pid, signal.SIGKILL)
        served = future.result()
    assert len(served) == table.num_rows
    after = _wait(
        monitor,
        lambda s: s["restarts"] > before["restarts"] and s["rows_received"] >= before["rows_received"] + table.num_rows,
    )
    # counters continue from the saved state instead of starting again from zero
    assert after["windows_seen"] >= before["windows_seen"] + table.num_rows // WINDOW
    assert after["alarms"] >= before["alarms"] and after["labels"] == before["labels"]
    # the audit trail is append-only: the restart kept every earlier event as it was
    assert audit.read()[: len(trail_before)] == trail_before
    ray.get(monitor.flush.remote())
    logged = InferenceLog(str(rayloop_home / "inference_log" / NAME)).predictions.read(["request_id"])
    ids = logged.column("request_id").to_pylist()
    assert len(ids) == len(set(ids)), "a row was logged twice"
    missing = {rid for rid, *_ in served} - set(ids)
    assert not missing, f"{len(missing)} acknowledged rows are not in the inference log"
    saved = MonitorCore.read_state(str(rayloop_home), NAME)
    assert saved is not None and saved["restarts"] == after["restarts"]


# ---- Prometheus against this cluster, with the shipped config (configs/prometheus/) ------------
def test_prometheus_with_the_shipped_config_scrapes_rayloop_metrics_and_loads_the_alerts(app, champion, tmp_path):
    """A real Prometheus (Debian's package; `make test` installs it) on 127.0.0.1, run with a copy of
    configs/prometheus/prometheus.yml in which only the service-discovery file (this cluster's) and
    the rules path (absolute) differ, reads a serving and a monitor metric back through its HTTP API,
    has loaded and evaluated every alert rule, and evaluates every dashboard query without error."""
    binary = prometheus_tool("prometheus")
    base, *_ = app

    # Ray's dashboard writes the discovery file at the root of the cluster's temp dir; this
    # session's cluster runs without the dashboard, so write what Ray's writer would (its
    # PrometheusServiceDiscoveryWriter content: every live node's metrics export port)
    temp_dir = Path(ray._private.worker._global_node.get_temp_dir_path())
    sd_file = temp_dir / PROMETHEUS_SERVICE_DISCOVERY_FILE
    if not sd_file.exists():
        targets = [f"{n['NodeManagerAddress']}:{n['MetricsExportPort']}" for n in ray.nodes() if n["Alive"]]
        sd_file = tmp_path / PROMETHEUS_SERVICE_DISCOVERY_FILE
        sd_file.write_text(json.dumps([{"labels": {"job": "ray"}, "targets": targets}]))

    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["rule_files"] = [str(PROMETHEUS_DIR / name) for name in config["rule_files"]]
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "ray"]
    (discovery,) = job["file_sd_configs"]
    discovery["files"] = [str(sd_file)]
    config_file = tmp_path / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_file = (tmp_path / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config_file}",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
        ],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )

    def log_tail() -> str:
        log_file.flush()
        return (tmp_path / "prometheus.log").read_text()[-3000:]

    def query(expr: str) -> dict:
        got = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10).json()
        assert got["status"] == "success", (expr, got)
        return got["data"]

    def ready() -> bool:
        assert proc.poll() is None, f"prometheus exited with {proc.returncode}:\n{log_tail()}"
        try:
            return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(ready, 60, what="prometheus to be ready")
        listening = [c for c in psutil.Process(proc.pid).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
        assert listening and all(c.laddr.ip == "127.0.0.1" for c in listening), listening

        _serve(base, generate(200, seed=56))  # traffic of our own: this test may run alone

        requests = 'sum by (model_version, status) (ray_rayloop_serve_requests_total{route="predict"})'
        monitor_alive = "max(ray_rayloop_monitor_open_window_rows)"
        seen: dict = {}

        def scraped() -> bool:
            served = {
                (s["metric"].get("model_version"), s["metric"].get("status")): float(s["value"][1])
                for s in query(requests)["result"]
            }
            seen["rules"] = httpx.get(f"{url}/api/v1/rules", timeout=10).json()["data"]["groups"]
            seen["health"] = {r["name"]: r["health"] for g in seen["rules"] for r in g["rules"]}
            seen.update(served=served, monitor=query(monitor_alive)["result"])
            return (
                served.get((champion, "200"), 0) >= 10
                and bool(seen["monitor"])
                and set(seen["health"].values()) == {"ok"}
            )

        try:
            wait_for(scraped, 90, interval_s=2, what="rayloop's series and healthy rules in prometheus")
        except TimeoutError:
            raise AssertionError((seen.get("served"), seen.get("monitor"), seen.get("health"), log_tail())) from None
        rules, health = seen["rules"], seen["health"]
        # every alert rule loaded from the shipped alerts.yml and evaluated without error
        assert set(health) == ALERTS and all(r["type"] == "alerting" for g in rules for r in g["rules"])
        assert [g["name"] for g in rules] == ["rayloop"]
        targets = httpx.get(f"{url}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
        assert targets and all(t["labels"]["job"] == "ray" and t["health"] == "up" for t in targets), targets
        # the dashboard's queries run on the real series (errors such as duplicate label sets
        # only show with data)
        for where, expr in dashboard_exprs():
            assert isinstance(query(promql(expr))["result"], list), where
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        log_file.close()


def test_a_monitor_stopped_on_purpose_stays_stopped_under_the_keeper_until_started_again(app, rayloop_home):
    """`rayloop monitor --stop` on a RayService: the keeper app's next round must not undo it."""
    from rayloop.control.monitor_actor import start_model_monitor, stop_model_monitor
    from rayloop.control.monitor_keeper import keeper_round

    *_, source = app
    assert keeper_round(source, "tabular") == "running"
    assert stop_model_monitor(source, by="rayloop monitor --stop")
    assert get_monitor(NAME) is None
    round_ = keeper_round(source, "tabular")
    assert round_.startswith("stopped on purpose by rayloop monitor --stop"), round_
    assert get_monitor(NAME) is None  # the keeper started nothing
    shown = CliRunner().invoke(cli, ["status", "--json", "--set", f"registry.model_name={NAME}"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["monitor_stopped"]["by"] == "rayloop monitor --stop"
    # a start on purpose clears the mark; the keeper then finds it running
    start_model_monitor(source)
    assert MonitorCore.read_state(str(rayloop_home), NAME) is not None
    assert keeper_round(source, "tabular") == "running"
    assert (
        json.loads(CliRunner().invoke(cli, ["status", "--json", "--set", f"registry.model_name={NAME}"]).output)[
            "monitor_stopped"
        ]
        is None
    )
    events = [e["event"] for e in audit.read() if e.get("model") == NAME]
    assert events[-2:] == ["monitor_stopped", "monitor_started"], events[-5:]
