"""The closed loop across the nodes of a real multi-node cluster (`rayloop cluster local`): the
pipeline as a Ray job, replicas on both worker nodes behind HAProxy ingress, the DriftMonitor on
the CPU-less head, the registry on an MLflow server, state on the shared directory; drift ->
retrain job -> gate -> rollout to the replicas on both nodes."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from rayloop import registry
from rayloop.control import jobs
from rayloop.control import local_cluster as clusters
from rayloop.monitoring.core import MonitorCore
from rayloop.traffic import TrafficConfig, run_traffic
from tests.support import (
    QUICK_LOOP,
    RAYLOOP_CLI,
    SERVE_CLI,
    loop_state,
    pipeline_job,
    set_args,
    wait_for,
)

pytestmark = pytest.mark.slow

MODEL = "e2e-cluster-loop"
OVERRIDES = [
    f"registry.model_name={MODEL}",
    "registry.gate_metric=accuracy",
    "data.synthetic.n_rows=8000",
    "data.synthetic.seed=41",
    "tuning.enabled=false",
    "training.lightgbm.num_boost_round=80",
    "training.refit=none",
    # inside the nodes' namespaces: "any" is the node's bridge address and loopback only
    "serving.host=0.0.0.0",
    "serving.min_replicas=2",
    "serving.max_replicas=2",
    *QUICK_LOOP,
]


def _status_from_elsewhere(found, home) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    env |= {"RAYLOOP_HOME": str(home), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": found.token_path}
    done = subprocess.run(
        [RAYLOOP_CLI, "status", "--address", found.dashboard, "--json", "--set", f"registry.model_name={MODEL}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert not any(Path(home).iterdir()), "status wrote local state"
    return json.loads(done.stdout)


def _loop(found) -> dict:
    return loop_state(found.shared, MODEL)


def test_drift_on_replicas_of_two_nodes_retrains_through_the_jobs_api_and_rolls_out_to_both(local_cluster, tmp_path):
    found, _ = local_cluster
    head = found.client_head()
    pipeline_job(head, "cluster-loop-pipeline", OVERRIDES)
    champion = clusters.run_on(found, "head", [RAYLOOP_CLI, "serve", "--detach", *set_args(OVERRIDES)])
    assert champion == 0
    workers = {w.ip for w in found.workers}
    try:
        first = httpx.get(f"{found.serve_url}/v1/model", timeout=10).json()["version"]
        spread = clusters.replicas_by_node(found.serve_url)
        assert set(spread) == workers, spread  # one replica on each worker node, both answering
        # every node's ingress answers, not only the head's
        for node in found.nodes:
            assert httpx.get(f"http://{node.ip}:8000/healthz", timeout=10).status_code == 200, node.name

        stop, result = threading.Event(), {}
        clean_s, rate = 30.0, 80.0
        traffic = TrafficConfig(
            url=found.serve_url,
            rate=rate,
            duration_s=clean_s + 240,
            drift_at_s=clean_s,
            label_delay_s=1.0,
            seed=5,
        )

        def send() -> None:
            result["stats"] = run_traffic(traffic, stop=stop, on_second=lambda s, _: result.setdefault("live", s))

        runner = threading.Thread(target=send, daemon=True)
        drift_from = time.time() + clean_s
        runner.start()
        try:
            try:
                done = wait_for(lambda: (f := _loop(found).get("finished")) and f[-1], 360, 2, "the retrain")
            except TimeoutError as exc:
                state = MonitorCore.read_state(str(found.shared), MODEL) or {}
                jobs_seen = [(j.submission_id, j.status, j.message) for j in jobs.client(found.dashboard).list_jobs()]
                summary = {k: state.get(k) for k in ("windows_seen", "policy", "loop", "reference_version")}
                raise AssertionError(f"{exc}: monitor state {summary}; jobs {jobs_seen}") from None
            assert done["decided_at"] >= drift_from, done["reason"]
            assert done["outcome"] == "promoted", f"{done['outcome']}: {done['detail']}"
            new = done["version"]
            wait_for(
                lambda: sum(a[2] == new for a in list(result["live"].answers)) >= 5 * rate,
                120,
                what="5 s of answers from the new champion",
            )
            # the rollout reached the replicas on both nodes
            rolled = wait_for(
                lambda: (
                    (seen := {httpx.get(f"{found.serve_url}/v1/model", timeout=10).json()["node"] for _ in range(30)})
                    == workers
                    and all(
                        httpx.get(f"{found.serve_url}/v1/model", timeout=10).json()["version"] == new for _ in range(10)
                    )
                    and seen
                ),
                60,
                what="both nodes' replicas on the new version",
            )
            remote = _status_from_elsewhere(found, tmp_path)
        finally:
            stop.set()
            runner.join(timeout=60)
    finally:
        clusters.run_on(found, "head", [RAYLOOP_CLI, "monitor", "--stop", *set_args(OVERRIDES)])
        clusters.run_on(found, "head", [SERVE_CLI, "shutdown", "-y", "--address", found.dashboard])
    stats = result["stats"]
    assert rolled == workers and new != first
    assert stats.errors == 0, stats.summary()
    assert stats.summary()["versions"].get(new, 0) > 100
    before, after = stats.quality(version=first, drift=True), stats.quality(version=new, drift=True)
    assert before is not None and after is not None and after > before, (before, after)
    # the retrain job ran on the cluster and registered through the MLflow server
    state = MonitorCore.read_state(str(found.shared), MODEL)
    assert state["reference_version"] == new and state["policy"]["decisions"] == 1
    # its driver reserved a CPU (retrain.driver_cpus auto: the head has none), so it ran on a worker
    # node and trained the small window there in local mode, not on a worker group
    tags = registry.client_for(found.mlflow_uri).get_model_version(MODEL, new).tags
    assert tags["rayloop.training.mode"] == "local", tags

    # `rayloop status --address` from a machine with none of the cluster's state (an empty home,
    # no MLflow URI, no Ray address): the registry, the audit trail, the monitor and Serve
    aliases = {row["alias"]: row["version"] for row in remote["aliases"]}
    assert aliases["champion"] == new
    assert any(e["event"] == "promoted" and str(e.get("version")) == new for e in remote["events"])
    assert remote["monitor"]["reference_version"] == new and remote["monitor"]["decisions"] == 1
    assert remote["monitor_root"] == str(found.shared)
    assert [row[0] for row in remote["serve"]] == ["tabular"] and "RUNNING 2" in remote["serve"][0][4]
