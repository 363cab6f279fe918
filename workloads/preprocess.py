"""`python -m workloads.preprocess --config configs/demo.yaml [--set k=v ...]`

Runs under `ray job submit --working-dir . -- python -m workloads.preprocess ...` (joins the
job's cluster) or on its own (starts a local Ray under RAYLOOP_HOME).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from rayloop.entrypoint import configure_logging, parse_workload_args, run_workload
from rayloop.preprocess import run_preprocess
from rayloop.runtime import init_ray


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_workload_args(argv, description=__doc__)
    configure_logging()
    init_ray()
    result = run_preprocess(config)
    print(json.dumps(result.to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    run_workload(lambda: main(sys.argv[1:]))
