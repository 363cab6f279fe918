"""A local Ray head started with `ray start --head`, the rayloop way, and stopping it again.

One command line for the demo, the e2e tests and the benchmarks: every listener on 127.0.0.1
(GCS, dashboard and Jobs API, the dashboard agent, the Ray Client server), token auth on, the
temp dir under RAYLOOP_HOME. Stopping matches this head's own processes by its session dir, so
other Ray clusters on the machine (another test session, a user's) are never touched.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rayloop import paths
from rayloop.constants import HOME_ENV_VAR
from rayloop.runtime import free_port, ray_env

__all__ = ["LocalHead", "head_command", "head_env", "ray_executable", "start_head", "stop_session", "terminate"]


@dataclass(frozen=True)
class LocalHead:
    address: str  # GCS address (ray.init, RAY_ADDRESS)
    dashboard: str  # the dashboard and Jobs API
    session_dir: str  # every process of this head names it: how `stop_session` finds them
    env: dict[str, str] = field(default_factory=dict, repr=False)  # what a client needs: token, home

    def stop(self, grace_s: float = 15.0) -> None:
        stop_session(self.session_dir, grace_s=grace_s)


def ray_executable() -> str:
    """The `ray` of this interpreter's environment (not whatever is first on PATH)."""
    return str(Path(sys.executable).parent / "ray")


def head_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The head's environment: ours, rayloop's Ray settings, RAYLOOP_HOME, no RAY_ADDRESS."""
    env = {**os.environ, **ray_env(), HOME_ENV_VAR: str(paths.home()), **(extra or {})}
    # job entrypoints run `python` from the PATH the head was started with: this environment's
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("RAY_ADDRESS", None)
    return env


def head_command(
    *,
    temp_dir: Path,
    port: int,
    dashboard_port: int,
    agent_port: int,
    client_server_port: int,
    num_cpus: int | None = None,
) -> list[str]:
    """`ray start --head` with every listener on 127.0.0.1 and explicit ports (the defaults clash
    with any other local cluster)."""
    cmd = [
        ray_executable(),
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}",
        f"--dashboard-agent-listen-port={agent_port}",
        f"--ray-client-server-port={client_server_port}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    if num_cpus is not None:
        cmd.append(f"--num-cpus={num_cpus}")
    return cmd


def start_head(
    temp_dir: Path,
    *,
    dashboard_port: int | None = None,
    num_cpus: int | None = None,
    extra_env: Mapping[str, str] | None = None,
    timeout_s: float = 90.0,
) -> LocalHead:
    """Start a head whose temp dir is `temp_dir` (its own: a local `ray.init` must never find it
    through ray_current_cluster) and wait for its dashboard; stops what started on failure."""
    import httpx

    link = paths.ensure_ray_temp_dir(temp_dir)
    env = {**head_env(extra_env), "RAY_TMPDIR": str(link)}
    port, dashboard_port = free_port(), dashboard_port or free_port()
    cmd = head_command(
        temp_dir=link,
        port=port,
        dashboard_port=dashboard_port,
        agent_port=free_port(),
        client_server_port=free_port(),
        num_cpus=num_cpus,
    )
    started = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    latest = link / "session_latest"
    session = str(link / os.readlink(latest)) if latest.is_symlink() else ""
    head = LocalHead(f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard_port}", session, env)
    if started.returncode != 0:
        if session:
            head.stop()
        raise RuntimeError(f"ray start failed:\n{started.stdout[-2000:]}\n{started.stderr[-2000:]}")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{head.dashboard}/api/version", timeout=2).status_code < 500:
                return head
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    head.stop()
    raise RuntimeError(f"the dashboard at {head.dashboard} did not come up in {timeout_s:g}s")


def stop_session(session_dir: str, grace_s: float = 15.0) -> None:
    """Stop every process of one Ray head: those naming its session dir, their children (the
    dashboard and runtime-env agents rename themselves, and outlived the raylet), those naming
    its node id (the Ray Client server), and Serve's HAProxy, which runs outside it (its config
    lives under RAYLOOP_HOME/haproxy/<node id>)."""
    import psutil

    if not session_dir:  # "" names every process: never stop by it
        raise ValueError("stop_session needs a session dir")
    node_ids: set[str] = set()
    victims: dict[int, psutil.Process] = {}
    for proc, line in _processes_naming([session_dir]):
        node_ids.update(re.findall(r"--node-id=([0-9a-f]{16,})", line))
        victims[proc.pid] = proc
        try:
            victims.update({child.pid: child for child in proc.children(recursive=True)})
        except psutil.NoSuchProcess:
            continue
    markers = [marker for node_id in node_ids for marker in (f"--node-id={node_id}", f"haproxy/{node_id}/")]
    victims.update({proc.pid: proc for proc, _ in _processes_naming(markers)})
    _terminate(list(victims.values()), grace_s)


def _processes_naming(markers: list[str]) -> list[tuple[Any, str]]:
    """(process, command line) of every process but this one whose command line contains a marker."""
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            line = " ".join(proc.info["cmdline"] or [])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if proc.pid != os.getpid() and any(marker in line for marker in markers):
            found.append((proc, line))
    return found


def terminate(pids: list[int], grace_s: float = 10.0) -> None:
    """SIGTERM these processes and their children, SIGKILL what is left after `grace_s`."""
    import psutil

    victims: dict[int, psutil.Process] = {}
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            victims[pid] = proc
            victims.update({child.pid: child for child in proc.children(recursive=True)})
        except psutil.NoSuchProcess:
            continue
    victims.pop(os.getpid(), None)
    _terminate(list(victims.values()), grace_s)


def _terminate(victims: list, grace_s: float) -> None:
    import psutil

    for proc in victims:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(victims, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
