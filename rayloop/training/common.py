"""What both trainers share: where runs live, how failures are retried, how rank 0 checkpoints."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rayloop import paths

__all__ = ["data_config", "model_columns", "report", "run_config"]


def run_config(name: str, max_failures: int):
    """Ray Train V2 RunConfig: storage under RAYLOOP_HOME/train, retries, the last two checkpoints."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig

    return RunConfig(
        name=name,
        storage_path=paths.checkpoint_storage("train"),
        failure_config=FailureConfig(max_failures=max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=2),
    )


def data_config():
    """Only train is sharded: every worker scores the whole validation split, so all ranks see
    the same metric and stop early together (split validation made ranks stop at different
    rounds and deadlock in the collective, found by benchmarks/bench_train.py with 2 workers)."""
    from ray.train import DataConfig

    return DataConfig(datasets_to_split=["train"])


def model_columns(datasets: dict[str, Any], feature_names: Sequence[str], label: str) -> dict[str, Any]:
    """Only what the model reads travels to the workers (timestamps and ids cannot become tensors).

    Their progress bars are off: the split coordinator draws them from an actor into the driver
    log, where they only add noise to a training run's output.
    """
    selected = {k: ds.select_columns([*feature_names, label]) for k, ds in datasets.items()}
    for ds in selected.values():
        ds.context.enable_progress_bars = False
    return selected


def report(metrics: dict[str, float], write: Callable[[Path], None]) -> None:
    """Every worker reports; rank 0 attaches a checkpoint that `write(directory)` fills."""
    import ray.train

    if ray.train.get_context().get_world_rank() != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as directory:
        write(Path(directory))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))
