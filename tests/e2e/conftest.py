"""A real Ray head started with `ray start` on 127.0.0.1, token auth on, stopped at the end.

The same head `rayloop demo` starts (`rayloop.control.head`). Only the processes of this head are
stopped (matched by its session dir): `ray stop` would also kill the integration tests' cluster
when both run in one pytest session.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rayloop.control.head import LocalHead, start_head
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
