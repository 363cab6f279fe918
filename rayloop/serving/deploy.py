"""Deploying the Serve app from Python (CLI, the loop's rollout): same builder as `serve run`."""

from __future__ import annotations

from pathlib import Path

from rayloop.config import RayloopConfig

__all__ = ["APP_NAME", "deploy", "rollout", "start_model_monitor"]

APP_NAME = "tabular"


def deploy(
    config: RayloopConfig,
    *,
    config_path: str | Path | None = None,
    overrides: list[str] | None = None,
    model_ref: str | None = None,
    name: str = APP_NAME,
    route_prefix: str = "/",
    with_monitor: bool = True,
) -> str:
    """Start Serve on `serving.host:serving.port` (127.0.0.1 by default) if needed and deploy the
    app; returns its base URL. Redeploying with only `model_ref` changed is a hot swap."""
    from ray import serve

    from serve_apps.tabular import TabularAppArgs, app_builder

    serving = config.serving
    if config.monitoring.enabled and with_monitor:  # first, so the replicas find it when they start
        start_model_monitor(config, config_path=config_path, overrides=overrides, app_name=name)
    serve.start(
        http_options={"host": serving.host, "port": serving.port},
        logging_config={"enable_access_log": False},
    )
    args = TabularAppArgs(
        config=str(config_path) if config_path else None, overrides=list(overrides or []), model_ref=model_ref
    )
    serve.run(app_builder(args), name=name, route_prefix=route_prefix)
    host = "127.0.0.1" if serving.host in ("0.0.0.0", "::") else serving.host
    return f"http://{host}:{serving.port}{route_prefix.rstrip('/')}"


def start_model_monitor(
    config: RayloopConfig,
    *,
    config_path: str | Path | None = None,
    overrides: list[str] | None = None,
    app_name: str = APP_NAME,
) -> object:
    """Get or start the model's DriftMonitor (detached), comparing with the current champion. It
    keeps the app's config (path + overrides) to submit retrain jobs with and to roll out with."""
    from rayloop import paths
    from rayloop.monitoring.monitor import MonitorArgs, start_monitor

    return start_monitor(
        MonitorArgs(
            model_name=config.registry.model_name,
            monitoring=config.monitoring,
            home=str(paths.home()),
            tracking_uri=paths.mlflow_tracking_uri(),
            retrain=config.retrain,
            config_path=str(Path(config_path).resolve()) if config_path else None,
            overrides=list(overrides or []),
            app_name=app_name,
        )
    )


def rollout(
    config: RayloopConfig,
    version: str,
    *,
    config_path: str | Path | None = None,
    overrides: list[str] | None = None,
    name: str = APP_NAME,
) -> str:
    """Point the running app at a concrete registry version (a lightweight user-config update)."""
    return deploy(
        config, config_path=config_path, overrides=overrides, model_ref=str(version), name=name, with_monitor=False
    )
