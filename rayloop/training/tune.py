"""Hyperparameter search with Ray Tune and ASHA over function trainables.

A LightGBM trial runs plain `lightgbm` on its own CPUs and reports every `report_every_rounds`
rounds; an MLP trial runs a single-process torch loop and reports per epoch. Both read the same
train/validation arrays, put once into the object store (`tune.with_parameters`), so trials on
any node see identical data. ASHA stops weak trials at its rungs; `scheduler=fifo` runs every
trial to the end (the random-search baseline of the benchmark, with the same sampled configs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.dataset as pads

from rayloop import paths
from rayloop.config import TrainingConfig, TuningConfig
from rayloop.features.pipeline import FittedFeatures
from rayloop.preprocess import PreprocessRun
from rayloop.tasks import Task, higher_is_better
from rayloop.training.evaluate import evaluate_task
from rayloop.training.search_space import DEFAULT_SPACES, to_tune
from rayloop.training.torch import head_config, predict_batches, train_epoch

__all__ = ["TUNE_METRICS", "TuneData", "TrialSummary", "TuneOutcome", "run_tune", "lightgbm_trial", "mlp_trial"]

# what a search may optimize, per task (tuning.metric; default: rayloop.tasks.DEFAULT_TUNE_METRIC)
TUNE_METRICS = {
    "binary": ("auc", "logloss", "accuracy"),
    "multiclass": ("multi_logloss", "accuracy", "macro_f1"),
    "regression": ("rmse", "mae", "r2"),
}
# LightGBM computes these itself every round; the others are computed from predictions at reports
_LGB_METRIC = {"auc": "auc", "logloss": "binary_logloss", "multi_logloss": "multi_logloss", "rmse": "rmse", "mae": "l1"}


@dataclass
class TuneData:
    """Train and validation as float32 matrices, with what the models need to read them."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_valid: np.ndarray
    y_valid: np.ndarray
    feature_names: list[str]
    categorical_indices: list[int]
    cardinalities: list[int]

    @classmethod
    def from_run(cls, run: PreprocessRun, fitted: FittedFeatures, label: str) -> TuneData:
        """Read a preprocess run's feature tables (driver side, pyarrow)."""

        def split(name: str) -> tuple[np.ndarray, np.ndarray]:
            table = pads.dataset(str(run.split_dir(name))).to_table(columns=[*fitted.feature_names, label])
            x = np.column_stack([table.column(n).to_numpy() for n in fitted.feature_names]).astype(np.float32)
            return x, table.column(label).to_numpy().astype(np.float32)

        (x_train, y_train), (x_valid, y_valid) = split("train"), split("validation")
        return cls(
            x_train, y_train, x_valid, y_valid, fitted.feature_names, fitted.categorical_indices, fitted.cardinalities
        )


@dataclass
class TrialSummary:
    trial_id: str
    config: dict[str, Any]
    status: str
    iterations: int
    seconds: float
    metrics: dict[str, float]
    curve: list[dict[str, float]] = field(default_factory=list)


@dataclass
class TuneOutcome:
    """The winner (config merged onto the base params, its metrics and best round/epoch) and every trial."""

    model: str
    metric: str
    mode: str
    best_params: dict[str, Any]
    best_metrics: dict[str, float]
    best_steps: int
    trials: list[TrialSummary]
    wall_seconds: float

    @property
    def trial_seconds(self) -> float:
        return float(sum(t.seconds for t in self.trials))


