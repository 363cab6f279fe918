"""What every entrypoint (workloads, CLI) does the same way: arguments, logging, errors, exit codes."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from rayloop.config import ConfigSource, RayloopConfig
from rayloop.errors import ConfigError, RayloopError
from rayloop.runtime import check_shared_home, init_ray

__all__ = [
    "EXIT_FAILED",
    "EXIT_USAGE",
    "configure_logging",
    "exit_code",
    "exit_process",
    "parse_workload_args",
    "workload_main",
]

EXIT_FAILED = 1  # the work could not be done, or was refused (a gate, an unsafe finding)
EXIT_USAGE = 2  # the command line or the config is wrong


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def exit_code(exc: RayloopError) -> int:
    """2 for a config the user must fix before anything runs, 1 for a run that failed."""
    return EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_FAILED


def parse_workload_args(argv: Sequence[str] | None, description: str) -> ConfigSource:
    """`--config PATH` plus repeated `--set key.sub=value`: the only arguments a workload takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default=None, help="YAML config (default: the embedded configs/demo.yaml)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override, repeatable"
    )
    args = parser.parse_args(argv)
    return ConfigSource(path=args.config, overrides=tuple(args.overrides))


def workload_main(
    run: Callable[[RayloopConfig], Any],
    description: str,
    *,
    check: Callable[[RayloopConfig], object] | None = None,
) -> Callable[[Sequence[str] | None], int]:
    """The body every workload shares: parse `--config/--set`, `check` what must exist (before
    Ray starts), log, join or start Ray, run, print the result as JSON (the last thing in the
    job's log). A RayloopError is one line on stderr (no traceback) and its exit code."""

    def main(argv: Sequence[str] | None = None) -> int:
        try:
            config = parse_workload_args(argv, description=description).load()
            if check is not None:
                check(config)
            configure_logging()
            init_ray()
            check_shared_home()
            result = run(config)
        except RayloopError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exit_code(exc)
        print(json.dumps(result.to_dict() if hasattr(result, "to_dict") else result, indent=2, default=str))
        return 0

    return main


def exit_process(code: int) -> NoReturn:
    """End a workload's process right after its result: run the exit handlers (Ray's disconnect,
    MLflow's, temporary folders'), flush, then leave without the interpreter's teardown, which
    only frees a finished run's objects and which a job's caller waits on (its cost is in
    benchmarks/README.md). For `__main__` only: tests call `main` in-process."""
    import atexit

    logging.shutdown()
    try:
        atexit._run_exitfuncs()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
