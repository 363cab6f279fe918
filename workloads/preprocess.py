"""`python -m workloads.preprocess --config configs/demo.yaml [--set k=v ...]`

Runs under `ray job submit --working-dir . -- python -m workloads.preprocess ...` (joins the
job's cluster) or on its own (starts a local Ray under RAYLOOP_HOME).
"""

from __future__ import annotations

import sys

from rayloop.entrypoint import exit_process, workload_main
from rayloop.preprocess import run_preprocess

main = workload_main(run_preprocess, __doc__)

if __name__ == "__main__":
    exit_process(main(sys.argv[1:]))
