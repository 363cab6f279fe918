"""The `rayloop` command (typer + rich). Thin: every command calls a library function."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Annotated, Optional

import typer
import yaml
from rich.console import Console
from rich.table import Table

from rayloop import paths
from rayloop.config import RayloopConfig, config_hash, load_config
from rayloop.errors import RayloopError

app = typer.Typer(help="rayloop: train, serve, monitor and retrain a tabular model as one loop on Ray.", no_args_is_help=True)
console = Console()

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config (default: configs/demo.yaml)")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="override key.sub=value (repeatable)")]
AddressOpt = Annotated[Optional[str], typer.Option("--address", help="Ray address to join (default: RAY_ADDRESS or a new local cluster)")]


def _config(config: Path | None, overrides: list[str] | None) -> RayloopConfig:
    try:
        return load_config(config, overrides or [])
    except RayloopError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


def _fail(exc: RayloopError) -> typer.Exit:
    console.print(f"[red]error:[/red] {exc}")
    return typer.Exit(2)


@app.command("config")
def show_config(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Validate a config and print the effective values (defaults and overrides applied)."""
    cfg = _config(config, set_)
    console.print(yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True), sort_keys=False))


@app.command("env")
def show_env() -> None:
    """Print shell exports for Ray with rayloop's defaults: `eval "$(rayloop env)"` before `ray start`.

    Token auth on with a token under RAYLOOP_HOME, Ray's temp dir under RAYLOOP_HOME, usage stats off.
    """
    from rayloop.runtime import ray_env

    env = {"RAYLOOP_HOME": str(paths.home()), **ray_env()}
    for name, value in env.items():
        typer.echo(f"export {name}={shlex.quote(value)}")


@app.command()
def generate(
    out: Annotated[Path, typer.Argument(help="output directory (Parquet parts) or a .csv file")],
    rows: Annotated[int, typer.Option(help="number of rows")] = 100_000,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    scenario: Annotated[Optional[str], typer.Option(help="covariate | prior | concept")] = None,
    onset: Annotated[float, typer.Option(help="where drift starts, as a fraction of the timeline")] = 0.5,
    mode: Annotated[str, typer.Option(help="abrupt | gradual")] = "abrupt",
    bad_rows: Annotated[float, typer.Option(help="fraction of rows to corrupt (to exercise validation)")] = 0.0,
) -> None:
    """Write a synthetic dataset (optionally with drift) to Parquet or CSV."""
    import pyarrow.csv as pacsv

    from rayloop.data import synthetic

    scen = synthetic.Scenario(kind=scenario, onset=onset, mode=mode) if scenario else None
    if out.suffix == ".csv":
        table = synthetic.generate(rows, seed, scen)
        if bad_rows:
            table, _ = synthetic.corrupt(table, bad_rows, seed)
        out.parent.mkdir(parents=True, exist_ok=True)
        pacsv.write_csv(table, out)
        files = [str(out)]
    else:
        files = synthetic.write_parquet(out, rows, seed, scen, bad_row_fraction=bad_rows)
    console.print(f"wrote {rows:,} rows to {len(files)} file(s) under {out}")


def _preprocess(cfg: RayloopConfig, address: str | None):
    from rayloop.preprocess import run_preprocess
    from rayloop.runtime import init_ray

    with console.status("starting Ray") as status:
        init_ray(address)
        try:
            return run_preprocess(cfg, progress=lambda msg: status.update(msg))
        except RayloopError as exc:
            raise _fail(exc) from None


@app.command()
def preprocess(config: ConfigOpt = None, set_: SetOpt = None, address: AddressOpt = None) -> None:
    """Read, validate, split, fit features and write feature tables (as `workloads.preprocess`)."""
    result = _preprocess(_config(config, set_), address)
    _print_summary(result)


