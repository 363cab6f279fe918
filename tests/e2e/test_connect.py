"""A driver in a plain shell (Ray imported, no rayloop env) reaches a head that listens on
127.0.0.1 only, as `rayloop demo`'s own driver and `rayloop status --address` do."""

from __future__ import annotations

import subprocess
import sys

from tests.support import ROOT

CODE = """
import ray
from rayloop.runtime import init_ray
init_ray({address!r}, log_to_driver=False)
print("node", ray.util.get_node_ip_address(), sorted({{n["NodeManagerAddress"] for n in ray.nodes()}}))
print("task", ray.get(ray.remote(lambda: 41 + 1).remote()))
"""


def test_a_plain_shell_driver_reaches_the_loopback_only_head(ray_head):
    # without the loopback switch, Ray dials the machine's external address for 127.0.0.1
    env = {k: v for k, v in ray_head.env.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    done = subprocess.run(
        [sys.executable, "-c", CODE.format(address=ray_head.address)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "node 127.0.0.1 ['127.0.0.1']" in done.stdout
    assert "task 42" in done.stdout
