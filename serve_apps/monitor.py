"""The RayService's monitor app: keeps the model's DriftMonitor running
(rayloop.control.monitor_keeper says how and why)."""

# no `from __future__ import annotations`: Serve reads the builder's annotation at runtime to
# turn a config file's `args:` into MonitorAppArgs

from ray.serve import Application

from rayloop.control.monitor_keeper import MonitorAppArgs, MonitorKeeper

__all__ = ["MonitorAppArgs", "app_builder"]


def app_builder(args: MonitorAppArgs) -> Application:
    if not isinstance(args, MonitorAppArgs):  # a plain dict from an older Serve or a caller
        args = MonitorAppArgs.model_validate(args)
    return MonitorKeeper.bind(args.model_dump())
