"""`python -m workloads.retrain --config configs/demo.yaml [--set retrain.since=EPOCH_S ...]`

The job the DriftMonitor submits through the Jobs API when its policy decides (a person can submit
the same): train a challenger on the reference data plus the recent labelled inference log, gate it
on the most recent labelled rows training never saw, promote or refuse. The monitor rolls a
promoted version out to Serve and rebases its reference. A refused gate exits 0 with the reason.
"""

from __future__ import annotations

import sys

from rayloop.control.retrain_job import run_retrain
from rayloop.entrypoint import exit_process, workload_main

main = workload_main(run_retrain, __doc__)

if __name__ == "__main__":
    exit_process(main(sys.argv[1:]))
