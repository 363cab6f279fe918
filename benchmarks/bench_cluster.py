#!/usr/bin/env python
"""Serving and the loop on a multi-node Ray cluster on this machine (`rayloop cluster local`), every
node pinned to its own core, vs one node.

The load generator (benchmarks/loadgen.py: the open-loop search for the highest rate of one-row
requests with p99 <= 50 ms and every request answered, as bench_serve.py) runs in this process on
core 0, beside the head node; the worker nodes run on core 1. On this 2-core machine a node "of its
own core" is a node pinned with `taskset`, and two worker nodes share core 1 under a CFS quota of
half a core each (`rayloop cluster local up --pin w1=1:0.5`).

Parts (`--parts`, all by default):
- scaling: head=0, w1=1:0.5, w2=1:0.5 (two nodes of half a core), 1 CPU per node and replica_cpus 1,
  so two replicas land one per node: one replica (one node) vs two (two nodes), monitoring off.
  The scaling ratio is two / one (2.0 is linear).
- fastapi: head=0, w1=1 (one worker node with core 1 to itself): one rayloop replica, with Ray's
  control plane and HAProxy on the head's core, vs one uvicorn + FastAPI worker on core 1
  (bench_serve.py's baseline app, the same model loaded from the cluster's MLflow server; the
  cluster stays up and idle meanwhile). Monitoring off in both: the baseline does not monitor.
- monitoring: the same cluster, one replica with monitoring on (the DriftMonitor on the head's
  core) vs off.
- loop: bench_loop.py's rayloop arm (drift -> retrain job -> gate -> rollout) on one node (its own
  head, 4 logical CPUs, unpinned) vs on a cluster of a CPU-less head and two worker nodes of 2
  logical CPUs (unpinned, as tests/e2e), the driver (bench_loop.py --attach) on the head.

    .venv/bin/python benchmarks/bench_cluster.py                   # about 30 min
    .venv/bin/python benchmarks/bench_cluster.py --parts scaling --quick

Needs root (network namespaces, cgroups), as `rayloop cluster local`. Results:
benchmarks/results/<name>.json (default `cluster`), with bench_loop's files
<name>-loop-one-node.json and <name>-loop-cluster.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for folder in (HERE, ROOT):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

# E402: benchmarks/ is not a package, so its folder goes on sys.path (above) before these imports
from bench_serve import (  # noqa: E402
    MAX_CONNECTIONS_OPEN_LOOP,
    SLO_P99_MS,
    base_env,
    fastapi_command,
    request_bodies,
    search,
    settings_for,
)
from common import RESULTS_DIR, machine_info, print_table, save_results  # noqa: E402
from loadgen import Server, closed_step, http_request, ratio, wait_http  # noqa: E402

PARTS = ("scaling", "fastapi", "monitoring", "loop")
CLUSTER = "bench"
LOOP_CLUSTER = "benchloop"
MODEL = "bench-cluster"
LOADGEN_CORE, NODE_CORE = 0, 1
SEARCH_SETTINGS = ("warmup_s", "open_duration_s", "search_steps", "search_precision")
RAYLOOP_CLI = str(Path(sys.executable).with_name("rayloop"))
SERVE_CLI = str(Path(sys.executable).with_name("serve"))
BASE = [
    f"registry.model_name={MODEL}",
    "data.synthetic.n_rows=20000",
    "data.synthetic.seed=17",
    "tuning.enabled=false",
    "training.lightgbm.num_boost_round=100",
    "serving.host=0.0.0.0",
    "retrain.enabled=false",
]


def say(text: str) -> None:
    print(text, flush=True)


def set_args(overrides: Sequence[str]) -> list[str]:
    return [arg for item in overrides for arg in ("--set", item)]


# ---- the cluster and the app -------------------------------------------------------------------
@contextmanager
def cluster(name: str, *, workers: int, cpus_per_worker: int, pins: Sequence[str]) -> Iterator[Any]:
    """A local cluster for one part; downed after it (its shared directory, the registry, stays)."""
    from rayloop.control import local_cluster as clusters

    clusters.down(name)  # a run that was cut short
    started = time.perf_counter()
    found = clusters.up(
        name, workers=workers, cpus_per_worker=cpus_per_worker, pins=[clusters.parse_pin(p) for p in pins]
    )
    say(f"== cluster {name}: {workers} workers, pins {list(pins)}, up in {time.perf_counter() - started:.0f} s")
    try:
        yield found
    finally:
        clusters.down(name)


def on_head(found: Any, cmd: Sequence[str], timeout_s: float = 600) -> str:
    """`cmd` as a process of the head node; its output (raises with the tail when it fails)."""
    from rayloop.control import local_cluster as clusters

    head = found.head
    env = clusters.node_env(found, head) | {"RAY_ADDRESS": found.address}
    done = subprocess.run(
        clusters.node_command(found, head, cmd), env=env, capture_output=True, text=True, timeout=timeout_s
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed ({done.returncode}): {(done.stdout + done.stderr)[-3000:]}")
    return done.stdout


def champion(found: Any) -> str:
    """The champion's version in the cluster's registry; the pipeline job makes one when there is none."""
    from mlflow.exceptions import MlflowException

    from rayloop import registry
    from rayloop.config import ConfigSource
    from rayloop.control import jobs

    client = registry.client_for(found.mlflow_uri)
    try:
        return client.get_model_version_by_alias(MODEL, "champion").version
    except MlflowException:
        pass
    sid = f"bench-cluster-pipeline-{int(time.time())}"
    source = ConfigSource(overrides=tuple(BASE))
    jobs.submit_workload("pipeline", sid, source=source, working_dir=str(ROOT), address=found.dashboard)
    while not ((info := jobs.job_info(sid, found.dashboard)) and info.finished):
        time.sleep(2)
    if info.status != "SUCCEEDED":
        raise RuntimeError(jobs.client(found.dashboard).get_job_logs(sid)[-3000:])
    return client.get_model_version_by_alias(MODEL, "champion").version


def deploy(found: Any, overrides: Sequence[str], replicas: int) -> dict[str, set[str]]:
    """`rayloop serve --detach` on the head; waits until `replicas` replicas answer. Returns
    {node address: replica ids} as /v1/model reports them."""
    import httpx

    from rayloop.control.local_cluster import replicas_by_node

    settings = [*BASE, *overrides, f"serving.min_replicas={replicas}", f"serving.max_replicas={replicas}"]
    on_head(found, [RAYLOOP_CLI, "serve", "--detach", *set_args(settings)])
    deadline = time.monotonic() + 180
    seen: dict[str, set[str]] = {}
    while time.monotonic() < deadline:
        try:
            seen = replicas_by_node(found.serve_url, calls=20 * replicas)
        except (httpx.HTTPError, KeyError, ValueError):
            seen = {}
        if sum(len(r) for r in seen.values()) == replicas:
            return seen
        time.sleep(1)
    raise TimeoutError(f"{replicas} replicas not answering after 180 s: {seen}")


def undeploy(found: Any) -> None:
    """Stop the monitor and every Serve app; wait until the ingress stops answering."""
    import httpx

    on_head(found, [RAYLOOP_CLI, "monitor", "--stop", *set_args(BASE)])  # exit 0 when none runs
    on_head(found, [SERVE_CLI, "shutdown", "-y", "--address", found.dashboard])
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{found.serve_url}/healthz", timeout=2).status_code != 200:
                return
        except httpx.HTTPError:
            return
        time.sleep(1)


def cluster_processes(found: Any) -> list[Any]:
    import psutil

    from rayloop.control import local_cluster as clusters

    return [psutil.Process(pid) for node in found.nodes for pid in clusters.namespace_pids(node.namespace)]


# ---- measuring ---------------------------------------------------------------------------------
def request_bytes(host: str, port: int) -> list[bytes]:
    return [http_request("POST", "/v1/predict", port, body, host=host) for body in request_bodies(7)["one"]]


def max_rate(host: str, port: int, procs: list[Any], settings: dict[str, Any]) -> dict[str, Any]:
    """Warm up (closed loop, 8 clients), then the open-loop search from 70% of that rate."""
    reqs = request_bytes(host, port)
    warm = asyncio.run(closed_step(port, reqs, 8, 1.0, settings["warmup_s"] + 2.0, 1, procs, host=host))
    start = max(20.0, 0.7 * warm["ok_rps"])
    say(f"  closed loop, 8 clients: {warm['ok_rps']:.0f}/s, p99 {warm['p99_ms']} ms; searching from {start:.0f}/s")
    found = asyncio.run(search(port, reqs, start, settings, procs, host=host))
    say(f"  max {found['max_rps_at_slo']:.0f} req/s at p99 <= {SLO_P99_MS:g} ms")
    return {"closed_8": warm, **found}


def summary(result: dict[str, Any]) -> dict[str, Any]:
    best = result.get("at_max") or {}
    return {
        "max_rps_at_slo": result.get("max_rps_at_slo"),
        "p50_ms": best.get("p50_ms"),
        "p99_ms": best.get("p99_ms"),
        "loadgen_cpu": best.get("loadgen_cpu"),
        "core_busy": best.get("core_busy"),
        "generator_limited": result.get("generator_limited"),
    }


def serving_arm(found: Any, label: str, overrides: Sequence[str], replicas: int, settings: dict) -> dict[str, Any]:
    from rayloop.control.local_cluster import SERVE_PORT

    say(f"-- {label}: {replicas} replica(s), {list(overrides)}")
    placed = deploy(found, overrides, replicas)
    try:
        result = max_rate(found.head.ip, SERVE_PORT, cluster_processes(found), settings)
    finally:
        undeploy(found)
    return {"label": label, "replicas": replicas, "placed": {k: len(v) for k, v in placed.items()}, **result}


def part_scaling(settings: dict[str, Any]) -> dict[str, Any]:
    pins = (f"head={LOADGEN_CORE}", f"w1={NODE_CORE}:0.5", f"w2={NODE_CORE}:0.5")
    with cluster(CLUSTER, workers=2, cpus_per_worker=1, pins=pins) as found:
        version = champion(found)
        off = ["monitoring.enabled=false", "serving.replica_cpus=1"]
        one = serving_arm(found, "one node", off, 1, settings)
        two = serving_arm(found, "two nodes", off, 2, settings)
    if len(two["placed"]) != 2:
        say(f"!! two replicas did not land on two nodes: {two['placed']}")
    return {
        "pins": list(pins),
        "model_version": version,
        "one_node": one,
        "two_nodes": two,
        "scaling_ratio": ratio(two["max_rps_at_slo"], one["max_rps_at_slo"]),
    }


def fastapi_arm(found: Any, version: str, settings: dict[str, Any]) -> dict[str, Any]:
    from rayloop.runtime import free_port

    say("-- fastapi: one uvicorn worker on core 1")
    port = free_port()
    env = base_env() | {"MLFLOW_TRACKING_URI": found.mlflow_uri, "BENCH_SERVE_MODEL": f"{MODEL}@{version}"}
    logs = Path(found.root) / "logs"
    server = Server("fastapi", fastapi_command(port), env, logs / "fastapi.log", core=NODE_CORE, cwd=ROOT)
    try:
        asyncio.run(wait_http(port, "/healthz", 120, server))
        result = max_rate("127.0.0.1", port, server.tree(), settings)
    finally:
        server.stop()
    return {"label": "fastapi", **result}


def part_one_core(parts: Sequence[str], settings: dict[str, Any]) -> dict[str, Any]:
    """The fastapi and monitoring parts: one worker node with core 1 to itself."""
    pins = (f"head={LOADGEN_CORE}", f"w1={NODE_CORE}")
    out: dict[str, Any] = {}
    with cluster(CLUSTER, workers=1, cpus_per_worker=1, pins=pins) as found:
        version = champion(found)
        off = serving_arm(found, "rayloop, monitoring off", ["monitoring.enabled=false"], 1, settings)
        if "fastapi" in parts:
            fastapi = fastapi_arm(found, version, settings)
            out["fastapi"] = {
                "pins": list(pins),
                "fastapi": fastapi,
                "rayloop": off,
                "ratio": ratio(off["max_rps_at_slo"], fastapi["max_rps_at_slo"]),
            }
        if "monitoring" in parts:
            on = serving_arm(found, "rayloop, monitoring on", [], 1, settings)
            out["monitoring"] = {
                "pins": list(pins),
                "on": on,
                "off": off,
                "ratio": ratio(on["max_rps_at_slo"], off["max_rps_at_slo"]),
            }
    return out


def part_loop(name: str, drift_s: float) -> dict[str, Any]:
    """bench_loop.py's rayloop arm on one node, then on the cluster (run on its head)."""
    from rayloop.control import local_cluster as clusters

    script = str(HERE / "bench_loop.py")
    common = ["--arms", "rayloop", "--drift", str(drift_s)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    env["RAYLOOP_HOME"] = str(ROOT / ".rayloop" / "bench-loop")
    say("-- loop on one node (bench_loop.py, its own head)")
    subprocess.run([sys.executable, script, *common, "--name", f"{name}-loop-one-node"], env=env, check=True)
    clusters.down(LOOP_CLUSTER, keep_shared=False)  # the registry and monitor of an earlier run
    with cluster(LOOP_CLUSTER, workers=2, cpus_per_worker=2, pins=()) as found:
        say("-- loop on the cluster (bench_loop.py --attach, on the head)")
        on_head(
            found,
            [
                sys.executable,
                script,
                *common,
                "--name",
                f"{name}-loop-cluster",
                "--attach",
                found.dashboard,
                "--set",
                "serving.host=0.0.0.0",
            ],
            timeout_s=1800,
        )
    out: dict[str, Any] = {}
    for where in ("one-node", "cluster"):
        run = json.loads((RESULTS_DIR / f"{name}-loop-{where}.json").read_text())["results"][0]
        out[where] = {
            k: run.get(k)
            for k in (
                "drift_to_new_champion_s",
                "time_to_detect_s",
                "time_to_retrain_s",
                "time_to_swap_s",
                "failed_requests",
                "accuracy_after_drift",
                "accuracy_after_promotion",
                "phases",
            )
        }
        out[where]["training"] = {k: (run.get("training") or {}).get(k) for k in ("mode", "num_workers", "threads")}
    out["ratio"] = ratio(out["cluster"]["drift_to_new_champion_s"], out["one-node"]["drift_to_new_champion_s"])
    return out


def report(results: dict[str, Any]) -> None:
    # (part, row label, baseline arm, our arm, ratio key)
    comparisons = (
        ("scaling", "one node vs two (half a core each)", "one_node", "two_nodes", "scaling_ratio"),
        ("fastapi", "FastAPI vs one replica (core 1)", "fastapi", "rayloop", "ratio"),
        ("monitoring", "monitoring off vs on", "off", "on", "ratio"),
    )
    rows = [
        [label, results[part][base]["max_rps_at_slo"], results[part][ours]["max_rps_at_slo"], results[part][key]]
        for part, label, base, ours, key in comparisons
        if part in results
    ]
    if rows:
        print_table(
            f"max one-row req/s at p99 <= {SLO_P99_MS:g} ms (baseline, ours)", ["", "baseline", "ours", "ratio"], rows
        )
    if "loop" in results:
        r = results["loop"]
        print_table(
            "drift -> new champion (s): one node (baseline) vs the cluster",
            ["", "one node", "cluster", "ratio"],
            [
                [
                    "drift -> new champion",
                    r["one-node"]["drift_to_new_champion_s"],
                    r["cluster"]["drift_to_new_champion_s"],
                    r["ratio"],
                ],
                ["failed requests", r["one-node"]["failed_requests"], r["cluster"]["failed_requests"], ""],
            ],
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--quick", action="store_true", help="short steps and a short loop (smoke run)")
    parser.add_argument("--drift", type=float, default=120.0, help="the loop part: seconds of traffic after the drift")
    parser.add_argument("--name", default=None, help="results file name (default: cluster, or cluster-quick)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_cluster needs root: network namespaces and cgroups (as `rayloop cluster local up`)")
    if (os.cpu_count() or 1) < 2:
        sys.exit("bench_cluster needs 2 cores: one for the head and the load generator, one for the workers")
    os.environ.setdefault("RAYLOOP_HOME", str(ROOT / ".rayloop" / "bench-cluster"))
    # the generator's core, first, before any thread exists (affinity is per thread on Linux)
    os.sched_setaffinity(0, {LOADGEN_CORE})
    import uvloop

    from rayloop.control import local_cluster as clusters

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    name = args.name or ("cluster-quick" if args.quick else "cluster")
    # the search's own settings, as bench_serve.py runs it
    settings = {k: v for k, v in settings_for(args.quick).items() if k in SEARCH_SETTINGS}
    started = time.time()
    clusters.down(CLUSTER, keep_shared=False)  # every run trains its model afresh
    results: dict[str, Any] = {}
    if "scaling" in args.parts:
        results["scaling"] = part_scaling(settings)
    if {"fastapi", "monitoring"} & set(args.parts):
        results.update(part_one_core(args.parts, settings))
    if "loop" in args.parts:
        os.sched_setaffinity(0, set(range(os.cpu_count() or 2)))  # the loop's parts are not pinned
        results["loop"] = part_loop(name, 60.0 if args.quick else args.drift)
    payload = {
        "name": name,
        "environment": machine_info(("ray", "lightgbm", "mlflow")),
        "settings": {**vars(args), **settings, "slo_p99_ms": SLO_P99_MS, "connections": MAX_CONNECTIONS_OPEN_LOOP},
        "results": results,
        "wall_s": round(time.time() - started, 1),
    }
    path = save_results(name, payload)
    report(results)
    say(f"saved {path}")


if __name__ == "__main__":
    main()
