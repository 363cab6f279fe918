"""Train (or tune, then refit), evaluate on the test split, log to MLflow, register a bundle.

The driver-side orchestration between a preprocess run, the Ray Train trainers, Ray Tune and the
registry. Test metrics, slices and the reference prediction histogram are computed through the
bundle on raw labelled rows (the run's holdout unless the caller passes others, as the retrain
job does), the same path the gate and Serve take.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa

from rayloop import registry
from rayloop.bundle import ModelBundle, prediction_histogram
from rayloop.config import RayloopConfig, config_hash
from rayloop.errors import ConfigError
from rayloop.features.pipeline import FittedFeatures
from rayloop.features.profile import ReferenceProfile
from rayloop.lineage import code_version, data_fingerprint, library_versions
from rayloop.preprocess import PreprocessRun
from rayloop.training import lightgbm as lgb_train
from rayloop.training import torch as torch_train
from rayloop.training.common import check_ingest_headroom
from rayloop.training.evaluate import evaluate, evaluate_slices
from rayloop.training.tune import TuneData, run_tune

__all__ = ["EvaluationData", "TrainingOutcome", "train_and_register", "train_or_tune", "tune_and_register"]

log = logging.getLogger(__name__)


@dataclass
class TrainingOutcome:
    model_name: str
    version: str
    kind: str
    mlflow_run_id: str
    preprocess_run_id: str
    params: dict[str, Any]
    steps: int
    test_metrics: dict[str, float]
    slice_metrics: dict[str, dict[str, float]]
    checkpoint: str
    seconds: float
    tuning: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EvaluationData:
    """What a registered version is judged and described by, when not the run's own files: the
    labelled raw rows of its test metrics, the rows its score histogram describes (default: the
    same rows) and the feature profile the monitor compares traffic with (default: the run's).

    The retrain job passes its recent traffic here: its holdout is the newest labelled rows and its
    reference is what traffic looks like now, not the mixed training window.
    """

    holdout: pa.Table
    reference_rows: pa.Table | None = None
    profile: ReferenceProfile | None = None

    @classmethod
    def of_run(cls, run: PreprocessRun) -> EvaluationData:
        return cls(holdout=run.holdout())


@dataclass(frozen=True)
class _Fit:
    model: Any
    reported: dict[str, Any]  # the last metrics the workers reported
    curve: dict[str, list[float]]  # validation metric per round / epoch
    checkpoint: str
    params: dict[str, Any]  # the parameters the model was trained with (rounds / epochs included)


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


def _fit(
    config: RayloopConfig,
    run: PreprocessRun,
    fitted: FittedFeatures,
    params: dict[str, Any],
    steps: int | None,
    refit: bool,
    name: str,
) -> _Fit:
    """One Ray Train run on the run's feature tables."""
    import ray
    import ray.data

    training = config.training
    check_ingest_headroom(
        [n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")],
        training.num_workers,
        training.cpus_per_worker,
    )
    train_dirs = [str(run.split_dir("train"))] + ([str(run.split_dir("validation"))] if refit else [])
    datasets = {"train": ray.data.read_parquet(train_dirs)}
    if not refit:
        datasets["validation"] = ray.data.read_parquet(str(run.split_dir("validation")))
    common = {
        "feature_names": fitted.feature_names,
        "label": config.data.label_column,
        "categorical_indices": fitted.categorical_indices,
        "num_workers": training.num_workers,
        "cpus_per_worker": training.cpus_per_worker,
        "max_failures": training.max_failures,
        "name": name,
    }
    if training.model == "lightgbm":
        rounds = int(steps if steps is not None else params.pop("num_boost_round", 200))
        params.pop("num_boost_round", None)
        trainer = lgb_train.build_trainer(
            datasets,
            params=params,
            num_boost_round=rounds,
            early_stopping_rounds=training.early_stopping_rounds,
            **common,
        )
        result = trainer.fit()
        curve = {{"binary_logloss": "logloss"}.get(k, k): v for k, v in lgb_train.load_curve(result.checkpoint).items()}
        return _Fit(
            lgb_train.load_booster(result.checkpoint),
            dict(result.metrics or {}),
            curve,
            result.checkpoint.path,
            {**params, "num_boost_round": rounds},
        )
    if steps is not None:
        params["epochs"] = int(steps)
    trainer = torch_train.build_trainer(
        datasets, cardinalities=fitted.cardinalities, mlp=params, use_gpu=training.use_gpu, **common
    )
    result = trainer.fit()
    model = torch_train.load_model(
        result.checkpoint,
        {
            "feature_names": fitted.feature_names,
            "categorical_indices": fitted.categorical_indices,
            "cardinalities": fitted.cardinalities,
            **params,
        },
    )
    frame = result.metrics_dataframe
    curve = {
        k: frame[f"validation_{k}"].tolist()
        for k in ("auc", "logloss")
        if frame is not None and f"validation_{k}" in frame
    }
    return _Fit(model, dict(result.metrics or {}), curve, result.checkpoint.path, dict(params))


def train_and_register(
    config: RayloopConfig,
    run: PreprocessRun,
    *,
    params: dict[str, Any] | None = None,
    steps: int | None = None,
    refit: bool = False,
    parent_run_id: str | None = None,
    tuning: dict[str, Any] | None = None,
    evaluation: EvaluationData | None = None,
) -> TrainingOutcome:
    """Train on the run's train split (early stopping on validation), or with `refit` on
    train+validation for a fixed `steps`; evaluate on the holdout; log and register as challenger."""
    import mlflow

    start = time.perf_counter()
    evaluation = evaluation or EvaluationData.of_run(run)
    fitted, schema, summary = run.fitted(), run.schema(), run.summary()
    profile = evaluation.profile or run.profile()
    run_id = run.run_id
    training, label = config.training, config.data.label_column
    slice_column = training.slice_column
    if slice_column and slice_column not in fitted.input_columns:
        raise ConfigError(
            f"training.slice_column={slice_column!r} is not a feature column; features: {fitted.input_columns}"
        )
    kind = training.model
    base = dict(training.lightgbm if kind == "lightgbm" else training.mlp)
    params = {**base, **(params or {})}
    name = f"{kind}-{'refit-' if refit else ''}{run_id}-{datetime.now(timezone.utc):%H%M%S}"

    experiment = registry.experiment_id(config.registry.experiment)
    with mlflow.start_run(
        experiment_id=experiment, run_name=name, parent_run_id=parent_run_id, nested=parent_run_id is not None
    ) as active:
        mlflow_run = active.info.run_id
        fit = _fit(config, run, fitted, dict(params), steps, refit, name)
        reported, curve, checkpoint, used = fit.reported, fit.curve, fit.checkpoint, fit.params
        steps_done = int(reported.get("best_iteration") or reported.get("epoch") or used.get("num_boost_round", 0))
        bundle = ModelBundle(
            kind=kind, model=fit.model, fitted=fitted, schema=schema, profile=profile, model_params=used
        )

        holdout = evaluation.holdout
        probs = bundle.predict_proba(holdout)
        y = holdout.column(label).to_numpy(zero_copy_only=False)
        test_metrics = evaluate(y, probs)
        slices = evaluate_slices(y, probs, holdout.column(slice_column).to_pylist()) if slice_column else {}
        fingerprint = data_fingerprint(run.features_dir)
        bundle.metrics = {k: float(v) for k, v in test_metrics.items()}
        # the score reference: the holdout's scores, or the rows the caller names (a retrain: its recent traffic)
        reference_rows = evaluation.reference_rows
        scored = probs if reference_rows is None else bundle.predict_proba(reference_rows)
        bundle.profile = profile.model_copy(update={"prediction_histogram": prediction_histogram(scored)})
        bundle.lineage = {
            "preprocess_run_id": run_id,
            "source": summary.get("source"),
            "data_fingerprint": fingerprint,
            "features_hash": fitted.content_hash,
            "config_hash": config_hash(config),
            "code": code_version(),
            "libraries": library_versions(),
            "mlflow_run_id": mlflow_run,
            "checkpoint": checkpoint,
            "refit_on_train_and_validation": refit,
            "trained_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }

        mlflow.log_params(_flat({"model": kind, **used, "refit": refit, "num_workers": training.num_workers}))
        mlflow.log_metrics({f"test_{k}": v for k, v in bundle.metrics.items()})
        mlflow.log_metrics(
            {
                f"train_{k}": float(v)
                for k, v in reported.items()
                if isinstance(v, (int, float)) and k.startswith(("validation_", "rounds", "best_iteration", "epoch"))
            }
        )
        for value, scores in slices.items():
            mlflow.log_metrics(
                {
                    f"test_slice.{slice_column}.{value}.{k}": float(v)
                    for k, v in scores.items()
                    if k in ("auc", "logloss", "n")
                }
            )
        if curve:
            _log_curve(mlflow_run, curve)
        mlflow.set_tags(
            {
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

    outcome = TrainingOutcome(
        model_name=config.registry.model_name,
        version=version,
        kind=kind,
        mlflow_run_id=mlflow_run,
        preprocess_run_id=run_id,
        params=used,
        steps=steps_done,
        test_metrics=bundle.metrics,
        slice_metrics=slices,
        checkpoint=checkpoint,
        seconds=round(time.perf_counter() - start, 2),
        tuning=tuning,
    )
    log.info("registered %s v%s (test auc %.4f)", outcome.model_name, version, bundle.metrics.get("auc", float("nan")))
    return outcome


def tune_and_register(
    config: RayloopConfig, run: PreprocessRun, *, evaluation: EvaluationData | None = None
) -> TrainingOutcome:
    """ASHA search on train/validation, every trial logged as a nested MLflow run, then the best
    config refit on train+validation for its best number of rounds/epochs and registered."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    run_id = run.run_id
    kind = config.training.model
    data = TuneData.from_run(run, run.fitted(), config.data.label_column)
    experiment = registry.experiment_id(config.registry.experiment)
    name = f"tune-{kind}-{run_id}-{datetime.now(timezone.utc):%H%M%S}"
    with mlflow.start_run(experiment_id=experiment, run_name=name) as parent:
        outcome = run_tune(data, model=kind, training=config.training, tuning=config.tuning, name=name)
        client = MlflowClient()
        for trial in outcome.trials:
            child = client.create_run(
                experiment, run_name=f"trial-{trial.trial_id}", tags={"mlflow.parentRunId": parent.info.run_id}
            )
            now = int(time.time() * 1000)
            metrics = [Metric(k, v, now, 0) for k, v in trial.metrics.items() if k.startswith(("best_", "validation_"))]
            metrics += [
                Metric(
                    key,
                    float(point[key]),
                    now,
                    int(point.get("rounds") or point.get("epoch") or point["training_iteration"]),
                )
                for point in trial.curve
                for key in ("validation_auc", "validation_logloss")
                if key in point
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
        params = {k: v for k, v in outcome.best_params.items() if k not in ("num_boost_round", "epochs")}
        return train_and_register(
            config,
            run,
            params=params,
            steps=max(1, outcome.best_steps),
            refit=True,
            parent_run_id=parent.info.run_id,
            tuning=json.loads(json.dumps(summary, default=str)),
            evaluation=evaluation,
        )


def train_or_tune(
    config: RayloopConfig, run: PreprocessRun, *, evaluation: EvaluationData | None = None
) -> TrainingOutcome:
    """Tune then refit when `tuning.enabled`, else one training run; registered as challenger."""
    if config.tuning.enabled:
        return tune_and_register(config, run, evaluation=evaluation)
    return train_and_register(config, run, evaluation=evaluation)
