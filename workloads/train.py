"""`python -m workloads.train --config configs/demo.yaml [--set k=v ...]`

Trains the configured model on Ray Train over a preprocess run (`data.preprocess_run`, default
the latest), evaluates it on the test split, logs it to MLflow and registers it as `challenger`.
Promotion is a separate step (`rayloop promote`), or use `workloads.pipeline`.
"""

from __future__ import annotations

import sys

from rayloop.config import RayloopConfig
from rayloop.control.train import TrainingOutcome, train_and_register
from rayloop.entrypoint import exit_process, workload_main
from rayloop.preprocess import PreprocessRun


def _run(config: RayloopConfig) -> TrainingOutcome:
    return train_and_register(config, PreprocessRun.open(config.data.preprocess_run))


def _check(config: RayloopConfig) -> PreprocessRun:
    return PreprocessRun.open(config.data.preprocess_run)


main = workload_main(_run, __doc__, check=_check)

if __name__ == "__main__":
    exit_process(main(sys.argv[1:]))
