#!/usr/bin/env python
"""Every task: rayloop's pipeline vs plain LightGBM on the same split, same parameters.

For each case (scikit-learn's bundled sets, and `--rows` synthetic rows per task):

- rayloop: `run_preprocess` (read, validate, split, fit the features, write the splits) then
  `train_and_register` (the evaluation fit on train with early stopping on validation, its test
  metrics, the refit on every split, MLflow logging and registration), on a local Ray with
  `--cpus` CPUs. Its test metric is the evaluation fit's on the test split (what the gate sees).
- plain: read the same file with pyarrow, `lightgbm.train` on the raw columns (strings as pandas
  categoricals, the timestamp dropped) on the train rows of the same split, early stopping on the
  validation rows with the same patience, then the refit on every row with the same rounds: the
  same two fits rayloop makes, in one process with `num_threads=--cpus`. The split itself is
  computed outside the timed part (rayloop's pure split functions on the raw table).

Reported per case: both test metrics and their ratio (the task's gate metric: AUC, macro-F1, RMSE),
both wall times and their ratio, and for a regression the test coverage of the split-conformal
interval against `serving.interval_coverage`. Wall times include everything each arm does
(rayloop's preprocess writes Parquet and fits profiles the monitor uses; plain does not), so the
ratio is the price of the platform's work, not of LightGBM.

    .venv/bin/python benchmarks/bench_tasks.py                      # sklearn sets + 1M rows per task
    .venv/bin/python benchmarks/bench_tasks.py --rows 50000 --name tasks-smoke
    .venv/bin/python benchmarks/bench_tasks.py --examples --tasks regression --set features.top_k=6000

State lives under $RAYLOOP_HOME (default .rayloop/bench-tasks, deleted at the end).
Results: benchmarks/results/<name>.json (default `tasks`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

# E402: benchmarks/ is not a package, so its folder goes on sys.path (above) before these imports
from common import loadavg, machine_info, print_table, run_identity, save_results  # noqa: E402

EXAMPLES = ("breast_cancer", "wine", "digits", "diabetes")
SYNTHETIC_TASKS = ("binary", "multiclass", "regression")
GATE_METRIC = {"binary": "auc", "multiclass": "macro_f1", "regression": "rmse"}


def _plain(
    table, split, label: str, drop: list[str], task, params: dict[str, Any], patience: int, cpus: int
) -> dict[str, Any]:
    """Plain LightGBM's two fits on the raw columns but `drop` (the id); test labels, scores, timings."""
    import lightgbm as lgb
    import numpy as np

    start = time.perf_counter()
    frame = table.drop_columns([c for c in table.column_names if c in (label, *drop)]).to_pandas()
    frame = frame.drop(columns=[c for c in frame.columns if str(frame[c].dtype).startswith("datetime")])
    for column in frame.select_dtypes(exclude=["number", "bool"]).columns:  # strings: LightGBM's categoricals
        frame[column] = frame[column].astype("category")
    labels = table.column(label)
    y = task.encode(labels).astype(np.float64) if task.is_classifier else labels.to_numpy().astype(np.float64)
    objective: dict[str, Any] = {"binary": {"objective": "binary", "metric": "binary_logloss"}}.get(task.kind, {})
    if task.kind == "multiclass":
        objective = {"objective": "multiclass", "num_class": task.n_classes, "metric": "multi_logloss"}
    elif task.kind == "regression":
        objective = {"objective": "regression", "metric": "rmse"}
    full = {**params, **objective, "verbosity": -1, "num_threads": cpus}
    masks = {s: split == s for s in ("train", "validation", "test")}
    prepared = time.perf_counter()
    train = lgb.Dataset(frame[masks["train"]], y[masks["train"]])
    booster = lgb.train(
        {k: v for k, v in full.items() if k != "num_boost_round"},
        train,
        num_boost_round=params["num_boost_round"],
        valid_sets=[lgb.Dataset(frame[masks["validation"]], y[masks["validation"]], reference=train)],
        callbacks=[lgb.early_stopping(patience, verbose=False)],
    )
    rounds = booster.best_iteration or booster.current_iteration()
    scores = booster.predict(frame[masks["test"]], num_iteration=rounds)
    evaluated = time.perf_counter()
    lgb.train({k: v for k, v in full.items() if k != "num_boost_round"}, lgb.Dataset(frame, y), num_boost_round=rounds)
    done = time.perf_counter()
    return {
        "y_test": y[masks["test"]],
        "scores": scores,
        "rounds": rounds,
        "wall_s": round(done - start, 3),
        "read_s": round(prepared - start, 3),
        "evaluation_fit_s": round(evaluated - prepared, 3),
        "refit_s": round(done - evaluated, 3),
    }


def _split_of(run, table, data) -> Any:
    """The split rayloop made, recomputed on the raw table with its own pure functions."""
    import numpy as np

    from rayloop.data.split import assign_by_content, assign_by_hash

    fractions = [data.split.train, data.split.validation, data.split.test]
    method = run.summary()["split_method"]
    if method == "content":
        assigned = assign_by_content(table, table.column_names, fractions, data.split.seed)
    elif method == "hash":
        assigned = assign_by_hash(table.column(data.id_column), fractions, data.split.seed)
    else:
        raise SystemExit(f"bench_tasks reproduces content and hash splits, not {method}")
    return np.asarray(assigned.to_pylist())


