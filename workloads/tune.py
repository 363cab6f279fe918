"""`python -m workloads.tune --config configs/demo.yaml [--set k=v ...]`

Ray Tune with ASHA over `tuning.search_space` on a preprocess run (`data.preprocess_run`, default
the latest); every trial is an MLflow run. The best config is refit on train+validation,
evaluated on test and registered as `challenger`.
"""

from __future__ import annotations

import sys

from rayloop.config import RayloopConfig
from rayloop.control.train import TrainingOutcome, tune_and_register
from rayloop.entrypoint import exit_process, workload_main
from rayloop.preprocess import PreprocessRun


def _run(config: RayloopConfig) -> TrainingOutcome:
    return tune_and_register(config, PreprocessRun.open(config.data.preprocess_run))


def _check(config: RayloopConfig) -> PreprocessRun:
    return PreprocessRun.open(config.data.preprocess_run)


main = workload_main(_run, __doc__, check=_check)

if __name__ == "__main__":
    exit_process(main(sys.argv[1:]))
