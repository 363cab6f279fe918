"""One local Ray for the whole integration session, stopped at the end whatever happens."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def ray_session(rayloop_home) -> Iterator[None]:
    import ray

    from rayloop.runtime import init_ray

    started = init_ray(num_cpus=2)
    try:
        yield
    finally:
        if started:
            ray.shutdown()
