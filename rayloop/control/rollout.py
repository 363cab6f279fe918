"""Moving the running app to another model version: a pinned rollout, or confirming that
replicas which follow the `champion` alias have swapped by themselves after a promotion."""

from __future__ import annotations

from rayloop import registry
from rayloop.config import ConfigSource, ServingConfig
from rayloop.control.deploy import APP_NAME, deploy, wait_for_version

__all__ = ["follows_champion", "roll_out_promotion", "rollout"]


def follows_champion(serving: ServingConfig) -> bool:
    """Whether the app's replicas follow the registry's champion alias by themselves, so a
    promotion rolls out without a Serve config change (`serving.follow_alias_s`)."""
    return serving.model_ref == registry.CHAMPION and serving.follow_alias_s > 0


def rollout(source: ConfigSource, version: str, *, name: str = APP_NAME) -> str:
    """Point the running app at a concrete registry version (a lightweight user-config update)."""
    return deploy(source, model_ref=str(version), name=name)


def roll_out_promotion(source: ConfigSource, version: str, *, name: str = APP_NAME) -> None:
    """Every replica on `version` after the gate promoted it. Replicas that follow `champion` swap by
    themselves (no Serve config change, no HAProxy reload): confirm it. An app pinned to a version
    gets a user-config rollout."""
    serving = source.load().serving
    if follows_champion(serving):
        wait_for_version(serving, version, name=name)
    else:
        rollout(source, version, name=name)
