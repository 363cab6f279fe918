"""`python -m workloads.pipeline --config configs/demo.yaml [--set k=v ...]`

preprocess -> tune (when tuning.enabled) or train -> register as `challenger` -> promote to
`champion` through the quality gate on the raw test rows. A refused gate leaves the champion
serving and exits 0: the decision and its reason are printed and recorded.
"""

from __future__ import annotations

import sys

from rayloop.control.pipeline import run_pipeline
from rayloop.entrypoint import exit_process, workload_main

main = workload_main(run_pipeline, __doc__)

if __name__ == "__main__":
    exit_process(main(sys.argv[1:]))
