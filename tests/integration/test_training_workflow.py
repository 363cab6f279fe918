"""Train / tune -> evaluate -> MLflow -> registry, on a real local Ray and a real MLflow sqlite store."""

from __future__ import annotations

from pathlib import Path

import lightgbm as lgb
import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from rayloop import paths, registry
from rayloop.cli import app
from rayloop.config import load_config
from rayloop.control.train import train_and_register, tune_and_register
from rayloop.training.tune import TuneData, run_tune

pytestmark = pytest.mark.slow


def test_train_and_register_logs_everything_and_the_bundle_matches_the_native_model(feature_run):
    config = load_config(
        None,
        [
            "registry.model_name=wf-train",
            "training.lightgbm.num_boost_round=60",
            "training.slice_column=channel",
        ],
    )
    outcome = train_and_register(config, feature_run.run)

    assert registry.resolve_version("wf-train", registry.CHALLENGER) == outcome.version
    assert outcome.test_metrics["auc"] > 0.75
    assert set(outcome.slice_metrics) >= {"web", "mobile"}
    client = registry.client()
    run = client.get_run(outcome.mlflow_run_id)
    assert run.data.params["model"] == "lightgbm" and run.data.params["learning_rate"] == "0.05"
    assert run.data.metrics["test_auc"] == pytest.approx(outcome.test_metrics["auc"])
    assert "test_slice.channel.web.auc" in run.data.metrics
    curve = client.get_metric_history(outcome.mlflow_run_id, "validation_auc")
    assert len(curve) >= 10 and [m.step for m in curve[:3]] == [1, 2, 3]  # a learning curve, per round
    tags = run.data.tags
    assert tags["rayloop.preprocess_run_id"] == feature_run.run_id
    assert tags["rayloop.features_hash"] == feature_run.fitted.content_hash
    assert len(tags["rayloop.data_fingerprint"]) == 24 and tags["rayloop.config_hash"]
    assert tags["rayloop.training.mode"] == "local"  # num_workers=auto on a small run

    # the registered pyfunc predicts from raw rows exactly as the checkpoint's booster on our features
    holdout = feature_run.run.holdout()
    pyfunc = mlflow.pyfunc.load_model(registry.model_uri("wf-train", outcome.version))
    booster = lgb.Booster(model_file=f"{outcome.checkpoint}/model.txt")
    native = booster.predict(feature_run.fitted.transform(holdout))
    assert np.array_equal(pyfunc.predict(holdout.to_pandas())["probability"].to_numpy(), native)
    bundle = registry.load_bundle("wf-train", outcome.version)
    assert bundle.profile.prediction_histogram is not None
    assert sum(bundle.profile.prediction_histogram.counts) == holdout.num_rows
    assert bundle.lineage["checkpoint"] == outcome.checkpoint
    assert bundle.metrics["auc"] == pytest.approx(outcome.test_metrics["auc"])
    # judged on a fit that never saw the test rows; served: the refit on every split, same rounds
    fits = bundle.lineage["fits"]
    assert fits["evaluation"]["splits"] == ["train"] and fits["evaluation"]["early_stopping_on"] == "validation"
    assert fits["refit"]["splits"] == ["train", "validation", "test"]
    assert fits["refit"]["steps"] == fits["evaluation"]["steps"] == outcome.steps
    assert fits["refit"]["checkpoint"] == outcome.checkpoint != fits["evaluation"]["checkpoint"]
    assert booster.num_trees() == outcome.steps
    assert outcome.evaluation_bundle is not None and outcome.evaluation_bundle.task.kind == "binary"


def test_auto_trains_a_small_run_in_the_driver_and_a_forced_group_on_workers_and_says_so(feature_run):
    overrides = ["training.lightgbm.num_boost_round=60", "training.refit=none"]
    # the default, num_workers=auto: 8k rows fit the driver's node many times over
    outcome = train_and_register(load_config(None, [*overrides, "registry.model_name=wf-local"]), feature_run.run)
    forced = load_config(
        None, [*overrides, "registry.model_name=wf-workers", "training.num_workers=2", "training.cpus_per_worker=0.5"]
    )
    workers = train_and_register(forced, feature_run.run)

    tags = registry.client().get_run(outcome.mlflow_run_id).data.tags
    assert tags["rayloop.training.mode"] == "local" and tags["rayloop.training.num_workers"] == "0"
    assert "local mode" in tags["rayloop.training.reason"] and "fits" not in tags["rayloop.training.reason"]
    assert outcome.placement["setting"] == "auto" and outcome.placement["threads"] >= 1
    forced_tags = registry.client().get_run(workers.mlflow_run_id).data.tags
    assert forced_tags["rayloop.training.mode"] == "workers" and forced_tags["rayloop.training.num_workers"] == "2"
    assert forced_tags["rayloop.training.reason"] == "training.num_workers=2 (as configured)"
    # the registered version carries it too, and `rayloop status` shows it
    version_tags = registry.client().get_model_version("wf-local", outcome.version).tags
    assert version_tags["rayloop.training.mode"] == "local" and version_tags["rayloop.training.setting"] == "auto"
    shown = CliRunner().invoke(app, ["status", "--set", "registry.model_name=wf-local"], terminal_width=400)
    said = " ".join(shown.output.split())
    assert shown.exit_code == 0 and f"v{outcome.version} trained in local mode (training.num_workers=auto)" in said

    assert Path(outcome.checkpoint).is_relative_to(paths.train_storage())  # kept, where worker runs keep theirs
    # the same data and parameters: data-parallel trees differ only in LightGBM's distributed histograms
    assert outcome.test_metrics["auc"] == pytest.approx(workers.test_metrics["auc"], abs=0.01)
    holdout = feature_run.run.holdout()
    booster = lgb.Booster(model_file=f"{outcome.checkpoint}/model.txt")
    bundle = registry.load_bundle("wf-local", outcome.version)
    assert np.array_equal(bundle.predict_scores(holdout), booster.predict(feature_run.fitted.transform(holdout)))


