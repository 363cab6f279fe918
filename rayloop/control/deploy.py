"""Deploying the Serve app from Python (CLI, the loop's rollout): the same builder as `serve run`."""

from __future__ import annotations

import os
import time

from rayloop import paths
from rayloop.config import ConfigSource, ServingConfig
from rayloop.constants import HAPROXY_BIND_HOST_ENV_VAR, HOME_ENV_VAR
from rayloop.serving.app_args import TabularAppArgs

__all__ = ["APP_NAME", "IMPORT_PATH", "app_url", "deploy", "wait_for_version"]

APP_NAME = "tabular"
IMPORT_PATH = "serve_apps.tabular:app_builder"


def deploy(
    source: ConfigSource,
    *,
    model_ref: str | None = None,
    name: str = APP_NAME,
    route_prefix: str = "/",
    timeout_s: float = 300.0,
) -> str:
    """Start Serve on `serving.host:serving.port` (127.0.0.1 by default) if needed and deploy the
    app; returns its base URL once it is running. Redeploying with only `model_ref` changed is a
    hot swap: each replica reconfigures in place. (`rayloop.control.up` starts the monitor first.)

    Declarative, as `serve deploy` does (the controller's `apply_config`): the application's code
    version is then a hash of its import path, args and runtime env, which a new model_ref does not
    change, so Serve calls `reconfigure` on the running replicas. `serve.run` gives every deploy a
    new random code version in Ray 2.60 and would start new replicas for each rollout. Other
    applications deployed this way stay as they are.
    """
    import ray
    from ray.serve._private.api import serve_start  # the client `serve deploy` reaches via the dashboard
    from ray.serve.schema import ServeApplicationSchema, ServeDeploySchema

    serving = source.load().serving
    http_options = {"host": serving.host, "port": serving.port}
    client = serve_start(http_options=http_options, global_logging_config={"enable_access_log": False})
    args = TabularAppArgs.of(source, tracking_uri=paths.mlflow_tracking_uri())
    app = ServeApplicationSchema(
        name=name,
        route_prefix=route_prefix,
        import_path=IMPORT_PATH,
        args=args.model_dump(),
        # the build task and the replicas run in the controller's job, not ours: say where state lives
        runtime_env={"env_vars": {HOME_ENV_VAR: str(paths.home())}},
        deployments=[{"name": "TabularServer", "user_config": {"model_ref": str(model_ref or serving.model_ref)}}],
    )
    details = ray.get(client._controller.get_serve_instance_details.remote(), timeout=60)
    others = [
        ServeApplicationSchema.model_validate(detail["deployed_app_config"])
        for app_name, detail in details.get("applications", {}).items()
        if app_name != name and detail.get("deployed_app_config")
    ]
    client.deploy_apps(ServeDeploySchema(http_options=http_options, applications=[*others, app]))
    _wait_running(name, timeout_s)
    return app_url(serving, route_prefix)


def app_url(serving: ServingConfig, route_prefix: str = "/") -> str:
    """The app's URL from this node. For "any" interface that is HAProxy's bind host, which
    rayloop's wrapper gives the listener (RAYLOOP_HAPROXY_BIND_HOST: 127.0.0.1 on one machine, a
    node's own address on a cluster)."""
    any_host = os.environ.get(HAPROXY_BIND_HOST_ENV_VAR, "127.0.0.1")
    host = any_host if serving.host in ("0.0.0.0", "::") else serving.host
    return f"http://{host}:{serving.port}{route_prefix.rstrip('/')}"


def wait_for_version(
    serving: ServingConfig, version: str, *, name: str = APP_NAME, route_prefix: str = "/", timeout_s: float = 120.0
) -> dict[str, str]:
    """Until every running replica of the app answers `GET /v1/model` with `version`; returns
    replica -> version (empty when no replica runs: new ones load the champion). Each round asks a
    few times per replica: a round that reaches as many distinct replicas as are running, all on
    `version`, ends the wait."""
    import httpx
    from ray import serve

    token = os.environ.get(serving.auth_token_env)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = f"{app_url(serving, route_prefix)}/v1/model"
    deadline = time.monotonic() + timeout_s
    seen: dict[str, str] = {}
    with httpx.Client(headers=headers, timeout=5) as http:
        while True:
            status = serve.status().applications.get(name)
            running = sum(d.replica_states.get("RUNNING", 0) for d in status.deployments.values()) if status else 0
            if not running:
                return {}  # no replica serves an older version; new ones load the champion
            seen = {}
            for _ in range(max(4, 4 * running)):
                try:
                    info = http.get(url).json()
                    seen[str(info["replica"])] = str(info["version"])
                except (httpx.HTTPError, ValueError, KeyError):
                    continue
            if len(seen) >= running and set(seen.values()) == {str(version)}:
                return seen
            if time.monotonic() > deadline:
                raise TimeoutError(f"replicas of {name!r} not all on version {version} after {timeout_s:g}s: {seen}")
            time.sleep(0.5)


def _wait_running(name: str, timeout_s: float) -> None:
    """Until the application is RUNNING with every deployment HEALTHY (a rollout: all replicas
    reconfigured); a failed deploy raises with Serve's message."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    time.sleep(1.0)  # the controller takes the new target on its next loop
    while True:
        status = serve.status().applications.get(name)
        if status is not None:
            app_status = str(getattr(status.status, "value", status.status))
            healthy = all(str(getattr(d.status, "value", d.status)) == "HEALTHY" for d in status.deployments.values())
            if app_status == "RUNNING" and healthy and status.deployments:
                return
            if app_status in ("DEPLOY_FAILED", "UNHEALTHY"):
                raise RuntimeError(f"Serve application {name!r} is {app_status}: {status.message}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"Serve application {name!r} not running after {timeout_s:g}s: {status}")
        time.sleep(0.5)
