"""A multi-node Ray cluster on one machine, laid out like a production one.

Each node (a head with no CPUs, as in cluster/, and worker nodes with one CPU each) is its own
`ray start` in a Linux network namespace of its own, joined by a bridge that only this machine
has. The nodes talk over the bridge with token auth on; nothing listens on the machine's own
network (the namespaces are not routed: IP forwarding stays as it is, off by default), and this
machine reaches the cluster at the head's bridge address (dashboard, Jobs API, Serve, MLflow).

State follows `configs/profiles/prod.yaml`: one shared directory stands for the ReadWriteMany
volume and is every node's RAYLOOP_HOME (inference log, monitor state, audit trail, feature runs,
Train/Tune checkpoints), an `mlflow server` on the head keeps the registry and serves the
artifacts over HTTP, and each node has a scratch directory of its own (Ray's temp dir, TMPDIR)
that no other node is meant to read.

Network namespaces need root (CAP_NET_ADMIN) and iproute2: `up` says so when they are missing.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from rayloop import paths
from rayloop.constants import HAPROXY_BIND_HOST_ENV_VAR, HOME_ENV_VAR, NODE_IP_ENV_VAR
from rayloop.control.head import LocalHead, head_env, ray_executable, terminate
from rayloop.errors import ClusterError
from rayloop.runtime import LOOPBACK_ENV, ensure_auth_token

__all__ = [
    "DASHBOARD_PORT",
    "GCS_PORT",
    "MLFLOW_PORT",
    "SERVE_PORT",
    "LocalCluster",
    "Node",
    "actor_nodes",
    "alive_nodes",
    "down",
    "invoking_user",
    "kill_node",
    "start_node",
    "load",
    "namespace_pids",
    "netns_commands",
    "node_command",
    "node_env",
    "parse_pin",
    "replicas_by_node",
    "plan",
    "run_on",
    "up",
]

# every node has a network namespace, so every node can use Ray's usual ports
GCS_PORT, DASHBOARD_PORT, SERVE_PORT, MLFLOW_PORT = 6379, 8265, 8000, 5000
SUBNET_BASE = "10.213"  # 10.213.<k>.0/24, k in 1..254: private, picked free on this machine
IFNAME_MAX = 15  # Linux interface names
OBJECT_STORE_SHARE = 0.3  # of a node's memory, as Ray's own default takes of a machine's


@dataclass(frozen=True)
class Node:
    name: str  # "head", "w1", "w2", ...
    namespace: str
    ip: str
    num_cpus: int
    resources: dict[str, float] = field(default_factory=dict)  # {"w1": 1}: pin work to a node in tests
    host_veth: str = ""  # the veth end on the bridge; its peer is eth0 inside the namespace
    cores: str = ""  # taskset's CPU list ("1", "0-1"): every process of the node runs there; "" any
    cpu_quota: float = 0.0  # CPU time in cores (a CFS quota, e.g. 0.5); 0: no limit
    memory: int = 0  # bytes of Ray's `memory` resource; 0: Ray's default (the whole machine's)
    object_store_memory: int = 0  # bytes; 0: Ray's default (30% of the whole machine)

    @property
    def is_head(self) -> bool:
        return self.name == "head"


@dataclass(frozen=True)
class LocalCluster:
    name: str
    root: str  # <RAYLOOP_HOME>/clusters/<name>: shared/, nodes/<node>/, logs/, cluster.json
    subnet: int  # k of 10.213.k.0/24
    bridge: str
    host_ip: str  # this machine's address on the bridge (the client side)
    nodes: tuple[Node, ...]
    token_path: str
    # "uid:gid" the nodes' processes run as (the user behind `sudo`, see `invoking_user`); "": as
    # whoever starts them
    run_as: str = ""

    @property
    def head(self) -> Node:
        return self.nodes[0]

    @property
    def workers(self) -> tuple[Node, ...]:
        return self.nodes[1:]

    @property
    def address(self) -> str:
        return f"{self.head.ip}:{GCS_PORT}"

    @property
    def dashboard(self) -> str:
        return f"http://{self.head.ip}:{DASHBOARD_PORT}"

    @property
    def mlflow_uri(self) -> str:
        return f"http://{self.head.ip}:{MLFLOW_PORT}"

    @property
    def serve_url(self) -> str:
        return f"http://{self.head.ip}:{SERVE_PORT}"

    @property
    def shared(self) -> Path:
        """The shared volume: every node's RAYLOOP_HOME."""
        return Path(self.root) / "shared"

    def scratch(self, node: Node) -> Path:
        """A node's own directory: Ray's temp dir and TMPDIR. No other node reads it."""
        return Path(self.root) / "nodes" / node.name

    @property
    def temp_dir(self) -> Path:
        """Ray's temp dir, one path for every node, as /tmp/ray is on real machines: each node's
        mount namespace binds its own scratch there. Ray hands the head's session directory to
        every driver, so a driver on a worker node (a job with entrypoint CPUs) writes its logs
        under the head's path; with a path per node it aborted, and took the node's dashboard
        agent, and so its raylet, with it. Short: Ray's socket paths must stay under 107 bytes."""
        return Path(tempfile.gettempdir()) / f"rlcl-{os.getuid()}-{self.name}"

    @property
    def storage(self) -> str:
        """Train/Tune storage_path, on the shared volume."""
        return str(self.shared / "checkpoints")

    def client_env(self) -> dict[str, str]:
        """What a client on this machine sets to use the cluster (`rayloop cluster local env`)."""
        return {
            "RAY_ADDRESS": self.dashboard,
            "RAY_API_SERVER_ADDRESS": self.dashboard,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": self.token_path,
            "MLFLOW_TRACKING_URI": self.mlflow_uri,
        }

    def client_head(self) -> LocalHead:
        """The cluster as a client on this machine sees it (Jobs API, dashboard, token): what
        rayloop's helpers for a local head take."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != HOME_ENV_VAR}
        env |= self.client_env() | {HOME_ENV_VAR: str(self.shared)}
        return LocalHead(self.address, self.dashboard, session_dir="", env=env)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> LocalCluster:
        nodes = tuple(Node(**n) for n in raw["nodes"])
        return cls(**{**raw, "nodes": nodes})


def clusters_dir() -> Path:
    return paths.home() / "clusters"


def parse_pin(text: str) -> tuple[str, str, float]:
    """`NODE=CORES[:QUOTA]` (e.g. `w1=1:0.5`: node w1 on core 1, at most half of it) -> (node,
    cores, quota in cores; 0 for none)."""
    node, sep, rest = text.partition("=")
    cores, _, quota = rest.partition(":")
    if not sep or not node or not re.fullmatch(r"\d+(-\d+)?(,\d+(-\d+)?)*", cores):
        raise ClusterError(f"pin {text!r}: write NODE=CORES[:QUOTA], e.g. w1=1 or w1=1:0.5 or head=0")
    try:
        share = float(quota) if quota else 0.0
    except ValueError:
        raise ClusterError(f"pin {text!r}: QUOTA is CPU time in cores, e.g. 0.5") from None
    listed = _core_list(cores)
    if share < 0 or share > len(listed):
        raise ClusterError(f"pin {text!r}: QUOTA must be between 0 and the {len(listed)} listed cores")
    return node, cores, share


def _core_list(cores: str) -> list[int]:
    out: list[int] = []
    for part in cores.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


def plan(
    name: str = "local",
    *,
    workers: int = 2,
    cpus_per_worker: int = 1,
    subnet: int = 1,
    token_path: str | Path | None = None,
    pins: Sequence[tuple[str, str, float]] = (),
    machine_memory: int = 0,
    run_as: str = "",
) -> LocalCluster:
    """The cluster's layout: names, addresses, directories, each node's cores and CPU quota
    (`pins`, from `parse_pin`), and its equal share of `machine_memory` (default: this machine's).
    Pure (nothing is created)."""
    if not 1 <= workers <= 200:
        raise ClusterError(f"workers must be 1..200, not {workers}")
    if not 1 <= subnet <= 254:
        raise ClusterError(f"subnet must be 1..254, not {subnet}")
    if not name.replace("-", "").isalnum() or len(name) > 20:
        raise ClusterError(f"cluster name {name!r}: letters, digits and '-', at most 20 characters")
    prefix = f"{SUBNET_BASE}.{subnet}"
    nodes = [Node("head", f"rayloop-{name}-head", f"{prefix}.2", 0, {}, f"rlv{subnet}h")]
    nodes += [
        Node(f"w{i}", f"rayloop-{name}-w{i}", f"{prefix}.{10 + i}", cpus_per_worker, {f"w{i}": 1.0}, f"rlv{subnet}w{i}")
        for i in range(1, workers + 1)
    ]
    # Each node gets its share of this machine's memory, as machines of their own would: by
    # default every raylet reports the whole machine (N times over), and sizes its object store
    # and local mode's memory rule from that.
    share = (machine_memory or _machine_memory()) // len(nodes)
    store = int(share * OBJECT_STORE_SHARE)
    nodes = [replace(node, memory=share - store, object_store_memory=store) for node in nodes]
    by_name = {node.name: i for i, node in enumerate(nodes)}
    cpus = os.cpu_count() or 1
    for node_name, cores, quota in pins:
        if node_name not in by_name:
            raise ClusterError(f"pin for {node_name!r}: no such node (nodes: {sorted(by_name)})")
        if max(_core_list(cores)) >= cpus:
            raise ClusterError(f"pin {node_name}={cores}: this machine has cores 0-{cpus - 1}")
        i = by_name[node_name]
        nodes[i] = replace(nodes[i], cores=cores, cpu_quota=quota)
    return LocalCluster(
        name=name,
        root=str(clusters_dir() / name),
        subnet=subnet,
        bridge=f"rlbr{subnet}",
        host_ip=f"{prefix}.1",
        nodes=tuple(nodes),
        token_path=str(token_path or ensure_auth_token()),
        run_as=run_as,
    )


def netns_commands(cluster: LocalCluster) -> list[list[str]]:
    """`ip` commands that build the bridge, one namespace per node and its veth pair. The bridge
    gets this machine's client address; no route, NAT or forwarding is added."""
    cmds = [
        ["ip", "link", "add", cluster.bridge, "type", "bridge"],
        ["ip", "addr", "add", f"{cluster.host_ip}/24", "dev", cluster.bridge],
        ["ip", "link", "set", cluster.bridge, "up"],
    ]
    for node in cluster.nodes:
        peer = f"{node.host_veth}p"
        for ifname in (node.host_veth, peer, cluster.bridge):
            if len(ifname) > IFNAME_MAX:
                raise ClusterError(f"interface name {ifname!r} is over {IFNAME_MAX} characters")
        cmds += [
            ["ip", "netns", "add", node.namespace],
            ["ip", "link", "add", node.host_veth, "type", "veth", "peer", "name", peer],
            ["ip", "link", "set", node.host_veth, "master", cluster.bridge],
            ["ip", "link", "set", node.host_veth, "up"],
            ["ip", "link", "set", peer, "netns", node.namespace],
            ["ip", "-n", node.namespace, "link", "set", peer, "name", "eth0"],
            ["ip", "-n", node.namespace, "addr", "add", f"{node.ip}/24", "dev", "eth0"],
            ["ip", "-n", node.namespace, "link", "set", "eth0", "up"],
            ["ip", "-n", node.namespace, "link", "set", "lo", "up"],
        ]
    return cmds


def node_env(cluster: LocalCluster, node: Node, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """A node's environment: rayloop's Ray settings, the shared home, its own scratch, token auth,
    the MLflow server, and Serve's HAProxy listening on the node's bridge address."""
    scratch = cluster.scratch(node)
    env = head_env(base)
    env.update(
        {
            HOME_ENV_VAR: str(cluster.shared),
            "RAY_TMPDIR": str(cluster.temp_dir),
            "TMPDIR": str(scratch / "tmp"),
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": cluster.token_path,
            # a real multi-node cluster: Ray takes --node-ip-address as given (the bridge address)
            LOOPBACK_ENV: "1",
            "MLFLOW_TRACKING_URI": cluster.mlflow_uri,
            "RAYLOOP_CLUSTER": cluster.name,
            "RAYLOOP_NODE": node.name,
            NODE_IP_ENV_VAR: node.ip,
        }
    )
    env.pop("RAY_AUTH_TOKEN", None)
    if cluster.run_as:
        _, _, user = _run_as_user(cluster.run_as)
        if user is not None:
            env |= {"HOME": user.pw_dir, "USER": user.pw_name, "LOGNAME": user.pw_name}
        else:  # no passwd entry: a home of the node's own
            env["HOME"] = str(scratch / "tmp")
    if "RAY_SERVE_ENABLE_HA_PROXY" in env:
        # HAProxy listens on the node's own address. Its state paths stay the same on every node
        # (under this machine's RAYLOOP_HOME, where every node can write): Serve's HAProxy
        # managers on the workers used the head's paths whatever their own environment said
        # (Ray scopes them per node id), so a per-node path failed on the other nodes.
        env[HAPROXY_BIND_HOST_ENV_VAR] = node.ip
    return env


def run_on(cluster: LocalCluster, node_name: str, cmd: Sequence[str]) -> int:
    """Run `cmd` as a process of one node (its namespaces and environment, RAY_ADDRESS set to the
    cluster), in this directory, attached to this terminal; its exit code."""
    node = _node(cluster, node_name)
    env = node_env(cluster, node) | {"RAY_ADDRESS": cluster.address}
    return subprocess.run(node_command(cluster, node, cmd), env=env).returncode


def _ray_start(cluster: LocalCluster, node: Node, temp_dir: Path) -> list[str]:
    cmd = [
        ray_executable(),
        "start",
        f"--node-ip-address={node.ip}",
        f"--num-cpus={node.num_cpus}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    if node.is_head:
        cmd += [
            "--head",
            f"--port={GCS_PORT}",
            "--include-dashboard=true",
            f"--dashboard-host={node.ip}",
            f"--dashboard-port={DASHBOARD_PORT}",
        ]
    else:
        cmd.append(f"--address={cluster.address}")
    if node.resources:
        cmd.append(f"--resources={json.dumps(node.resources)}")
    if node.memory:
        cmd += [f"--memory={node.memory}", f"--object-store-memory={node.object_store_memory}"]
    return cmd


def _machine_memory() -> int:
    import psutil

    return int(psutil.virtual_memory().total)


def node_command(cluster: LocalCluster, node: Node, cmd: Sequence[str]) -> list[str]:
    """`cmd` on `node`: in its network namespace, and in a mount namespace (`ip netns exec`
    makes one, its mounts do not reach this machine's) where every other node's scratch
    directory is an empty read-only tmpfs. A file one node writes to its scratch and another node
    reads fails there as it would on two machines; only the shared directory is shared."""
    hide = [str(cluster.scratch(other)) for other in cluster.nodes if other.name != node.name]
    mounts = [
        f"mkdir -p {shlex.quote(p)} && mount -t tmpfs -o ro,size=16k rayloop-other-node {shlex.quote(p)}" for p in hide
    ]
    own, common = shlex.quote(str(cluster.scratch(node) / "ray")), shlex.quote(str(cluster.temp_dir))
    mounts.append(f"mkdir -p {own} {common} && mount --bind {own} {common}")
    # the namespaces and mounts need root; what runs in them does not: the user behind sudo
    script = " && ".join([*mounts, " ".join(["exec", *_as_user(cluster.run_as), '"$@"'])])
    inside = ["ip", "netns", "exec", node.namespace, "sh", "-c", script, "rayloop-node", *cmd]
    pin = ["taskset", "-c", node.cores] if node.cores else []
    if not node.cpu_quota:
        return [*pin, *inside]
    # joins the node's CPU group (made by `up`) before `ip netns exec`, which mounts a sysfs of
    # its own without the cgroup tree; the node's processes and their children share the quota
    join = f'echo $$ > {shlex.quote(cpu_cgroup(cluster, node))}/cgroup.procs && exec "$@"'
    return ["sh", "-c", join, "rayloop-cpu", *pin, *inside]


def invoking_user() -> str:
    """The user who ran this through sudo, as "uid:gid" (sudo's SUDO_UID / SUDO_GID), so the
    cluster's processes run as them and every file they and `up` write is theirs; "" when this
    does not run as root for someone else."""
    uid, gid = os.environ.get("SUDO_UID", ""), os.environ.get("SUDO_GID", "")
    if os.geteuid() != 0 or not uid.isdigit() or not gid.isdigit() or uid == "0":
        return ""
    return f"{uid}:{gid}"


def _run_as_user(run_as: str) -> tuple[int, int, Any]:
    """(uid, gid, their passwd entry or None) of a cluster's `run_as` ("uid:gid")."""
    import pwd

    uid, gid = (int(part) for part in run_as.split(":"))
    try:
        return uid, gid, pwd.getpwuid(uid)
    except KeyError:
        return uid, gid, None


def _as_user(run_as: str) -> list[str]:
    """The `setpriv` prefix that runs a command as `run_as` ("uid:gid"); [] for "" (as is)."""
    if not run_as:
        return []
    uid, gid, user = _run_as_user(run_as)
    # the user's own supplementary groups, as a login would give them
    groups = "--init-groups" if user is not None else "--clear-groups"
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", groups]


def _hand_over(cluster: LocalCluster) -> None:
    """Give every root-owned file and directory under RAYLOOP_HOME (this cluster's, the token,
    Ray's and HAProxy's state) to the user the nodes run as: they write there, and nothing of
    theirs should need sudo to read or delete afterwards."""
    if not cluster.run_as:
        return
    uid, gid, _ = _run_as_user(cluster.run_as)
    home = paths.home()
    for path in [home, *home.rglob("*")]:
        try:
            if path.lstat().st_uid == 0:
                os.lchown(path, uid, gid)
        except FileNotFoundError:  # gone while walking (a node's temp file)
            continue


def cpu_cgroup(cluster: LocalCluster, node: Node) -> str:
    """The node's group in the CPU controller: cgroup v1's cpu hierarchy, or the v2 tree."""
    v1 = Path("/sys/fs/cgroup/cpu")
    base = v1 if (v1 / "cpu.cfs_quota_us").exists() else Path("/sys/fs/cgroup")
    return str(base / f"rayloop-{cluster.name}-{node.name}")


def _make_cpu_cgroup(cluster: LocalCluster, node: Node) -> None:
    """Create the node's CPU group with its quota (`cpu_quota` cores per 10 ms period)."""
    group = Path(cpu_cgroup(cluster, node))
    # a short period: a throttled node waits at most (1 - quota) x period, so a quota stalls
    # requests for a few ms instead of the default period's 50 ms, which alone fails a 50 ms p99
    period = 10_000
    quota = int(node.cpu_quota * period)
    try:
        group.mkdir(exist_ok=True)
        if (group / "cpu.cfs_quota_us").exists():
            (group / "cpu.cfs_period_us").write_text(str(period))
            (group / "cpu.cfs_quota_us").write_text(str(quota))
        else:
            (group / "cpu.max").write_text(f"{quota} {period}")
    except OSError as exc:
        raise ClusterError(f"cannot set a CPU quota for node {node.name} ({group}): {exc}") from exc


def _remove_cpu_cgroup(cluster: LocalCluster, node: Node) -> None:
    group = Path(cpu_cgroup(cluster, node))
    deadline = time.monotonic() + 10
    while group.exists() and time.monotonic() < deadline:
        try:
            group.rmdir()
        except OSError:  # its last processes are still exiting
            time.sleep(0.2)


def _run(cmd: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess:
    done = subprocess.run(list(cmd), capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        raise ClusterError(f"`{' '.join(cmd)}` failed ({done.returncode}): {(done.stderr or done.stdout)[-1500:]}")
    return done


def _check_can_build() -> None:
    if shutil.which("ip") is None:
        raise ClusterError("a local cluster needs iproute2's `ip` (network namespaces); install iproute2")
    if sys.platform != "linux":
        raise ClusterError("a local multi-node cluster needs Linux network namespaces")
    if os.geteuid() != 0:
        raise ClusterError(
            "a local multi-node cluster needs root (CAP_NET_ADMIN) to create its network namespaces: "
            "they keep every node's listeners off this machine's network. Run it with sudo, or use "
            "a single-node head (`rayloop demo`)"
        )


def _used_subnets() -> set[int]:
    """Subnets k taken on this machine: by an address in 10.213.k.0/24 or by an interface of
    ours (rlbr<k>, rlv<k>...) that a crashed run left behind."""
    addrs = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True).stdout
    used = {int(t.split(".")[2]) for t in addrs.split() if t.startswith(f"{SUBNET_BASE}.")}
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    for line in links.splitlines():
        fields = line.split(":", 2)
        found = re.match(r"rl(?:br|v)(\d+)", fields[1].strip()) if len(fields) == 3 else None
        if found:
            used.add(int(found.group(1)))
    return used


def state_file(name: str) -> Path:
    return clusters_dir() / name / "cluster.json"


def load(name: str = "local") -> LocalCluster:
    path = state_file(name)
    if not path.exists():
        raise ClusterError(f"no local cluster {name!r} (no {path}); start one with `rayloop cluster local up`")
    return LocalCluster.from_dict(json.loads(path.read_text()))


def up(
    name: str = "local",
    *,
    workers: int = 2,
    cpus_per_worker: int = 1,
    mlflow: bool = True,
    timeout_s: float = 180.0,
    extra_env: Mapping[str, str] | None = None,
    pins: Sequence[tuple[str, str, float]] = (),
    run_as: str | None = None,
) -> LocalCluster:
    """Build the namespaces, start the MLflow server and every node, wait until all nodes are
    alive. Anything started is stopped again when a step fails. The nodes run as `run_as`
    ("uid:gid"; default: the user behind sudo, `invoking_user`)."""
    _check_can_build()
    if state_file(name).exists():
        raise ClusterError(f"local cluster {name!r} exists ({state_file(name)}): `rayloop cluster local down` first")
    free = [k for k in range(1, 255) if k not in _used_subnets()]
    if not free:
        raise ClusterError(f"no free {SUBNET_BASE}.k.0/24 subnet on this machine")
    cluster = plan(
        name,
        workers=workers,
        cpus_per_worker=cpus_per_worker,
        subnet=free[0],
        pins=pins,
        run_as=invoking_user() if run_as is None else run_as,
    )
    root = Path(cluster.root)
    # a cluster of this name that was downed keeps its shared directory (registry, runs, logs of
    # the loop); only the nodes' scratch starts empty
    shutil.rmtree(root / "nodes", ignore_errors=True)
    for sub in ("shared", "logs"):
        paths.ensure(root / sub)
    state_file(name).write_text(json.dumps(cluster.to_dict(), indent=2))
    try:
        for cmd in netns_commands(cluster):
            _run(cmd)
        for node in cluster.nodes:
            if node.cpu_quota:
                _make_cpu_cgroup(cluster, node)
        if mlflow:
            _start_mlflow(cluster, extra_env)
        for node in cluster.nodes:
            _start_node(cluster, node, extra_env)
            if node.is_head:
                _wait_dashboard(cluster, timeout_s)
        _wait_nodes(cluster, timeout_s)
    except BaseException:
        down(name)
        raise
    return cluster


def _start_node(cluster: LocalCluster, node: Node, extra_env: Mapping[str, str] | None) -> None:
    if node.cpu_quota:
        _make_cpu_cgroup(cluster, node)  # again for a node started after a kill: a no-op then
    scratch = cluster.scratch(node)
    for sub in ("ray", "tmp"):
        paths.ensure(scratch / sub)
    env = node_env(cluster, node, extra_env)
    _hand_over(cluster)
    _run(node_command(cluster, node, _ray_start(cluster, node, cluster.temp_dir)), env=env, timeout=180)


def _start_mlflow(cluster: LocalCluster, extra_env: Mapping[str, str] | None) -> None:
    """`mlflow server` on the head's namespace: a SQL backend and --serve-artifacts, so clients
    on any node log and load artifacts through the server and no node needs its filesystem."""
    store = paths.ensure(cluster.shared / "mlflow")
    head = cluster.head
    env = node_env(cluster, head, extra_env)
    env.pop("MLFLOW_TRACKING_URI", None)
    mlflow = str(Path(sys.executable).parent / "mlflow")
    cmd = [
        mlflow,
        "server",
        "--backend-store-uri",
        f"sqlite:///{store / 'mlflow.db'}",
        "--serve-artifacts",
        "--artifacts-destination",
        str(store / "artifacts"),
        "--host",
        head.ip,
        "--port",
        str(MLFLOW_PORT),
        "--workers",
        "1",
        # a request names the server by the head's bridge address: allow that Host header
        "--allowed-hosts",
        f"{head.ip}:{MLFLOW_PORT},{head.ip},localhost:{MLFLOW_PORT}",
    ]
    log = open(Path(cluster.root) / "logs" / "mlflow-server.log", "ab")  # noqa: SIM115  (the child keeps it)
    _hand_over(cluster)
    subprocess.Popen(
        node_command(cluster, head, cmd), env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    _wait_http(f"{cluster.mlflow_uri}/health", 120.0, "the MLflow server")


def _wait_http(url: str, timeout_s: float, what: str, headers: Mapping[str, str] | None = None) -> Any:
    import httpx

    deadline, last = time.monotonic() + timeout_s, ""
    while time.monotonic() < deadline:
        try:
            response = httpx.get(url, timeout=3, headers=dict(headers or {}))
            if response.status_code < 400:
                return response
            last = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.5)
    raise ClusterError(f"{what} at {url} did not answer in {timeout_s:g} s ({last})")


def _headers(cluster: LocalCluster) -> dict[str, str]:
    return {"Authorization": f"Bearer {Path(cluster.token_path).read_text().strip()}"}


def _wait_dashboard(cluster: LocalCluster, timeout_s: float) -> None:
    _wait_http(f"{cluster.dashboard}/api/version", timeout_s, "the head's dashboard", _headers(cluster))


def alive_nodes(cluster: LocalCluster) -> dict[str, str]:
    """{node IP: state} of the nodes the head knows, read through the dashboard's state API."""
    rows = _nodes_detail(cluster)
    # a node started again on the same address is a new node: its ALIVE wins over the DEAD one
    found: dict[str, str] = {}
    for row in rows:
        if found.get(row["node_ip"]) != "ALIVE":
            found[row["node_ip"]] = row["state"]
    return found


def replicas_by_node(url: str, calls: int = 40) -> dict[str, set[str]]:
    """{node address: replica ids} over `calls` GETs of the app's /v1/model at `url` (each answer
    names its node and replica): where the replicas of a Serve app on the cluster answer from."""
    import httpx

    seen: dict[str, set[str]] = {}
    for _ in range(calls):
        info = httpx.get(f"{url}/v1/model", timeout=10).json()
        seen.setdefault(info["node"], set()).add(info["replica"])
    return seen


def actor_nodes(cluster: LocalCluster, class_name: str) -> dict[str, int]:
    """{node IP: live actors of `class_name` there} (e.g. "RayTrainWorker"), from the state API."""
    import httpx

    response = httpx.get(
        f"{cluster.dashboard}/api/v0/actors",
        params={"limit": 10000, "detail": 1},
        headers=_headers(cluster),
        timeout=30,
    )
    response.raise_for_status()
    ips = {n["node_id"]: n["node_ip"] for n in _nodes_detail(cluster)}
    counts: dict[str, int] = {}
    for actor in response.json()["data"]["result"]["result"]:
        if actor.get("class_name") == class_name and actor.get("state") == "ALIVE":
            ip = ips.get(actor.get("node_id"), "?")
            counts[ip] = counts.get(ip, 0) + 1
    return counts


def _nodes_detail(cluster: LocalCluster) -> list[dict]:
    import httpx

    response = httpx.get(
        f"{cluster.dashboard}/api/v0/nodes", params={"limit": 1000, "detail": 1}, headers=_headers(cluster), timeout=10
    )
    response.raise_for_status()
    return response.json()["data"]["result"]["result"]


def _wait_nodes(cluster: LocalCluster, timeout_s: float) -> None:
    want = {node.ip for node in cluster.nodes}
    deadline, seen = time.monotonic() + timeout_s, {}
    while time.monotonic() < deadline:
        try:
            seen = alive_nodes(cluster)
        except Exception:  # noqa: BLE001  (the state API starts after the dashboard answers)
            seen = {}
        if all(seen.get(ip) == "ALIVE" for ip in want):
            return
        time.sleep(1.0)
    raise ClusterError(f"nodes not alive after {timeout_s:g} s: want {sorted(want)}, the head sees {seen}")


def kill_node(cluster: LocalCluster, name: str) -> int:
    """SIGKILL every process of one worker node (its raylet, object store, workers, HAProxy): the
    node is lost as a machine is. Returns how many processes were killed."""
    node = _node(cluster, name)
    if node.is_head:
        raise ClusterError("kill_node takes a worker node; the head is the cluster")
    import psutil

    victims = []
    for pid in namespace_pids(node.namespace):
        try:
            victims.append(psutil.Process(pid))
            victims[-1].kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(victims, timeout=10)
    return len(victims)


def start_node(cluster: LocalCluster, name: str, timeout_s: float = 180.0) -> None:
    """(Re)start one worker node and wait until the head sees it alive (a new node id)."""
    node = _node(cluster, name)
    if namespace_pids(node.namespace):
        raise ClusterError(f"node {name!r} still has processes; kill_node first")
    _start_node(cluster, node, None)
    _wait_nodes(cluster, timeout_s)


def _node(cluster: LocalCluster, name: str) -> Node:
    nodes = {node.name: node for node in cluster.nodes}
    if name not in nodes:
        raise ClusterError(f"no node {name!r} in local cluster {cluster.name!r}: {sorted(nodes)}")
    return nodes[name]


def namespace_pids(namespace: str) -> list[int]:
    """Every process inside a network namespace (`ip netns pids`): a node's processes, all of
    them (raylet, GCS, agents, workers, HAProxy, the MLflow server), and no one else's."""
    done = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True)
    return [int(p) for p in done.stdout.split()] if done.returncode == 0 else []


def down(name: str = "local", *, keep_shared: bool = True, grace_s: float = 10.0) -> None:
    """Stop every process in the cluster's namespaces (other Ray clusters on this machine are
    never touched), delete the namespaces and the bridge, and the nodes' scratch directories.
    The shared directory stays unless `keep_shared=False`, which also deletes what a cluster of
    this name that is down already left (`down --purge` after `down`)."""
    path = state_file(name)
    if not path.exists():
        if not keep_shared:
            shutil.rmtree(clusters_dir() / name, ignore_errors=True)
        return
    cluster = load(name)
    root = Path(cluster.root)
    terminate([pid for node in cluster.nodes for pid in namespace_pids(node.namespace)], grace_s)
    for node in cluster.nodes:
        # deleting our end removes the pair even while a dying process still holds the namespace
        subprocess.run(["ip", "link", "del", node.host_veth], capture_output=True)
        subprocess.run(["ip", "netns", "del", node.namespace], capture_output=True)
    subprocess.run(["ip", "link", "del", cluster.bridge], capture_output=True)
    for node in cluster.nodes:
        shutil.rmtree(cluster.scratch(node), ignore_errors=True)
        if node.cpu_quota:
            _remove_cpu_cgroup(cluster, node)
    try:  # the empty mount point of every node's Ray temp dir
        cluster.temp_dir.rmdir()
    except OSError:
        pass
    if keep_shared:
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(root, ignore_errors=True)
