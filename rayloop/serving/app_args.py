"""The Serve app's typed arguments: what a Serve config file's `args:` holds, what a replica gets,
and the deployment options, all built from the rayloop config (no Ray import)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from rayloop import paths
from rayloop.config import ConfigSource, MonitoringConfig, RayloopConfig, ServingConfig

__all__ = ["ServerArgs", "TabularAppArgs", "deployment_options"]


class TabularAppArgs(BaseModel):
    """The `args:` of the application in a Serve config file (`configs/serve/tabular.yaml`)."""

    model_config = ConfigDict(extra="forbid")

    config: str | None = Field(None, description="rayloop config file (default: the embedded configs/demo.yaml)")
    overrides: list[str] = Field(default_factory=list, description="`key.sub=value` overrides, as --set")
    model_ref: str | None = Field(None, description="alias or version to serve (default: serving.model_ref)")
    tracking_uri: str | None = Field(
        None, description="MLflow store (default: MLFLOW_TRACKING_URI, else the sqlite store under RAYLOOP_HOME)"
    )

    @classmethod
    def of(cls, source: ConfigSource, *, tracking_uri: str | None = None) -> TabularAppArgs:
        return cls(config=source.path, overrides=list(source.overrides), tracking_uri=tracking_uri)

    def source(self) -> ConfigSource:
        return ConfigSource(path=self.config, overrides=tuple(self.overrides))


class ServerArgs(BaseModel):
    """What a replica needs: the model's name, where the registry is, and the config's serving
    and monitoring sections as they are (one definition of each setting: `rayloop.config`)."""

    model_config = ConfigDict(extra="forbid")

    model_name: str
    tracking_uri: str | None = None
    serving: ServingConfig = Field(default_factory=ServingConfig)
    monitoring: MonitoringConfig | None = None  # None: no samples or labels go to a DriftMonitor
    engine_cache_dir: str | None = None  # compiled backends (TensorRT engines) are kept here

    @classmethod
    def from_config(cls, config: RayloopConfig, *, tracking_uri: str | None = None) -> ServerArgs:
        return cls(
            model_name=config.registry.model_name,
            tracking_uri=tracking_uri or paths.mlflow_tracking_uri(),
            serving=config.serving,
            monitoring=config.monitoring if config.monitoring.enabled else None,
            engine_cache_dir=str(paths.engine_cache_dir()),
        )


def deployment_options(serving: ServingConfig, model_ref: str | None = None) -> dict[str, Any]:
    """Serve options from our config: admission limits, autoscaling, the model to load, no access log."""
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
