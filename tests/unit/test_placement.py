"""training.num_workers=auto: local mode while the data fits the driver's node and it has a CPU to spare."""

from __future__ import annotations

import pytest

from rayloop.training.placement import BYTES_PER_VALUE, LOCAL_MEMORY_SHARE, NodeFacts, choose_placement

GIB = 2**30
LAPTOP = NodeFacts(cpus=2, cpus_free=2, memory_bytes=16 * GIB, cores=2)


def test_a_small_run_on_a_laptop_trains_in_the_driver_with_the_spare_cores():
    placement = choose_placement("auto", rows=20_000, columns=21, node=LAPTOP)
    assert (placement.mode, placement.num_workers, placement.threads, placement.setting) == ("local", 0, 2, "auto")
    assert "20,000 rows x 21 columns" in placement.reason and "local mode, 2 threads" in placement.reason


def test_threads_follow_the_cpus_serve_left_free_and_never_exceed_the_cores():
    busy = NodeFacts(cpus=4, cpus_free=1.5, memory_bytes=16 * GIB, cores=2)
    assert choose_placement("auto", rows=1000, columns=10, node=busy).threads == 1
    many = NodeFacts(cpus=64, cpus_free=64, memory_bytes=16 * GIB, cores=8)
    assert choose_placement("auto", rows=1000, columns=10, node=many).threads == 8


def test_data_over_half_the_node_memory_goes_to_enough_workers():
    budget = LOCAL_MEMORY_SHARE * LAPTOP.memory_bytes
    rows_at_budget = int(budget / (21 * BYTES_PER_VALUE))
    assert choose_placement("auto", rows=rows_at_budget, columns=21, node=LAPTOP).mode == "local"
    over = choose_placement("auto", rows=rows_at_budget + 1, columns=21, node=LAPTOP)
    assert (over.mode, over.num_workers, over.threads) == ("workers", 2, 1)
    assert "over 50% of the 16.0 GiB" in over.reason
    # five times the budget: five shards of the budget's size
    assert choose_placement("auto", rows=5 * rows_at_budget, columns=21, node=LAPTOP).num_workers == 5


def test_a_head_without_cpus_trains_on_one_worker_when_the_data_fits():
    head = NodeFacts(cpus=0, cpus_free=0, memory_bytes=8 * GIB, cores=4)
    placement = choose_placement("auto", rows=20_000, columns=21, node=head, cpus_per_worker=2)
    assert (placement.mode, placement.num_workers, placement.threads) == ("workers", 1, 2)
    assert "no CPU to spare (0 CPUs" in placement.reason
    # Serve replicas holding every CPU of a laptop count the same
    full = NodeFacts(cpus=2, cpus_free=0.5, memory_bytes=8 * GIB, cores=2)
    assert choose_placement("auto", rows=20_000, columns=21, node=full).reason.startswith(
        "the driver's node has no CPU to spare (2 CPUs, 1.5 held"
    )


def test_gpu_training_goes_to_a_gpu_worker():
    placement = choose_placement("auto", rows=20_000, columns=21, node=LAPTOP, use_gpu=True)
    assert (placement.mode, placement.num_workers) == ("workers", 1) and "use_gpu" in placement.reason


@pytest.mark.parametrize(("setting", "mode", "workers"), [(0, "local", 0), (1, "workers", 1), (3, "workers", 3)])
def test_a_number_is_taken_as_configured_whatever_the_node(setting, mode, workers):
    huge = 10**12  # far over any node's memory: a number is not second-guessed
    placement = choose_placement(setting, rows=huge, columns=21, node=LAPTOP)
    assert (placement.mode, placement.num_workers, placement.setting) == (mode, workers, str(setting))
    assert "as configured" in placement.reason


def test_local_threads_never_outnumber_the_idle_cores():
    # one of two cores busy with Serve's traffic: a second LightGBM thread would spin, not help
    busy = NodeFacts(cpus=4, cpus_free=3, memory_bytes=16 * GIB, cores=2, cores_idle=0.8)
    placement = choose_placement("auto", rows=10_000, columns=21, node=busy)
    assert placement.threads == 1 and "0.8 of 2 cores idle" in placement.reason
    idle = NodeFacts(cpus=4, cpus_free=3, memory_bytes=16 * GIB, cores=2, cores_idle=1.7)
    assert choose_placement("auto", rows=10_000, columns=21, node=idle).threads == 2
    # and nothing idle still trains, on one thread
    assert choose_placement(0, rows=10, columns=2, node=NodeFacts(2, 2, GIB, 2, 0.0)).threads == 1
