"""Search spaces as plain config: `{param: {kind: args}}` or a constant, checked without Ray.

    learning_rate: {loguniform: [0.01, 0.3]}
    num_leaves:    {randint: [15, 128]}        # upper bound excluded, as in numpy and Tune
    hidden:        {choice: [[64], [128, 64]]}
    max_bin:       255                          # a constant

`to_tune` turns a checked space into Ray Tune domains; nothing else here imports Ray.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["KINDS", "DEFAULT_SPACES", "check_space", "to_tune"]

KINDS = ("uniform", "loguniform", "randint", "choice")

DEFAULT_SPACES: dict[str, dict[str, Any]] = {
    "lightgbm": {
        "learning_rate": {"loguniform": [0.02, 0.3]},
        "num_leaves": {"randint": [15, 128]},
        "min_data_in_leaf": {"randint": [10, 200]},
        "feature_fraction": {"uniform": [0.6, 1.0]},
        "lambda_l2": {"loguniform": [1e-3, 10.0]},
    },
    "mlp": {
        "lr": {"loguniform": [3e-4, 3e-3]},
        "hidden": {"choice": [[64], [128, 64], [256, 128]]},
        "dropout": {"uniform": [0.0, 0.3]},
        "batch_size": {"choice": [256, 512, 1024]},
    },
}


def check_space(space: Mapping[str, Any]) -> dict[str, Any]:
    """The space unchanged when valid; ValueError naming the parameter and the rule otherwise."""
    for name, spec in space.items():
        if not isinstance(spec, Mapping):
            continue  # a constant
        if len(spec) != 1 or next(iter(spec)) not in KINDS:
            raise ValueError(f"search_space.{name}: give exactly one of {list(KINDS)} (got {dict(spec)!r})")
        kind, args = next(iter(spec.items()))
        if kind == "choice":
            if not isinstance(args, list) or not args:
                raise ValueError(f"search_space.{name}.choice: needs a non-empty list (got {args!r})")
            continue
        if not (isinstance(args, list) and len(args) == 2 and all(isinstance(a, (int, float)) for a in args)):
            raise ValueError(f"search_space.{name}.{kind}: needs [low, high] numbers (got {args!r})")
        low, high = args
        if not low < high:
            raise ValueError(f"search_space.{name}.{kind}: low ({low}) must be below high ({high})")
        if kind == "loguniform" and low <= 0:
            raise ValueError(f"search_space.{name}.loguniform: low must be > 0 (got {low})")
        if kind == "randint" and not all(isinstance(a, int) for a in args):
            raise ValueError(f"search_space.{name}.randint: bounds must be integers (got {args!r})")
    return dict(space)


def to_tune(space: Mapping[str, Any]) -> dict[str, Any]:
    from ray import tune

    out: dict[str, Any] = {}
    for name, spec in check_space(space).items():
        if not isinstance(spec, Mapping):
            out[name] = spec
            continue
        kind, args = next(iter(spec.items()))
        out[name] = tune.choice(args) if kind == "choice" else getattr(tune, kind)(*args)
    return out
