"""What both trainers share: where runs live, how failures are retried, how rank 0 checkpoints."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rayloop import paths
from rayloop.errors import ConfigError

__all__ = ["check_ingest_headroom", "data_config", "model_columns", "report", "run_config"]


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
    rounds and deadlock in the collective)."""
    from ray.train import DataConfig

    return DataConfig(datasets_to_split=["train"])


def check_ingest_headroom(node_cpus: Sequence[float], num_workers: int, cpus_per_worker: float) -> None:
    """Refuse a run whose workers would take every CPU of a one-machine cluster.

    Ray Data's ingest tasks (the Parquet read, the column projection) need a CPU beside the
    training workers; without one the run waits forever ("Cluster resources are not enough to
    run any task"), found with 2 workers on a 2-CPU machine. Only a single node that runs tasks
    is judged: a cluster from cluster/ has a head without CPUs and an autoscaler that adds nodes.
    """
    if len(node_cpus) != 1 or node_cpus[0] <= 0:
        return
    wanted = num_workers * cpus_per_worker
    if node_cpus[0] - wanted < 1:
        raise ConfigError(
            f"training.num_workers={num_workers} x training.cpus_per_worker={cpus_per_worker:g} = {wanted:g} CPUs "
            f"leaves less than one of this machine's {node_cpus[0]:g} for reading the data; "
            "the run would wait forever. "
            f"Use at most {max(node_cpus[0] - 1, 0):g} CPUs for training workers"
        )


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
