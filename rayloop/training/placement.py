"""Where a training run goes: local mode (the training function in the driver process) or a Ray
Train worker group. Pure: the facts about the driver's node come in as `NodeFacts`
(`rayloop.training.common.driver_node_facts` reads them from Ray).

`training.num_workers: auto` (the default) picks local mode when both hold:

1. the data fits comfortably in the driver's memory: rows x (features + label) x
   `BYTES_PER_VALUE` (the Arrow table, the float32 matrix and LightGBM's binned copy, held at once
   at the peak) is at most `LOCAL_MEMORY_SHARE` of the memory the driver's node can still give;
2. the driver's node has a CPU to spare: its logical CPUs minus those held by actors and tasks
   there now (Serve replicas, other jobs) is at least 1. A cluster head started with
   `--num-cpus 0` (cluster/) has none, so a driver there trains on workers.

Otherwise a worker group: one worker when only the CPUs are missing (the data fits one node), else
`max(2, shards)` workers, `shards` being how many pieces of `LOCAL_MEMORY_SHARE` of the driver
node's memory the data needs (a node like the driver's is the best guess of a worker node's
size). With `training.use_gpu`, auto is one GPU worker. Local mode trains with as many threads as
the node has spare CPUs, at most the cores that are idle now: LightGBM's OpenMP threads spin at
every barrier, so a thread more than the idle cores makes training several times slower, not faster
(benchmarks/README.md).

An integer `training.num_workers` is taken as it is: 0 is local mode, n >= 1 a group of n workers.

Local mode gives up data-parallel training and worker restarts (`training.max_failures`); a lost
driver fails the run, and a rerun resumes from the last checkpoint under the storage path.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

__all__ = ["BYTES_PER_VALUE", "LOCAL_MEMORY_SHARE", "NodeFacts", "Placement", "choose_placement"]

# peak bytes per training value (row x column) in the driver: the Arrow table as read, the float32
# matrix, LightGBM's bins and buffers, with room for float64 sources; measured in benchmarks/README.md
BYTES_PER_VALUE = 24
# the driver keeps half of what its node can give: Serve replicas, the object store's spill and the
# evaluation after training share the node
LOCAL_MEMORY_SHARE = 0.5

Mode = Literal["local", "workers"]


@dataclass(frozen=True)
class NodeFacts:
    """The driver's node, as the decision needs it."""

    cpus: float  # logical CPUs of the node (its Ray resource)
    cpus_free: float  # of those, not held by actors or tasks now
    memory_bytes: float  # what the node can still give a process (cgroup-aware)
    cores: int  # the cores this process may run on (its CPU affinity)
    cores_idle: float | None = None  # of those, idle now (measured); None: not measured


@dataclass(frozen=True)
class Placement:
    mode: Mode
    num_workers: int  # 0 in local mode
    threads: int  # threads of the training library per worker (or in the driver)
    setting: str  # training.num_workers as configured: "auto" or the number
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def choose_placement(
    setting: int | Literal["auto"],
    *,
    rows: int,
    columns: int,
    node: NodeFacts,
    cpus_per_worker: float = 1.0,
    use_gpu: bool = False,
) -> Placement:
    """Local mode or workers for `rows` x `columns` training values (label included), see the module docstring."""
    worker_threads = max(1, int(cpus_per_worker))
    idle = node.cores if node.cores_idle is None else int(node.cores_idle + 0.5)
    local_threads = max(1, min(int(node.cpus_free), node.cores, idle))
    if setting != "auto":
        n = int(setting)
        if n == 0:
            return Placement("local", 0, local_threads, "0", "training.num_workers=0 (local mode, as configured)")
        return Placement("workers", n, worker_threads, str(n), f"training.num_workers={n} (as configured)")
    if use_gpu:
        reason = "training.use_gpu: a GPU worker (the driver's node may have none)"
        return Placement("workers", 1, worker_threads, "auto", reason)
    need = rows * columns * BYTES_PER_VALUE
    budget = LOCAL_MEMORY_SHARE * node.memory_bytes
    size = f"{rows:,} rows x {columns} columns need about {_gib(need)}"
    if need > budget:
        n = max(2, math.ceil(need / budget)) if budget > 0 else 2
        reason = f"{size}, over {LOCAL_MEMORY_SHARE:.0%} of the {_gib(node.memory_bytes)} the driver's node can give"
        return Placement("workers", n, worker_threads, "auto", reason)
    if node.cpus_free < 1:
        held = node.cpus - node.cpus_free
        reason = (
            f"the driver's node has no CPU to spare ({node.cpus:g} CPUs, {held:g} held by actors and tasks); {size}"
        )
        return Placement("workers", 1, worker_threads, "auto", reason)
    reason = (
        f"{size}, within {LOCAL_MEMORY_SHARE:.0%} of the {_gib(node.memory_bytes)} the driver's node can give; "
        f"{node.cpus_free:g} of its {node.cpus:g} CPUs free"
        + ("" if node.cores_idle is None else f", {node.cores_idle:.1f} of {node.cores} cores idle")
        + f": local mode, {local_threads} thread{'s' if local_threads > 1 else ''}"
    )
    return Placement("local", 0, local_threads, "auto", reason)
