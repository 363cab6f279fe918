"""The local multi-node cluster's layout, without starting it: addresses, interface names, the
`ip` commands and every node's environment (the cluster itself: tests/e2e/test_local_cluster.py)."""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path

import psutil
import pytest

from rayloop.constants import HAPROXY_BIND_HOST_ENV_VAR, HOME_ENV_VAR
from rayloop.control.local_cluster import (
    LocalCluster,
    _hand_over,
    _ray_start,
    invoking_user,
    netns_commands,
    node_command,
    node_env,
    plan,
)
from rayloop.errors import ClusterError
from rayloop.runtime import LOOPBACK_ENV


def test_the_plan_puts_a_cpu_less_head_and_pinned_workers_on_one_private_subnet(tmp_path):
    cluster = plan("t", workers=3, subnet=7, token_path=tmp_path / "token")
    subnet = ipaddress.ip_network("10.213.7.0/24")
    assert [n.name for n in cluster.nodes] == ["head", "w1", "w2", "w3"]
    assert cluster.head.num_cpus == 0 and all(w.num_cpus == 1 for w in cluster.workers)
    assert [w.resources for w in cluster.workers] == [{"w1": 1.0}, {"w2": 1.0}, {"w3": 1.0}]
    addresses = [cluster.host_ip, *(n.ip for n in cluster.nodes)]
    assert len(set(addresses)) == len(addresses)
    assert all(ipaddress.ip_address(a) in subnet and ipaddress.ip_address(a).is_private for a in addresses)
    assert cluster.address == "10.213.7.2:6379" and cluster.dashboard == "http://10.213.7.2:8265"
    assert len({n.namespace for n in cluster.nodes}) == 4
    # every node's scratch is its own, and none is inside the shared directory
    scratches = [cluster.scratch(n) for n in cluster.nodes]
    assert len(set(scratches)) == 4 and not any(cluster.shared in s.parents for s in scratches)
    assert Path(cluster.storage).parent == cluster.shared
    assert LocalCluster.from_dict(json.loads(json.dumps(cluster.to_dict()))) == cluster


def test_every_node_gets_its_share_of_the_machines_memory_not_the_whole_machine(tmp_path):
    gib = 1024**3
    cluster = plan("t", workers=3, token_path=tmp_path / "token", machine_memory=16 * gib)
    for node in cluster.nodes:
        assert node.memory + node.object_store_memory == 4 * gib
        assert node.object_store_memory == int(4 * gib * 0.3)  # Ray's own default fraction
        start = _ray_start(cluster, node, tmp_path / "ray")
        assert f"--memory={node.memory}" in start and f"--object-store-memory={node.object_store_memory}" in start
    # this machine's memory by default
    assert sum(n.memory + n.object_store_memory for n in plan("t", token_path=tmp_path / "token").nodes) <= (
        psutil.virtual_memory().total
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"workers": 0}, "workers must be"), ({"subnet": 255}, "subnet must be"), ({"name": "a b"}, "cluster name")],
)
def test_the_plan_refuses_what_it_cannot_build(tmp_path, kwargs, message):
    args = {"name": "t", "token_path": tmp_path / "token", **kwargs}
    with pytest.raises(ClusterError, match=message):
        plan(**args)


def test_the_commands_add_no_route_nat_or_forwarding_and_fit_linux_interface_names(tmp_path):
    cluster = plan("t", workers=12, subnet=254, token_path=tmp_path / "token")
    cmds = netns_commands(cluster)
    words = {w for cmd in cmds for w in cmd}
    assert not words & {"route", "iptables", "nft", "masquerade", "forwarding", "ip_forward"}
    created = [cmd[3] for cmd in cmds if cmd[:3] == ["ip", "link", "add"]]
    created += [cmd[-1] for cmd in cmds if "peer" in cmd]
    assert created and all(len(name) <= 15 for name in created)
    # the only address outside a namespace is this machine's side of the bridge
    outside = [cmd for cmd in cmds if cmd[:3] == ["ip", "addr", "add"]]
    assert outside == [["ip", "addr", "add", f"{cluster.host_ip}/24", "dev", cluster.bridge]]
    for node in cluster.nodes:
        assert ["ip", "-n", node.namespace, "addr", "add", f"{node.ip}/24", "dev", "eth0"] in cmds


