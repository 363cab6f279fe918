"""`up`: the model's DriftMonitor first, then the Serve app, so replicas find the monitor when
they start. What `rayloop serve` and the demo run; `deploy` alone redeploys without it."""

from __future__ import annotations

from rayloop.config import ConfigSource
from rayloop.control.deploy import APP_NAME, deploy
from rayloop.control.monitor_actor import start_model_monitor

__all__ = ["up"]


def up(source: ConfigSource, *, model_ref: str | None = None, name: str = APP_NAME, timeout_s: float = 300.0) -> str:
    """Start the monitor (when `monitoring.enabled`), then deploy; returns the app's base URL."""
    if source.load().monitoring.enabled:
        start_model_monitor(source, app_name=name)
    return deploy(source, model_ref=model_ref, name=name, timeout_s=timeout_s)
