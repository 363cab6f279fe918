"""A real Ray head started with `ray start` on 127.0.0.1, token auth on, stopped at the end.

The same head `rayloop demo` starts (`rayloop.control.head`). Only the processes of this head are
stopped (matched by its session dir): `ray stop` would also kill the integration tests' cluster
when both run in one pytest session.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator

import psutil
import pytest

from rayloop.control import local_cluster as clusters
from rayloop.control.head import LocalHead, start_head
from rayloop.control.local_cluster import LocalCluster
from rayloop.runtime import free_port


@pytest.fixture(scope="session")
def ray_head(rayloop_home) -> Iterator[LocalHead]:
    head = start_head(
        rayloop_home / "ray-head",
        # 4 logical CPUs on 2 cores: a Serve replica (1) and a retrain job (a Train worker and its
        # Ray Data reads) must fit beside each other, as on any real cluster
        num_cpus=4,
        # Serve's HAProxy listeners get their own ports: another local cluster may hold the defaults
        extra_env={
            "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
            "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        },
    )
    try:
        yield head
    finally:
        head.stop(grace_s=10)


def listeners() -> set[tuple[str, int]]:
    """Listening TCP sockets of this machine's own network namespace."""
    return {(c.laddr.ip, c.laddr.port) for c in psutil.net_connections(kind="tcp") if c.status == "LISTEN"}


@pytest.fixture(scope="session")
def local_cluster() -> Iterator[tuple[LocalCluster, set[tuple[str, int]]]]:
    """`rayloop cluster local up`: a CPU-less head and two worker nodes of 2 logical CPUs each (a
    Serve replica and a training worker fit on each), every node in its own network namespace,
    w2 pinned to the last core.
    Also yields this machine's listening sockets from before it started. Network namespaces need
    root, as a GPU test needs a GPU: CI runs as root."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    before = listeners()
    name = f"e2e{uuid.uuid4().hex[:4]}"
    # w2 is pinned to the last core under a one-core quota, so the pinning is tested too
    last = str((os.cpu_count() or 1) - 1)
    started = clusters.up(name, workers=2, cpus_per_worker=2, pins=[("w2", last, 1.0)])
    try:
        yield started, before
    finally:
        namespaces = [n.namespace for n in started.nodes]
        clusters.down(name, keep_shared=False)
        assert not [pid for ns in namespaces for pid in clusters.namespace_pids(ns)]
        left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert not any(ns in left for ns in namespaces)