def test_every_node_shares_the_home_keeps_its_own_scratch_and_uses_token_auth(tmp_path):
    cluster = plan("t", workers=2, subnet=9, token_path=tmp_path / "token")
    envs = {n.name: node_env(cluster, n, {"RAY_AUTH_TOKEN": "must-not-travel"}) for n in cluster.nodes}
    assert {env[HOME_ENV_VAR] for env in envs.values()} == {str(cluster.shared)}
    # Ray's temp dir is one path on every node (each node's namespace binds its own scratch there,
    # as /tmp/ray on machines of their own); TMPDIR is the node's own scratch
    assert {env["RAY_TMPDIR"] for env in envs.values()} == {str(cluster.temp_dir)}
    assert len({env["TMPDIR"] for env in envs.values()}) == 3
    for node in cluster.nodes:
        env = envs[node.name]
        assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN_PATH"] == str(tmp_path / "token")
        assert "RAY_AUTH_TOKEN" not in env
        assert env[LOOPBACK_ENV] == "1"  # Ray takes the bridge address as the node's IP
        assert env["MLFLOW_TRACKING_URI"] == cluster.mlflow_uri
        if HAPROXY_BIND_HOST_ENV_VAR in env:  # Serve's ingress listens on the node's own address
            assert env[HAPROXY_BIND_HOST_ENV_VAR] == node.ip
    # HAProxy's state paths: one set for all nodes, outside any node's scratch (the workers'
    # HAProxy managers use the head's)
    state = {env.get("RAY_SERVE_HAPROXY_CONFIG_FILE_LOC") for env in envs.values()}
    assert len(state) == 1 and not any(str(cluster.scratch(n)) in str(state) for n in cluster.nodes)


def test_a_node_runs_in_its_namespace_with_every_other_nodes_scratch_hidden(tmp_path):
    from rayloop.control.local_cluster import node_command

    cluster = plan("t", workers=2, subnet=9, token_path=tmp_path / "token")
    w1 = cluster.workers[0]
    cmd = node_command(cluster, w1, ["ray", "start", "--address=x"])
    assert cmd[:4] == ["ip", "netns", "exec", w1.namespace] and cmd[-3:] == ["ray", "start", "--address=x"]
    script = cmd[cmd.index("-c") + 1]
    for other in (cluster.head, cluster.workers[1]):
        assert f"mount -t tmpfs -o ro,size=16k rayloop-other-node {cluster.scratch(other)}" in script
    assert str(cluster.scratch(w1)) not in script.replace(f"{cluster.scratch(w1)}/ray", "")
    assert f"mount --bind {cluster.scratch(w1)}/ray {cluster.temp_dir}" in script and script.endswith('exec "$@"')


