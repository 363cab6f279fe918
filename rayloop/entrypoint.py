"""What every entrypoint (workloads, CLI) does the same way: arguments, logging, errors."""

from __future__ import annotations

import argparse
import logging
import sys
import json
from collections.abc import Callable, Sequence
from typing import Any

from rayloop.config import RayloopConfig, load_config
from rayloop.errors import RayloopError

__all__ = ["configure_logging", "parse_workload_args", "run_workload", "workload_main"]


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def parse_workload_args(argv: Sequence[str] | None, description: str) -> RayloopConfig:
    """`--config PATH` plus repeated `--set key.sub=value`: the only arguments a workload takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default=None, help="YAML config (default: the embedded configs/demo.yaml)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override, repeatable"
    )
    args = parser.parse_args(argv)
    return load_config(args.config, args.overrides)


def run_workload(main: Callable[[], int]) -> None:
    """Exit 0 on success; on a RayloopError print its message (no traceback) and exit 2."""
    try:
        code = main()
    except RayloopError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code)


def workload_main(run: Callable[[RayloopConfig], Any], description: str) -> Callable[[Sequence[str] | None], int]:
    """The body every workload shares: parse `--config/--set`, log, join or start Ray, run,
    print the result as JSON (the last thing in the job's log)."""

    def main(argv: Sequence[str] | None = None) -> int:
        from rayloop.runtime import init_ray

        config = parse_workload_args(argv, description=description)
        configure_logging()
        init_ray()
        result = run(config)
        print(json.dumps(result.to_dict() if hasattr(result, "to_dict") else result, indent=2, default=str))
        return 0

    return main
