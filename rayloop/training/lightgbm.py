"""LightGBM on Ray Train V2: data-parallel workers, early stopping, sparse checkpoints, resume.

The objective and its metrics come from the task (`rayloop.tasks.Task.lightgbm_params`): binary,
multiclass over the class codes, or a regression (`training.lightgbm.objective` may pick huber,
l1, quantile, ...). Early stopping watches the first of those metrics (the task's loss) on the
validation split.

Reports are few on purpose: each `ray.train.report()` waits for the controller's next poll of
the workers, so a callback checkpoints every `checkpoint_every` rounds and the loop once at the
end, never per boosting round. Early stopping runs over the whole training, in one `lgb.train`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from rayloop.training.common import data_config, latest_local_checkpoint, local_root, model_columns, report, run_config
from rayloop.training.evaluate import evaluate_task

__all__ = [
    "MODEL_FILE",
    "CURVE_FILE",
    "train_loop_per_worker",
    "BestValidationScores",
    "build_trainer",
    "load_booster",
    "load_curve",
    "shard_to_numpy",
]

MODEL_FILE = "model.txt"
CURVE_FILE = "curve.json"  # the validation metrics per round, in the final checkpoint
# LightGBM's names of the curves it records, as the metrics are named everywhere else
CURVE_NAMES = {"binary_logloss": "logloss", "l2": "mse", "l1": "mae"}


def table_to_numpy(table: pa.Table, feature_names: list[str], label: str) -> tuple[np.ndarray, np.ndarray]:
    """(float32 features, float labels), the matrix filled column by column: one copy, not a
    float64 stack and its float32 cast."""
    x = np.empty((table.num_rows, len(feature_names)), dtype=np.float32)
    for j, name in enumerate(feature_names):
        x[:, j] = table.column(name).to_numpy()
    return x, table.column(label).to_numpy().astype(np.float64)


def shard_to_numpy(shard, feature_names: list[str], label: str) -> tuple[np.ndarray, np.ndarray]:
    """A worker's dataset shard as (float32 features, float labels)."""
    tables = list(shard.iter_batches(batch_size=None, batch_format="pyarrow"))
    table = (
        pa.concat_tables(tables)
        if tables
        else pa.table({n: pa.array([], pa.float32()) for n in [*feature_names, label]})
    )
    return table_to_numpy(table, feature_names, label)


