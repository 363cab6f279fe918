"""`rayloop cluster local`: a real multi-node Ray cluster on this machine (a CPU-less head and two
worker raylets, each in its own network namespace), token auth on, an MLflow server on the head,
reached from here only through the bridge; stopped by namespace at the end."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest

from rayloop.config import ConfigSource
from rayloop.control import jobs
from rayloop.control import local_cluster as clusters
from tests.e2e.conftest import listeners
from tests.support import ROOT, wait_for

pytestmark = pytest.mark.slow

WHERE = """
import json, os, socket, ray
ray.init()
@ray.remote(num_cpus=0)
def where():
    return {"ip": ray.util.get_node_ip_address(), "node": os.environ.get("RAYLOOP_NODE"),
            "home": os.environ.get("RAYLOOP_HOME"), "tmp": os.environ.get("TMPDIR")}
found = ray.get([where.options(resources={w: 0.01}).remote() for w in ("w1", "w2")])
driver = {"ip": ray.util.get_node_ip_address(), "node": os.environ.get("RAYLOOP_NODE")}
print("RESULT " + json.dumps({"tasks": found, "driver": driver}))
"""


def test_three_nodes_join_with_token_auth_and_nothing_listens_outside_their_namespaces(local_cluster):
    found, before = local_cluster
    assert clusters.alive_nodes(found) == {n.ip: "ALIVE" for n in found.nodes}
    # each node reports its share of this machine's memory, as a machine of its own would
    totals = {row["node_ip"]: row["resources_total"] for row in clusters._nodes_detail(found)}
    for node in found.nodes:
        assert totals[node.ip]["memory"] == pytest.approx(node.memory, rel=1e-3), node.name
        assert totals[node.ip]["object_store_memory"] == pytest.approx(node.object_store_memory, rel=1e-3)
    # the dashboard refuses a request without the token
    refused = httpx.get(f"{found.dashboard}/api/v0/nodes", timeout=10)
    assert refused.status_code in (401, 403)
    # every listener of the cluster is inside a namespace: this one gained none
    assert listeners() - before == set()
    # and inside one, no node listens on anything but its bridge address, loopback or "any"
    # (which there means the bridge and loopback only)
    for node in found.nodes:
        out = subprocess.run(
            ["ip", "netns", "exec", node.namespace, "ss", "-Hltn"], capture_output=True, text=True
        ).stdout
        hosts = {line.split()[3].rsplit(":", 1)[0] for line in out.splitlines() if line.strip()}
        hosts = {h.removeprefix("[::ffff:").removesuffix("]") if h.startswith("[::ffff:") else h for h in hosts}
        assert hosts and hosts <= {node.ip, "127.0.0.1", "0.0.0.0", "*", "[::]", "[::1]"}, hosts


def test_under_sudo_a_nodes_command_runs_as_the_invoking_user_inside_the_nodes_namespaces(local_cluster):
    """`sudo rayloop cluster local ...` keeps root for the namespaces and mounts only: what runs in
    a node (Ray, MLflow, `exec` commands) runs as the user behind sudo. (This suite's cluster runs
    as root: its interpreter lives under /root, which no other user can reach.)"""
    found, _ = local_cluster
    as_nobody = dataclasses.replace(found, run_as="65534:65534")
    w1 = found.workers[0]
    script = "id -u; id -g; ip -4 -o addr show; test -w /root && echo writes-root || echo no-root"
    done = subprocess.run(
        clusters.node_command(as_nobody, w1, ["sh", "-c", script]), capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    uid, gid, *rest = done.stdout.splitlines()
    assert (uid, gid) == ("65534", "65534")
    assert w1.ip in "\n".join(rest)  # still inside the node's network namespace
    assert rest[-1] == "no-root"


def test_a_pinned_node_runs_every_process_on_its_cores_in_its_cpu_group(local_cluster):
    found, _ = local_cluster
    w1, w2 = found.workers
    assert w2.cores and w2.cpu_quota == 1.0 and not w1.cores
    cores = _affinity(clusters.namespace_pids(w2.namespace))
    assert len(cores) >= 3  # raylet, its agents, idle workers...
    group = Path(clusters.cpu_cgroup(found, w2))
    members = {int(p) for p in (group / "cgroup.procs").read_text().split()}
    assert set(cores) <= members, set(cores) - members
    assert set(cores.values()) == {frozenset({int(w2.cores)})}
    quota = group / "cpu.cfs_quota_us"
    per_period = int(quota.read_text()) if quota.exists() else int((group / "cpu.max").read_text().split()[0])
    assert per_period == 10_000  # one core's worth of each 10 ms period
    # an unpinned node may run anywhere
    assert {len(c) for c in _affinity(clusters.namespace_pids(w1.namespace)).values()} == {os.cpu_count()}


def _affinity(pids: list[int]) -> dict[int, frozenset[int]]:
    """{pid: its cores} of the processes still there (Ray ends idle workers at any time)."""
    out = {}
    for pid in pids:
        try:
            out[pid] = frozenset(os.sched_getaffinity(pid))
        except ProcessLookupError:
            continue
    return out


def _run_script(found, script: str) -> dict:
    """`python -c script` as a job submitted from this machine; the JSON it printed after RESULT."""
    client = jobs.client(found.dashboard)
    sid = client.submit_job(entrypoint=f"python -c {shlex.quote(script)}")
    wait_for(lambda: client.get_job_status(sid).is_terminal(), 180, what="the job to finish")
    logs = client.get_job_logs(sid)
    assert client.get_job_status(sid) == "SUCCEEDED", logs[-3000:]
    return json.loads(next(line for line in logs.splitlines() if line.startswith("RESULT "))[7:])


def test_a_job_from_this_machine_runs_its_driver_on_the_head_and_tasks_on_each_worker(local_cluster):
    found, _ = local_cluster
    result = _run_script(found, WHERE)
    assert result["driver"] == {"ip": found.head.ip, "node": "head"}
    assert [(t["ip"], t["node"]) for t in result["tasks"]] == [(w.ip, w.name) for w in found.workers]
    assert {t["home"] for t in result["tasks"]} == {str(found.shared)}  # the shared volume
    tmps = [Path(t["tmp"]) for t in result["tasks"]]
    assert tmps == [found.scratch(w) / "tmp" for w in found.workers]  # each node's own scratch


SCRATCH = """
import json, os, ray
ray.init()
@ray.remote(num_cpus=0)
def write():
    path = os.path.join(os.environ["TMPDIR"], "written-on-w1.txt")
    open(path, "w").write("w1")
    return path
