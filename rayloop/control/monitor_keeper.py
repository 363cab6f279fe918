"""Keeps a model's DriftMonitor running from inside Serve: how a RayService starts the monitor.

`rayloop cluster render` adds `serve_apps/monitor.py` (a thin builder over this deployment) beside
the model app in the RayService's serveConfigV2 (not to configs/serve/tabular.yaml: on a laptop
`rayloop serve` / `rayloop up` start the monitor). KubeRay deploys every app of serveConfigV2 on
each new cluster, so the monitor comes up with the service and after a head restart, without
anyone running `rayloop monitor`. A control-plane app: it lives here, not in rayloop/serving/,
which never imports the control plane.

One 0-CPU replica, no HTTP route. A thread checks every `check_period_s`: no monitor and a champion
in the registry -> `start_model_monitor` (get_if_exists: idempotent, and the actor itself restarts
forever). The replica's `check_health` only reports that thread, because starting a monitor waits
for it to load the champion, longer than a health check may take. Before the first champion exists
(the pipeline has not run yet) it waits instead of failing, so the RayService stays healthy.
"""

import logging
import threading
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from rayloop import registry
from rayloop.config import ConfigSource
from rayloop.control.monitor_actor import monitor_root, start_model_monitor
from rayloop.monitoring.core import read_stop_mark
from rayloop.monitoring.handle import get_monitor

__all__ = ["MonitorAppArgs", "MonitorKeeper", "keep_monitor", "keeper_round"]

log = logging.getLogger(__name__)


class MonitorAppArgs(BaseModel):
    """The `args:` of the monitor application: the model app's config source and its name."""

    model_config = ConfigDict(extra="forbid")

    config: str | None = Field(None, description="the model app's rayloop config (default: configs/demo.yaml)")
    overrides: list[str] = Field(default_factory=list, description="its `key.sub=value` overrides")
    app_name: str = Field("tabular", description="the Serve application a promotion rolls out to")
    check_period_s: float = Field(30.0, gt=0, description="how often the monitor is looked for")

    def source(self) -> ConfigSource:
        return ConfigSource(path=self.config, overrides=tuple(self.overrides))


def keep_monitor(
    model_name: str,
    *,
    enabled: bool,
    running: Callable[[str], bool],
    stopped: Callable[[str], dict[str, Any] | None],
    has_champion: Callable[[str], bool],
    start: Callable[[], Any],
) -> str:
    """One round of keeping the monitor, over its effects (pure, tested without Ray); returns
    what it found or did. A monitor stopped on purpose (`rayloop monitor --stop`) stays stopped
    until a person starts it (`rayloop monitor`)."""
    if not enabled:
        return "disabled"
    if running(model_name):
        return "running"
    mark = stopped(model_name)
    if mark is not None:
        return f"stopped on purpose by {mark.get('by', '?')}: `rayloop monitor` starts it again"
    if not has_champion(model_name):
        return "waiting for a champion"
    start()
    return "started"


def keeper_round(source: ConfigSource, app_name: str) -> str:
    """One round of the keeper app against the running cluster and registry."""
    config = source.load()
    root = monitor_root(config)
    return keep_monitor(
        config.registry.model_name,
        enabled=config.monitoring.enabled,
        running=lambda name: get_monitor(name) is not None,
        stopped=lambda name: read_stop_mark(root, name),
        has_champion=lambda name: registry.resolve_version(name, registry.CHAMPION) is not None,
        start=lambda: start_model_monitor(source, app_name=app_name, on_purpose=False),
    )


@serve.deployment(
    num_replicas=1,
    ray_actor_options={"num_cpus": 0},
    max_ongoing_requests=1,
    health_check_period_s=30,
    logging_config={"enable_access_log": False},
)
class MonitorKeeper:
    def __init__(self, args: dict[str, Any]) -> None:
        self.args = MonitorAppArgs.model_validate(args)
        self.source = self.args.source()
        config = self.source.load()
        self.model_name = config.registry.model_name
        self.state = "starting"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._keep, name="monitor-keeper", daemon=True)
        self._thread.start()

    def _round(self) -> str:
        return keeper_round(self.source, self.args.app_name)

    def _keep(self) -> None:
        while True:
            try:
                state = self._round()
            except Exception as exc:  # MLflow or the actor not reachable now: the next round retries
                state = f"error: {exc}"
                log.exception("keeping the monitor of %s", self.model_name)
            if state != self.state:
                log.info("monitor of %s: %s", self.model_name, state)
                self.state = state
            if self._stop.wait(self.args.check_period_s):
                return

    def status(self) -> dict[str, str]:
        """What the last round found (a handle call: `serve.get_app_handle(...).status.remote()`)."""
        return {"model": self.model_name, "monitor": self.state}

    def check_health(self) -> None:
        # a dead keeper thread makes Serve replace this replica, which starts a new one
        if not self._thread.is_alive():
            raise RuntimeError("the monitor keeper thread has stopped")

    def __del__(self) -> None:
        self._stop.set()