def _split_arrays(config: dict[str, Any], split: str) -> tuple[np.ndarray, np.ndarray]:
    """A split's rows for this worker: its Ray Data shard, or in local mode the split's Parquet read
    straight into the driver (`local_data`: one process needs the whole table in memory anyway, and
    Ray Data's executor, tasks and object-store copies only add time)."""
    names, label = config["feature_names"], config["label"]
    local_data = config.get("local_data")
    if local_data is None:
        import ray.train

        return shard_to_numpy(ray.train.get_dataset_shard(split), names, label)
    import pyarrow.dataset as pads

    dataset = pads.dataset([pads.dataset(path) for path in local_data[split]])
    return table_to_numpy(dataset.to_table(columns=[*names, label]), names, label)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import lightgbm as lgb
    import ray.train
    from ray.train.lightgbm import get_network_params

    ctx = ray.train.get_context()
    x_train, y_train = _split_arrays(config, "train")
    # a final refit on train+validation has no validation split: a fixed number of rounds
    has_valid = config.get("has_validation", True)
    if has_valid:
        x_valid, y_valid = _split_arrays(config, "validation")
    params = {**config["params"], "num_threads": config.get("num_threads", 1)}
    kind = config.get("task_kind", "binary")
    if ctx.get_world_size() > 1:
        params |= {"tree_learner": "data_parallel", "pre_partition": True, **get_network_params()}
    categorical = config.get("categorical_indices") or "auto"
    train_set = lgb.Dataset(x_train, y_train, categorical_feature=categorical, free_raw_data=False)
    valid_sets, callbacks, curve = [], [], {}
    if has_valid:
        valid_sets = [
            lgb.Dataset(x_valid, y_valid, reference=train_set, categorical_feature=categorical, free_raw_data=False)
        ]
        # on the task's loss only (the first metric); AUC, recorded beside it, would stop as soon as
        # the ranking settles, long before the probabilities do
        stopping = lgb.early_stopping(config["early_stopping_rounds"], first_metric_only=True, verbose=False)
        callbacks = [stopping, lgb.record_evaluation(curve)]
    scores = BestValidationScores()

    init_model, done_rounds = None, 0
    local = config.get("local_checkpoints")  # local mode: the run's folder (training.common.local_root)
    checkpoint = ray.train.get_checkpoint() or latest_local_checkpoint(local)
    if checkpoint is not None:  # resume after a failure
        with checkpoint.as_directory() as directory:
            init_model = lgb.Booster(model_file=str(Path(directory) / MODEL_FILE))
        done_rounds = init_model.current_iteration()
    resumed_from = done_rounds

    every = config.get("checkpoint_every", 50)

    trained = {"rounds": done_rounds}

    def checkpoint_every(env) -> None:
        # a checkpoint (and so a report) every `every` rounds, never per round
        done = trained["rounds"] = env.iteration + 1
        if done % every == 0 and done < env.end_iteration:
            _report(env.model, {"rounds": done, "resumed_from": resumed_from}, num_iteration=-1, local=local)

    if config["num_boost_round"] > done_rounds:
        booster = lgb.train(
            params,
            train_set,
            num_boost_round=config["num_boost_round"] - done_rounds,
            valid_sets=valid_sets,
            valid_names=["validation"] * len(valid_sets),
            init_model=init_model,
            feval=scores.feval if valid_sets else None,
            callbacks=[*callbacks, checkpoint_every, *([scores.keep_best] if valid_sets else [])],
        )
    else:  # a rerun of a finished run: its last checkpoint is the model (lgb.train refuses 0 rounds)
        booster = init_model
    # lgb.train returns the booster cut at best_iteration, so rounds come from the callback
    best = booster.best_iteration or booster.current_iteration()
    metrics = {
        "rounds": trained["rounds"],
        "best_iteration": best,
        "resumed_from": resumed_from,
        **(_validation_metrics(booster, x_valid, y_valid, kind, scores.at(best)) if has_valid else {}),
    }

    def write(directory: Path) -> None:
        booster.save_model(str(directory / MODEL_FILE), num_iteration=best)
        (directory / CURVE_FILE).write_text(json.dumps(curve.get("validation", {})))

    report(metrics, write, local)


class BestValidationScores:
    """The validation split's scores at the best round, as LightGBM computed them while it
    trained, so the final validation metrics need no prediction pass of their own (a second pass
    over the split cost about a tenth of the training at 1M rows: benchmarks/README.md).

    LightGBM's public way to see those scores is `feval`, called every round with them; this one
    returns no metric, so the curve and early stopping are unchanged. `keep_best` (a callback,
    after the round's evaluation) keeps a copy when the first metric improved: the round
    `early_stopping(first_metric_only=True)` calls best."""

    def __init__(self) -> None:
        self._latest: np.ndarray | None = None
        self._best: np.ndarray | None = None
        self._best_value: float | None = None
        self.best_iteration = 0  # 1-based, as Booster.best_iteration

    def feval(self, preds: np.ndarray, _data) -> list:
        self._latest = preds  # LightGBM reuses this buffer next round: copied when kept
        return []

    def keep_best(self, env) -> None:
        if self._latest is None or not env.evaluation_result_list:
            return
        _, _, value, higher_is_better = env.evaluation_result_list[0][:4]
        if self._best_value is None or (value > self._best_value if higher_is_better else value < self._best_value):
            self._best, self._best_value, self.best_iteration = self._latest.copy(), value, env.iteration + 1

    def at(self, iteration: int) -> np.ndarray | None:
        """The scores if the kept round is `iteration` (the model's last tree), else None."""
        return self._best if self._best is not None and self.best_iteration == iteration else None