def read_here(path):
    try:
        return open(path).read()
    except OSError as exc:
        return type(exc).__name__
read = ray.remote(num_cpus=0)(read_here)
path = ray.get(write.options(resources={"w1": 0.01}).remote())
on = {w: ray.get(read.options(resources={w: 0.01}).remote(path)) for w in ("w1", "w2")}
print("RESULT " + json.dumps({"path": path, **on, "head": read_here(path)}))
"""


def test_a_file_in_one_nodes_scratch_cannot_be_read_on_another_node(local_cluster):
    found, _ = local_cluster
    result = _run_script(found, SCRATCH)
    assert Path(result["path"]).parent == found.scratch(found.workers[0]) / "tmp"
    assert result["w1"] == "w1"  # the node that wrote it reads it
    assert result["w2"] == "FileNotFoundError" and result["head"] == "FileNotFoundError"
    assert Path(result["path"]).read_text() == "w1"  # this machine sees every node's disk


def test_the_mlflow_server_on_the_head_serves_the_registry_to_this_machine(local_cluster):
    found, _ = local_cluster
    assert httpx.get(f"{found.mlflow_uri}/health", timeout=10).status_code == 200
    listed = httpx.get(
        f"{found.mlflow_uri}/api/2.0/mlflow/experiments/search", params={"max_results": 1000}, timeout=10
    )
    assert listed.status_code == 200 and "Default" in {e["name"] for e in listed.json()["experiments"]}
    assert (found.shared / "mlflow" / "mlflow.db").exists()  # its store is on the shared volume


def test_the_cli_shows_the_nodes_and_its_exports_let_ray_job_submit_reach_the_cluster(local_cluster):
    from typer.testing import CliRunner

    from rayloop.cli import app
    from rayloop.control.head import ray_executable

    found, _ = local_cluster
    runner = CliRunner()
    status = runner.invoke(app, ["cluster", "local", "status", "--name", found.name], terminal_width=200)
    assert status.exit_code == 0, status.output
    assert all(node.ip in status.output for node in found.nodes) and status.output.count("ALIVE") == 3
    exports = runner.invoke(app, ["cluster", "local", "env", "--name", found.name])
    assert exports.exit_code == 0 and f"export RAY_ADDRESS={found.dashboard}" in exports.output
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    for line in exports.output.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = shlex.split(value)[0]
    done = subprocess.run(
        [
            ray_executable(),
            "job",
            "submit",
            "--",
            "python",
            "-c",
            "print('hello from', __import__('os').environ['RAYLOOP_NODE'])",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "hello from head" in done.stdout
    missing = runner.invoke(app, ["cluster", "local", "env", "--name", "no-such-cluster"])
    assert missing.exit_code == 1 and "rayloop cluster local up" in missing.output


def test_the_preprocess_gives_the_same_holdout_rejects_and_counts_on_one_node_and_on_three(
    local_cluster, ray_head, monkeypatch
):
    """Read, validation, rejects, splits and holdout writes run as Ray tasks on both workers of
    the cluster (the CPU-less head runs none) and on the one node of `ray_head`: the same data
    gives the same files. Three Parquet files, so the cluster's reads spread over its nodes."""
    import pyarrow as pa
    import pyarrow.dataset as pads

    from rayloop.constants import HOME_ENV_VAR
    from rayloop.preprocess import PreprocessRun
    from tests.support import last_json, run_job

    found, _ = local_cluster
    args = ["python", "-m", "workloads.preprocess", "--config", "configs/demo.yaml"]
    for item in ("data.synthetic.n_rows=6000", "data.synthetic.rows_per_file=2000", "data.split.method=hash"):
        args += ["--set", item]
    one = last_json(run_job(ray_head, f"pre-one-{uuid.uuid4().hex[:6]}", args))
    three = last_json(run_job(found.client_head(), f"pre-three-{uuid.uuid4().hex[:6]}", args))
    assert one["rows_rejected"] > 0  # the generator's bad rows: rejects are written
    for key in ("rows_total", "rows_good", "rows_rejected", "rows_per_split", "split_method", "n_features"):
        assert three[key] == one[key], key
    assert Path(three["run_dir"]).is_relative_to(found.shared)

    def rows(directory: Path) -> pa.Table:
        table = pads.dataset(str(directory), format="parquet").to_table()
        return table.sort_by([(c, "ascending") for c in table.column_names if not pa.types.is_nested(table[c].type)])

    runs = {}
    for name, summary, home in (("one", one, os.environ[HOME_ENV_VAR]), ("three", three, str(found.shared))):
        monkeypatch.setenv(HOME_ENV_VAR, home)
        runs[name] = PreprocessRun.open(summary["run_id"])
        runs[name] = {
            "holdout": rows(runs[name].holdout_dir),
            "rejects": rows(runs[name].rejects_dir),
            **{split: rows(runs[name].split_dir(split)) for split in ("train", "validation", "test")},
        }
    for part, table in runs["one"].items():
        assert table.num_rows > 0, part
        assert runs["three"][part].equals(table.cast(runs["three"][part].schema)), part


def test_a_workload_whose_home_is_not_shared_stops_with_a_config_error_naming_the_nodes(local_cluster):
    """RAYLOOP_HOME pointed at the head's own scratch (node-local: the workers cannot see it)."""
    found, _ = local_cluster
    local_home = found.scratch(found.head) / "tmp" / "home"
    sid = jobs.submit_workload(
        "preprocess",
        f"unshared-{uuid.uuid4().hex[:6]}",
        source=ConfigSource(overrides=("data.synthetic.n_rows=2000",)),
        working_dir=str(ROOT),
        env={"RAYLOOP_HOME": str(local_home)},
        address=found.dashboard,
    )
    info = wait_for(lambda: (i := jobs.job_info(sid, found.dashboard)) and i.finished and i, 180, what="the job")
    logs = jobs.client(found.dashboard).get_job_logs(sid)
    assert info.status == "FAILED", logs[-2000:]
    assert "is not one directory on every node" in logs
    assert all(w.ip in logs for w in found.workers) and "Traceback" not in logs
    assert not (local_home / "runs").exists()  # stopped before any work
