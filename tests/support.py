"""Small, seeded building blocks shared by test modules (plain functions, no fixtures)."""

from __future__ import annotations

import socket
from typing import Any

from rayloop.config import load_config
from rayloop.data.synthetic import generate
from rayloop.features.pipeline import FeaturePipeline


def fitted_synthetic(n_rows: int, seed: int) -> tuple[Any, Any, Any, Any]:
    """(demo config, raw synthetic table, FittedFeatures, ReferenceProfile), fitted in-process without Ray."""
    config = load_config(None)
    table = generate(n_rows, seed=seed)
    pipeline = FeaturePipeline(
        config.features, config.data.schema_, label_column="label", timestamp_column="event_time", id_column="entity_id"
    )
    fitted, profile = pipeline.fit_table(table)
    return config, table, fitted, profile


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
