"""`python -m workloads.retrain --config configs/demo.yaml [--set retrain.since=EPOCH_S ...]`

The job the DriftMonitor submits through the Jobs API when its policy decides (a person can submit
the same): train a challenger on the reference data plus the recent labelled inference log, gate it
on the most recent labelled rows training never saw, promote or refuse. The monitor rolls a
promoted version out to Serve and rebases its reference. A refused gate exits 0 with the reason.
"""

from __future__ import annotations

import sys
from typing import Any

from rayloop.config import RayloopConfig
from rayloop.entrypoint import run_workload, workload_main


def _run(config: RayloopConfig) -> Any:
    from rayloop.retrain import run_retrain

    return run_retrain(config)


main = workload_main(_run, __doc__)

if __name__ == "__main__":
    run_workload(lambda: main(sys.argv[1:]))
