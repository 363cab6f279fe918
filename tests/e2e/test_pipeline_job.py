"""`ray job submit` of the whole training pipeline against a real head with token auth on; the
registered champion, loaded through MLflow, predicts from raw rows exactly as the native path."""

from __future__ import annotations

import lightgbm as lgb
import mlflow
import numpy as np
import pytest

from rayloop import registry
from rayloop.preprocess import PreprocessRun
from tests.support import last_json, run_job

pytestmark = pytest.mark.slow

MODEL = "e2e-pipeline"


def test_ray_job_submit_of_the_pipeline_registers_a_champion_that_predicts_like_the_native_model(ray_head):
    logs = run_job(
        ray_head,
        "pipeline-e2e",
        [
            "python",
            "-m",
            "workloads.pipeline",
            "--config",
            "configs/demo.yaml",
            "--set",
            "data.synthetic.n_rows=8000",
            "--set",
            "data.synthetic.seed=31",
            "--set",
            f"registry.model_name={MODEL}",
            "--set",
            "tuning.num_samples=2",
            "--set",
            "training.lightgbm.num_boost_round=60",
        ],
    )
    result = last_json(logs)

    assert result["promoted"] and result["gate"]["reason"] == "no champion to beat"
    champion = registry.resolve_version(MODEL, registry.CHAMPION)
    assert champion == result["version"]
    assert result["training"]["tuning"]["trials"] == 2

    # raw rows in, the bundle applies the features: equal to the checkpoint's booster on our transform
    run = PreprocessRun.open(result["preprocess_run_id"])
    holdout, fitted = run.holdout(), run.fitted()
    pyfunc = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    native = lgb.Booster(model_file=f"{result['training']['checkpoint']}/model.txt").predict(fitted.transform(holdout))
    raw = holdout.drop_columns(["label"]).to_pandas()
    assert np.array_equal(pyfunc.predict(raw)["probability"].to_numpy(), native)
    assert result["test_metrics"]["auc"] > 0.75