# ---- trainables (run inside Tune's trial actors) ---------------------------------------------
def lightgbm_trial(config: dict[str, Any], data: TuneData, static: dict[str, Any]) -> None:
    import lightgbm as lgb
    from ray import tune

    kind, key = static["task_kind"], static["metric"]
    params = {**static["base_params"], **config, "num_threads": static["num_threads"]}
    builtin = _LGB_METRIC.get(key)
    if builtin and builtin not in params["metric"]:
        params["metric"] = [*params["metric"], builtin]
    every = static["report_every"]
    train = lgb.Dataset(data.x_train, data.y_train, categorical_feature=data.categorical_indices or "auto")
    valid = lgb.Dataset(
        data.x_valid, data.y_valid, reference=train, categorical_feature=data.categorical_indices or "auto"
    )
    best: dict[str, Any] = {"value": -math.inf if higher_is_better(key) else math.inf, "round": 0}
    # the rounds a refit uses: where early stopping on the task's loss (LightGBM's first metric)
    # found the best, not where the tune metric peaked (AUC stops rising after a few rounds on an
    # easy table, while the probabilities are still far from calibrated)
    stop = {"value": math.inf, "round": 0}
    last = {"reported": 0}

    def score(env) -> float | None:
        if builtin:
            return next(v for _, name, v, _ in env.evaluation_result_list if name == builtin)
        if (env.iteration + 1) % every and env.iteration + 1 < env.end_iteration:
            return None  # computed from predictions at reports only
        return evaluate_task(kind, data.y_valid, env.model.predict(data.x_valid))[key]

    def report(round_: int, value: float) -> None:
        last["reported"] = round_
        tune.report(
            {
                "rounds": round_,
                f"validation_{key}": value,
                f"best_validation_{key}": best["value"],
                "best_round": stop["round"] or round_,
            }
        )

    def callback(env) -> None:
        round_ = env.iteration + 1
        _, _, loss, loss_higher_better = env.evaluation_result_list[0]
        if (-loss if loss_higher_better else loss) < stop["value"]:
            stop.update(value=-loss if loss_higher_better else loss, round=round_)
        value = score(env)
        if value is None:
            return
        if (value > best["value"]) if higher_is_better(key) else (value < best["value"]):
            best.update(value=value, round=round_)
        if round_ % every == 0:
            report(round_, value)
        last["value_now"], last["round_now"] = value, round_

    lgb.train(
        params,
        train,
        num_boost_round=static["num_boost_round"],
        valid_sets=[valid],
        valid_names=["validation"],
        callbacks=[
            lgb.early_stopping(static["early_stopping_rounds"], first_metric_only=True, verbose=False),
            callback,
        ],
    )
    if last.get("round_now", 0) > last["reported"]:  # stopped early between reports
        report(last["round_now"], last["value_now"])


def mlp_trial(config: dict[str, Any], data: TuneData, static: dict[str, Any]) -> None:
    import torch
    from ray import tune

    from rayloop.models.mlp import build_model  # torch at import: loaded in the trial that needs it

    torch.set_num_threads(static["num_threads"])
    head = static["head"]
    hyper = {**static["base_params"], **config}
    model = build_model(
        {
            "feature_names": data.feature_names,
            "categorical_indices": data.categorical_indices,
            "cardinalities": data.cardinalities,
            **hyper,
            **head,
        }
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=hyper.get("lr", 1e-3))
    batch_size = int(hyper.get("batch_size", 512))
    # arrays from the object store are read-only; torch wants its own
    x_train, y_train = torch.tensor(data.x_train), torch.tensor(data.y_train)
    x_valid, y_valid = torch.tensor(data.x_valid), torch.tensor(data.y_valid)
    generator = torch.Generator().manual_seed(static["seed"])
    key = static["metric"]
    best = {"value": -math.inf if higher_is_better(key) else math.inf, "epoch": 0}
    stale = 0
    for epoch in range(1, int(hyper.get("epochs", 10)) + 1):
        order = torch.randperm(len(x_train), generator=generator)
        batches = ((x_train[i], y_train[i]) for i in order.split(batch_size))
        train_epoch(model, batches, optimizer, head=head)
        scores, labels = predict_batches(
            model, ((x_valid[i : i + 4096], y_valid[i : i + 4096]) for i in range(0, len(x_valid), 4096)), head
        )
        value = evaluate_task(head["task_kind"], labels, scores)[key]
        improved = (value > best["value"]) if higher_is_better(key) else (value < best["value"] - 1e-6)
        if improved:
            best.update(value=value, epoch=epoch)
        stale = 0 if improved else stale + 1
        tune.report(
            {
                "epoch": epoch,
                f"validation_{key}": value,
                f"best_validation_{key}": best["value"],
                "best_round": best["epoch"],
            }
        )
        if stale >= hyper.get("patience", 3):
            break


