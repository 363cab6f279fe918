"""A backtest on a real table, the multiclass loop end to end: scikit-learn's digits (1,797 8x8
images, 10 classes), ordered by one pixel's intensity to make a drift a user could meet (the
strokes change, and with them which digits come). The 40% with the faintest pixel train the first
champion (`workloads.pipeline` as a Ray job); `rayloop serve --detach` serves it; `rayloop traffic
--source` replays the other 60%, shuffled once (the drift is abrupt, then steady, so answers before
and after the promotion face the same traffic), with labels a second later. The monitor sees the
drift, submits the retrain through the Jobs API, the gate promotes, the replicas swap, and the
answers after the promotion are right more often than before.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from rayloop import registry
from rayloop.data.examples import LABEL, example_table
from rayloop.monitoring.core import MonitorCore
from rayloop.runtime import free_port
from tests.support import RAY, RAYLOOP_CLI, on_head, pipeline_job, serve_detached, stop_loop

pytestmark = pytest.mark.slow

MODEL = "e2e-backtest-digits"
ORDER = "pixel_6_4"  # ordered by it, the first 40% still hold every digit (15 or more of each)
HISTORY = 0.4


def test_a_replayed_real_table_drifts_retrains_and_serves_better_after_the_promotion(ray_head, rayloop_home):
    table = example_table("digits")
    order = np.argsort(table.column(ORDER).to_numpy(), kind="stable")
    cut = int(HISTORY * table.num_rows)
    folder = rayloop_home / "backtest"
    folder.mkdir()
    history, future = folder / "history.parquet", folder / "future.parquet"
    pq.write_table(table.take(order[:cut]), history)
    pq.write_table(table.take(np.random.default_rng(0).permutation(order[cut:])), future)
    assert len(set(table.take(order[:cut]).column(LABEL).to_pylist())) == 10

    port = free_port()
    overrides = [
        f"data.source={history}",
        f"data.label_column={LABEL}",
        f"registry.model_name={MODEL}",
        "tuning.enabled=false",
        f"serving.port={port}",
        "serving.min_replicas=1",
        "serving.max_replicas=1",
        "monitoring.window_size=100",
        "monitoring.consecutive_windows=2",
        "monitoring.min_labels=50",
        "monitoring.cooldown_s=3600",
        "monitoring.flush_interval_s=5",
        "retrain.min_labelled_rows=300",
        "retrain.max_label_wait_s=120",
    ]
    pipeline_job(ray_head, "backtest-pipeline", overrides)
    first = registry.resolve_version(MODEL, registry.CHAMPION)
    assert first is not None and registry.load_bundle(MODEL, first).task.kind == "multiclass"

    try:
        serve_detached(ray_head, overrides)
        # every remaining row once, in the file's order, six a second (about three minutes)
        replay = on_head(
            ray_head,
            [
                *(RAYLOOP_CLI, "traffic", "--url", f"http://127.0.0.1:{port}", "--source", str(future)),
                *("--label-column", LABEL, "--rate", "6", "--duration", "240", "--label-delay", "1"),
            ],
            400,
        )
        assert replay.returncode == 0, replay.stdout[-3000:] + replay.stderr[-2000:]
        summary = json.loads(replay.stdout[replay.stdout.index("{\n") :])
        state = MonitorCore.read_state(str(rayloop_home), MODEL) or {}
        finished = (state.get("loop") or {}).get("finished") or []
        assert finished and finished[-1]["outcome"] == "promoted", finished
        new = finished[-1]["version"]
        listed = on_head(ray_head, [RAY, "job", "list", "--address", ray_head.dashboard], 120).stdout
    finally:
        stop_loop(ray_head, overrides)

    retrain = [line for line in listed.splitlines() if finished[-1]["submission_id"] in line]
    assert retrain and "SUCCEEDED" in retrain[0], listed[-3000:]
    assert registry.resolve_version(MODEL, registry.CHAMPION) == new != first
    assert summary["errors"] == 0 and summary["sent"] == table.num_rows - cut, summary
    assert summary["metric"] == "accuracy"  # read off the served model's task
    quality = summary["quality_by_version"]
    assert summary["versions"][new] >= 100, summary  # enough answers after the swap to judge
    print(f"backtest: accuracy v{first} {quality[first]:.3f} -> v{new} {quality[new]:.3f}")
    assert quality[new] > quality[first] + 0.1, quality
