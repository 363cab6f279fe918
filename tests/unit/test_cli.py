"""The `rayloop` command's failures: one line naming what is wrong and what to run, the right exit
code, no traceback, and no Ray started to find out."""

from __future__ import annotations

from typer.testing import CliRunner

from rayloop.cli import app


def test_train_on_a_missing_preprocess_run_says_what_to_run_first_in_one_line(rayloop_home):
    runs = rayloop_home / "runs"
    assert not (runs / "nope").exists()
    for command in ("train", "tune"):
        result = CliRunner().invoke(app, [command, "--set", "data.preprocess_run=nope"])
        assert result.exit_code == 1, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1, result.output
        assert "'nope'" in lines[0] and "rayloop preprocess" in lines[0] and "Traceback" not in result.output


def test_train_with_no_preprocess_run_at_all_names_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYLOOP_HOME", str(tmp_path / "empty-home"))
    result = CliRunner().invoke(app, ["train"])
    assert result.exit_code == 1, result.output
    assert "no preprocess run under" in result.output and str(tmp_path / "empty-home") in result.output


def test_a_run_missing_a_file_names_the_run_and_the_file(rayloop_home):
    run = rayloop_home / "runs" / "half-done"
    (run / "features").mkdir(parents=True)
    (run / "summary.json").write_text("{}")
    result = CliRunner().invoke(app, ["train", "--set", "data.preprocess_run=half-done"])
    assert result.exit_code == 1, result.output
    assert "'half-done'" in result.output and "fitted_features.json" in result.output
    assert "rayloop preprocess" in result.output


def test_a_config_error_is_exit_2_and_a_failed_operation_exit_1():
    bad = CliRunner().invoke(app, ["train", "--set", "training.num_workers=-3"])
    assert bad.exit_code == 2 and "training.num_workers" in bad.output
