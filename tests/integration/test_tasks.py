"""Every task through the normal path, on real tables: scikit-learn's bundled data sets written to
Parquet and read with `data.source` (schema inferred, no id or timestamp column), trained by
rayloop and compared with plain LightGBM on the same split and parameters; each champion loaded
by alias through mlflow.pyfunc answers as the Serve app does over HTTP; and a time-split table
whose label relation changes partway, where the served refit must learn from the newest rows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import lightgbm as lgb
import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from ray import serve
from sklearn import metrics as skm

from rayloop import registry
from rayloop.config import ConfigSource, load_config
from rayloop.control.deploy import deploy
from rayloop.control.train import TrainingOutcome, train_and_register
from rayloop.data.examples import LABEL, example_table, write_example
from rayloop.data.split import assign_by_content
from rayloop.preprocess import PreprocessRun, run_preprocess
from rayloop.runtime import free_port

pytestmark = pytest.mark.slow

# (task, the metric compared, how far rayloop's may be from plain LightGBM's, absolute or relative).
# rayloop trains on its own features (standardized floats, LightGBM's bins drawn from them), not on
# the raw columns, so the trees are not bit-identical; the margins allow that and no more: a
# misread label, a wrong objective or a lost split would be far outside them.
CASES = {
    "breast_cancer": ("binary", "auc", 0.01, "absolute"),
    "wine": ("multiclass", "macro_f1", 0.05, "absolute"),  # 27 test rows: one row moves F1 ~0.04
    "digits": ("multiclass", "macro_f1", 0.02, "absolute"),
    "diabetes": ("regression", "rmse", 0.03, "relative"),
}
PARAMS = {"learning_rate": 0.05, "num_leaves": 31}  # rayloop's defaults (config.LIGHTGBM_DEFAULTS)
ROUNDS, PATIENCE = 200, 20
FRACTIONS = (0.7, 0.15, 0.15)  # data.split defaults


@dataclass(frozen=True)
class Trained:
    name: str
    table: pa.Table
    run: PreprocessRun
    outcome: TrainingOutcome
    model_name: str


def _overrides(name: str, path: Path) -> list[str]:
    return [
        f"data.source={path}",
        f"data.label_column={LABEL}",
        f"registry.model_name=tasks-{name}",
        # the evaluation fit is what is compared and served here; the refit on every split has its
        # own test below (and test_backtest.py serves one): two Ray Train runs fewer per case
        "training.refit=none",
    ]


@pytest.fixture(scope="module")
def trained(ray_session, rayloop_home) -> dict[str, Trained]:
    """Each example through preprocess -> train -> register -> the gate (first version: champion)."""
    out = {}
    for name in CASES:
        path = write_example(name, rayloop_home / "examples" / f"{name}.parquet")
        config = load_config(None, _overrides(name, path))
        run = PreprocessRun.open(run_preprocess(config).run_id)
        outcome = train_and_register(config, run)
        decision = registry.promote(
            config.registry.model_name, outcome.version, run.holdout(), judge=outcome.evaluation_bundle
        )
        assert decision.promote, decision
        out[name] = Trained(name, example_table(name), run, outcome, config.registry.model_name)
    return out


def _plain_lightgbm(table: pa.Table, kind: str, classes: list) -> tuple[np.ndarray, np.ndarray]:
    """Plain LightGBM on the raw columns, on the split rayloop made (the same content hash), with
    the same parameters and early stopping: (test labels, test scores)."""
    split = np.asarray(assign_by_content(table, table.column_names, FRACTIONS, seed=0).to_pylist())
    features = [n for n in table.column_names if n != LABEL]
    x = np.column_stack([table.column(n).to_numpy() for n in features])
    y = table.column(LABEL).to_numpy()
    if kind != "regression":
        y = np.searchsorted(np.asarray(classes), y)  # class codes in rayloop's class order
    objective = {"binary": {"objective": "binary"}, "regression": {"objective": "regression"}}.get(
        kind, {"objective": "multiclass", "num_class": len(classes), "metric": "multi_logloss"}
    )
    parts = {s: (x[split == s], y[split == s]) for s in ("train", "validation", "test")}
    train = lgb.Dataset(*parts["train"])
    booster = lgb.train(
        {**PARAMS, **objective, "verbosity": -1},
        train,
        num_boost_round=ROUNDS,
        valid_sets=[lgb.Dataset(*parts["validation"], reference=train)],
        callbacks=[lgb.early_stopping(PATIENCE, verbose=False)],
    )
    return parts["test"][1], booster.predict(parts["test"][0], num_iteration=booster.best_iteration)


def _metric(kind: str, metric: str, y: np.ndarray, scores: np.ndarray) -> float:
    if metric == "auc":
        return float(skm.roc_auc_score(y, scores))
    if metric == "macro_f1":
        return float(skm.f1_score(y, scores.argmax(axis=1), average="macro"))
    return float(np.sqrt(skm.mean_squared_error(y, scores)))


@pytest.mark.parametrize("name", list(CASES))
def test_the_test_metric_is_within_its_margin_of_plain_lightgbm(trained, name):
    kind, metric, margin, how = CASES[name]
    t = trained[name]
    task = t.run.task()
    # read off the data: the task, the class list, a content-hash split (no id, no timestamp)
    assert task.kind == kind
    summary = t.run.summary()
    assert summary["split_method"] == "content"
    if kind != "regression":
        assert task.classes == sorted(set(t.table.column(LABEL).to_pylist()))
    y_plain, plain_scores = _plain_lightgbm(t.table, kind, task.classes)
    # the split is the same: the rows rayloop held out are the ones plain LightGBM is tested on
    assert t.run.holdout().num_rows == len(y_plain)
    assert sorted(t.run.holdout().column(LABEL).to_pylist()) == _test_labels(t.table)
    plain = _metric(kind, metric, y_plain, plain_scores)
    ours = t.outcome.test_metrics[metric]
    allowed = margin * abs(plain) if how == "relative" else margin
    print(f"{name}: rayloop {metric}={ours:.4f}, plain LightGBM {plain:.4f}")
    assert abs(ours - plain) <= allowed, (name, metric, ours, plain, allowed)


def _test_labels(table: pa.Table) -> list:
    split = assign_by_content(table, table.column_names, FRACTIONS, seed=0)
    return sorted(table.filter(pc.equal(split, "test")).column(LABEL).to_pylist())


@pytest.mark.parametrize(("name", "metric"), [("wine", "macro_f1"), ("diabetes", "rmse")])
def test_the_mlp_learns_every_task_from_the_same_run(trained, name, metric):
    """The MLP's softmax and linear heads through the same path (TorchTrainer, the two fits, the
    bundle): better than a constant guess by a wide margin."""
    t = trained[name]
    overrides = [*_overrides(name, Path("unused")), "training.model=mlp", f"registry.model_name=tasks-mlp-{name}"]
    overrides += [
        "training.mlp.epochs=60",
        "training.mlp.batch_size=32",
        "training.mlp.lr=0.01",
        "training.mlp.patience=10",
    ]
    outcome = train_and_register(load_config(None, overrides), t.run)
    bundle = registry.load_bundle(f"tasks-mlp-{name}", outcome.version)
    assert bundle.kind == "mlp" and bundle.task == t.run.task()
    ours = outcome.test_metrics[metric]
    if metric == "macro_f1":
        assert ours >= 0.85, outcome.test_metrics  # a constant guess scores about 0.2
    else:
        y = t.run.holdout().column(LABEL).to_numpy()
        assert ours <= 0.85 * float(np.std(y)), (ours, np.std(y))  # a constant guess scores std(y)
        assert 0.6 <= outcome.test_metrics["interval_coverage"] <= 1.0
    frame = mlflow.pyfunc.load_model(registry.model_uri(f"tasks-mlp-{name}", outcome.version)).predict(
        t.table.slice(0, 5).to_pandas()
    )
    assert len(frame) == 5 and ("prediction" if metric == "rmse" else "label") in frame.columns


def test_rows_without_a_label_are_rejected_with_their_reason_and_the_counts_add_up(ray_session, rayloop_home):
    table = example_table("diabetes")
    labels = table.column(LABEL).to_numpy().copy()
    labels[[3, 50, 200]] = np.nan
    values = pa.array([None if i == 7 else v for i, v in enumerate(labels.tolist())], pa.float64())
    table = table.set_column(table.schema.get_field_index(LABEL), LABEL, values)
    path = rayloop_home / "unlabelled" / "diabetes.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(table, path)
    result = run_preprocess(load_config(None, [f"data.source={path}", f"data.label_column={LABEL}"]))
    assert result.task["kind"] == "regression"
    assert (result.rows_total, result.rows_rejected, result.rows_good) == (442, 4, 438)
    assert sum(result.rows_per_split.values()) == result.rows_good
    rejects = pq.read_table(Path(result.run_dir) / "rejects")
    reasons = rejects.column("reason").to_pylist()
    assert len(reasons) == 4 and all(r.startswith(f"column={LABEL} rule=null") for r in reasons), reasons


# ---- a label relation that changes partway ----------------------------------------------------
def _drifting_table(n: int, seed: int, trend: tuple[float, float], start: datetime) -> pa.Table:
    """Binary rows in time order. `trend` (a slowly rising measurement, e.g. a yearly temperature)
    spans `trend`; from trend 7 on the label also depends on x2, which it did not before."""
    rng = np.random.default_rng(seed)
    z = np.linspace(*trend, n) + rng.normal(0, 0.2, n)
    x1, x2, x3 = rng.normal(size=(3, n))
    old, new = 3.0 * x1, 1.0 * x1 + 3.0 * x2
    logit = np.where(z < 7.0, old, new)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    times = [start + timedelta(hours=i) for i in range(n)]
    return pa.table(
        {
            "event_time": pa.array(times, pa.timestamp("us", tz="UTC")),
            "trend": z,
            "x1": x1,
            "x2": x2,
            "x3": x3,
            "label": y,
        }
    )


def test_the_served_refit_learns_the_newest_rows_where_a_train_split_fit_cannot(ray_session, rayloop_home):
    start = datetime(2020, 1, 1, tzinfo=timezone.utc)
    n = 6000
    # the relation changes at trend 7: the oldest 70% (the time split's train) never show it
    table = _drifting_table(n, 1, (0.0, 10.0), start)
    future = _drifting_table(3000, 2, (10.0, 11.5), start + timedelta(hours=n))
    path = rayloop_home / "drift" / "weather.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(table, path)
    config = load_config(None, [f"data.source={path}", "registry.model_name=tasks-drift", "data.id_column=null"])
    run = PreprocessRun.open(run_preprocess(config).run_id)
    assert run.summary()["split_method"] == "time"
    outcome = train_and_register(config, run)
    assert outcome.evaluation_bundle is not None
    served_auc = _auc(registry.load_bundle("tasks-drift", outcome.version), future)
    train_only_auc = _auc(outcome.evaluation_bundle, future)

    # plain LightGBM refit on every row, with the same parameters and rounds
    features = ["trend", "x1", "x2", "x3"]
    x = np.column_stack([table.column(c).to_numpy() for c in features])
    booster = lgb.train(
        {**PARAMS, "objective": "binary", "verbosity": -1},
        lgb.Dataset(x, table.column("label").to_numpy()),
        num_boost_round=outcome.steps,
    )
    x_future = np.column_stack([future.column(c).to_numpy() for c in features])
    plain_auc = float(skm.roc_auc_score(future.column("label").to_numpy(), booster.predict(x_future)))
    print(f"future AUC: served {served_auc:.3f}, plain refit {plain_auc:.3f}, train split only {train_only_auc:.3f}")
    assert abs(served_auc - plain_auc) <= 0.02  # the served model is the refit on every row
    assert served_auc >= train_only_auc + 0.05  # and it learned what only the newest rows show
    fits = registry.load_bundle("tasks-drift", outcome.version).lineage["fits"]
    assert fits["evaluation"]["splits"] == ["train"] and fits["refit"]["splits"] == ["train", "validation", "test"]


def _auc(bundle, rows: pa.Table) -> float:
    return float(skm.roc_auc_score(rows.column("label").to_numpy(), bundle.predict_scores(rows)))


# ---- each champion served (after the tests that train: replicas hold CPUs a training run needs)
@pytest.fixture(scope="module")
def served(trained) -> dict[str, str]:
    """Each champion in its own Serve app on one HTTP port: name -> base URL."""
    port = free_port()
    urls = {}
    try:
        for name in trained:
            source = ConfigSource(
                overrides=(
                    *_overrides(name, Path("unused")),
                    "monitoring.enabled=false",
                    "serving.min_replicas=1",
                    "serving.max_replicas=1",
                    "serving.replica_cpus=0.1",
                    f"serving.port={port}",
                )
            )
            urls[name] = deploy(source, name=f"tasks-{name}", route_prefix=f"/{name}")
        yield urls
    finally:
        serve.shutdown()


@pytest.mark.parametrize("name", list(CASES))
def test_the_champion_by_alias_answers_as_the_served_app(trained, served, name):
    t = trained[name]
    rows = t.table.slice(0, 40)  # training rows as they are, the label included (accepted, ignored)
    got = httpx.post(f"{served[name]}/v1/predict", json=rows.to_pylist(), timeout=60)
    assert got.status_code == 200, got.text
    answers = got.json()["predictions"]
    champion = mlflow.pyfunc.load_model(registry.model_uri(t.model_name, registry.CHAMPION))
    expected = champion.predict(rows.to_pandas())
    assert {a["model_version"] for a in answers} == {t.outcome.version}
    kind = CASES[name][0]
    if kind == "regression":
        np.testing.assert_allclose([a["prediction"] for a in answers], expected["prediction"], rtol=1e-12)
        np.testing.assert_allclose([a["interval"][0] for a in answers], expected["lower"], rtol=1e-12)
        np.testing.assert_allclose([a["interval"][1] for a in answers], expected["upper"], rtol=1e-12)
        assert all(a["interval"][0] < a["prediction"] < a["interval"][1] for a in answers)
    elif kind == "binary":
        np.testing.assert_allclose([a["probability"] for a in answers], expected["probability"], rtol=1e-12)
        assert [a["label"] for a in answers] == expected["label"].tolist()
    else:
        classes = t.run.task().classes
        assert [a["label"] for a in answers] == expected["label"].tolist()
        for c in classes:
            np.testing.assert_allclose(
                [a["probabilities"][str(c)] for a in answers], expected[f"probability.{c}"], rtol=1e-12
            )
        assert all(abs(sum(a["probabilities"].values()) - 1) < 1e-9 for a in answers)
    info = httpx.get(f"{served[name]}/v1/model", timeout=10).json()
    assert info["task"] == kind


@pytest.mark.parametrize(
    ("name", "good", "bad"),
    [
        # wine's classes are the ints 0, 1, 2
        ("wine", 2, [(7, "unknown_class"), ("two", "type"), (True, "type"), (1.5, "type")]),
        ("diabetes", 151.0, [("high", "float_type"), (True, "float_type"), (None, "float_type")]),
    ],
)
def test_feedback_takes_the_tasks_label_type_and_names_the_field_and_rule_otherwise(served, name, good, bad):
    with httpx.Client(base_url=served[name], timeout=30) as client:
        request_id = client.post("/v1/predict", json=example_table(name).slice(0, 1).to_pylist()).json()
        request_id = request_id["predictions"][0]["request_id"]
        for label, rule in bad:
            got = client.post("/v1/feedback", json={"request_id": request_id, "label": label})
            assert got.status_code == 422, (label, got.text)
            assert [(d["field"], d["rule"]) for d in got.json()["detail"]] == [("feedback.label", rule)], got.text
        assert client.post("/v1/feedback", json={"request_id": request_id, "label": good}).status_code == 202
