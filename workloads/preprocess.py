"""`python -m workloads.preprocess --config configs/demo.yaml [--set k=v ...]`

Runs under `ray job submit --working-dir . -- python -m workloads.preprocess ...` (joins the
job's cluster) or on its own (starts a local Ray under RAYLOOP_HOME).
"""

from __future__ import annotations

import sys
from typing import Any

from rayloop.config import RayloopConfig
from rayloop.entrypoint import run_workload, workload_main


def _run(config: RayloopConfig) -> Any:
    from rayloop.preprocess import run_preprocess

    return run_preprocess(config)


main = workload_main(_run, __doc__)

if __name__ == "__main__":
    run_workload(lambda: main(sys.argv[1:]))
