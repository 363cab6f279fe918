"""What both trainers share: where runs live, how failures are retried, how rank 0 checkpoints."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rayloop import paths
from rayloop.constants import DRIVER_CPUS_ENV_VAR
from rayloop.errors import ConfigError
from rayloop.training.placement import NodeFacts

__all__ = [
    "check_ingest_headroom",
    "data_config",
    "latest_local_checkpoint",
    "local_history",
    "local_root",
    "model_columns",
    "report",
    "run_config",
    "driver_node_facts",
]

# checkpoints a run keeps: Ray Train's CheckpointConfig for workers, _persist in local mode
CHECKPOINTS_KEPT = 2
# how long the driver watches its cores before choosing local mode's threads
IDLE_SAMPLE_S = 0.25
# every metric a local-mode run reported so far, in each of its checkpoints (Ray keeps no history there)
HISTORY_FILE = "rayloop-history.json"


def run_config(name: str, max_failures: int):
    """Ray Train V2 RunConfig: storage under RAYLOOP_HOME/train, retries, the last two checkpoints."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig

    return RunConfig(
        name=name,
        storage_path=paths.checkpoint_storage("train"),
        failure_config=FailureConfig(max_failures=max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT),
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


def driver_node_facts() -> NodeFacts:
    """The node this driver runs on, for `placement.choose_placement`: its CPUs (all, and free now),
    its cores (this process's, and how idle they were over the last `IDLE_SAMPLE_S`) and the memory
    it can still give (Ray's cgroup-aware `memory` resource, or what the OS has available, whichever
    is less)."""
    import os

    import psutil
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    alive = [n for n in ray.nodes() if n.get("Alive")]
    node = next((n for n in alive if n.get("NodeID") == node_id), None)
    resources = (node or {}).get("Resources", {})
    try:  # a DeveloperAPI: Ray has no public per-node reading of what is free
        from ray._private.state import available_resources_per_node

        free = available_resources_per_node().get(node_id, {}).get("CPU", 0.0)
    except ImportError:  # on one node the cluster's free CPUs are this node's; elsewhere assume none
        free = ray.available_resources().get("CPU", 0.0) if len(alive) == 1 else 0.0
    # CPUs the Jobs API reserved for this driver (entrypoint_num_cpus) are held, and they are its own
    own = float(os.environ.get(DRIVER_CPUS_ENV_VAR) or 0.0)
    free = min(float(resources.get("CPU", 0.0)), free + own)
    memory = min(resources.get("memory", float("inf")), psutil.virtual_memory().available)
    cores = sorted(os.sched_getaffinity(0))
    busy = psutil.cpu_percent(interval=IDLE_SAMPLE_S, percpu=True)  # Serve replicas, other jobs, anything
    return NodeFacts(
        cpus=float(resources.get("CPU", 0.0)),
        cpus_free=float(free),
        memory_bytes=float(memory),
        cores=len(cores),
        cores_idle=sum(1.0 - busy[c] / 100.0 for c in cores if c < len(busy)),
    )


def local_root(name: str, num_workers: int) -> str | None:
    """Where a local-mode run (`num_workers=0`: the training function runs in the driver) keeps
    its checkpoints: the run's folder under the same storage_path as a worker run's; None with
    workers (Ray Train persists those). Ray's local mode keeps a reported checkpoint only as the
    object it was given, so a temporary folder would be gone by the time the driver reads it."""
    return f"{paths.checkpoint_storage('train')}/{name}" if num_workers == 0 else None


def _filesystem(root: str):
    import pyarrow.fs as pafs

    return pafs.FileSystem.from_uri(root) if "://" in root else (pafs.LocalFileSystem(), root)


def _checkpoints(fs, base: str) -> list[str]:
    import pyarrow.fs as pafs

    if fs.get_file_info(base).type != pafs.FileType.Directory:
        return []
    found = fs.get_file_info(pafs.FileSelector(base))
    return sorted(i.path for i in found if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_"))


def latest_local_checkpoint(root: str | None):
    """The newest checkpoint a local-mode run left under `root` (a rerun resumes from it), or None."""
    from ray.train import Checkpoint

    if root is None:
        return None
    fs, base = _filesystem(root)
    found = _checkpoints(fs, base)
    return Checkpoint(path=found[-1], filesystem=fs) if found else None


def local_history(checkpoint) -> list[dict[str, float]]:
    """Every metric dict a local-mode run reported up to `checkpoint` ([] for a worker run's); reads
    that one file, not the whole checkpoint (each report reads its predecessor's)."""
    import pyarrow.fs as pafs

    path = f"{checkpoint.path}/{HISTORY_FILE}"
    if checkpoint.filesystem.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    with checkpoint.filesystem.open_input_stream(path) as stream:
        return json.loads(stream.read())


def _persist(root: str, metrics: dict[str, float], write: Callable[[Path], None]):
    """Write a local-mode checkpoint into the run's folder (and drop all but the newest kept)."""
    import pyarrow.fs as pafs
    from ray.train import Checkpoint

    fs, base = _filesystem(root)
    existing = _checkpoints(fs, base)
    history = local_history(Checkpoint(path=existing[-1], filesystem=fs)) if existing else []
    number = int(existing[-1].rsplit("_", 1)[1]) + 1 if existing else 0
    destination = f"{base}/checkpoint_{number:06d}"
    with tempfile.TemporaryDirectory() as directory:
        write(Path(directory))
        (Path(directory) / HISTORY_FILE).write_text(json.dumps([*history, metrics]))
        fs.create_dir(destination, recursive=True)
        pafs.copy_files(directory, destination, destination_filesystem=fs)
    for old in existing[: max(0, len(existing) + 1 - CHECKPOINTS_KEPT)]:
        fs.delete_dir(old)
    return Checkpoint(path=destination, filesystem=fs)


def report(metrics: dict[str, float], write: Callable[[Path], None], local: str | None = None) -> None:
    """Every worker reports; rank 0 attaches a checkpoint that `write(directory)` fills (in local
    mode, written to `local`, the run's folder: `local_root`)."""
    import ray.train

    if local is not None:
        ray.train.report(metrics, checkpoint=_persist(local, metrics, write))
        return
    if ray.train.get_context().get_world_rank() != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as directory:
        write(Path(directory))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))
