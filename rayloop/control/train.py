"""Train (or tune), evaluate on held-out rows, refit on every split, log to MLflow, register a bundle.

The driver-side orchestration between a preprocess run, the Ray Train trainers, Ray Tune and the
registry, for every task (`rayloop.tasks`). Two fits:

1. the **evaluation fit** on the train split (early stopping on validation, or a tuned number of
   rounds/epochs): its scores on raw labelled rows it never saw (the run's holdout, or the rows
   the caller passes, as the retrain job does) are the reported test metrics and what the gate
   judges; a regression's prediction interval is calibrated on its validation residuals
   (split-conformal) and its coverage measured on the holdout;
2. the **refit** with the same parameters and number of rounds/epochs on the splits of
   `training.refit` (`all`: train + validation + test, so the served model learns from the newest
   rows; `train_validation`; `none`: serve the evaluation fit). The refit is what is registered and
   served; its lineage says which rows each fit saw.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads

from rayloop import registry
from rayloop.bundle import ModelBundle, prediction_histogram, value_histogram
from rayloop.config import RayloopConfig, config_hash
from rayloop.data.split import SPLITS
from rayloop.features.pipeline import FittedFeatures
from rayloop.features.profile import ReferenceProfile
from rayloop.latency import Laps
from rayloop.lineage import code_version, data_fingerprint, library_versions
from rayloop.preprocess import PreprocessRun
from rayloop.tasks import Task
from rayloop.training import lightgbm as lgb_train
from rayloop.training import torch as torch_train
from rayloop.training.common import check_ingest_headroom, driver_node_facts, local_history
from rayloop.training.evaluate import conformal_half_width, evaluate_slices, evaluate_task
from rayloop.training.placement import Placement, choose_placement
from rayloop.training.tune import TuneData, run_tune

__all__ = [
    "REFIT_SPLITS",
    "EvaluationData",
    "TrainingOutcome",
    "train_and_register",
    "train_or_tune",
    "tune_and_register",
]

log = logging.getLogger(__name__)

REFIT_SPLITS: dict[str, tuple[str, ...] | None] = {
    "all": SPLITS,
    "train_validation": ("train", "validation"),
    "none": None,
}
EVALUATION_SPLITS = ("train",)


@dataclass(frozen=True)
class EvaluationData:
    """What a registered version is judged and described by, when not the run's own files: the
    labelled raw rows of its test metrics, the rows its score histogram describes (default: the
    same rows) and the feature profile the monitor compares traffic with (default: the run's).

    The retrain job passes its recent traffic here: its holdout is the newest labelled rows, its
    score reference the recent rows no fit trained on and its profile what traffic looks like now,
    not the mixed training window.
    """

    holdout: pa.Table
    reference_rows: pa.Table | None = None
    profile: ReferenceProfile | None = None

    @classmethod
    def of_run(cls, run: PreprocessRun) -> EvaluationData:
        return cls(holdout=run.holdout())


@dataclass
class TrainingOutcome:
    model_name: str
    version: str
    kind: str
    task: dict[str, Any]
    mlflow_run_id: str
    preprocess_run_id: str
    params: dict[str, Any]
    steps: int
    test_metrics: dict[str, float]
    slice_metrics: dict[str, dict[str, float]]
    checkpoint: str
    seconds: float
    fits: dict[str, Any] = field(default_factory=dict)  # which rows each fit saw, its checkpoint
    tuning: dict[str, Any] | None = None
    placement: dict[str, Any] = field(default_factory=dict)  # local mode or workers, and why (Placement)
    phases: dict[str, float] = field(default_factory=dict)  # seconds: fit, evaluate, refit, register
    # the evaluation fit (never the rows it is judged on): what the gate scores; not serialized
    evaluation_bundle: ModelBundle | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "evaluation_bundle"}


@dataclass(frozen=True)
class _Fit:
    model: Any  # lightgbm.Booster | TabularMLP (logits)
    reported: dict[str, Any]  # the last metrics the workers reported
    curve: dict[str, list[float]]  # validation metric per round / epoch
    checkpoint: str
    params: dict[str, Any]  # the parameters the model was trained with (rounds / epochs included)
    steps: int  # rounds / epochs the model has


def _flat(params: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in params.items():
        if isinstance(value, dict):
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = str(value)[:500]
    return out


def _log_curve(run_id: str, curve: dict[str, list[float]], prefix: str = "validation_") -> None:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [
        Metric(f"{prefix}{name}", float(v), now, step)
        for name, values in curve.items()
        for step, v in enumerate(values, 1)
    ]
    for start in range(0, len(metrics), 900):  # MLflow takes at most 1000 metrics per batch
        MlflowClient().log_batch(run_id, metrics=metrics[start : start + 900])


def _split_labels(run: PreprocessRun, split: str, label: str) -> np.ndarray:
    return pads.dataset(str(run.split_dir(split))).to_table(columns=[label]).column(label).to_numpy()


def _split_matrix(run: PreprocessRun, split: str, fitted: FittedFeatures, label: str) -> tuple[np.ndarray, np.ndarray]:
    table = pads.dataset(str(run.split_dir(split))).to_table(columns=[*fitted.feature_names, label])
    x = np.column_stack([table.column(n).to_numpy() for n in fitted.feature_names]).astype(np.float32)
    return x, table.column(label).to_numpy()


def _fit(
    config: RayloopConfig,
    run: PreprocessRun,
    task: Task,
    fitted: FittedFeatures,
    params: dict[str, Any],
    *,
    splits: tuple[str, ...],
    steps: int | None,
    name: str,
    placement: Placement,
) -> _Fit:
    """One Ray Train run on the feature tables of `splits`: early stopping on validation when
    `steps` is None, else exactly `steps` rounds/epochs with no validation split."""
    import ray
    import ray.data

    training = config.training
    check_ingest_headroom(
        [n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")],
        placement.num_workers,
        training.cpus_per_worker,
    )
    # the splits' Parquet: LightGBM's trainer reads it itself in local mode (rayloop.training.lightgbm)
    sources = {"train": [str(run.split_dir(s)) for s in splits]}
    if steps is None:
        sources["validation"] = [str(run.split_dir("validation"))]
    common = {
        "feature_names": fitted.feature_names,
        "label": task.label,
        "categorical_indices": fitted.categorical_indices,
        "num_workers": placement.num_workers,
        "num_threads": placement.threads,
        "cpus_per_worker": training.cpus_per_worker,
        # local mode has no worker group to restart (config.py refuses the explicit contradiction)
        "max_failures": training.max_failures if placement.mode == "workers" else 0,
        "name": name,
    }
    if training.model == "lightgbm":
        rounds = int(steps if steps is not None else params.pop("num_boost_round", 200))
        params.pop("num_boost_round", None)
        trainer = lgb_train.build_trainer(
            sources,
            params=task.lightgbm_params(params),
            num_boost_round=rounds,
            early_stopping_rounds=training.early_stopping_rounds,
            task_kind=task.kind,
            **common,
        )
        result = trainer.fit()
        reported = dict(result.metrics or {})
        return _Fit(
            lgb_train.load_booster(result.checkpoint),
            reported,
            lgb_train.load_curve(result.checkpoint),
            result.checkpoint.path,
            {**params, "num_boost_round": rounds},
            int(reported.get("best_iteration") or rounds),
        )
    if steps is not None:
        params["epochs"] = int(steps)
    params |= torch_train.head_config(task, _split_labels(run, "train", task.label))
    datasets = {k: ray.data.read_parquet(v) for k, v in sources.items()}
    trainer = torch_train.build_trainer(
        datasets, cardinalities=fitted.cardinalities, mlp=params, use_gpu=training.use_gpu, **common
    )
    result = trainer.fit()
    model_params = {
        "feature_names": fitted.feature_names,
        "categorical_indices": fitted.categorical_indices,
        "cardinalities": fitted.cardinalities,
        **params,
    }
    frame = result.metrics_dataframe
    if frame is None and placement.mode == "local" and result.checkpoint is not None:
        import pandas as pd  # local mode keeps the reported history in its checkpoints, not in a frame

        frame = pd.DataFrame(local_history(result.checkpoint))
    curve = {
        c.removeprefix("validation_"): frame[c].tolist()
        for c in (frame.columns if frame is not None else [])
        if c.startswith("validation_")
    }
    reported = dict(result.metrics or {})
    loss = torch_train.VALIDATION_LOSS[task.kind]
    best_epoch = int(reported.get("epoch") or params.get("epochs", 1))
    if steps is None and frame is not None and f"validation_{loss}" in frame:
        best_epoch = int(frame["epoch"].iloc[int(np.nanargmin(frame[f"validation_{loss}"].to_numpy()))])
    return _Fit(
        torch_train.load_model(result.checkpoint, model_params),
        reported,
        curve,
        result.checkpoint.path,
        dict(params),
        best_epoch,
    )


def _bundle(config: RayloopConfig, task: Task, fit: _Fit, fitted, schema, profile) -> ModelBundle:
    return ModelBundle(
        kind=config.training.model,
        model=fit.model,
        fitted=fitted,
        schema=schema,
        profile=profile,
        task=task,
        model_params=fit.params,
    )


def _score_profile(task: Task, profile: ReferenceProfile, scores: np.ndarray, labels: np.ndarray) -> ReferenceProfile:
    """The profile with the references the monitor compares live outputs with (the model's scores)
    and arrived labels with (`labels`: the held-out labels, codes or values, the model was judged on)."""
    if task.kind == "regression":
        return profile.model_copy(
            update={"prediction_histogram": value_histogram(scores), "label_histogram": value_histogram(labels)}
        )
    label_counts = [int(n) for n in np.bincount(np.asarray(labels, dtype=np.int64), minlength=task.n_classes)]
    if task.kind == "binary":
        return profile.model_copy(
            update={"prediction_histogram": prediction_histogram(scores), "label_class_counts": label_counts}
        )
    histograms = {str(c): prediction_histogram(np.asarray(scores)[:, i]) for i, c in enumerate(task.classes)}
    predicted = np.bincount(task.predicted_codes(scores), minlength=task.n_classes)
    return profile.model_copy(
        update={
            "class_histograms": histograms,
            "predicted_class_counts": [int(n) for n in predicted],
            "label_class_counts": label_counts,
        }
    )


def _placement(config: RayloopConfig, summary: dict[str, Any], fitted: FittedFeatures, splits) -> Placement:
    """Local mode or workers for every fit of this training (`training.num_workers`, see
    rayloop.training.placement), judged on the most rows a fit reads; logged with its reason."""
    per_split = summary.get("rows_per_split") or {}
    used = {*EVALUATION_SPLITS, "validation", *(splits or ())}
    training = config.training
    placement = choose_placement(
        training.num_workers,
        rows=sum(int(per_split.get(s, 0)) for s in used),
        columns=len(fitted.feature_names) + 1,
        node=driver_node_facts(),
        cpus_per_worker=training.cpus_per_worker,
        use_gpu=training.use_gpu,
    )
    log.info("training placement: %s, %d workers: %s", placement.mode, placement.num_workers, placement.reason)
    if placement.mode == "local" and training.max_failures and training.num_workers == "auto":
        log.info(
            "training.max_failures=%d does not apply in local mode: a lost driver fails the run", training.max_failures
        )
    return placement


def train_and_register(
    config: RayloopConfig,
    run: PreprocessRun,
    *,
    params: dict[str, Any] | None = None,
    steps: int | None = None,
    parent_run_id: str | None = None,
    tuning: dict[str, Any] | None = None,
    evaluation: EvaluationData | None = None,
) -> TrainingOutcome:
    """The evaluation fit on the train split (early stopping on validation, or `steps` from a
    search), its metrics on the holdout, the refit of `training.refit`; logged and registered as
    challenger (see the module docstring)."""
    import mlflow

    start = time.perf_counter()
    evaluation = evaluation or EvaluationData.of_run(run)
    task, fitted, schema, summary = run.task(), run.fitted(), run.schema(), run.summary()
    profile = evaluation.profile or run.profile()
    run_id = run.run_id
    training = config.training
    slice_column = training.slice_column
    if slice_column and slice_column not in fitted.input_columns:
        # slices are a report: a table without the column (the demo config's `channel` on a user's
        # own data) still trains, and says why it has none
        log.warning(
            "training.slice_column=%r is not an input column of run %s (%d inputs); no test metrics per slice",
            slice_column,
            run.run_id,
            len(fitted.input_columns),
        )
        slice_column = None
    kind = training.model
    base = dict(training.lightgbm if kind == "lightgbm" else training.mlp)
    params = {**base, **(params or {})}
    refit_splits = REFIT_SPLITS[training.refit]
    stamp = f"{run_id}-{datetime.now(timezone.utc):%H%M%S}"
    placement = _placement(config, summary, fitted, refit_splits)
    phase = Laps(digits=2)

    experiment = registry.experiment_id(config.registry.experiment)
    with mlflow.start_run(
        experiment_id=experiment,
        run_name=f"{kind}-{stamp}",
        parent_run_id=parent_run_id,
        nested=parent_run_id is not None,
    ) as active:
        mlflow_run = active.info.run_id
        first = _fit(
            config,
            run,
            task,
            fitted,
            dict(params),
            splits=EVALUATION_SPLITS,
            steps=steps,
            name=f"{kind}-{stamp}",
            placement=placement,
        )
        phase("fit")
        judged = _bundle(config, task, first, fitted, schema, profile)

        holdout = evaluation.holdout
        y = task.encode(holdout.column(task.label))
        scores = judged.predict_scores(holdout)
        if task.kind == "regression":  # split-conformal interval from the validation residuals
            x_valid, y_valid = _split_matrix(run, "validation", fitted, task.label)
            judged.interval_coverage = config.serving.interval_coverage
            judged.interval_half_width = conformal_half_width(
                y_valid - judged.predict_matrix(x_valid), config.serving.interval_coverage
            )
            low, high = judged.interval(scores)
            test_metrics = evaluate_task(task.kind, y, scores, lower=low, upper=high)
        else:
            test_metrics = evaluate_task(task.kind, y, scores, classes=task.classes)
        slices = (
            evaluate_slices(y, scores, holdout.column(slice_column).to_pylist(), kind=task.kind, classes=task.classes)
            if slice_column
            else {}
        )
        # the reference of the outputs: held-out scores of a fit that never saw the rows (a refit's
        # scores on rows it trained on would look more certain than its scores on new traffic)
        reference_rows = evaluation.reference_rows
        reference_scores = scores if reference_rows is None else judged.predict_scores(reference_rows)
        judged.profile = _score_profile(task, profile, reference_scores, y)
        judged.metrics = {k: float(v) for k, v in test_metrics.items()}

        fits: dict[str, Any] = {
            "evaluation": {
                "splits": list(EVALUATION_SPLITS),
                "early_stopping_on": "validation" if steps is None else None,
                "steps": first.steps,
                "checkpoint": first.checkpoint,
                "judged_on_rows": holdout.num_rows,
            }
        }
        phase("evaluate")
        final = first
        if refit_splits is not None:
            used = dict(first.params)
            used.pop("num_boost_round" if kind == "lightgbm" else "epochs", None)
            final = _fit(
                config,
                run,
                task,
                fitted,
                used,
                splits=refit_splits,
                steps=first.steps,
                name=f"{kind}-refit-{stamp}",
                placement=placement,
            )
            phase("refit")
            fits["refit"] = {"splits": list(refit_splits), "steps": first.steps, "checkpoint": final.checkpoint}
        bundle = judged if final is first else _bundle(config, task, final, fitted, schema, judged.profile)
        bundle.metrics = dict(judged.metrics)
        bundle.interval_half_width, bundle.interval_coverage = judged.interval_half_width, judged.interval_coverage
        fingerprint = data_fingerprint(run.features_dir)
        bundle.lineage = {
            "preprocess_run_id": run_id,
            "source": summary.get("source"),
            "data_fingerprint": fingerprint,
            "features_hash": fitted.content_hash,
            "config_hash": config_hash(config),
            "code": code_version(),
            "libraries": library_versions(),
            "mlflow_run_id": mlflow_run,
            "checkpoint": final.checkpoint,
            "task": task.model_dump(mode="json"),
            "fits": fits,
            "training": placement.to_dict(),
            "trained_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }

        mlflow.log_params(
            _flat(
                {
                    "model": kind,
                    "task": task.kind,
                    **final.params,
                    "refit": training.refit,
                    "num_workers": placement.num_workers,
                    "num_workers_setting": placement.setting,
                    "num_threads": placement.threads,
                }
            )
        )
        mlflow.log_metrics({f"test_{k}": v for k, v in bundle.metrics.items() if math.isfinite(v)})
        mlflow.log_metrics(
            {
                f"train_{k}": float(v)
                for k, v in first.reported.items()
                if isinstance(v, (int, float))
                and math.isfinite(v)
                # resumed_from: the round (or epoch) a restarted worker group went on from
                and k.startswith(("validation_", "rounds", "best_iteration", "epoch", "resumed_from"))
            }
        )
        for value, scores_by_slice in slices.items():
            mlflow.log_metrics(
                {
                    f"test_slice.{slice_column}.{value}.{k}": float(v)
                    for k, v in scores_by_slice.items()
                    if k in (*task.metrics(), "n") and math.isfinite(v)
                }
            )
        if first.curve:
            _log_curve(mlflow_run, first.curve)
        mlflow.set_tags(
            {
                "rayloop.task": task.kind,
                "rayloop.training.mode": placement.mode,
                "rayloop.training.num_workers": str(placement.num_workers),
                "rayloop.training.reason": placement.reason,
                "rayloop.preprocess_run_id": run_id,
                "rayloop.data_fingerprint": fingerprint,
                "rayloop.features_hash": fitted.content_hash,
                "rayloop.config_hash": bundle.lineage["config_hash"],
                "rayloop.code_sha256": bundle.lineage["code"]["source_sha256"],
                "rayloop.git_commit": str(bundle.lineage["code"]["git_commit"]),
            }
        )
        mlflow.log_dict(bundle.lineage, "lineage.json")
        mlflow.log_dict(slices, "slice_metrics.json")
        mlflow.log_text(config.model_dump_json(indent=2, by_alias=True), "config.json")
        version = registry.log_bundle(bundle, model_name=config.registry.model_name, example=holdout)
        phase("register")

    outcome = TrainingOutcome(
        model_name=config.registry.model_name,
        version=version,
        kind=kind,
        task=task.model_dump(mode="json"),
        mlflow_run_id=mlflow_run,
        preprocess_run_id=run_id,
        params=final.params,
        steps=first.steps,
        test_metrics=bundle.metrics,
        slice_metrics=slices,
        checkpoint=final.checkpoint,
        seconds=round(time.perf_counter() - start, 2),
        fits=fits,
        tuning=tuning,
        placement=placement.to_dict(),
        phases=phase.seconds,
        evaluation_bundle=judged,
    )
    shown = {k: round(v, 4) for k, v in bundle.metrics.items() if k in task.metrics()}
    log.info("registered %s v%s (%s, test %s)", outcome.model_name, version, task.kind, shown)
    return outcome


def tune_and_register(
    config: RayloopConfig, run: PreprocessRun, *, evaluation: EvaluationData | None = None
) -> TrainingOutcome:
    """ASHA search on train/validation, every trial logged as a nested MLflow run, then the best
    config trained for its best number of rounds/epochs (the evaluation fit), refit and registered."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    run_id = run.run_id
    kind = config.training.model
    task = run.task()
    data = TuneData.from_run(run, run.fitted(), task.label)
    experiment = registry.experiment_id(config.registry.experiment)
    name = f"tune-{kind}-{run_id}-{datetime.now(timezone.utc):%H%M%S}"
    with mlflow.start_run(experiment_id=experiment, run_name=name) as parent:
        outcome = run_tune(data, model=kind, task=task, training=config.training, tuning=config.tuning, name=name)
        client = MlflowClient()
        for trial in outcome.trials:
            child = client.create_run(
                experiment, run_name=f"trial-{trial.trial_id}", tags={"mlflow.parentRunId": parent.info.run_id}
            )
            now = int(time.time() * 1000)
            metrics = [
                Metric(k, v, now, 0)
                for k, v in trial.metrics.items()
                if k.startswith(("best_", "validation_")) and math.isfinite(v)
            ]
            metrics += [
                Metric(
                    key,
                    float(point[key]),
                    now,
                    int(point.get("rounds") or point.get("epoch") or point["training_iteration"]),
                )
                for point in trial.curve
                for key in point
                if key.startswith("validation_") and point[key] is not None and math.isfinite(point[key])
            ]
            metrics += [Metric("trial_seconds", trial.seconds, now, 0), Metric("iterations", trial.iterations, now, 0)]
            params = [Param(k, str(v)[:500]) for k, v in trial.config.items()]
            for start in range(0, len(metrics), 900):
                client.log_batch(
                    child.info.run_id, metrics=metrics[start : start + 900], params=params if start == 0 else []
                )
            client.set_terminated(child.info.run_id, "FINISHED" if trial.status != "error" else "FAILED")
        summary = {
            "metric": outcome.metric,
            "best_params": outcome.best_params,
            "best_metrics": outcome.best_metrics,
            "best_steps": outcome.best_steps,
            "trials": len(outcome.trials),
            "trial_seconds": round(outcome.trial_seconds, 2),
            "wall_seconds": round(outcome.wall_seconds, 2),
        }
        mlflow.log_params(_flat({"scheduler": config.tuning.scheduler, "num_samples": config.tuning.num_samples}))
        mlflow.log_metrics(
            {**outcome.best_metrics, "trial_seconds": outcome.trial_seconds, "best_steps": outcome.best_steps}
        )
        mlflow.log_dict(summary, "tuning.json")
        # the tuned parameters, without what the task adds again (objective, metrics, classes)
        params = {
            k: v
            for k, v in outcome.best_params.items()
            if k not in ("num_boost_round", "epochs", "objective", "metric", "num_class", "verbosity")
        }
        return train_and_register(
            config,
            run,
            params=params,
            steps=max(1, outcome.best_steps),
            parent_run_id=parent.info.run_id,
            tuning=json.loads(json.dumps(summary, default=str)),
            evaluation=evaluation,
        )


def train_or_tune(
    config: RayloopConfig, run: PreprocessRun, *, evaluation: EvaluationData | None = None
) -> TrainingOutcome:
    """Tune when `tuning.enabled`, else one training run; evaluated, refit and registered as challenger."""
    if config.tuning.enabled:
        return tune_and_register(config, run, evaluation=evaluation)
    return train_and_register(config, run, evaluation=evaluation)
