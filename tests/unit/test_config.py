from __future__ import annotations

import pytest
from typer.testing import CliRunner

from rayloop.cli import app
from rayloop.config import (
    DEFAULT_CONFIG_PATH,
    apply_overrides,
    config_hash,
    load_config,
)
from rayloop.errors import ConfigError


def test_default_config_is_the_demo_file_and_declares_a_schema():
    config = load_config()
    assert DEFAULT_CONFIG_PATH.name == "demo.yaml"
    assert config.data.source == "synthetic"
    assert config.data.schema_ is not None
    assert "label" in config.data.schema_.names
    assert config.serving.host == "127.0.0.1"


def test_overrides_parse_yaml_values_into_nested_keys():
    config = load_config(
        None,
        [
            "data.synthetic.n_rows=1234",
            "features.time_features=[hour]",
            "data.timestamp_column=null",
            "tuning.enabled=false",
            "data.synthetic.scenario.kind=covariate",
        ],
    )
    assert config.data.synthetic.n_rows == 1234
    assert config.features.time_features == ["hour"]
    assert config.data.timestamp_column is None
    assert config.tuning.enabled is False
    assert config.data.synthetic.scenario is not None and config.data.synthetic.scenario.kind == "covariate"


def test_unknown_key_names_the_key_and_the_allowed_keys():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["data.synthetic.n_rowz=5"])
    message = str(info.value)
    assert "data.synthetic.n_rowz" in message
    assert "unknown key" in message
    assert "n_rows" in message and "seed" in message


def test_bad_value_names_key_value_and_rule():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["data.max_reject_ratio=2.5"])
    message = str(info.value)
    assert "data.max_reject_ratio" in message
    assert "2.5" in message
    assert "less than or equal to 1" in message


def test_bad_choice_lists_what_is_allowed():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["features.numeric_strategy=zscore"])
    message = str(info.value)
    assert "features.numeric_strategy" in message and "'zscore'" in message
    assert "standardize" in message and "quantile_bins" in message


def test_cross_field_rule_on_serving_limits():
    with pytest.raises(ConfigError, match="max_ongoing_requests .* must be at least max_batch_size"):
        load_config(None, ["serving.max_batch_size=128", "serving.max_ongoing_requests=8"])


def test_local_mode_retries_nothing_so_a_max_failures_set_beside_it_is_refused():
    with pytest.raises(ConfigError, match="max_failures=2 restarts lost workers, and num_workers=0"):
        load_config(None, ["training.num_workers=0", "training.max_failures=2"])
    # the default max_failures is no contradiction, nor an explicit 0
    assert load_config(None, ["training.num_workers=0"]).training.num_workers == 0
    # auto is the default and decides per run (rayloop.training.placement); any other word is an error
    assert load_config(None, []).training.num_workers == "auto"
    assert load_config(None, ["training.num_workers=auto", "training.max_failures=2"]).training.max_failures == 2
    with pytest.raises(ConfigError, match="training.num_workers"):
        load_config(None, ["training.num_workers=many"])
    assert load_config(None, ["training.num_workers=0", "training.max_failures=0"]).training.max_failures == 0
    assert load_config(None, ["training.num_workers=2", "training.max_failures=2"]).training.max_failures == 2


def test_split_fractions_must_sum_to_one():
    with pytest.raises(ConfigError, match="must be 1.0"):
        load_config(None, ["data.split.train=0.9"])


def test_synthetic_data_declares_the_generators_schema_and_a_users_file_is_inferred():
    regression = load_config(None, ["data.synthetic.task=regression"]).data.schema_
    assert regression.column("label").dtype == "float64" and regression.column("age").max == 120
    multiclass = load_config(None, ["data.synthetic.task=multiclass"]).data.schema_
    assert multiclass.column("label").categories == ["low", "medium", "high"]
    assert multiclass.column("channel").categories == ["web", "mobile", "store", "phone"]
    own = load_config(None, ["data.source=/data/mine.csv", "data.label_column=target"]).data
    assert own.schema_ is None and own.label_column == "target"


def test_schema_roles_must_exist():
    with pytest.raises(ConfigError, match="label_column='target' is not a column of data.schema"):
        load_config(None, ["data.label_column=target"])


@pytest.mark.parametrize("override", ["novalue", "=3", "a..b=1", "data.split=3"])
def test_malformed_overrides_are_rejected(override):
    with pytest.raises(ConfigError):
        load_config(None, [override])


def test_override_into_a_value_is_refused():
    with pytest.raises(ConfigError, match="is a value"):
        apply_overrides({"data": {"source": "x"}}, ["data.source.deep=1"])


def test_missing_config_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(missing)


def test_config_hash_is_stable_and_tracks_changes():
    a, b = load_config(), load_config()
    c = load_config(None, ["data.synthetic.seed=99"])
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash(c)


def test_cli_config_command_reports_errors_with_exit_2():
    runner = CliRunner()
    ok = runner.invoke(app, ["config", "--set", "data.synthetic.n_rows=10"])
    assert ok.exit_code == 0, ok.output
    assert "n_rows: 10" in ok.output
    bad = runner.invoke(app, ["config", "--set", "serving.port=70000"])
    assert bad.exit_code == 2
    assert "serving.port" in bad.output and "70000" in bad.output


def test_cli_env_prints_exports_for_token_auth_under_home(monkeypatch, tmp_path):
    from rayloop import paths

    monkeypatch.setenv("RAYLOOP_HOME", str(tmp_path))
    monkeypatch.setattr(paths, "MAX_RAY_TEMP_DIR_CHARS", 1000)  # no socket link for this check
    for var in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    out = CliRunner().invoke(app, ["env"]).output
    assert "export RAY_AUTH_MODE=token" in out
    assert f"export RAY_AUTH_TOKEN_PATH={tmp_path / 'auth_token'}" in out
    assert f"export RAYLOOP_HOME={tmp_path}" in out


def test_overriding_one_model_parameter_keeps_the_other_defaults():
    config = load_config(None, ["training.lightgbm.num_leaves=63", "training.mlp.epochs=2"])
    assert config.training.lightgbm["num_leaves"] == 63
    assert config.training.lightgbm["learning_rate"] == 0.05 and config.training.lightgbm["num_boost_round"] == 200
    assert config.training.mlp["epochs"] == 2 and config.training.mlp["hidden"] == [128, 64]
