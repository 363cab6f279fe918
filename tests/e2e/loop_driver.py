"""Drives one retrain through a real DriftMonitor on a running head, without Serve in front:
`python -m tests.e2e.loop_driver --address A --model M [--kill-monitor-when submitted] [--set k=v ...]`

It registers a champion (LightGBM on synthetic rows, in-process), starts the model's monitor with
the given overrides, hands it drifted rows scored by the champion and their labels exactly as a
replica would (`ingest` / `ingest_labels`), optionally SIGKILLs the monitor's process once the
retrain reaches a phase, and prints the finished retrain record and the champion as JSON. A
subprocess because the pytest process may already hold another Ray session.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
import uuid

import lightgbm as lgb
import mlflow
import numpy as np
import pyarrow as pa
import ray

from rayloop import paths, registry
from rayloop.bundle import ModelBundle, prediction_histogram
from rayloop.config import ConfigSource
from rayloop.control.monitor_actor import start_model_monitor
from rayloop.data.synthetic import Scenario, generate
from rayloop.monitoring.handle import get_monitor
from rayloop.monitoring.inference_log import label_table
from rayloop.training.evaluate import evaluate
from tests.support import fitted_synthetic, wait_for


def register_champion(model: str) -> str:
    config, train, fitted, profile = fitted_synthetic(6000, seed=61)
    booster = lgb.train(
        {"objective": "binary", "verbosity": -1, "num_leaves": 15},
        lgb.Dataset(
            fitted.transform(train), train.column("label").to_numpy(), categorical_feature=fitted.categorical_indices
        ),
        num_boost_round=60,
    )
    holdout = generate(2000, seed=62)
    bundle = ModelBundle("lightgbm", booster, fitted, config.data.schema_, profile)
    probs = bundle.predict_proba(holdout)
    bundle.metrics = {k: float(v) for k, v in evaluate(holdout.column("label").to_numpy(), probs).items()}
    bundle.profile = profile.model_copy(update={"prediction_histogram": prediction_histogram(probs)})
    registry.client()
    with mlflow.start_run(experiment_id=registry.experiment_id(f"e2e-{model}")):
        version = registry.log_bundle(bundle, model_name=model)
    assert registry.promote(model, version, holdout).promote
    return version


def served_rows(bundle: ModelBundle, table: pa.Table, version: str) -> tuple[pa.Table, list[str], list[int]]:
    """What a replica sends the monitor for these rows: raw inputs, request ids, times, predictions."""
    labels = table.column("label").to_pylist()
    inputs = table.select(bundle.fitted.input_columns)
    probs = bundle.predict_proba(table)
    ids = [uuid.uuid4().hex for _ in range(table.num_rows)]
    now = int(time.time() * 1000)
    ts = pa.array([now] * table.num_rows, pa.int64()).cast(pa.timestamp("ms", tz="UTC"))
    extra = {
        "request_id": pa.array(ids),
        "ts": ts,
        "model_version": pa.array([version] * table.num_rows),
        "score": pa.array(probs, pa.float64()),
        "predicted_label": pa.array((probs >= 0.5).astype(np.int64)),
    }
    for i, (name, values) in enumerate(extra.items()):
        inputs = inputs.add_column(i, name, values)
    return inputs, ids, labels


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--address", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--scenario", default="covariate+concept")
    parser.add_argument("--kill-monitor-when", default=None, help="a retrain phase: SIGKILL the monitor then")
    parser.add_argument("--timeout", type=float, default=400)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    first = register_champion(args.model)
    overrides = [f"registry.model_name={args.model}", *args.overrides]
    source = ConfigSource(overrides=tuple(overrides))
    ray.init(address=args.address)
    start_model_monitor(source)
    monitor = get_monitor(args.model)
    bundle = registry.load_bundle(args.model, first)
    drifted = generate(20_000, seed=63, scenario=Scenario(kind=args.scenario, onset=0.0, magnitude=3.0))
    drifted = drifted.take(np.random.default_rng(0).permutation(drifted.num_rows))
    sent = {"at": 0, "killed_pid": None}
    batch = 200

    def step() -> dict | None:
        """One round: the finished retrain's record, or send a batch of drifted rows with labels."""
        retrains = ray.get(monitor.retrains.remote(), timeout=120)
        if retrains["finished"]:
            return retrains["finished"][-1]
        active = retrains["active"]
        if (
            args.kill_monitor_when
            and sent["killed_pid"] is None
            and active
            and active["phase"] == args.kill_monitor_when
        ):
            sent["killed_pid"] = ray.get(monitor.ping_pid.remote())
            os.kill(sent["killed_pid"], signal.SIGKILL)  # Ray restarts it (max_restarts=-1) from its saved state
            return None
        if active is None or active["phase"] == "waiting_labels":
            rows, ids, labels = served_rows(bundle, drifted.slice(sent["at"] % 19_000, batch), first)
            sent["at"] += batch
            ray.get(monitor.ingest.remote(f"driver-{sent['at']}", rows), timeout=120)
            ray.get(monitor.ingest_labels.remote(f"driver-labels-{sent['at']}", label_table(ids, labels)), timeout=120)
        return None

    try:
        record = wait_for(step, args.timeout, interval_s=0.5, what="the retrain to finish")
    except TimeoutError:
        record = None  # the caller reads the missing record
    killed_pid = sent["killed_pid"]
    restarted = ray.get(monitor.summary.remote(), timeout=120)["restarts"]
    print(
        json.dumps(
            {
                "record": record,
                "first_champion": first,
                "champion": registry.resolve_version(args.model, registry.CHAMPION),
                "killed_pid": killed_pid,
                "monitor_pid": ray.get(monitor.ping_pid.remote(), timeout=120),
                "restarts": restarted,
                "home": str(paths.home()),
            }
        )
    )


if __name__ == "__main__":
    main()
