"""The DriftMonitor's priority reaches every thread of its process, the ones started before too."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

_CHILD = """
import json, os, sys, threading
from rayloop.control.monitor_actor import yield_cpu
stop = threading.Event()
early = threading.Thread(target=stop.wait)  # like Ray's core-worker threads: there before the actor
early.start()
before = {t: os.getpriority(os.PRIO_PROCESS, int(t)) for t in os.listdir("/proc/self/task")}
yield_cpu(json.loads(sys.argv[1]))
late = threading.Thread(target=stop.wait)  # like a thread the actor starts afterwards
late.start()
after = {
    t: [os.getpriority(os.PRIO_PROCESS, int(t)), os.sched_getscheduler(int(t))] for t in os.listdir("/proc/self/task")
}
stop.set()
print(json.dumps({"before": before, "after": after, "late": str(late.native_id)}))
"""


def _run(niceness: int | str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(niceness)], capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not os.path.isdir("/proc/self/task") or not hasattr(os, "SCHED_IDLE"), reason="Linux only")
def test_idle_puts_every_thread_under_sched_idle():
    found = _run("idle")
    assert len(found["after"]) >= 3 and found["late"] in found["after"]
    assert {policy for _, policy in found["after"].values()} == {os.SCHED_IDLE}


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="Linux only")
def test_a_number_renices_every_thread_by_that_much():
    found = _run(5)
    assert len(found["before"]) >= 2
    for tid, nice in found["before"].items():
        assert found["after"][tid] == [min(19, nice + 5), os.SCHED_OTHER]
    assert found["after"][found["late"]][0] == min(19, next(iter(found["before"].values())) + 5)
