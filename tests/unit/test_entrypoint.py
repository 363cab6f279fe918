"""How a workload's process ends (`exit_process` at its `__main__`): its exit code, its buffered
output and its exit handlers survive skipping the interpreter's teardown."""

from __future__ import annotations

import subprocess
import sys

from tests.support import ROOT

SCRIPT = """
import atexit, logging, sys
from rayloop.entrypoint import exit_process
logging.basicConfig(stream=sys.stderr, level="INFO")
atexit.register(lambda: print("exit handler ran", flush=True))
logging.getLogger("w").info("logged")
print('{"result": 1}', end="")  # still buffered when exit_process runs
exit_process(3)
"""


def test_exit_process_keeps_the_code_the_buffered_result_and_the_exit_handlers():
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 3
    assert done.stdout == '{"result": 1}exit handler ran\n'
    assert "logged" in done.stderr


def test_a_workloads_config_error_still_ends_with_exit_2_and_one_line():
    done = subprocess.run(
        [sys.executable, "-m", "workloads.train", "--set", "training.no_such_field=1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.startswith("error:") and "no_such_field" in done.stderr
    assert "Traceback" not in done.stderr
