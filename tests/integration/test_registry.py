"""The registry on a real MLflow sqlite store: bundles, aliases, the gate, rollback (no Ray needed)."""

from __future__ import annotations

import json

import lightgbm as lgb
import mlflow
import numpy as np
import pytest

from rayloop import audit, registry
from rayloop.bundle import ModelBundle
from rayloop.data.synthetic import generate
from rayloop.errors import RegistryError
from tests.support import fitted_synthetic

NAME = "registry-test"


@pytest.fixture(scope="module")
def parts():
    config, train, fitted, profile = fitted_synthetic(6000, seed=11)
    x, y = fitted.transform(train), train.column("label").to_numpy()

    def bundle(rounds: int, labels: np.ndarray) -> ModelBundle:
        booster = lgb.train(
            {"objective": "binary", "verbosity": -1, "seed": 1},
            lgb.Dataset(x, labels, categorical_feature=fitted.categorical_indices),
            num_boost_round=rounds,
        )
        return ModelBundle("lightgbm", booster, fitted, config.data.schema_, profile, metrics={"auc": 0.0})

    good = bundle(60, y)
    # deliberately worse: trained on shuffled labels, so it has learned nothing
    worse = bundle(60, np.random.default_rng(0).permutation(y))
    return good, worse, generate(3000, seed=12)


def _log(bundle: ModelBundle, holdout) -> str:
    registry.client()
    with mlflow.start_run(experiment_id=registry.experiment_id("registry-tests")):
        return registry.log_bundle(bundle, model_name=NAME, example=holdout)


def test_gate_promotes_the_first_model_refuses_a_worse_one_and_rollback_restores(parts):
    good, worse, holdout = parts
    v1 = _log(good, holdout)
    assert registry.resolve_version(NAME, registry.CHALLENGER) == v1
    first = registry.promote(NAME, v1, holdout)
    assert first.promote and first.reason == "no champion to beat"
    assert registry.resolve_version(NAME, registry.CHAMPION) == v1
    assert registry.resolve_version(NAME, registry.CHALLENGER) is None  # promoted: no longer a challenger

    v2 = _log(worse, holdout)
    refused = registry.promote(NAME, v2, holdout, tolerance=0.005)
    assert not refused.promote
    assert refused.champion > 0.75 and refused.challenger < 0.6
    lo, hi = refused.difference_interval  # the paired bootstrap brackets the observed difference
    assert lo <= refused.challenger - refused.champion <= hi < 0 and "bootstrap interval" in refused.reason
    assert registry.resolve_version(NAME, registry.CHAMPION) == v1  # the champion stays
    assert registry.resolve_version(NAME, registry.CHALLENGER) == v2
    tags = registry.client().get_model_version(NAME, v2).tags
    assert tags["rayloop.gate.decision"] == "refused"
    assert "below the champion" in tags["rayloop.gate.reason"]
    assert json.loads(tags["rayloop.gate.difference_interval"]) == [lo, hi]
    assert audit.read(event="promotion_refused")[-1]["version"] == v2

    # a retrained good model passes; rollback returns to v1, and then there is nothing before v1
    v3 = _log(good, holdout)
    assert registry.promote(NAME, v3, holdout).promote
    assert registry.resolve_version(NAME, registry.CHAMPION) == v3
    assert registry.rollback(NAME) == (v3, v1)
    assert registry.resolve_version(NAME, registry.CHAMPION) == v1
    assert audit.read(event="rolled_back")[-1] == {**audit.read(event="rolled_back")[-1], "version": v1, "previous": v3}
    with pytest.raises(RegistryError, match="no previous champion"):
        registry.rollback(NAME)


def test_the_registered_pyfunc_predicts_from_raw_rows_like_the_bundle(parts):
    good, _, holdout = parts
    version = _log(good, holdout)
    model = mlflow.pyfunc.load_model(registry.model_uri(NAME, version))
    frame = holdout.to_pandas()
    answer = model.predict(frame)  # the task's outputs: a binary model's probability and class
    native = good.model.predict(good.fitted.transform(holdout))
    assert np.array_equal(answer["probability"].to_numpy(), native)
    assert answer["label"].tolist() == [int(p >= 0.5) for p in native]
    info = model.metadata.get_input_schema()
    assert set(info.input_names()) == set(good.input_columns)
    loaded = registry.load_bundle(NAME, version)
    assert loaded.fitted.content_hash == good.fitted.content_hash


def test_the_gate_scores_a_champion_the_caller_holds_only_under_its_version(parts):
    good, worse, holdout = parts
    champion = _log(good, holdout)
    registry.client().set_registered_model_alias(NAME, registry.CHAMPION, champion)
    # what the registry holds for the champion (the good model) vs a bundle passed for its version
    plain = registry.promote(NAME, _log(good, holdout), holdout, tolerance=1.0)
    registry.client().set_registered_model_alias(NAME, registry.CHAMPION, champion)
    held = registry.promote(NAME, _log(good, holdout), holdout, tolerance=1.0, loaded={champion: worse})
    assert held.champion < 0.6 < 0.75 < plain.champion  # the held bundle was scored, not loaded again
    registry.client().set_registered_model_alias(NAME, registry.CHAMPION, champion)
    stale = registry.promote(NAME, _log(good, holdout), holdout, tolerance=1.0, loaded={"0": worse})
    assert stale.champion == plain.champion  # a bundle of another version is not the champion


def test_promote_refuses_a_holdout_without_labels_and_an_unknown_version(parts):
    good, _, holdout = parts
    version = _log(good, holdout)
    with pytest.raises(RegistryError, match="has no version or alias"):
        registry.promote(NAME, "999", holdout)
    with pytest.raises(Exception, match="label"):
        registry.promote(NAME, version, holdout.drop_columns(["label"]))


def test_the_cli_promotes_with_exit_1_on_refusal_and_explains_a_rollback_without_history(parts, tmp_path):
    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from rayloop.cli import app

    good, worse, holdout = parts
    name = "registry-cli"
    registry.client()
    with mlflow.start_run(experiment_id=registry.experiment_id("registry-tests")):
        first = registry.log_bundle(good, model_name=name)
        registry.log_bundle(worse, model_name=name)
    pq.write_table(holdout, tmp_path / "holdout.parquet")
    runner, name_opt = CliRunner(), ["--set", f"registry.model_name={name}"]
    promoted = runner.invoke(
        app, ["promote", *name_opt, "--version", first, "--holdout", str(tmp_path / "holdout.parquet")]
    )
    assert promoted.exit_code == 0 and "promoted to champion" in promoted.output
    refused = runner.invoke(
        app, ["promote", *name_opt, "--holdout", str(tmp_path / "holdout.parquet")]
    )  # the challenger
    assert refused.exit_code == 1 and "refused; champion unchanged" in refused.output
    assert registry.resolve_version(name, registry.CHAMPION) == first
    rolled = runner.invoke(app, ["rollback", *name_opt])
    assert rolled.exit_code == 1 and "no previous champion" in rolled.output
    shown = runner.invoke(app, ["status", *name_opt], terminal_width=200)
    assert shown.exit_code == 0
    assert "champion" in shown.output and "promotion_refused" in shown.output and "refused" in shown.output
    as_json = runner.invoke(app, ["status", *name_opt, "--json"])
    assert as_json.exit_code == 0, as_json.output
    doc = json.loads(as_json.output)
    assert {row["alias"]: row["version"] for row in doc["aliases"]}["champion"] == first
    assert any(e["event"] == "promotion_refused" for e in doc["events"]) and doc["serve"] is None