@app.command()
def demo(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Run the loop locally: generate data, validate, fit features, tune, train, register, gate."""
    from rayloop.pipeline import train_and_gate
    from rayloop.runtime import init_ray

    cfg = _config(config, set_)
    console.rule("[bold]rayloop demo")
    console.print(f"state under [cyan]{paths.home()}[/cyan]; config hash {config_hash(cfg)[:12]}")
    result = _preprocess(cfg, None)
    _print_summary(result)
    _print_rejects(Path(result.run_dir) / "rejects")
    with console.status("tuning and training" if cfg.tuning.enabled else "training"):
        init_ray()
        try:
            outcome = train_and_gate(cfg, result.run_id)
        except RayloopError as exc:
            raise _fail(exc) from None
    _print_training_dict(outcome.training)
    _print_gate(outcome.model_name, outcome.version, outcome.gate)
    console.print(
        f"\nMLflow: [cyan]mlflow ui --backend-store-uri {paths.mlflow_tracking_uri()}[/cyan]; "
        f"the champion loads with mlflow.pyfunc.load_model('models:/{outcome.model_name}@champion')."
    )


def _train_with(fn, cfg: RayloopConfig, address: str | None):
    from rayloop.runtime import init_ray

    with console.status("starting Ray"):
        init_ray(address)
    try:
        return fn(cfg)
    except RayloopError as exc:
        raise _fail(exc) from None


@app.command()
def train(config: ConfigOpt = None, set_: SetOpt = None, address: AddressOpt = None) -> None:
    """Train on Ray Train over the latest preprocess run (or data.preprocess_run); register as challenger."""
    from rayloop.training.workflow import train_and_register

    cfg = _config(config, set_)
    outcome = _train_with(lambda c: train_and_register(c, c.data.preprocess_run), cfg, address)
    _print_training(outcome)


@app.command()
def tune(config: ConfigOpt = None, set_: SetOpt = None, address: AddressOpt = None) -> None:
    """Ray Tune + ASHA, refit the best config on train+validation, register as challenger."""
    from rayloop.training.workflow import tune_and_register

    cfg = _config(config, set_)
    outcome = _train_with(lambda c: tune_and_register(c, c.data.preprocess_run), cfg, address)
    _print_training(outcome)


@app.command("run")
def run_all(config: ConfigOpt = None, set_: SetOpt = None, address: AddressOpt = None) -> None:
    """The whole training pipeline: preprocess, tune or train, register, promote through the gate."""
    from rayloop.pipeline import run_pipeline

    cfg = _config(config, set_)
    result = _train_with(run_pipeline, cfg, address)
    _print_training_dict(result.training)
    _print_gate(result.model_name, result.version, result.gate)


@app.command()
def promote(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    version: Annotated[str, typer.Option(help="version number or alias to promote")] = "challenger",
    holdout: Annotated[
        Optional[str], typer.Option(help="labelled raw rows (Parquet/CSV path or URI); default: the test rows of the preprocess run")
    ] = None,
) -> None:
    """Move `champion` to a version if it passes the gate on a labelled holdout; exit 1 when refused."""
    from rayloop import registry
    from rayloop.data.io import read_table
    from rayloop.preprocess import load_holdout

    cfg = _config(config, set_)
    try:
        rows = read_table(holdout) if holdout else load_holdout(cfg.data.preprocess_run)
        decision = registry.promote(
            cfg.registry.model_name,
            version,
            rows,
            label=cfg.data.label_column,
            metric=cfg.registry.gate_metric,
            tolerance=cfg.registry.tolerance,
        )
    except (RayloopError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    _print_gate(cfg.registry.model_name, version, decision.to_dict())
    if not decision.promote:
        raise typer.Exit(1)


@app.command()
def rollback(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Point `champion` back at the previous champion."""
    from rayloop import registry

    cfg = _config(config, set_)
    try:
        current, previous = registry.rollback(cfg.registry.model_name)
    except RayloopError as exc:
        raise _fail(exc) from None
    console.print(f"{cfg.registry.model_name}: champion moved from version {current} back to version {previous}")


@app.command()
def status(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    events: Annotated[int, typer.Option(help="how many audit events to show")] = 15,
) -> None:
    """The registry's aliases and the latest decisions (gate, promotions, rollbacks) from the audit log."""
    from rayloop import audit, registry

    cfg = _config(config, set_)
    name = cfg.registry.model_name
    table = Table(title=f"model {name}")
    table.add_column("alias")
    table.add_column("version", justify="right")
    table.add_column("test auc", justify="right")
    table.add_column("gate")
    mlflow_client = registry.client()
    for alias in (registry.CHAMPION, registry.CHALLENGER):
        version = registry.resolve_version(name, alias)
        if version is None:
            table.add_row(alias, "-", "", "")
            continue
        tags = mlflow_client.get_model_version(name, version).tags
        table.add_row(alias, version, tags.get("rayloop.test_auc", ""), tags.get("rayloop.gate.decision", ""))
    console.print(table)
    log = Table(title=f"latest decisions ({paths.audit_log()})")
    log.add_column("time")
    log.add_column("event", no_wrap=True, min_width=len("promotion_refused"))
    log.add_column("model")
    log.add_column("version", justify="right")
    log.add_column("detail")
    for entry in audit.read(limit=events):
        detail = entry.get("reason") or (f"from {entry['previous']}" if entry.get("previous") else "")
        if not detail and entry.get("features"):
            detail = "drift: " + ", ".join(f"{f} (PSI {entry.get('psi', {}).get(f, 0):.3f})" for f in entry["features"])
        log.add_row(entry["time"], entry["event"], str(entry.get("model", "")), str(entry.get("version", "")), str(detail))
    console.print(log)
    _print_monitor(cfg)


def _print_monitor(cfg: RayloopConfig) -> None:
    """The DriftMonitor's state as it last saved it (after every batch), so no Ray connection is needed."""
    from rayloop.monitoring.core import MonitorCore, summarize_state

    name = cfg.registry.model_name
    root = cfg.monitoring.storage or str(paths.home())
    saved = MonitorCore.read_state(root, name)
    if saved is None:
        console.print(f"monitor: no state for {name} under {root} (it starts with `rayloop serve`)")
        return
    s = summarize_state(name, saved, cfg.monitoring)
    table = Table(title=f"monitor {name} (reference version {s['reference_version']}, serving {s['serving_version']})")
    table.add_column("what")
    table.add_column("value")
    table.add_row("windows seen", f"{s['windows_seen']} (open window {s['open_window_rows']}/{s['window_size']} rows)")
    table.add_row("rows received", f"{s['rows_received']:,}")
    by_feature = ", ".join(f"{k} {v}" for k, v in sorted(s["alarms_by_feature"].items(), key=lambda kv: -kv[1]))
    table.add_row("drift alarms", f"{s['alarms']}" + (f" ({by_feature})" if by_feature else ""))
    last = s["last_window"]
    if last:
        top = sorted(last["scores"].items(), key=lambda kv: kv[1]["p"])[:5]
        scores = ", ".join(f"{k} PSI {v['psi']:.3f} p {v['p']:.2g}" for k, v in top)
        verdict = f"[red]drift: {', '.join(last['drifted'])}[/red]" if last["alarm"] else "[green]no drift[/green]"
        table.add_row(f"last window ({last['window']})", f"{verdict}; {scores}")
    live = s["live"]
    labels = s["labels"]
    table.add_row(
        "live quality",
        (f"auc {live['auc']:.4f}, accuracy {live['accuracy']:.4f}" if live["auc"] is not None else "waiting for labels")
        + f" over {s['live_labels']} labels",
    )
    table.add_row("labels", ", ".join(f"{k} {v}" for k, v in labels.items()))
    if s["label_lag_p50_s"] is not None:
        table.add_row("label lag (median)", f"{s['label_lag_p50_s']:.1f} s")
    pending = s["pending_decision"]
    table.add_row("pending decision", pending["reason"] if pending else "none")
    table.add_row("retrain in flight", s["in_flight"] or "none")
    table.add_row("decisions / suppressed", f"{s['decisions']} / {s['suppressed'] or 0}")
    table.add_row("restarts", str(s["restarts"]))
    console.print(table)


@app.command("serve")
def serve_cmd(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    address: AddressOpt = None,
    version: Annotated[Optional[str], typer.Option(help="alias or version to serve (default: serving.model_ref)")] = None,
    detach: Annotated[bool, typer.Option(help="return after deploying (needs a running cluster: --address)")] = False,
) -> None:
    """Serve the registered model over HTTP (Ray Serve, 127.0.0.1:serving.port by default)."""
    import os
    import time

    from rayloop.runtime import init_ray
    from rayloop.serving.deploy import deploy

    cfg = _config(config, set_)
    if detach and not (address or os.environ.get("RAY_ADDRESS")):
        console.print("[red]error:[/red] --detach needs a running cluster (--address or RAY_ADDRESS)")
        raise typer.Exit(2)
    with console.status("starting Ray Serve"):
        init_ray(address)
        url = deploy(cfg, config_path=config, overrides=set_, model_ref=version)
    console.print(f"serving [cyan]{cfg.registry.model_name}[/cyan] at [cyan]{url}/v1/predict[/cyan] (docs: {url}/docs)")
    if detach:
        return
    from ray import serve

    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()


@app.command("monitor")
def monitor_cmd(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    address: AddressOpt = None,
    stop: Annotated[bool, typer.Option("--stop", help="flush the inference log and stop the monitor")] = False,
) -> None:
    """Start the model's DriftMonitor on a cluster (`rayloop serve` does this too), or stop it."""
    from rayloop.monitoring.monitor import stop_monitor
    from rayloop.runtime import init_ray
    from rayloop.serving.deploy import start_model_monitor

    import os

    cfg = _config(config, set_)
    if not (address or os.environ.get("RAY_ADDRESS")):
        console.print("[red]error:[/red] the monitor lives on a running cluster: pass --address or set RAY_ADDRESS")
        raise typer.Exit(2)
    init_ray(address)
    name = cfg.registry.model_name
    if stop:
        stopped = stop_monitor(name)
        console.print(f"monitor for {name}: " + ("stopped (its state stays for the next start)" if stopped else "not running"))
        return
    with console.status(f"starting the monitor for {name}"):
        start_model_monitor(cfg)
    console.print(f"monitor for [cyan]{name}[/cyan] is running; `rayloop status` shows its state")


def _print_training(outcome) -> None:
    _print_training_dict(outcome.to_dict())


def _print_training_dict(outcome: dict) -> None:
    table = Table(title=f"{outcome['model_name']} version {outcome['version']} ({outcome['kind']})")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("preprocess run", outcome["preprocess_run_id"])
    table.add_row("MLflow run", outcome["mlflow_run_id"])
    table.add_row("rounds / epochs", str(outcome["steps"]))
    for key in ("auc", "logloss", "accuracy", "ece"):
        table.add_row(f"test {key}", f"{outcome['test_metrics'][key]:.4f}")
    if outcome.get("tuning"):
        table.add_row("tuning trials", str(outcome["tuning"]["trials"]))
        table.add_row("tuning trial-seconds", str(outcome["tuning"]["trial_seconds"]))
    table.add_row("seconds", str(outcome["seconds"]))
    console.print(table)


def _print_gate(name: str, version: str, gate: dict) -> None:
    verdict = "[green]promoted to champion[/green]" if gate["promote"] else "[yellow]refused; champion unchanged[/yellow]"
    console.print(f"gate for {name} version {version}: {verdict}: {gate['reason']}")


def _print_summary(result) -> None:
    table = Table(title=f"preprocess run {result.run_id}", show_header=True)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("source", result.source)
    table.add_row("rows read", f"{result.rows_total:,}")
    table.add_row("rows rejected", f"{result.rows_rejected:,} ({result.reject_ratio:.2%})")
    for name, count in result.rows_per_split.items():
        table.add_row(f"rows {name} ({result.split_method} split)", f"{count:,}")
    table.add_row("features", str(result.n_features))
    table.add_row("features hash", result.features_hash[:16])
    table.add_row("seconds", json.dumps(result.seconds))
    console.print(table)
    console.print(f"feature tables, rejects, fitted features and profile: [cyan]{result.run_dir}[/cyan]")


def _print_rejects(rejects_dir: Path, limit: int = 5) -> None:
    import pyarrow.parquet as pq

    files = sorted(rejects_dir.rglob("*.parquet"))
    if not files:
        return
    rows = pq.read_table(files[0], columns=["reason"]).column("reason").to_pylist()[:limit]
    table = Table(title=f"first rejected rows (all in {rejects_dir})")
    table.add_column("reason")
    for reason in rows:
        table.add_row(reason)
    console.print(table)


if __name__ == "__main__":
    app()
