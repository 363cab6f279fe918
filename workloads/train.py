"""`python -m workloads.train --config configs/demo.yaml [--set k=v ...]`

Trains the configured model on Ray Train over a preprocess run (`data.preprocess_run`, default
the latest), evaluates it on the test split, logs it to MLflow and registers it as `challenger`.
Promotion is a separate step (`rayloop promote`), or use `workloads.pipeline`.
"""

from __future__ import annotations

import sys
from typing import Any

from rayloop.config import RayloopConfig
from rayloop.entrypoint import run_workload, workload_main


def _run(config: RayloopConfig) -> Any:
    from rayloop.training.workflow import train_and_register

    return train_and_register(config, config.data.preprocess_run)


main = workload_main(_run, __doc__)

if __name__ == "__main__":
    run_workload(lambda: main(sys.argv[1:]))