# ---- the driver ------------------------------------------------------------------------------
def run_tune(
    data: TuneData,
    *,
    model: str,
    task: Task,
    training: TrainingConfig,
    tuning: TuningConfig,
    name: str,
) -> TuneOutcome:
    """Search `tuning.search_space` (or the model's default) for the task's metric (`tuning.metric`,
    default per task) and return the best trial."""
    import time

    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import BasicVariantGenerator

    space = tuning.search_space or DEFAULT_SPACES[model]
    key = task.check_metric(tuning.metric, "tune", TUNE_METRICS[task.kind])
    metric, mode = f"validation_{key}", "max" if higher_is_better(key) else "min"
    if model == "lightgbm":
        base = task.lightgbm_params({k: v for k, v in training.lightgbm.items() if k != "num_boost_round"})
        num_boost_round = int(training.lightgbm.get("num_boost_round", 200))
        static = {
            "base_params": base,
            "num_boost_round": num_boost_round,
            "early_stopping_rounds": training.early_stopping_rounds,
            "report_every": tuning.report_every_rounds,
        }
        trainable, max_t = lightgbm_trial, math.ceil(num_boost_round / tuning.report_every_rounds)
    else:
        static = {"base_params": dict(training.mlp), "head": head_config(task, data.y_train)}
        trainable, max_t = mlp_trial, int(training.mlp.get("epochs", 10))
    static |= {
        "num_threads": max(1, int(tuning.cpus_per_trial)),
        "metric": key,
        "task_kind": task.kind,
        "seed": tuning.seed,
    }
    scheduler = (
        ASHAScheduler(
            time_attr="training_iteration",
            max_t=max_t,
            grace_period=min(tuning.grace_period, max_t),
            reduction_factor=tuning.reduction_factor,
        )
        if tuning.scheduler == "asha"
        else FIFOScheduler()
    )
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(trainable, data=data, static=static), {"cpu": tuning.cpus_per_trial}),
        param_space=to_tune(space),
        tune_config=tune.TuneConfig(
            metric=metric,
            mode=mode,
            scheduler=scheduler,
            # a seeded generator: ASHA and its FIFO baseline sample the same configs
            search_alg=BasicVariantGenerator(random_state=tuning.seed, max_concurrent=tuning.max_concurrent_trials),
            num_samples=tuning.num_samples,
            time_budget_s=tuning.time_budget_s,
        ),
        run_config=tune.RunConfig(name=name, storage_path=paths.checkpoint_storage("tune"), verbose=0),
    )
    start = time.perf_counter()
    grid = tuner.fit()
    wall = time.perf_counter() - start
    trials = [_summary(result) for result in grid]
    finished = [t for t in trials if t.metrics]
    if not finished:
        errors = [str(r.error) for r in grid if r.error]
        raise RuntimeError(f"no Tune trial reported a result; errors: {errors[:3]}")
    best_key = f"best_{metric}"
    best = (max if mode == "max" else min)(finished, key=lambda t: t.metrics[best_key])
    return TuneOutcome(
        model=model,
        metric=metric,
        mode=mode,
        best_params={**static["base_params"], **best.config},
        best_metrics={best_key: best.metrics[best_key]},
        best_steps=int(best.metrics["best_round"]),
        trials=trials,
        wall_seconds=wall,
    )


def _summary(result) -> TrialSummary:
    frame = result.metrics_dataframe
    keep = (
        [c for c in frame.columns if c in ("training_iteration", "rounds", "epoch") or (c.startswith("validation_"))]
        if frame is not None
        else []
    )
    metrics = {
        k: float(v)
        for k, v in (result.metrics or {}).items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    return TrialSummary(
        trial_id=str((result.metrics or {}).get("trial_id", Path(result.path).name)),
        config=dict(result.config or {}),
        status="error" if result.error else "terminated",
        iterations=int(metrics.get("training_iteration", 0)),
        seconds=float(metrics.get("time_total_s", 0.0)),
        metrics=metrics if "best_round" in metrics else {},
        curve=frame[keep].to_dict("records") if keep else [],
    )