def _validation_metrics(
    booster, x: np.ndarray, y: np.ndarray, kind: str, scores: np.ndarray | None = None
) -> dict[str, float]:
    """Every metric of the task on the validation split: from the scores kept while training
    when they belong to the saved model's last round, else from a prediction pass (a resumed
    run's model, or one trained in an earlier process)."""
    if y.size == 0:
        return {}
    if scores is None or len(scores) != y.size:
        scores = booster.predict(x, num_iteration=booster.best_iteration or None)
    return {f"validation_{k}": v for k, v in evaluate_task(kind, y, scores).items()}


def _report(booster, metrics: dict[str, float], num_iteration: int, local: str | None) -> None:
    """Rank 0 attaches the model: every tree mid-run (a resumed run continues from it), the trees
    up to the best iteration at the end."""
    report(
        metrics,
        lambda directory: booster.save_model(str(directory / MODEL_FILE), num_iteration=num_iteration),
        local,
    )


def build_trainer(
    datasets: dict[str, Any],
    *,
    feature_names: list[str],
    label: str,
    categorical_indices: list[int],
    params: dict[str, Any],
    num_boost_round: int,
    early_stopping_rounds: int,
    task_kind: str = "binary",
    num_workers: int = 1,
    cpus_per_worker: float = 1.0,
    max_failures: int = 1,
    name: str = "lightgbm",
    checkpoint_every: int = 50,
    num_threads: int | None = None,
):
    """A Ray Train V2 LightGBMTrainer with checkpoints under RAYLOOP_HOME/train. `params` are
    complete (objective and metrics included: `Task.lightgbm_params`). `num_threads` per worker (or
    in the driver, in local mode) defaults to the CPUs of a worker.

    `datasets` maps each split to a Ray Dataset or to its Parquet locations (a list of paths or
    URIs): workers get those as Ray Datasets, and local mode (`num_workers=0`) reads them itself."""
    import ray.data
    from ray.train import ScalingConfig
    from ray.train.lightgbm import LightGBMTrainer

    local_data = None
    if all(isinstance(v, (list, tuple)) for v in datasets.values()):
        if num_workers == 0:
            local_data = {k: [str(p) for p in v] for k, v in datasets.items()}
        else:
            datasets = {k: ray.data.read_parquet([str(p) for p in v]) for k, v in datasets.items()}

    return LightGBMTrainer(
        train_loop_per_worker,
        train_loop_config={
            "feature_names": feature_names,
            "label": label,
            "categorical_indices": categorical_indices,
            "params": params,
            "task_kind": task_kind,
            "num_boost_round": num_boost_round,
            "early_stopping_rounds": early_stopping_rounds,
            "num_threads": num_threads or max(1, int(cpus_per_worker)),
            "checkpoint_every": checkpoint_every,
            "has_validation": "validation" in datasets,
            "local_checkpoints": local_root(name, num_workers),
            "local_data": local_data,
        },
        scaling_config=ScalingConfig(num_workers=num_workers, resources_per_worker={"CPU": cpus_per_worker}),
        run_config=run_config(name, max_failures),
        datasets=None if local_data is not None else model_columns(datasets, feature_names, label),
        dataset_config=data_config(),
    )


def load_booster(checkpoint):
    import lightgbm as lgb

    with checkpoint.as_directory() as directory:
        return lgb.Booster(model_file=str(Path(directory) / MODEL_FILE))


def load_curve(checkpoint) -> dict[str, list[float]]:
    """{lightgbm metric name: value per round} on the validation split ({} for a refit without one)."""
    with checkpoint.as_directory() as directory:
        path = Path(directory) / CURVE_FILE
        curve = json.loads(path.read_text()) if path.exists() else {}
    return {CURVE_NAMES.get(name, name): values for name, values in curve.items()}