def test_a_local_mode_mlp_keeps_its_learning_curve_and_best_epoch(feature_run):
    # Ray's local mode has no metrics history; rayloop keeps it in the run's checkpoints
    overrides = ["training.model=mlp", "training.mlp.epochs=4", "training.mlp.patience=10", "training.refit=none"]
    config = load_config(None, [*overrides, "registry.model_name=wf-local-mlp", "training.num_workers=0"])
    outcome = train_and_register(config, feature_run.run)
    curve = registry.client().get_metric_history(outcome.mlflow_run_id, "validation_logloss")
    assert [m.step for m in curve] == [1, 2, 3, 4]
    best = min(range(4), key=lambda i: curve[i].value) + 1
    assert outcome.steps == best and outcome.test_metrics["auc"] > 0.7


def test_tune_logs_every_trial_and_refits_the_best_on_every_split(feature_run):
    config = load_config(
        None,
        [
            "registry.model_name=wf-tune",
            "tuning.num_samples=3",
            "tuning.max_concurrent_trials=2",
            "training.lightgbm.num_boost_round=60",
            "tuning.report_every_rounds=10",
        ],
    )
    outcome = tune_and_register(config, feature_run.run)

    assert outcome.tuning["trials"] == 3
    assert outcome.steps == outcome.tuning["best_steps"]  # both fits ran the best trial's rounds
    assert outcome.test_metrics["auc"] > 0.75
    bundle = registry.load_bundle("wf-tune", outcome.version)
    fits = bundle.lineage["fits"]
    assert fits["evaluation"] == {**fits["evaluation"], "splits": ["train"], "early_stopping_on": None}
    assert fits["refit"]["splits"] == ["train", "validation", "test"] and fits["refit"]["steps"] == outcome.steps
    for key in ("learning_rate", "num_leaves"):
        assert bundle.model_params[key] == outcome.tuning["best_params"][key]
    parent = MlflowClient().get_run(outcome.mlflow_run_id).data.tags["mlflow.parentRunId"]
    children = MlflowClient().search_runs(
        [MlflowClient().get_run(parent).info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'"
    )
    trials = [r for r in children if r.info.run_name.startswith("trial-")]
    assert len(trials) == 3
    assert all("learning_rate" in r.data.params and "best_validation_auc" in r.data.metrics for r in trials)
    best = max(r.data.metrics["best_validation_auc"] for r in trials)
    assert outcome.tuning["best_metrics"]["best_validation_auc"] == pytest.approx(best)


def test_mlp_trials_report_per_epoch_and_the_best_is_the_maximum(feature_run):
    config = load_config(
        None,
        [
            "training.model=mlp",
            "training.mlp.epochs=3",
            "tuning.num_samples=2",
            "tuning.scheduler=fifo",
        ],
    )
    data = TuneData.from_run(feature_run.run, feature_run.fitted, "label")
    outcome = run_tune(
        data,
        model="mlp",
        task=feature_run.run.task(),
        training=config.training,
        tuning=config.tuning,
        name=f"mlp-tune-{feature_run.run_id}",
    )
    assert len(outcome.trials) == 2
    assert all(t.iterations == len(t.curve) >= 1 for t in outcome.trials)
    assert outcome.best_metrics["best_validation_auc"] == max(t.metrics["best_validation_auc"] for t in outcome.trials)
    assert 1 <= outcome.best_steps <= 3
    assert outcome.trial_seconds > 0


def test_workers_taking_every_cpu_fail_at_once_instead_of_waiting_forever(feature_run):
    # the session's local Ray has 2 CPUs: two 1-CPU workers would starve the data ingest
    from rayloop.errors import ConfigError

    config = load_config(None, ["registry.model_name=wf-starved", "training.num_workers=2"])
    with pytest.raises(ConfigError, match="training.num_workers=2"):
        train_and_register(config, feature_run.run)
    assert registry.resolve_version("wf-starved", registry.CHALLENGER) is None
