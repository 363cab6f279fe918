"""The closed loop against a real head (token auth on), driven only the way a user drives it:
`ray job submit` of the pipeline, `rayloop serve --detach`, HTTP traffic with late labels.

Clean traffic first (the null twin: no drift -> no alarm decision, no retrain), then an abrupt
covariate + concept drift: alarm -> the monitor submits `workloads.retrain` through the Jobs API
-> the gate promotes -> every replica swaps -> answers carry the new version, and are better (more
of them right; for a regression, a smaller mean absolute error). For binary and regression labels;
the multiclass loop runs on a real table (test_backtest.py).
"""

from __future__ import annotations

import threading
import time

import pytest

from rayloop import paths, registry
from rayloop.monitoring.core import MonitorCore
from rayloop.runtime import free_port
from rayloop.traffic import TrafficConfig, run_traffic
from tests.support import QUICK_LOOP, RAY, on_head, pipeline_job, serve_detached, stop_loop, wait_for

pytestmark = pytest.mark.slow

TASKS = ("binary", "regression")


def _overrides(port: int, task: str) -> list[str]:
    # as in the demo (rayloop/control/demo.py): under this drift an AUC (or macro-F1) gate on a
    # small holdout can refuse a better retrained model (benchmarks/README.md, the demo's gate
    # metric); a regression is gated on its default, RMSE
    gate = [] if task == "regression" else ["registry.gate_metric=accuracy"]
    return [
        f"registry.model_name={_model(task)}",
        f"data.synthetic.task={task}",
        "data.synthetic.n_rows=8000",
        "data.synthetic.seed=41",
        "tuning.enabled=false",
        "training.lightgbm.num_boost_round=80",
        # the evaluation fit is served: the refit on every split (two more Ray Train runs per job) is
        # what test_backtest.py serves end to end, and test_tasks.py measures
        "training.refit=none",
        f"serving.port={port}",
        "serving.min_replicas=1",
        "serving.max_replicas=1",
        *QUICK_LOOP,
        *gate,
    ]


def _model(task: str) -> str:
    return f"e2e-loop-{task}"


def _loop_state(task: str) -> dict:
    return MonitorCore.read_state(str(paths.home()), _model(task)) or {}


@pytest.mark.parametrize("task", TASKS)
def test_drift_triggers_a_retrain_job_whose_champion_serves_better_and_no_drift_triggers_none(ray_head, task):
    port = free_port()
    model = _model(task)
    overrides = _overrides(port, task)
    pipeline_job(ray_head, f"loop-e2e-pipeline-{task}", overrides)
    first = registry.resolve_version(model, registry.CHAMPION)
    assert first is not None

    serve_detached(ray_head, overrides)
    stop = threading.Event()
    try:
        clean_s, rate = 40.0, 80.0
        traffic = TrafficConfig(
            url=f"http://127.0.0.1:{port}",
            rate=rate,
            duration_s=clean_s + 240,
            drift_at_s=clean_s,
            label_delay_s=1.0,
            seed=5,
            task=task,
        )
        result: dict = {}

        def send() -> None:
            result["stats"] = run_traffic(
                traffic, stop=stop, on_second=lambda stats, _: result.setdefault("live", stats)
            )

        runner = threading.Thread(target=send, daemon=True)
        drift_from = time.time() + clean_s  # the traffic starts after this line: its drift no earlier
        runner.start()

        # the null twin: the clean windows (10 at this rate) raise no retrain decision
        quiet = wait_for(
            lambda: (q := _loop_state(task)).get("windows_seen", 0) >= 6 and q, clean_s, what="6 clean windows"
        )
        assert quiet["policy"].get("decisions", 0) == 0 and not quiet.get("loop", {}).get("active")
        assert not (quiet.get("loop") or {}).get("finished")

        # drift: alarm -> retrain job -> gate -> rollout
        done = wait_for(
            lambda: (f := (_loop_state(task).get("loop") or {}).get("finished")) and f[-1],
            300,
            interval_s=2,
            what="the retrain to finish",
        )
        # a decision from clean traffic is a false alarm, whatever its gate then says
        early = drift_from - done["decided_at"]
        assert early <= 0, f"decided {early:.0f} s before the drift: {done['reason']}"
        assert done["outcome"] == "promoted", f"{done['outcome']}: {done['detail']}"
        new = done["version"]
        assert registry.resolve_version(model, registry.CHAMPION) == new != first
        # the retrain window is small: training.num_workers=auto trained it in the job's driver
        trained = registry.client().get_model_version(model, new).tags
        assert (trained["rayloop.training.setting"], trained["rayloop.training.mode"]) == ("auto", "local"), trained
        wait_for(  # answers from the new champion
            lambda: sum(a[2] == new for a in list(result["live"].answers)) >= 10 * rate,
            120,
            what="10 s of answers from the new champion",
        )
        stop.set()
        runner.join(timeout=60)
        job_list = on_head(ray_head, [RAY, "job", "list", "--address", ray_head.dashboard], 120)
    finally:
        stop.set()
        stop_loop(ray_head, overrides)
    stats = result["stats"]

    listed = [line for line in job_list.stdout.splitlines() if done["submission_id"] in line]
    assert listed and "SUCCEEDED" in listed[0], job_list.stdout[-3000:]
    assert stats.errors == 0, stats.summary()  # nothing failed, the swap included
    assert stats.summary()["versions"].get(new, 0) > 100
    before = stats.quality(version=first, drift=True)
    after = stats.quality(version=new, drift=True)
    assert before is not None and after is not None, (before, after)
    better = after > before if stats.higher_is_better else after < before
    assert better, (stats.metric, before, after)
    state = _loop_state(task)
    assert state["reference_version"] == new  # the monitor compares with the new champion's profile now
    assert state["policy"]["in_flight"] is None and state["policy"]["decisions"] == 1
