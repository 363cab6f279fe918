"""`python -m workloads.pipeline --config configs/demo.yaml [--set k=v ...]`

preprocess -> tune (when tuning.enabled) or train -> register as `challenger` -> promote to
`champion` through the quality gate on the raw test rows. A refused gate leaves the champion
serving and exits 0: the decision and its reason are printed and recorded.
"""

from __future__ import annotations

import sys
from typing import Any

from rayloop.config import RayloopConfig
from rayloop.entrypoint import run_workload, workload_main


def _run(config: RayloopConfig) -> Any:
    from rayloop.pipeline import run_pipeline

    return run_pipeline(config)


main = workload_main(_run, __doc__)

if __name__ == "__main__":
    run_workload(lambda: main(sys.argv[1:]))