def _case(name: str, overrides: list[str], table_path: str | None, cpus: int) -> dict[str, Any]:
    import pyarrow.dataset as pads

    from rayloop.config import load_config
    from rayloop.control.train import train_and_register
    from rayloop.preprocess import PreprocessRun, resolve_source, run_preprocess
    from rayloop.training.evaluate import metric_function

    config = load_config(None, overrides)
    source = resolve_source(config.data)  # synthetic: generated once, outside the timed part
    config = load_config(None, [*overrides, f"data.source={source}"])
    record: dict[str, Any] = {"case": name, "rows": None, "loadavg_before": loadavg()}
    print(f"[{name}] rayloop ...", flush=True)
    start = time.perf_counter()
    result = run_preprocess(config)
    preprocessed = time.perf_counter()
    run = PreprocessRun.open(result.run_id)
    outcome = train_and_register(config, run)
    trained = time.perf_counter()
    task = run.task()
    metric = GATE_METRIC[task.kind]
    record |= {
        "task": task.kind,
        "classes": len(task.classes) or None,
        "rows": result.rows_total,
        "metric": metric,
        "rayloop": {
            "wall_s": round(trained - start, 3),
            "preprocess_s": round(preprocessed - start, 3),
            "train_s": round(trained - preprocessed, 3),
            "steps": outcome.steps,
            "test_metrics": outcome.test_metrics,
        },
    }
    print(f"[{name}] plain LightGBM ...", flush=True)
    table = pads.dataset(table_path or source, format="parquet").to_table()
    split = _split_of(run, table, config.data)
    params = dict(config.training.lightgbm)
    drop = [c for c in (config.data.id_column,) if c]
    label, patience = config.data.label_column, config.training.early_stopping_rounds
    plain = _plain(table, split, label, drop, task, params, patience, cpus)
    plain_metric = metric_function(task.kind, metric)(plain.pop("y_test"), plain.pop("scores"))
    record["plain"] = {**plain, "test_metric": plain_metric}
    ours = outcome.test_metrics[metric]
    record["metric_ratio"] = round(ours / plain_metric, 4) if plain_metric else None
    record["wall_ratio"] = round(record["rayloop"]["wall_s"] / plain["wall_s"], 2)
    if task.kind == "regression":
        record["interval"] = {
            "target": config.serving.interval_coverage,
            "test_coverage": outcome.test_metrics.get("interval_coverage"),
            "mean_width": outcome.test_metrics.get("interval_width"),
        }
    record["loadavg_after"] = loadavg()
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="synthetic rows per task (0: none)")
    parser.add_argument("--examples", nargs="*", default=list(EXAMPLES), help="scikit-learn sets to run")
    parser.add_argument("--tasks", nargs="*", default=list(SYNTHETIC_TASKS), help="synthetic tasks to run")
    parser.add_argument("--cpus", type=int, default=2, help="Ray's CPUs, and plain LightGBM's threads")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="a config override, repeatable")
    parser.add_argument("--name", default="tasks")
    args = parser.parse_args(argv)

    own_home = "RAYLOOP_HOME" not in os.environ  # only a home this run made is deleted at the end
    home = Path(os.environ.setdefault("RAYLOOP_HOME", str(ROOT / ".rayloop" / "bench-tasks")))
    os.environ.setdefault("RAYLOOP_PROGRESS", "0")
    identity = run_identity()
    from rayloop.data.examples import LABEL, write_example
    from rayloop.runtime import init_ray

    started = time.perf_counter()
    init_ray(num_cpus=args.cpus)
    ray_init_s = round(time.perf_counter() - started, 3)
    # training.num_workers stays the product's default (auto); `--set training.num_workers=1` gives
    # the worker-group arm of earlier tables
    base = ["tuning.enabled=false", "training.slice_column=null", *args.overrides]
    records = []
    try:
        for name in args.examples:
            path = write_example(name, home / "examples" / f"{name}.parquet")
            overrides = [
                *base,
                f"data.source={path}",
                f"data.label_column={LABEL}",
                f"registry.model_name=bench-{name}",
            ]
            records.append(_case(name, overrides, str(path), args.cpus))
        for task in args.tasks if args.rows else []:
            overrides = [
                *base,
                f"data.synthetic.task={task}",
                f"data.synthetic.n_rows={args.rows}",
                "data.synthetic.bad_row_fraction=0",
                "data.split.method=hash",  # reproducible by plain from the entity id
                f"registry.model_name=bench-synthetic-{task}",
            ]
            records.append(_case(f"synthetic-{task}-{args.rows}", overrides, None, args.cpus))
    finally:
        import ray

        ray.shutdown()
    rows = []
    for r in records:
        rows.append(
            [
                r["case"],
                r["task"],
                r["rows"],
                r["metric"],
                f"{r['rayloop']['test_metrics'][r['metric']]:.4f}",
                f"{r['plain']['test_metric']:.4f}",
                f"{r['metric_ratio']:.3f}",
                f"{r['rayloop']['wall_s']:.1f}",
                f"{r['plain']['wall_s']:.1f}",
                f"{r['wall_ratio']:.1f}x",
                f"{r['interval']['test_coverage']:.3f} / {r['interval']['target']}" if "interval" in r else "-",
            ]
        )
    print_table(
        "rayloop vs plain LightGBM, same split and parameters",
        [
            "case",
            "task",
            "rows",
            "metric",
            "rayloop",
            "plain",
            "ratio",
            "rayloop s",
            "plain s",
            "wall ratio",
            "interval coverage",
        ],
        rows,
    )
    payload = {
        "benchmark": "tasks",
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "code": identity,
        "machine": machine_info(["ray", "lightgbm", "scikit-learn", "pyarrow", "mlflow"]),
        "ray_init_s": ray_init_s,
        "cases": records,
    }
    path = save_results(args.name, payload)
    print(f"results: {path}")
    if own_home:
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
