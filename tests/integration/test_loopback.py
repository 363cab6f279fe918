"""A local cluster started by `init_ray` listens on the loopback only (its node IP is 127.0.0.1):
Ray's own processes, checked the way `rayloop doctor` checks them."""

from __future__ import annotations

import ray

from rayloop import doctor


def test_the_local_cluster_listens_on_the_loopback_only(ray_session):
    assert ray.util.get_node_ip_address() == "127.0.0.1"
    assert {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]} == {"127.0.0.1"}
    listeners = doctor.live_listeners()
    processes = {item.process for item in listeners}
    assert {"gcs_server", "raylet"} <= processes, processes  # it sees Ray's processes at all
    unsafe = [f for f in doctor.check_listeners(listeners) if f.level == "unsafe"]
    assert unsafe == [], unsafe
