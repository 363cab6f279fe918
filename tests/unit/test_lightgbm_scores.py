"""The validation scores kept while LightGBM trains are the saved model's predictions, for every
task, whether early stopping cut the run or not; the final metrics equal a prediction pass's."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest

from rayloop.training.lightgbm import BestValidationScores, _validation_metrics

PARAMS = {
    "binary": {"objective": "binary", "metric": ["binary_logloss", "auc"]},
    "multiclass": {"objective": "multiclass", "num_class": 3, "metric": ["multi_logloss"]},
    "regression": {"objective": "regression", "metric": ["l2", "l1"]},
}


def _data(kind: str, rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 6)).astype(np.float32)
    signal = x[:, 0] + 0.5 * x[:, 1] * x[:, 2]
    noisy = signal + rng.normal(scale=1.5, size=rows)  # noisy enough that the validation loss turns
    if kind == "binary":
        return x, (noisy > 0).astype(np.float64)
    if kind == "multiclass":
        return x, np.digitize(noisy, [-0.7, 0.7]).astype(np.float64)
    return x, noisy


def _train(kind: str, rounds: int, stopping: int):
    x, y = _data(kind, 4000, seed=1)
    xv, yv = _data(kind, 1500, seed=2)
    train = lgb.Dataset(x, y, free_raw_data=False)
    valid = lgb.Dataset(xv, yv, reference=train, free_raw_data=False)
    kept = BestValidationScores()
    trained = {"rounds": 0}

    def count(env) -> None:
        trained["rounds"] = env.iteration + 1

    booster = lgb.train(
        {**PARAMS[kind], "verbosity": -1, "learning_rate": 0.3, "num_leaves": 31, "num_threads": 1},
        train,
        num_boost_round=rounds,
        valid_sets=[valid],
        valid_names=["validation"],
        feval=kept.feval,
        callbacks=[lgb.early_stopping(stopping, first_metric_only=True, verbose=False), count, kept.keep_best],
    )
    return booster, kept, trained["rounds"], xv, yv


@pytest.mark.parametrize("kind", ["binary", "multiclass", "regression"])
def test_kept_scores_are_the_cut_models_predictions_when_early_stopping_fires(kind):
    booster, kept, rounds, xv, yv = _train(kind, rounds=400, stopping=10)
    best = booster.best_iteration
    assert 0 < best < rounds  # early stopping cut the run: the kept round is not the last one
    assert kept.best_iteration == best
    scores = kept.at(best)
    assert scores is not None and scores.shape == booster.predict(xv, num_iteration=best).shape
    np.testing.assert_allclose(scores, booster.predict(xv, num_iteration=best), rtol=0, atol=1e-9)
    assert _validation_metrics(booster, xv, yv, kind, scores) == pytest.approx(
        _validation_metrics(booster, xv, yv, kind), rel=1e-9, abs=1e-12
    )


def test_kept_scores_follow_the_best_round_when_the_run_ends_without_stopping():
    booster, kept, rounds, xv, _ = _train("binary", rounds=25, stopping=25)
    assert rounds == 25 and kept.best_iteration == booster.best_iteration
    np.testing.assert_allclose(
        kept.at(booster.best_iteration), booster.predict(xv, num_iteration=booster.best_iteration), atol=1e-9
    )


def test_other_rounds_fall_back_to_a_prediction_pass():
    booster, kept, _, xv, yv = _train("binary", rounds=400, stopping=10)
    assert kept.at(booster.best_iteration + 1) is None  # e.g. a resumed model that is not the kept one
    wrong_size = np.zeros(3)
    assert _validation_metrics(booster, xv, yv, "binary", wrong_size) == _validation_metrics(booster, xv, yv, "binary")


def test_the_scorer_adds_no_metric_to_the_evaluation():
    curve: dict = {}
    x, y = _data("regression", 500, seed=3)
    data = lgb.Dataset(x, y)
    lgb.train(
        {**PARAMS["regression"], "verbosity": -1, "num_threads": 1},
        data,
        num_boost_round=3,
        valid_sets=[lgb.Dataset(x, y, reference=data)],
        valid_names=["validation"],
        feval=BestValidationScores().feval,
        callbacks=[lgb.record_evaluation(curve)],
    )
    assert set(curve["validation"]) == {"l2", "l1"}
