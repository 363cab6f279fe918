#!/usr/bin/env python
"""Training: rayloop's Ray Train / Ray Tune paths vs plain single-process baselines, same data.

Three comparisons, all in one run on the same generated data (`rayloop.data.synthetic.generate`,
split by time 70/15/15 in row order, features fitted on train with `FeaturePipeline.fit_table`,
the train rows shuffled once with a fixed seed so both arms see the same row order):

1. LightGBM: `rayloop.training.lightgbm.build_trainer` (Ray Train V2, `--workers` workers x 1 CPU,
   data-parallel tree learner) vs plain `lightgbm.train` with num_threads=2. Same params
   (rayloop's DEFAULT_PARAMS + training.lightgbm of configs/demo.yaml), same categorical features,
   same rounds; early stopping off by default in both arms (with several workers rayloop's loop can
   deadlock when it is on; see benchmarks/README.md). Target (reported, not asserted):
   test AUC within 0.002 of plain, wall at most 1.5x plain.
2. Tune: `rayloop.training.tune.run_tune` with ASHA vs the same number of trials with the FIFO
   scheduler (random search, every trial to its end), the same seeded sampler so both arms sample
   the same configs. Compute = the sum of time_total_s over trials. Target: ASHA's best validation
   AUC within 0.002 of random search's with at most 1/3 of its compute.
3. MLP: `rayloop.training.torch.build_trainer` (TorchTrainer, DDP over gloo, `--workers` x 1 CPU)
   vs a plain torch loop in this process (torch.set_num_threads(2)) built from the same
   `build_model` / `train_epoch` / `predict_batches`, the same hidden sizes, epochs, batch size,
   lr, per-epoch validation, best-logloss weights (patience off by default, as for LightGBM).

Wall times are time.perf_counter around the fit calls (Ray arms include the worker-group start, the
data ingest and the checkpoint reports: the cost a user pays). The fixed part is measured
separately by the same trainer on a tiny slice (1 round / 1 epoch); `ray.init` is timed on its own.
Each Train pair runs `--repeat` times back to back, order flipped each time; the wall ratio is the
median of the per-repeat ratios. Every arm also records the CPU seconds of our whole process tree
and of the machine, and the load average: the machine may be shared. Test AUC is computed in this
driver on the full test split for every arm.

    .venv/bin/python benchmarks/bench_train.py                  # 1M rows (default, ~15-20 min)
    .venv/bin/python benchmarks/bench_train.py --rows 50000 --tune-samples 8 --mlp-epochs 3   # smoke
    .venv/bin/python benchmarks/bench_train.py --parts tune --tune-samples 16

State (Ray temp dir, checkpoints, Tune results) lives under $RAYLOOP_HOME (default
.rayloop/bench-train); this run's train/tune directories are deleted at the end.
Results: benchmarks/results/<name>.json (default name `train`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

# E402: benchmarks/ is not a package, so its folder goes on sys.path (above) before these imports
from common import fmt, loadavg, machine_info, print_table, run_identity, save_results, warn_if_changed  # noqa: E402
from loadgen import busy_cpu_s, process_cpu_s  # noqa: E402

PARTS = ("lightgbm", "mlp", "tune")
SEED = 7
AUC_TOLERANCE = 0.002
LGB_WALL_RATIO_LIMIT = 1.5
TUNE_COMPUTE_RATIO_LIMIT = 1 / 3
PROBE_ROWS = 2048  # the tiny run that measures Ray Train's fixed cost
ARMS = ("lightgbm plain", "lightgbm Ray Train", "lightgbm auto", "mlp plain", "mlp Ray Train")
AUTO_WALL_RATIO_LIMIT = 1.3  # issue 20: training.num_workers=auto at 1M rows on one node
# (summary key, baseline arm, our arm, wall-ratio target)
COMPARISONS = (
    ("lightgbm", "lightgbm plain", "lightgbm Ray Train", LGB_WALL_RATIO_LIMIT),
    ("lightgbm_auto", "lightgbm plain", "lightgbm auto", AUTO_WALL_RATIO_LIMIT),
    ("mlp", "mlp plain", "mlp Ray Train", None),
)


# ---- small helpers --------------------------------------------------------------------------
class TreeCpu:
    """CPU seconds used by this process and all its descendants (Ray's gcs, raylet and workers) over
    an interval: every process is sampled every `interval` s and its last-seen CPU time kept, so a
    worker that exits mid-arm still counts (up to its last sample). What an arm cost, whatever
    else ran on the machine meanwhile.

    Not loadgen.Probe, which reads a server tree at a step's start and end only (no sampling thread
    in the load generator, and a server's processes live through a step): here Ray workers start and
    exit within an arm, so only sampling catches them. Both read CPU with loadgen.process_cpu_s."""

    def __init__(self, interval: float = 0.25) -> None:
        self.interval = interval
        self.base: dict[psutil.Process, float] = {}
        self.last: dict[psutil.Process, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> dict[psutil.Process, float]:
        me = psutil.Process()
        # the driver's own memory too: in local mode the training data lives in this process
        self.driver_rss_peak = max(self.driver_rss_peak, me.memory_info().rss)
        return process_cpu_s([me, *me.children(recursive=True)])

    def start(self) -> TreeCpu:
        self.driver_rss_start = self.driver_rss_peak = psutil.Process().memory_info().rss
        self.base = self._sample()
        self.last = dict(self.base)
        self._thread = threading.Thread(target=self._loop, name="tree-cpu", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.last.update(self._sample())

    def stop(self) -> float:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.last.update(self._sample())
        return sum(v - self.base.get(k, 0.0) for k, v in self.last.items())


class Arm:
    """Times one arm: perf_counter wall, load average before and after, the error if it failed."""

    def __init__(self, record: dict[str, Any], name: str) -> None:
        self.record, self.name = record, name

    def __enter__(self) -> Arm:
        print(f"[{self.name}] ...", flush=True)
        self.record["loadavg_before"] = loadavg()
        self.cpu = psutil.cpu_times()
        self.driver_cpu = time.process_time()
        self.tree_cpu = TreeCpu().start()
        self.start = time.perf_counter()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.record.setdefault("wall_s", round(time.perf_counter() - self.start, 3))
        self.record["loadavg_after"] = loadavg()
        # CPU seconds this driver process used, and the whole machine's busy CPU seconds (every
        # process, ours and anyone else's) over the arm: busy >> ours means the arm shared the cores
        self.record["driver_cpu_s"] = round(time.process_time() - self.driver_cpu, 2)
        # ours: the driver plus every Ray process it started (gcs, raylet, workers), all cores
        self.record["tree_cpu_s"] = round(self.tree_cpu.stop(), 2)
        self.record["driver_rss_growth_mib"] = round(
            (self.tree_cpu.driver_rss_peak - self.tree_cpu.driver_rss_start) / 2**20, 1
        )
        self.record["machine_busy_cpu_s"] = round(busy_cpu_s(psutil.cpu_times()) - busy_cpu_s(self.cpu), 2)
        if exc is not None:
            self.record["error"] = "".join(traceback.format_exception_only(exc_type, exc)).strip()[-2000:]
            print(f"[{self.name}] FAILED: {self.record['error']}", flush=True)
            traceback.print_exception(exc_type, exc, tb)
            return not isinstance(exc, KeyboardInterrupt)
        print(f"[{self.name}] wall {self.record['wall_s']:.1f} s", flush=True)
        return False


def guarded(name: str, fn, timeout: float, on_timeout, default: Any = None) -> Any:
    """fn() in a thread; after `timeout` seconds call on_timeout() (restart Ray) and return `default`
    with the hang recorded: a hung Ray arm must not hang the whole benchmark."""
    box: dict[str, Any] = {}
    load = loadavg()

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001  (re-raised in the caller's thread)
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"arm-{name}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        print(f"[{name}] TIMED OUT after {timeout:.0f} s (hung); restarting the local Ray cluster", flush=True)
        on_timeout()
        record = {
            "arm": name,
            "error": f"timed out after {timeout:.0f} s (hung); Ray restarted",
            "wall_s": float(timeout),
            "loadavg_before": load,
            "loadavg_after": loadavg(),
        }
        return (record, *default) if isinstance(default, tuple) else record
    if "error" in box:
        raise box["error"]
    return box["value"]


def stop_clock(arm: Arm) -> float:
    """Record the wall now (before evaluation work that is not part of the fit)."""
    wall = round(time.perf_counter() - arm.start, 3)
    arm.record["wall_s"] = wall
    return wall


def ratio(a: float | None, b: float | None, digits: int = 3) -> float | None:
    return round(a / b, digits) if a is not None and b not in (None, 0) else None


def rounded(d: dict[str, Any], digits: int = 5) -> dict[str, Any]:
    return {k: (round(v, digits) if isinstance(v, float) else v) for k, v in d.items()}


# ---- data -----------------------------------------------------------------------------------
def prepare_data(rows: int) -> dict[str, Any]:
    """Generate, split by time (row order is time order), fit features on train, transform.

    Returns the arrow feature tables (for Ray Data), float32 matrices (for the plain arms and
    Tune), the fitted features and what it took.
    """
    import numpy as np

    from rayloop.config import load_config
    from rayloop.data.synthetic import generate, true_probability
    from rayloop.features.pipeline import FeaturePipeline
    from rayloop.training.evaluate import roc_auc

    config = load_config(None)
    data = config.data
    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    raw = generate(rows, SEED)
    seconds["generate"] = round(time.perf_counter() - clock, 3)
    n_train, n_valid = int(rows * 0.70), int(rows * 0.15)
    splits_raw = {
        "train": raw.slice(0, n_train),
        "validation": raw.slice(n_train, n_valid),
        "test": raw.slice(n_train + n_valid),
    }
    clock = time.perf_counter()
    pipeline = FeaturePipeline(
        config.features,
        data.schema_,
        label_column=data.label_column,
        timestamp_column=data.timestamp_column,
        id_column=data.id_column,
    )
    fitted, _profile = pipeline.fit_table(splits_raw["train"])
    seconds["fit_features"] = round(time.perf_counter() - clock, 3)
    clock = time.perf_counter()
    tables = {name: fitted.feature_table(t, keep=[data.label_column]) for name, t in splits_raw.items()}
    # one fixed shuffle of the train rows (time-ordered otherwise), identical for every arm
    order = np.random.default_rng(SEED).permutation(tables["train"].num_rows)
    tables["train"] = tables["train"].take(order)
    arrays = {}
    for name, table in tables.items():
        x = np.column_stack([table.column(n).to_numpy() for n in fitted.feature_names]).astype(np.float32)
        y = table.column(data.label_column).to_numpy().astype(np.float32)
        arrays[name] = (x, y)
    seconds["transform"] = round(time.perf_counter() - clock, 3)
    oracle = roc_auc(arrays["test"][1], true_probability(splits_raw["test"]))
    return {
        "tables": tables,
        "arrays": arrays,
        "fitted": fitted,
        "label": data.label_column,
        "info": {
            "rows": rows,
            "seed": SEED,
            "split": "by time (row order), 70/15/15; train rows shuffled once (seed 7)",
            "rows_per_split": {k: int(t.num_rows) for k, t in tables.items()},
            "positive_rate": {k: round(float(a[1].mean()), 4) for k, a in arrays.items()},
            "feature_names": fitted.feature_names,
            "categorical_indices": fitted.categorical_indices,
            "cardinalities": fitted.cardinalities,
            "oracle_test_auc": round(oracle, 5),
            "seconds": seconds,
        },
    }


def ray_datasets(tables: dict[str, Any], splits=("train", "validation"), rows_per_block: int = 100_000) -> dict:
    """Ray Datasets from the arrow tables, in blocks of `rows_per_block` rows (as a Parquet read gives)."""
    import ray.data

    out = {}
    for name in splits:
        table = tables[name]
        blocks = [table.slice(i, rows_per_block) for i in range(0, table.num_rows, rows_per_block)] or [table]
        out[name] = ray.data.from_arrow(blocks)
    return out


def parquet_splits(tables: dict[str, Any], directory: Path, splits=("train", "validation")) -> dict[str, list[str]]:
    """The splits as Parquet (row groups of 100k rows), written once outside the clocks: what
    rayloop trains from (the preprocess stage's feature tables). {split: [its directory]}."""
    import pyarrow.parquet as pq

    out = {}
    for name in splits:
        target = directory / name
        if not (target / "part-0.parquet").exists():
            target.mkdir(parents=True, exist_ok=True)
            pq.write_table(tables[name], target / "part-0.parquet", row_group_size=100_000)
        out[name] = [str(target)]
    return out


def tiny_tables(tables: dict[str, Any], rows: int = PROBE_ROWS) -> dict[str, Any]:
    return {k: t.slice(0, rows) for k, t in tables.items()}


# ---- 1. LightGBM ----------------------------------------------------------------------------
def lgb_params(args: argparse.Namespace) -> tuple[dict[str, Any], int, int]:
    """(params, num_boost_round, early_stopping_rounds) of the Train comparison.

    Early stopping is off by default (early_stopping_rounds = num_boost_round, so it cannot fire):
    with several workers rayloop's loop stops on each worker's own validation shard, and a worker
    that stops first deadlocks the others (see the README).
    """
    from rayloop.config import load_config
    from rayloop.tasks import Task

    base = dict(load_config(None).training.lightgbm)
    rounds = int(args.lgb_rounds or base.get("num_boost_round", 200))
    base.pop("num_boost_round", None)
    task = Task(kind="binary", label="label", label_type="int", classes=[0, 1])
    return task.lightgbm_params(base), rounds, int(args.lgb_early_stopping or rounds)


def lightgbm_plain(d: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    import lightgbm as lgb

    from rayloop.training.evaluate import roc_auc

    params, rounds, stopping = lgb_params(args)
    params = {**params, "num_threads": args.plain_threads}
    (x_train, y_train), (x_valid, y_valid), (x_test, y_test) = (d["arrays"][k] for k in ("train", "validation", "test"))
    cats = d["fitted"].categorical_indices or "auto"
    record: dict[str, Any] = {
        "arm": "lightgbm plain",
        "params": params,
        "num_boost_round": rounds,
        "early_stopping_rounds": stopping,
    }
    with Arm(record, "lightgbm plain") as arm:
        train = lgb.Dataset(x_train, y_train, categorical_feature=cats, free_raw_data=False)
        valid = lgb.Dataset(x_valid, y_valid, reference=train, categorical_feature=cats, free_raw_data=False)
        trained = {"rounds": 0}

        def count(env) -> None:  # the returned booster is cut at the best iteration
            trained["rounds"] = env.iteration + 1

        booster = lgb.train(
            params,
            train,
            num_boost_round=rounds,
            valid_sets=[valid],
            valid_names=["validation"],
            callbacks=[lgb.early_stopping(stopping, verbose=False), count],
        )
        stop_clock(arm)
        best = booster.best_iteration or booster.current_iteration()
        record |= {
            "rounds": trained["rounds"],
            "best_iteration": best,
            "validation_auc": round(roc_auc(y_valid, booster.predict(x_valid, num_iteration=best)), 5),
            "test_auc": round(roc_auc(y_test, booster.predict(x_test, num_iteration=best)), 5),
        }
    return record


def lightgbm_ray(
    d: dict[str, Any], args: argparse.Namespace, run_id: str, *, probe: bool = False, auto: bool = False
) -> dict[str, Any]:
    """The data-parallel arm (`--workers` x 1 CPU), or with `auto` what training.num_workers=auto
    picks for this data on this node (rayloop.training.placement; the decision is inside the clock)."""
    from rayloop.training.common import driver_node_facts
    from rayloop.training.evaluate import roc_auc
    from rayloop.training.lightgbm import build_trainer, load_booster
    from rayloop.training.placement import choose_placement

    params, rounds, stopping = lgb_params(args)
    label = ("lightgbm auto" if auto else "lightgbm Ray Train") + (" probe" if probe else "")
    record: dict[str, Any] = {
        "arm": label,
        "workers": args.workers,
        "cpus_per_worker": 1,
        "params": params,
        "num_boost_round": 1 if probe else rounds,
        "early_stopping_rounds": stopping,
    }
    tables = tiny_tables(d["tables"]) if probe else d["tables"]
    if probe:
        record["rows_train"] = tables["train"].num_rows
    fitted = d["fitted"]
    sources = parquet_splits(tables, d["parquet_dir"] / ("probe" if probe else "full"))
    with Arm(record, label) as arm:
        workers, threads = args.workers, 1
        if auto:
            placement = choose_placement(
                "auto",
                rows=tables["train"].num_rows + tables["validation"].num_rows,
                columns=len(fitted.feature_names) + 1,
                node=driver_node_facts(),
            )
            workers, threads = placement.num_workers, placement.threads
            record |= {"placement": placement.to_dict(), "workers": workers, "threads": threads}
        trainer = build_trainer(
            sources,  # read with Ray Data by workers, straight into the driver in local mode
            feature_names=fitted.feature_names,
            label=d["label"],
            categorical_indices=fitted.categorical_indices,
            params=params,
            num_boost_round=record["num_boost_round"],
            early_stopping_rounds=stopping,
            num_workers=workers,
            cpus_per_worker=1,
            max_failures=0 if workers == 0 else 1,
            num_threads=threads,
            name=f"bench-lgb{'-auto' if auto else ''}{'-probe' if probe else ''}-{run_id}",
        )
        result = trainer.fit()
        stop_clock(arm)
        if result.error is not None:
            raise RuntimeError(f"trainer.fit() returned an error: {result.error!r}")
        record["reported"] = rounded({k: v for k, v in result.metrics.items() if isinstance(v, (int, float))})
        if not probe:
            booster = load_booster(result.checkpoint)
            (x_valid, y_valid), (x_test, y_test) = d["arrays"]["validation"], d["arrays"]["test"]
            record |= {
                "rounds": result.metrics.get("rounds"),
                "best_iteration": result.metrics.get("best_iteration"),
                "trees_in_checkpoint": booster.current_iteration(),
                # rank 0 reports on its own validation shard; this is the full validation split
                "validation_auc": round(roc_auc(y_valid, booster.predict(x_valid)), 5),
                "test_auc": round(roc_auc(y_test, booster.predict(x_test)), 5),
            }
    return record


# ---- 3. MLP ---------------------------------------------------------------------------------
def mlp_params(args: argparse.Namespace) -> dict[str, Any]:
    from rayloop.config import load_config

    base = dict(load_config(None).training.mlp)
    base |= {
        "hidden": list(args.mlp_hidden),
        "epochs": args.mlp_epochs,
        "batch_size": args.mlp_batch_size,
        "lr": args.mlp_lr,
        "patience": args.mlp_patience or args.mlp_epochs,
    }
    return base


def model_config(d: dict[str, Any]) -> dict[str, Any]:
    fitted = d["fitted"]
    return {
        "feature_names": fitted.feature_names,
        "categorical_indices": fitted.categorical_indices,
        "cardinalities": fitted.cardinalities,
    }


def _auc(model, x, y, batch: int = 8192) -> float:
    """AUC of a torch model over (x, y), predicted in batches with rayloop's predict_batches."""
    import torch

    from rayloop.training.evaluate import roc_auc
    from rayloop.training.torch import predict_batches

    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    probs, labels = predict_batches(model, ((xt[i : i + batch], yt[i : i + batch]) for i in range(0, len(xt), batch)))
    return round(roc_auc(labels, probs), 5)


def mlp_plain(d: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The plain loop: what rayloop's train_loop_per_worker does, in one process without Ray."""
    import torch

    from rayloop.models.mlp import build_model
    from rayloop.training.evaluate import evaluate
    from rayloop.training.torch import predict_batches, train_epoch

    mlp = mlp_params(args)
    config = {**model_config(d), **mlp}
    (x_train, y_train), (x_valid, y_valid), (x_test, y_test) = (d["arrays"][k] for k in ("train", "validation", "test"))
    torch.set_num_threads(args.plain_threads)
    torch.manual_seed(SEED)
    record: dict[str, Any] = {"arm": "mlp plain", "torch_threads": args.plain_threads, "mlp": mlp}
    batch = int(mlp["batch_size"])
    with Arm(record, "mlp plain") as arm:
        xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
        xv, yv = torch.from_numpy(x_valid), torch.from_numpy(y_valid)
        model = build_model(config)
        optimizer = torch.optim.Adam(model.parameters(), lr=mlp["lr"])
        best_loss, stale, best_state, epochs_run, curve = float("inf"), 0, None, 0, []
        for epoch in range(int(mlp["epochs"])):
            train_epoch(model, ((xt[i : i + batch], yt[i : i + batch]) for i in range(0, len(xt), batch)), optimizer)
            probs, labels = predict_batches(
                model, ((xv[i : i + batch], yv[i : i + batch]) for i in range(0, len(xv), batch))
            )
            scores = evaluate(labels, probs)
            epochs_run = epoch + 1
            curve.append(
                {
                    "epoch": epochs_run,
                    "validation_auc": round(scores["auc"], 5),
                    "validation_logloss": round(scores["logloss"], 5),
                }
            )
            if scores["logloss"] < best_loss - 1e-6:
                best_loss, stale = scores["logloss"], 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
            if stale >= mlp["patience"]:
                break
        stop_clock(arm)
        if best_state is not None:
            model.load_state_dict(best_state)
        record |= {
            "epochs_run": epochs_run,
            "curve": curve,
            "validation_auc": _auc(model, x_valid, y_valid),
            "test_auc": _auc(model, x_test, y_test),
        }
    return record


def mlp_ray(d: dict[str, Any], args: argparse.Namespace, run_id: str, *, probe: bool = False) -> dict[str, Any]:
    import torch

    from rayloop.training.torch import build_trainer, load_model

    mlp = mlp_params(args)
    if probe:
        mlp = {**mlp, "epochs": 1}
    label = "mlp Ray Train probe" if probe else "mlp Ray Train"
    record: dict[str, Any] = {"arm": label, "workers": args.workers, "cpus_per_worker": 1, "mlp": mlp}
    tables = tiny_tables(d["tables"]) if probe else d["tables"]
    if probe:
        record["rows_train"] = tables["train"].num_rows
    with Arm(record, label) as arm:
        trainer = build_trainer(
            ray_datasets(tables),
            label=d["label"],
            mlp=mlp,
            num_workers=args.workers,
            cpus_per_worker=1,
            name=f"bench-mlp{'-probe' if probe else ''}-{run_id}",
            **model_config(d),
        )
        result = trainer.fit()
        stop_clock(arm)
        if result.error is not None:
            raise RuntimeError(f"trainer.fit() returned an error: {result.error!r}")
        record["reported"] = rounded({k: v for k, v in result.metrics.items() if isinstance(v, (int, float))})
        if not probe:
            torch.set_num_threads(args.plain_threads)
            model = load_model(result.checkpoint, {**model_config(d), **mlp})
            record |= {
                "epochs_run": result.metrics.get("epoch"),
                "validation_auc": _auc(model, *d["arrays"]["validation"]),
                "test_auc": _auc(model, *d["arrays"]["test"]),
            }
    return record


# ---- 2. Tune --------------------------------------------------------------------------------
def tune_configs(args: argparse.Namespace, scheduler: str):
    from rayloop.config import load_config

    default = load_config(None)
    # a dotted override of one key of a dict-valued field replaces the whole dict (its default keys
    # vanish), so the full training.lightgbm mapping is given
    lightgbm = {**default.training.lightgbm, "num_boost_round": args.tune_rounds}
    overrides = [
        f"training.lightgbm={json.dumps(lightgbm)}",
        f"training.early_stopping_rounds={args.early_stopping_rounds}",
        f"tuning.scheduler={scheduler}",
        f"tuning.num_samples={args.tune_samples}",
        f"tuning.max_concurrent_trials={args.tune_concurrency}",
        "tuning.cpus_per_trial=1",
        f"tuning.seed={args.tune_seed}",
        f"tuning.grace_period={args.grace_period}",
        f"tuning.reduction_factor={args.reduction_factor}",
        f"tuning.report_every_rounds={args.report_every}",
        # the demo config's 120 s budget would end the FIFO search early: no budget here
        "tuning.time_budget_s=1000000",
        "tuning.metric=auc",
    ]
    config = load_config(None, overrides)
    return config.training, config.tuning, overrides


def tune_arm(d: dict[str, Any], args: argparse.Namespace, run_id: str, scheduler: str) -> tuple[dict[str, Any], Any]:
    from rayloop.training.tune import TuneData, run_tune

    training, tuning, overrides = tune_configs(args, scheduler)
    fitted = d["fitted"]
    (x_train, y_train), (x_valid, y_valid) = d["arrays"]["train"], d["arrays"]["validation"]
    data = TuneData(
        x_train, y_train, x_valid, y_valid, fitted.feature_names, fitted.categorical_indices, fitted.cardinalities
    )
    label = f"tune {scheduler}"
    record: dict[str, Any] = {
        "arm": label,
        "scheduler": scheduler,
        "overrides": overrides,
        "tuning": tuning.model_dump(mode="json"),
        "training_lightgbm": training.lightgbm,
        "early_stopping_rounds": training.early_stopping_rounds,
    }
    outcome = None
    with Arm(record, label) as arm:
        outcome = run_tune(
            data, model="lightgbm", training=training, tuning=tuning, name=f"bench-tune-{scheduler}-{run_id}"
        )
        stop_clock(arm)
        max_rounds = int(training.lightgbm["num_boost_round"])
        trials = []
        for t in outcome.trials:
            trials.append(
                {
                    "trial_id": t.trial_id,
                    "config": rounded(t.config, 6),
                    "status": t.status,
                    "iterations": t.iterations,
                    "rounds": int(t.metrics.get("rounds", 0)) if t.metrics else None,
                    "seconds": round(t.seconds, 3),
                    "best_validation_auc": round(t.metrics["best_validation_auc"], 5) if t.metrics else None,
                    "best_round": int(t.metrics["best_round"]) if t.metrics else None,
                }
            )
        record |= {
            "tune_wall_s": round(outcome.wall_seconds, 3),
            "trials_run": len(trials),
            "trials_errored": sum(t["status"] == "error" for t in trials),
            "trial_seconds": round(outcome.trial_seconds, 3),
            "rounds_total": sum(t["rounds"] or 0 for t in trials),
            # trials that ended before the round budget: by ASHA, or by LightGBM's own early stopping
            "trials_ended_before_max_rounds": sum((t["rounds"] or 0) < max_rounds for t in trials),
            "best_validation_auc": round(outcome.best_metrics["best_validation_auc"], 5),
            "best_steps": outcome.best_steps,
            "best_params": rounded(outcome.best_params, 6),
            "trials": trials,
        }
    return record, outcome


def retrain_best(d: dict[str, Any], args: argparse.Namespace, params: dict[str, Any]) -> dict[str, Any]:
    """Plain lightgbm (2 threads) with a best config: train, early stopping on validation, test AUC."""
    import lightgbm as lgb

    from rayloop.training.evaluate import roc_auc
    from rayloop.training.lightgbm import DEFAULT_PARAMS

    (x_train, y_train), (x_valid, y_valid), (x_test, y_test) = (d["arrays"][k] for k in ("train", "validation", "test"))
    cats = d["fitted"].categorical_indices or "auto"
    full = {**DEFAULT_PARAMS, **params, "num_threads": args.plain_threads}
    start = time.perf_counter()
    train = lgb.Dataset(x_train, y_train, categorical_feature=cats)
    valid = lgb.Dataset(x_valid, y_valid, reference=train, categorical_feature=cats)
    booster = lgb.train(
        full,
        train,
        num_boost_round=args.tune_rounds,
        valid_sets=[valid],
        callbacks=[lgb.early_stopping(args.early_stopping_rounds, verbose=False)],
    )
    best = booster.best_iteration or booster.current_iteration()
    return {
        "params": rounded(params, 6),
        "best_iteration": best,
        "wall_s": round(time.perf_counter() - start, 3),
        "validation_auc": round(roc_auc(y_valid, booster.predict(x_valid, num_iteration=best)), 5),
        "test_auc": round(roc_auc(y_test, booster.predict(x_test, num_iteration=best)), 5),
    }


def same_configs(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    def key(trial: dict[str, Any]) -> str:
        return json.dumps(trial["config"], sort_keys=True)

    return sorted(map(key, a)) == sorted(map(key, b))


# ---- summary --------------------------------------------------------------------------------
def aggregate(records: list[dict[str, Any]]) -> dict[str, Any]:
    """One arm over its repeats: median wall (and min, all), mean AUCs; the first run's settings."""
    ok = [r for r in records if "error" not in r]
    if not ok:
        return {**records[-1], "runs": 0, "failed_runs": len(records)}
    per_run = (
        "wall_s",
        "loadavg_before",
        "loadavg_after",
        "driver_cpu_s",
        "driver_rss_growth_mib",
        "machine_busy_cpu_s",
        "test_auc",
        "validation_auc",
        "reported",
        "curve",
        "repeat",
    )
    out = {k: v for k, v in ok[0].items() if k not in per_run}
    walls = [r["wall_s"] for r in ok]
    out |= {
        "runs": len(ok),
        "failed_runs": len(records) - len(ok),
        "errors": [r["error"] for r in records if "error" in r],
        "wall_s": round(statistics.median(walls), 3),
        "wall_s_min": min(walls),
        "wall_s_all": walls,
        "test_auc": round(statistics.fmean(r["test_auc"] for r in ok), 5),
        "test_auc_all": [r["test_auc"] for r in ok],
        "validation_auc": round(statistics.fmean(r["validation_auc"] for r in ok), 5),
        "loadavg_before": ok[0]["loadavg_before"],
        "loadavg_after": ok[-1]["loadavg_after"],
        "loadavg_1m_max": max(max(r["loadavg_before"][0], r["loadavg_after"][0]) for r in ok),
        "driver_cpu_s": round(statistics.median(r["driver_cpu_s"] for r in ok), 2),
        "tree_cpu_s": round(statistics.median(r["tree_cpu_s"] for r in ok), 2),
        "driver_rss_growth_mib": max(r.get("driver_rss_growth_mib", 0.0) for r in ok),
        "machine_busy_cpu_s": round(statistics.median(r["machine_busy_cpu_s"] for r in ok), 2),
    }
    return out


def summarize(arms: dict[str, dict[str, Any]], runs: list[dict[str, Any]], tune: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, plain_name, ray_name, limit in COMPARISONS:
        plain, ray_ = arms.get(plain_name), arms.get(ray_name)
        probe = arms.get(f"{ray_name} probe")
        if not plain or not ray_ or not plain.get("runs") or not ray_.get("runs"):
            continue
        # the ratio within each repeat (the arms ran back to back), then the median
        by_rep: dict[int, dict[str, float]] = {}
        for r in runs:
            if r["arm"] in (plain_name, ray_name) and "error" not in r:
                by_rep.setdefault(r["repeat"], {})["ray" if r["arm"] == ray_name else "plain"] = r["wall_s"]
        pair_ratios = [ratio(v["ray"], v["plain"]) for v in by_rep.values() if len(v) == 2]
        entry = {
            "plain_wall_s": plain["wall_s"],
            "ray_wall_s": ray_["wall_s"],
            "plain_wall_s_min": plain["wall_s_min"],
            "ray_wall_s_min": ray_["wall_s_min"],
            "wall_ratios_per_repeat": pair_ratios,
            "wall_ratio": round(statistics.median(pair_ratios), 3)
            if pair_ratios
            else ratio(ray_["wall_s"], plain["wall_s"]),
            "wall_ratio_of_minimums": ratio(ray_["wall_s_min"], plain["wall_s_min"]),
            # CPU seconds of our whole process tree: what each arm cost, whatever else ran meanwhile
            "plain_cpu_s": plain.get("tree_cpu_s"),
            "ray_cpu_s": ray_.get("tree_cpu_s"),
            "cpu_ratio": ratio(ray_.get("tree_cpu_s"), plain.get("tree_cpu_s")),
            "plain_test_auc": plain["test_auc"],
            "ray_test_auc": ray_["test_auc"],
            "test_auc_diff": round(ray_["test_auc"] - plain["test_auc"], 5),
        }
        if probe and "error" not in probe:
            fixed = probe["wall_s"]
            entry |= {
                "ray_fixed_cost_s": fixed,
                "ray_wall_minus_fixed_s": round(ray_["wall_s"] - fixed, 3),
                "wall_ratio_without_fixed": ratio(ray_["wall_s"] - fixed, plain["wall_s"]),
            }
        if ray_.get("placement"):
            entry["placement"] = ray_["placement"]
        if limit is not None:
            entry["target"] = {
                "auc_within": AUC_TOLERANCE,
                "wall_ratio_at_most": limit,
                "auc_met": abs(entry["test_auc_diff"]) <= AUC_TOLERANCE,
                "wall_met": entry["wall_ratio"] <= limit,
            }
        out[key] = entry
    fifo, asha = tune.get("fifo"), tune.get("asha")
    if fifo and asha and "error" not in fifo and "error" not in asha:
        entry = {
            "fifo_best_validation_auc": fifo["best_validation_auc"],
            "asha_best_validation_auc": asha["best_validation_auc"],
            "best_validation_auc_diff": round(asha["best_validation_auc"] - fifo["best_validation_auc"], 5),
            "fifo_trial_seconds": fifo["trial_seconds"],
            "asha_trial_seconds": asha["trial_seconds"],
            "trial_seconds_ratio": ratio(asha["trial_seconds"], fifo["trial_seconds"]),
            "fifo_rounds_total": fifo["rounds_total"],
            "asha_rounds_total": asha["rounds_total"],
            "rounds_ratio": ratio(asha["rounds_total"], fifo["rounds_total"]),
            "wall_ratio": ratio(asha["wall_s"], fifo["wall_s"]),
            # CPU seconds of our process tree (single-threaded trials: little inflated by other load)
            "fifo_cpu_s": fifo.get("tree_cpu_s"),
            "asha_cpu_s": asha.get("tree_cpu_s"),
            "cpu_ratio": ratio(asha.get("tree_cpu_s"), fifo.get("tree_cpu_s")),
            "same_sampled_configs": tune.get("same_sampled_configs"),
        }
        if tune.get("retrain"):
            r = tune["retrain"]
            entry |= {"fifo_best_test_auc": r["fifo"]["test_auc"], "asha_best_test_auc": r["asha"]["test_auc"]}
        entry["target"] = {
            "auc_within": AUC_TOLERANCE,
            "compute_ratio_at_most": round(TUNE_COMPUTE_RATIO_LIMIT, 4),
            "auc_met": entry["best_validation_auc_diff"] >= -AUC_TOLERANCE,
            "compute_met": entry["trial_seconds_ratio"] <= TUNE_COMPUTE_RATIO_LIMIT,
        }
        out["tune"] = entry
    return out


def met(flag: bool | None) -> str:
    return "-" if flag is None else ("MET" if flag else "NOT MET")


def report(payload: dict[str, Any]) -> None:
    arms, summary, tune = payload["arms"], payload["summary"], payload["tune"]
    rows = []
    for name in ARMS:
        a = arms.get(name)
        if not a:
            continue
        setup = (
            (f"auto: local mode, {a['threads']} threads" if a["workers"] == 0 else f"auto: {a['workers']} workers")
            if "placement" in a
            else f"{a['workers']} workers x 1 CPU"
            if "workers" in a
            else f"1 process, {a.get('params', {}).get('num_threads') or a.get('torch_threads')} threads"
        )
        steps = a.get("best_iteration") if name.startswith("lightgbm") else a.get("epochs_run")
        total = a.get("rounds") if name.startswith("lightgbm") else (a.get("mlp") or {}).get("epochs")
        wall = f"{a['wall_s']:.1f} (min {a['wall_s_min']:.1f}, n={a['runs']})" if a.get("runs") else "FAILED"
        rows.append(
            [
                name,
                setup,
                wall,
                f"{fmt(steps)} / {fmt(total)}",
                fmt(a.get("validation_auc"), 4),
                fmt(a.get("test_auc"), 4),
                f"{a.get('loadavg_1m_max', a['loadavg_before'][0]):.2f}",
                f"{fmt(a.get('tree_cpu_s'))} / {fmt(a.get('machine_busy_cpu_s'))}",
            ]
        )
    if rows:
        print_table(
            f"training at {payload['data']['rows']:,} rows: Ray Train vs plain "
            "(AUC on the full splits, in this driver)",
            [
                "arm",
                "setup",
                "wall s median",
                "best / rounds|epochs",
                "valid AUC",
                "test AUC",
                "load 1m max",
                "CPU-s ours / machine (median)",
            ],
            rows,
        )
    fixed = [["ray.init (local cluster, once)", payload.get("ray_init_s")]]
    for name in ("lightgbm Ray Train probe", "lightgbm auto probe", "mlp Ray Train probe"):
        if name in arms:
            a = arms[name]
            what = (
                f"{name.replace(' probe', '')}: same trainer on {a.get('rows_train', PROBE_ROWS):,} rows, "
                f"1 {'round' if 'lightgbm' in name else 'epoch'}"
            )
            fixed.append([what, a["wall_s"] if "error" not in a else "FAILED"])
    print_table("fixed costs (seconds)", ["what", "s"], fixed)
    ratio_rows = []
    for model, _, ours, limit in COMPARISONS:
        s = summary.get(model)
        if not s:
            continue
        t = s.get("target", {})
        ratio_rows.append(
            [
                ours,
                f"{s['wall_ratio']:.2f}x",
                ", ".join(f"{r:.2f}x" for r in s["wall_ratios_per_repeat"]),
                f"{s['wall_ratio_of_minimums']:.2f}x",
                f"{s['cpu_ratio']:.2f}x" if s.get("cpu_ratio") else "-",
                f"{s['wall_ratio_without_fixed']:.2f}x" if s.get("wall_ratio_without_fixed") is not None else "-",
                f"{s['test_auc_diff']:+.4f}",
                (f"wall <= {limit}x: {met(t.get('wall_met'))}; |AUC diff| <= {AUC_TOLERANCE}: {met(t.get('auc_met'))}")
                if t
                else "(no target)",
            ]
        )
    if ratio_rows:
        print_table(
            "ours / plain (wall: median of the per-repeat ratios)",
            ["arm", "wall", "per repeat", "of minimums", "CPU-s", "wall minus fixed cost", "test AUC diff", "target"],
            ratio_rows,
        )
    tune_rows = []
    for sched in ("fifo", "asha"):
        a = tune.get(sched)
        if not a:
            continue
        if "error" in a:
            tune_rows.append([sched, "FAILED", "", "", "", "", "", ""])
            continue
        retrain = (tune.get("retrain") or {}).get(sched) or {}
        tune_rows.append(
            [
                "random search (FIFO)" if sched == "fifo" else "ASHA",
                f"{a['trials_run']}",
                fmt(a["trial_seconds"]),
                fmt(a["rounds_total"]),
                fmt(a["wall_s"]),
                fmt(a["best_validation_auc"], 4),
                fmt(retrain.get("test_auc"), 4),
                f"{a['loadavg_before'][0]:.2f} -> {a['loadavg_after'][0]:.2f}",
            ]
        )
    if tune_rows:
        print_table(
            "Tune: ASHA vs random search (same seeded configs, LightGBM, 1 CPU per trial)",
            [
                "arm",
                "trials",
                "trial-s (sum)",
                "rounds (sum)",
                "wall s",
                "best valid AUC",
                "best cfg test AUC",
                "load 1m",
            ],
            tune_rows,
        )
    s = summary.get("tune")
    if s:
        t = s["target"]
        print(
            f"ASHA / random search: compute {s['trial_seconds_ratio']:.2f}x (rounds {s['rounds_ratio']:.2f}x, "
            f"CPU-s ours {fmt(s['cpu_ratio'], 2)}x, wall {s['wall_ratio']:.2f}x), "
            f"best valid AUC diff {s['best_validation_auc_diff']:+.4f}; "
            f"same sampled configs: {s['same_sampled_configs']}; target compute <= 1/3: {met(t['compute_met'])}, "
            f"AUC within {AUC_TOLERANCE}: {met(t['auc_met'])}"
        )


# ---- driver ---------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows generated (70/15/15 split)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--name", default="train", help="results file name (benchmarks/results/<name>.json)")
    parser.add_argument("--home", default=str(ROOT / ".rayloop" / "bench-train"), help="RAYLOOP_HOME for this run")
    parser.add_argument("--workers", type=int, default=2, help="Ray Train workers (1 CPU each)")
    parser.add_argument(
        "--ray-cpus",
        type=int,
        default=3,
        help="logical CPUs of the local Ray cluster (default 3 on this 2-core machine: the 2 "
        "workers hold 2 and Ray Data's ingest task needs 1 more, or it never runs)",
    )
    parser.add_argument("--plain-threads", type=int, default=2, help="threads of the plain arms")
    parser.add_argument(
        "--repeat",
        type=int,
        default=2,
        help="runs of each Train comparison pair (order flipped each time); walls are medians",
    )
    parser.add_argument(
        "--arm-timeout",
        type=float,
        default=900,
        help="seconds before a Ray arm counts as hung: recorded as failed, Ray restarted",
    )
    parser.add_argument(
        "--no-probe", action="store_true", help="skip the tiny runs that measure Ray Train's fixed cost"
    )
    parser.add_argument("--no-auto", action="store_true", help="skip the LightGBM arm of training.num_workers=auto")
    parser.add_argument(
        "--no-data-parallel", action="store_true", help="skip the data-parallel Ray Train arms (`--workers`)"
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="environment for the driver and Ray workers, set before ray.init "
        "(e.g. RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=0.1)",
    )
    g = parser.add_argument_group("LightGBM (Train arms; params from configs/demo.yaml training.lightgbm)")
    g.add_argument("--lgb-rounds", type=int, default=None, help="num_boost_round (default: the config's, 200)")
    g.add_argument(
        "--lgb-early-stopping",
        type=int,
        default=0,
        help="early_stopping_rounds of the Train comparison; 0 (default): off, i.e. num_boost_round "
        "(on, rayloop's multi-worker loop can deadlock; see the README)",
    )
    g = parser.add_argument_group("MLP")
    g.add_argument("--mlp-epochs", type=int, default=10)
    g.add_argument("--mlp-batch-size", type=int, default=512)
    g.add_argument("--mlp-lr", type=float, default=1e-3)
    g.add_argument("--mlp-hidden", type=int, nargs="+", default=[128, 64])
    g.add_argument(
        "--mlp-patience",
        type=int,
        default=0,
        help="epochs without validation logloss gain before stopping; 0 (default): off, i.e. "
        "--mlp-epochs (on, workers decide on their own validation shard; see the README)",
    )
    g = parser.add_argument_group("Tune (LightGBM, default search space)")
    g.add_argument("--tune-samples", type=int, default=32, help="trials per arm")
    g.add_argument("--tune-rounds", type=int, default=300, help="num_boost_round of each trial")
    g.add_argument("--tune-concurrency", type=int, default=2)
    g.add_argument("--tune-seed", type=int, default=0)
    g.add_argument("--grace-period", type=int, default=2, help="ASHA grace period, in reports")
    g.add_argument("--reduction-factor", type=int, default=3)
    g.add_argument("--report-every", type=int, default=10, help="LightGBM rounds per Tune report")
    g.add_argument(
        "--early-stopping-rounds",
        type=int,
        default=20,
        help="LightGBM early stopping inside every trial, both arms (and the retrains)",
    )
    g.add_argument("--no-retrain", action="store_true", help="skip retraining each arm's best config for a test AUC")
    args = parser.parse_args(argv)

    os.environ["RAYLOOP_HOME"] = str(Path(args.home).resolve())
    os.environ.setdefault("RAYLOOP_PROGRESS", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--env {item!r}: expected NAME=VALUE")
        os.environ[key] = value

    started = time.perf_counter()
    run_id = uuid.uuid4().hex[:8]
    code = run_identity()
    print(f"preparing {args.rows:,} rows ...", flush=True)
    d = prepare_data(args.rows)
    print(
        f"  {d['info']['rows_per_split']}, {len(d['info']['feature_names'])} features, {d['info']['seconds']}",
        flush=True,
    )
    import lightgbm  # noqa: F401  (imports outside the timed arms)
    import torch  # noqa: F401

    runs: list[dict[str, Any]] = []  # every Train-comparison run, each repeat
    arms: dict[str, dict[str, Any]] = {}  # per arm: the runs aggregated (median wall), or the probe
    tune: dict[str, Any] = {}

    import ray

    from rayloop import paths
    from rayloop.runtime import init_ray

    d["parquet_dir"] = paths.home() / "bench-data" / f"train-{run_id}"

    clock = time.perf_counter()
    init_ray(num_cpus=args.ray_cpus)
    ray_init_s = round(time.perf_counter() - clock, 3)
    cluster = ray.cluster_resources()

    def restart_ray() -> None:
        ray.shutdown()
        init_ray(num_cpus=args.ray_cpus)

    def run(name: str, fn, *fn_args, default: Any = None, **kwargs) -> Any:
        return guarded(name, lambda: fn(*fn_args, **kwargs), args.arm_timeout, restart_ray, default)

    try:
        # plain and Ray arms back to back, the order flipped every repeat: both see the same
        # background load (the plain arms run with an idle Ray cluster up)
        for rep in range(args.repeat):
            for model in ("lightgbm", "mlp"):
                if model not in args.parts:
                    continue
                ray_fn = lightgbm_ray if model == "lightgbm" else mlp_ray

                # every arm in a fresh thread of its own, the plain ones too: an OpenMP team left
                # alive in another thread (the main one) throttles the spin of every later team,
                # and LightGBM then trains about 30% slower per round (benchmarks/README.md)
                def plain(m: str = model) -> dict[str, Any]:
                    return run(f"{m} plain", lightgbm_plain if m == "lightgbm" else mlp_plain, d, args)

                def on_ray(f=ray_fn, m: str = model, r: int = rep) -> dict[str, Any]:
                    return run(f"{m} Ray Train", f, d, args, f"{run_id}-{r}")

                def auto(r: int = rep) -> dict[str, Any]:
                    return run("lightgbm auto", lightgbm_ray, d, args, f"{run_id}-{r}", auto=True)

                order = [plain, on_ray, auto] if model == "lightgbm" and not args.no_auto else [plain, on_ray]
                if args.no_data_parallel:
                    order.remove(on_ray)
                for fn in order if rep % 2 == 0 else order[::-1]:
                    record = fn()
                    record["repeat"] = rep
                    runs.append(record)
        for name in ARMS:
            mine = [r for r in runs if r["arm"] == name]
            if mine:
                arms[name] = aggregate(mine)
        if not args.no_probe:
            if "lightgbm" in args.parts:
                if not args.no_data_parallel:
                    arms["lightgbm Ray Train probe"] = run(
                        "lightgbm Ray Train probe", lightgbm_ray, d, args, run_id, probe=True
                    )
                if not args.no_auto:
                    arms["lightgbm auto probe"] = run(
                        "lightgbm auto probe", lightgbm_ray, d, args, run_id, probe=True, auto=True
                    )
            if "mlp" in args.parts:
                arms["mlp Ray Train probe"] = run("mlp Ray Train probe", mlp_ray, d, args, run_id, probe=True)
        if "tune" in args.parts:
            tune["fifo"], fifo = run("tune fifo", tune_arm, d, args, run_id, "fifo", default=(None,))
            tune["asha"], asha = run("tune asha", tune_arm, d, args, run_id, "asha", default=(None,))
            if fifo is not None and asha is not None:
                tune["same_sampled_configs"] = same_configs(tune["fifo"]["trials"], tune["asha"]["trials"])
                if not args.no_retrain:
                    print("[tune] retraining each arm's best config (plain lightgbm) for a test AUC ...", flush=True)
                    retrain = {"fifo": retrain_best(d, args, fifo.best_params)}
                    same = json.dumps(fifo.best_params, sort_keys=True) == json.dumps(asha.best_params, sort_keys=True)
                    retrain["asha"] = retrain["fifo"] if same else retrain_best(d, args, asha.best_params)
                    retrain["same_best_config"] = same
                    tune["retrain"] = retrain
    finally:
        ray.shutdown()
        shutil.rmtree(d["parquet_dir"], ignore_errors=True)
        for base in (paths.train_storage(), paths.tune_storage()):
            for path in base.glob(f"bench-*-{run_id}*"):
                shutil.rmtree(path, ignore_errors=True)

    warn_if_changed(code)
    lgb_p, lgb_rounds, lgb_stopping = lgb_params(args)
    payload: dict[str, Any] = {
        "benchmark": "train",
        "description": "Ray Train LightGBM / TorchTrainer MLP vs plain single-process lightgbm / torch, and Ray Tune "
        "ASHA vs random search (FIFO, same seeded configs), same data in one run; wall = "
        "time.perf_counter around the fit calls in one driver process",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_info(["ray", "lightgbm", "torch", "numpy", "pyarrow", "psutil"]),
        "code": code,
        "data": d["info"],
        "settings": {
            "parts": args.parts,
            "repeat": args.repeat,
            "workers": args.workers,
            "cpus_per_worker": 1,
            "plain_threads": args.plain_threads,
            "probe_rows": None if args.no_probe else PROBE_ROWS,
            "env": args.env,
            "lightgbm": {"params": lgb_p, "num_boost_round": lgb_rounds, "early_stopping_rounds": lgb_stopping},
            "arm_timeout_s": args.arm_timeout,
            "mlp": mlp_params(args),
            "tune": {
                "num_samples": args.tune_samples,
                "num_boost_round": args.tune_rounds,
                "early_stopping_rounds": args.early_stopping_rounds,
                "max_concurrent_trials": args.tune_concurrency,
                "cpus_per_trial": 1,
                "seed": args.tune_seed,
                "grace_period": args.grace_period,
                "reduction_factor": args.reduction_factor,
                "report_every_rounds": args.report_every,
                "search_space": "rayloop.training.search_space.DEFAULT_SPACES['lightgbm']",
            },
            "ray_cpus": args.ray_cpus,
            "cluster_cpus": cluster.get("CPU"),
        },
        "ray_init_s": ray_init_s,
        "arms": arms,
        "runs": runs,
        "tune": tune,
        "total_wall_s": round(time.perf_counter() - started, 1),
    }
    payload["summary"] = summarize(arms, runs, tune)
    print()
    report(payload)
    path = save_results(args.name, payload)
    print(f"total {payload['total_wall_s']:.0f} s; saved {path}")
    failed = [
        a["arm"]
        for a in [*arms.values(), *(v for v in tune.values() if isinstance(v, dict) and "arm" in v)]
        if "error" in a
    ]
    if failed:
        print(f"FAILED arms: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
