"""A node of the multi-node local cluster dies (every process of a worker node SIGKILLed, as a
machine is lost) while LightGBM trains on workers of both nodes: Ray Train restarts the worker
group, it goes on from the last checkpoint on the shared storage, and the job finishes. The node
is started again afterwards, for the tests that follow."""

from __future__ import annotations

import time

import pytest

from rayloop.config import ConfigSource
from rayloop.control import jobs
from rayloop.control import local_cluster as clusters
from tests.support import ROOT, wait_for

pytestmark = pytest.mark.slow

MODEL = "e2e-cluster-fault"
OVERRIDES = (
    f"registry.model_name={MODEL}",
    "data.synthetic.n_rows=60000",
    "tuning.enabled=false",
    "training.num_workers=2",
    # half a CPU each: after a node is lost, both workers and their Ray Data reads fit on the other
    "training.cpus_per_worker=0.5",
    "training.max_failures=2",
    "training.lightgbm.num_boost_round=600",
    "training.early_stopping_rounds=600",
    "training.refit=none",
)


def test_a_worker_node_lost_during_training_resumes_from_the_last_checkpoint_and_finishes(local_cluster):
    found, _ = local_cluster
    runs = found.shared / "train"

    def checkpoints() -> set:
        return {p for p in runs.glob("*/checkpoint_*") if p.is_dir()} if runs.exists() else set()

    before = checkpoints()
    sid = jobs.submit_workload(
        "pipeline",
        f"cluster-fault-{int(time.time())}",
        source=ConfigSource(overrides=OVERRIDES),
        working_dir=str(ROOT),
        address=found.dashboard,
    )
    by_ip = {w.ip: w.name for w in found.workers}
    lost = None
    try:
        # the first checkpoint of the evaluation fit (every 50 rounds), on the shared storage
        first = wait_for(lambda: sorted(checkpoints() - before), 300, interval_s=0.5, what="a training checkpoint")
        # the node that holds the training workers (Ray Train packs them: both may be on one)
        placed = clusters.actor_nodes(found, "RayTrainWorker")
        assert placed and set(placed) <= set(by_ip), placed
        lost = by_ip[max(placed, key=placed.get)]
        assert clusters.kill_node(found, lost) > 0
        info = wait_for(lambda: (i := jobs.job_info(sid, found.dashboard)) and i.finished and i, 600, 2, "the job")
        after = clusters.actor_nodes(found, "RayTrainWorker")
    finally:
        if lost:
            clusters.start_node(found, lost)
    logs = jobs.client(found.dashboard).get_job_logs(sid)
    assert info.status == "SUCCEEDED", logs[-3000:]
    # the registered run says it went on from a checkpoint, not from round 0
    import mlflow

    # both URIs: a registry URI left unset follows the process's global one, set by earlier tests
    client = mlflow.MlflowClient(tracking_uri=found.mlflow_uri, registry_uri=found.mlflow_uri)
    version = client.get_model_version_by_alias(MODEL, "champion")
    resumed = client.get_run(version.run_id).data.metrics.get("train_resumed_from")
    assert resumed is not None and resumed >= 50, (resumed, placed, [p.name for p in first])
    assert after == {}  # the restarted group finished; nothing left on the lost node
    lost_ip = next(ip for ip, name in by_ip.items() if name == lost)
    assert clusters.alive_nodes(found).get(lost_ip) == "ALIVE"  # started again for what follows
