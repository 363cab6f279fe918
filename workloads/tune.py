"""`python -m workloads.tune --config configs/demo.yaml [--set k=v ...]`

Ray Tune with ASHA over `tuning.search_space` on a preprocess run (`data.preprocess_run`, default
the latest); every trial is an MLflow run. The best config is refit on train+validation,
evaluated on test and registered as `challenger`.
"""

from __future__ import annotations

import sys
from typing import Any

from rayloop.config import RayloopConfig
from rayloop.entrypoint import run_workload, workload_main


def _run(config: RayloopConfig) -> Any:
    from rayloop.training.workflow import tune_and_register

    return tune_and_register(config, config.data.preprocess_run)


main = workload_main(_run, __doc__)

if __name__ == "__main__":
    run_workload(lambda: main(sys.argv[1:]))
