"""The ingest headroom rule: a run that would leave Ray Data no CPU on one machine is refused."""

from __future__ import annotations

import pytest

from rayloop.errors import ConfigError
from rayloop.training.common import check_ingest_headroom


def test_all_cpus_to_workers_on_one_machine_is_refused_naming_the_keys():
    with pytest.raises(ConfigError) as info:
        check_ingest_headroom([2.0], num_workers=2, cpus_per_worker=1.0)
    message = str(info.value)
    assert "training.num_workers=2" in message and "training.cpus_per_worker=1" in message
    assert "at most 1 CPUs" in message


def test_fractional_leftover_below_one_cpu_is_refused():
    with pytest.raises(ConfigError):
        check_ingest_headroom([4.0], num_workers=2, cpus_per_worker=1.75)


@pytest.mark.parametrize(
    "node_cpus, workers, cpus",
    [
        ([2.0], 1, 1.0),  # one CPU left for ingest
        ([0.0], 4, 1.0),  # a head without CPUs: the autoscaler adds workers
        ([0.0, 4.0], 4, 1.0),  # a multi-node cluster: judged by Ray, not here
        ([8.0, 8.0], 16, 1.0),
    ],
)
def test_runs_with_headroom_or_on_real_clusters_pass(node_cpus, workers, cpus):
    check_ingest_headroom(node_cpus, num_workers=workers, cpus_per_worker=cpus)