def test_pins_put_a_node_on_its_cores_under_a_cpu_quota(tmp_path):
    from rayloop.control.local_cluster import cpu_cgroup, node_command, parse_pin

    assert parse_pin("w1=1:0.5") == ("w1", "1", 0.5) and parse_pin("head=0") == ("head", "0", 0.0)
    assert parse_pin("w2=0-1,1:2") == ("w2", "0-1,1", 2.0)
    for bad in ("w1", "w1=", "w1=a", "w1=1:x", "w1=1:2", "=1"):
        with pytest.raises(ClusterError, match="pin"):
            parse_pin(bad)
    cluster = plan("t", workers=2, subnet=9, token_path=tmp_path / "token", pins=[("head", "0", 0.0), ("w1", "0", 0.5)])
    head, w1, w2 = cluster.nodes
    assert (head.cores, head.cpu_quota, w1.cores, w1.cpu_quota, w2.cores, w2.cpu_quota) == ("0", 0.0, "0", 0.5, "", 0.0)
    assert LocalCluster.from_dict(json.loads(json.dumps(cluster.to_dict()))) == cluster
    cmd = node_command(cluster, w1, ["ray", "start"])
    # the CPU group is joined, then taskset, before `ip netns exec` (whose sysfs has no cgroups)
    assert cmd[:2] == ["sh", "-c"] and cmd[2].startswith(f"echo $$ > {cpu_cgroup(cluster, w1)}/cgroup.procs")
    assert cmd[4:10] == ["taskset", "-c", "0", "ip", "netns", "exec"] and cmd[-2:] == ["ray", "start"]
    assert node_command(cluster, head, ["x"])[:4] == ["taskset", "-c", "0", "ip"]
    assert node_command(cluster, w2, ["x"])[:3] == ["ip", "netns", "exec"]
    with pytest.raises(ClusterError, match="no such node"):
        plan("t", workers=1, token_path=tmp_path / "token", pins=[("w9", "0", 0.0)])
    with pytest.raises(ClusterError, match="this machine has cores"):
        plan("t", workers=1, token_path=tmp_path / "token", pins=[("w1", "4096", 0.0)])


def test_purging_a_cluster_that_is_down_deletes_what_it_left(tmp_path, monkeypatch):
    from rayloop.control.local_cluster import clusters_dir, down

    monkeypatch.setenv(HOME_ENV_VAR, str(tmp_path))
    left = clusters_dir() / "old" / "shared" / "mlflow"
    left.mkdir(parents=True)
    (left / "mlflow.db").write_text("a registry of an earlier run")
    down("old")  # kept: the default keeps the shared directory
    assert left.exists()
    down("old", keep_shared=False)
    assert not (clusters_dir() / "old").exists()


def test_under_sudo_the_nodes_run_as_the_invoking_user_and_root_keeps_only_the_namespaces(tmp_path, monkeypatch):
    monkeypatch.setenv("SUDO_UID", "1000")
    monkeypatch.setenv("SUDO_GID", "1001")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert invoking_user() == "1000:1001"
    monkeypatch.setenv("SUDO_UID", "0")  # root's own sudo: nothing to drop to
    assert invoking_user() == ""
    monkeypatch.setenv("SUDO_UID", "1000")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # not root: nothing to drop either
    assert invoking_user() == ""

    cluster = plan("t", token_path=tmp_path / "token", run_as="1000:1001")
    w1 = cluster.workers[0]
    cmd = node_command(cluster, w1, ["ray", "start"])
    script = cmd[cmd.index("-c") + 1]
    mounts, _, last = script.rpartition(" && ")
    assert "mount --bind" in mounts  # as root, inside the namespace
    assert last.startswith("exec setpriv --reuid=1000 --regid=1001 ") and last.endswith(' "$@"'), last
    assert cmd[-2:] == ["ray", "start"]
    as_is = node_command(plan("t", token_path=tmp_path / "token"), w1, ["ray", "start"])
    assert as_is[as_is.index("-c") + 1].endswith('&& exec "$@"')


@pytest.mark.skipif(os.geteuid() != 0, reason="handing files over to another user needs root")
def test_the_hand_over_gives_every_root_owned_file_under_the_home_to_that_user(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / "clusters" / "t" / "shared").mkdir(parents=True)
    (home / "auth_token").write_text("x")
    (home / "clusters" / "t" / "shared" / "mlflow.db").write_text("")
    os.symlink(home / "auth_token", home / "link")
    monkeypatch.setenv("RAYLOOP_HOME", str(home))
    cluster = plan("t", token_path=home / "auth_token", run_as="65534:65534")
    _hand_over(cluster)
    for path in [home, *home.rglob("*")]:
        assert (path.lstat().st_uid, path.lstat().st_gid) == (65534, 65534), path
    _hand_over(plan("t", token_path=home / "auth_token"))  # run_as "": nothing changes, nothing fails
