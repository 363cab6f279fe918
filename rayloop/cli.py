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
    """Run what exists of the loop locally: generate data, validate it, fit features, summarize."""
    cfg = _config(config, set_)
    console.rule("[bold]rayloop demo")
    console.print(f"state under [cyan]{paths.home()}[/cyan]; config hash {config_hash(cfg)[:12]}")
    result = _preprocess(cfg, None)
    _print_summary(result)
    _print_rejects(Path(result.run_dir) / "rejects")
    console.print(
        "\nNext: training, serving and monitoring land in later milestones; "
        f"outputs of this run are in [cyan]{result.run_dir}[/cyan]."
    )


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
