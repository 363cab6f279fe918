"""Finding a model's DriftMonitor actor by name: what a replica, the CLI or a test needs.

The actor itself is started by `rayloop.control.monitor_actor`; the data plane only looks it up,
so it never imports the control plane. Ray is imported when a lookup happens, not at import.
"""

from __future__ import annotations

from typing import Any

__all__ = ["NAMESPACE", "actor_name", "get_monitor"]

NAMESPACE = "rayloop"  # the Ray namespace of every detached actor rayloop starts


def actor_name(model_name: str) -> str:
    return f"rayloop-monitor-{model_name}"


def get_monitor(model_name: str) -> Any | None:
    """The model's DriftMonitor handle, or None when none runs on the connected cluster."""
    import ray

    try:
        return ray.get_actor(actor_name(model_name), namespace=NAMESPACE)
    except ValueError:
        return None
