"""The Serve application for the registered tabular model.

    serve run configs/serve/tabular.yaml          # or: serve deploy configs/serve/tabular.yaml
    rayloop serve                                  # the same app, deployed from the rayloop config

`app_builder(TabularAppArgs)` reads the rayloop config (serving section) and returns the
bound application: one autoscaling deployment, `TabularServer`, that validates, batches and
scores, and serves `serving.model_ref` (the `champion` alias by default).
"""

# no `from __future__ import annotations`: Serve reads the builder's annotation at runtime to
# turn a config file's `args:` into TabularAppArgs

from pydantic import BaseModel, ConfigDict, Field
from ray.serve import Application

from rayloop import paths
from rayloop.config import RayloopConfig, load_config

__all__ = ["TabularAppArgs", "app_builder", "deployment_options"]


class TabularAppArgs(BaseModel):
    """The `args:` of the application in a Serve config file."""

    model_config = ConfigDict(extra="forbid")

    config: str | None = Field(None, description="rayloop config file (default: the embedded configs/demo.yaml)")
    overrides: list[str] = Field(default_factory=list, description="`key.sub=value` overrides, as --set")
    model_ref: str | None = Field(None, description="alias or version to serve (default: serving.model_ref)")
    tracking_uri: str | None = Field(
        None, description="MLflow store (default: MLFLOW_TRACKING_URI, else the sqlite store under RAYLOOP_HOME)"
    )


def deployment_options(config: RayloopConfig, model_ref: str | None = None) -> dict:
    """Serve options from our config: admission limits, autoscaling, the model to load, no access log."""
    serving = config.serving
    return {
        "max_ongoing_requests": serving.max_ongoing_requests,
        "max_queued_requests": serving.max_queued_requests,
        # overload is a fast 503 with Retry-After, never a timeout
        "backpressure_config": {"status_code": 503, "retry_after_s": serving.retry_after_s},
        "autoscaling_config": {
            "min_replicas": serving.min_replicas,
            "max_replicas": serving.max_replicas,
            "target_ongoing_requests": serving.target_ongoing_requests,
            "upscale_delay_s": 5,
            "downscale_delay_s": 60,
        },
        "user_config": {"model_ref": model_ref or serving.model_ref},
        "ray_actor_options": {"num_cpus": serving.replica_cpus, "num_gpus": serving.replica_gpus},
        "logging_config": {"enable_access_log": False},
        "health_check_period_s": 5,
    }


def app_builder(args: TabularAppArgs) -> Application:
    from rayloop.serving.server import ServerArgs, TabularServer

    if not isinstance(args, TabularAppArgs):  # a plain dict from an older Serve or a caller
        args = TabularAppArgs.model_validate(args)
    config = load_config(args.config, args.overrides)
    serving = config.serving
    server_args = ServerArgs(
        model_name=config.registry.model_name,
        tracking_uri=args.tracking_uri or paths.mlflow_tracking_uri(),
        backend=serving.backend,
        max_batch_size=serving.max_batch_size,
        batch_wait_timeout_s=serving.batch_wait_timeout_s,
        max_records_per_request=serving.max_records_per_request,
        max_body_bytes=serving.max_body_bytes,
        parity_tolerance=serving.parity_tolerance,
        decision_threshold=serving.decision_threshold,
        auth_token_env=serving.auth_token_env,
        engine_cache_dir=str(paths.home() / "engine-cache"),
        follow_alias_s=serving.follow_alias_s,
        monitoring=config.monitoring if config.monitoring.enabled else None,
    )
    return TabularServer.options(**deployment_options(config, args.model_ref)).bind(server_args.model_dump())
