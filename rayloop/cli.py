"""The `rayloop` command (typer + rich). Thin: every command calls a library function."""

from __future__ import annotations

import json
import os
import shlex
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, NoReturn

import pyarrow.csv as pacsv
import typer
import yaml
from rich.console import Console
from rich.live import Live
from rich.table import Table

from rayloop import audit, cluster, paths, registry
from rayloop import doctor as checks
from rayloop.config import ConfigSource, RayloopConfig, load_profile
from rayloop.constants import HOME_ENV_VAR
from rayloop.control import demo as demo_lib
from rayloop.control import jobs, local_cluster
from rayloop.control.monitor_actor import monitor_root, start_model_monitor, stop_model_monitor
from rayloop.control.pipeline import run_pipeline
from rayloop.control.train import train_and_register, tune_and_register
from rayloop.control.up import up
from rayloop.data import synthetic
from rayloop.data.examples import EXAMPLES, LABEL, write_example
from rayloop.data.io import read_table
from rayloop.entrypoint import EXIT_USAGE, exit_code
from rayloop.errors import RayloopError
from rayloop.monitoring.core import MonitorCore, read_stop_mark, summarize_state
from rayloop.preprocess import PreprocessRun, run_preprocess
from rayloop.runtime import init_ray, ray_env, serve_ingress_env
from rayloop.tasks import TASK_METRICS
from rayloop.traffic import TrafficConfig, TrafficStats, run_traffic

app = typer.Typer(
    help="rayloop: train, serve, monitor and retrain a tabular model as one loop on Ray.", no_args_is_help=True
)
console = Console()
# errors go to stderr on one line (no wrapping at the terminal's width), so scripts can read them
err_console = Console(stderr=True, soft_wrap=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config (default: configs/demo.yaml)")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="override key.sub=value (repeatable)")]
AddressOpt = Annotated[
    str | None, typer.Option("--address", help="Ray address to join (default: RAY_ADDRESS or a new local cluster)")
]


def _source(config: Path | None, overrides: list[str] | None) -> ConfigSource:
    return ConfigSource(path=str(config) if config else None, overrides=tuple(overrides or ()))


def _config(config: Path | None, overrides: list[str] | None) -> RayloopConfig:
    try:
        return _source(config, overrides).load()
    except RayloopError as exc:
        raise _fail(exc) from None


def _usage(message: str) -> NoReturn:
    err_console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(EXIT_USAGE)


def _fail(exc: RayloopError) -> typer.Exit:
    """One line on stderr, no traceback; exit 2 for a config to fix, 1 for a run that failed."""
    err_console.print(f"[red]error:[/red] {exc}")
    return typer.Exit(exit_code(exc))


@app.command("config")
def show_config(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Validate a config and print the effective values (defaults and overrides applied)."""
    cfg = _config(config, set_)
    console.print(yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True), sort_keys=False))


ProfileOpt = Annotated[str, typer.Option("--profile", "-p", help="configs/profiles/<name>.yaml, or a path")]


@app.command("env")
def show_env(
    profile: Annotated[
        str | None,
        typer.Option(
            "--profile", "-p", help="a cluster node's environment from this profile (state, checkpoints, MLflow)"
        ),
    ] = None,
) -> None:
    """Print shell exports for Ray with rayloop's defaults: `eval "$(rayloop env)"` before `ray start`.

    Without --profile: a local head (token auth on with a token under RAYLOOP_HOME, Ray's temp dir
    under it, usage stats off, listening on 127.0.0.1 only). With --profile: the variables every
    node of that environment needs, and Serve's HAProxy ingress with its files on this node's own
    disk (`ray up` nodes run this before `ray start`); Ray's own settings come from the cluster file.
    """
    if profile is not None:
        try:
            env = load_profile(profile).env() | serve_ingress_env(node_local_state=True)
        except RayloopError as exc:
            raise _fail(exc) from None
    else:
        env = {HOME_ENV_VAR: str(paths.home()), **ray_env()}
    for name, value in env.items():
        typer.echo(f"export {name}={shlex.quote(value)}")


@app.command()
def doctor(
    files: Annotated[
        list[Path] | None,
        typer.Argument(
            help="cluster files to inspect: `ray up` YAML, KubeRay manifests (or their folder), Serve configs"
        ),
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    address: Annotated[
        str | None,
        typer.Option("--address", help="a dashboard URL: check that its Jobs API refuses requests without the token"),
    ] = None,
    listeners: Annotated[bool, typer.Option(help="check the sockets this machine's Ray processes listen on")] = True,
) -> None:
    """Report what is unsafe: token auth, token files, listeners beyond 127.0.0.1, exposed
    dashboards, secrets in files. Exits 1 when anything is unsafe."""
    cfg = _config(config, set_)
    env = dict(os.environ)
    findings = checks.check_environment(env, checks.default_token_files(env))
    findings += checks.check_serving(cfg.serving.host, cfg.serving.auth_token_env, env)
    if listeners:
        found = checks.live_listeners()
        findings += checks.check_listeners(found, token_auth=env.get("RAY_AUTH_MODE") == "token") or [
            checks.Finding("ok", "listeners", "no Ray process is running here")
        ]
    if address:
        findings += checks.probe_dashboard(address)
    for path in files or []:
        if not path.exists():
            _usage(f"{path} does not exist")
        findings += checks.check_cluster_file(path)
    table = Table(title="rayloop doctor", show_lines=False)
    for column in ("", "where", "finding", "fix"):
        table.add_column(column, overflow="fold")
    style = {"unsafe": "[red]UNSAFE[/red]", "warn": "[yellow]warn[/yellow]", "ok": "[green]ok[/green]"}
    for finding in findings:
        table.add_row(style[finding.level], finding.where, finding.what, finding.fix)
    console.print(table)
    unsafe = sum(f.level == "unsafe" for f in findings)
    if unsafe:
        console.print(f"[red]{unsafe} unsafe finding(s)[/red]")
        raise typer.Exit(1)
    console.print("[green]nothing unsafe found[/green]")


cluster_app = typer.Typer(help="Cluster manifests: KubeRay files rendered from a profile.", no_args_is_help=True)
app.add_typer(cluster_app, name="cluster")


@cluster_app.command("render")
def cluster_render(
    profile: ProfileOpt = "prod",
    out: Annotated[Path | None, typer.Option(help="target folder (default: cluster/kuberay)")] = None,
    check: Annotated[
        bool, typer.Option("--check", help="only compare; exit 1 and show the diff when they differ")
    ] = False,
) -> None:
    """Write cluster/kuberay/*.yaml from the profile, configs/serve/tabular.yaml and the pinned Ray."""
    try:
        chosen = load_profile(profile)
    except RayloopError as exc:
        raise _fail(exc) from None
    target = out or cluster.KUBERAY_DIR
    if check:
        diffs = cluster.check(chosen, target)
        for diff in diffs:
            typer.echo(diff)
        if diffs:
            console.print(
                f"[red]{len(diffs)} manifest(s) differ from a fresh render[/red]: "
                f"run `rayloop cluster render --profile {profile}`"
            )
            raise typer.Exit(1)
        console.print(f"[green]cluster manifests in {target} match profile {chosen.name}[/green]")
        return
    for path in cluster.write(chosen, target):
        console.print(f"wrote {path}")


local_app = typer.Typer(
    help="A multi-node Ray cluster on this machine (Linux, root): a head and worker nodes in network "
    "namespaces, a shared directory and an MLflow server, laid out like configs/profiles/prod.yaml.",
    no_args_is_help=True,
)
cluster_app.add_typer(local_app, name="local")
ClusterNameOpt = Annotated[str, typer.Option("--name", help="the local cluster's name")]


@local_app.command("up")
def cluster_local_up(
    name: ClusterNameOpt = "local",
    workers: Annotated[int, typer.Option(help="worker nodes")] = 2,
    cpus_per_worker: Annotated[int, typer.Option(help="logical CPUs of each worker node")] = 1,
    pin: Annotated[
        list[str] | None,
        typer.Option(
            help="NODE=CORES[:QUOTA]: run a node on these cores (taskset), with at most QUOTA cores of CPU "
            "time (a cgroup), e.g. --pin head=0 --pin w1=1:0.5; repeatable"
        ),
    ] = None,
) -> None:
    """Start the cluster and print how to reach it from this machine."""
    try:
        pins = [local_cluster.parse_pin(p) for p in pin or []]
        started = local_cluster.up(name, workers=workers, cpus_per_worker=cpus_per_worker, pins=pins)
    except RayloopError as exc:
        raise _fail(exc) from None
    _print_local_cluster(started, local_cluster.alive_nodes(started))


@local_app.command("down")
def cluster_local_down(
    name: ClusterNameOpt = "local",
    purge: Annotated[bool, typer.Option(help="also delete the shared directory (registry, logs, runs)")] = False,
) -> None:
    """Stop every process of the cluster, delete its namespaces and bridge."""
    local_cluster.down(name, keep_shared=not purge)
    console.print(f"local cluster {name!r} is down")


@local_app.command("env")
def cluster_local_env(name: ClusterNameOpt = "local") -> None:
    """Shell exports for a client on this machine: `eval "$(rayloop cluster local env)"`."""
    try:
        found = local_cluster.load(name)
    except RayloopError as exc:
        raise _fail(exc) from None
    for key, value in found.client_env().items():
        typer.echo(f"export {key}={shlex.quote(value)}")


@local_app.command("exec", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def cluster_local_exec(
    ctx: typer.Context,
    name: ClusterNameOpt = "local",
    node: Annotated[str, typer.Option(help="the node to run on: head, w1, w2, ...")] = "head",
) -> None:
    """Run a command on a node, as a process of that node (its namespaces, its environment,
    RAY_ADDRESS set): `rayloop cluster local exec -- rayloop serve --detach`. Ray drivers
    (`rayloop serve`, `rayloop monitor`, `ray.init`) need a node of the cluster to run on."""
    try:
        found = local_cluster.load(name)
        args = list(ctx.args)
        if not args:
            _usage("give the command after --, e.g. `rayloop cluster local exec -- rayloop status`")
        done = local_cluster.run_on(found, node, args)
    except RayloopError as exc:
        raise _fail(exc) from None
    raise typer.Exit(done)


@local_app.command("status")
def cluster_local_status(name: ClusterNameOpt = "local") -> None:
    """The cluster's nodes as its head sees them."""
    try:
        found = local_cluster.load(name)
        alive = local_cluster.alive_nodes(found)
    except RayloopError as exc:
        raise _fail(exc) from None
    except Exception as exc:  # noqa: BLE001  (the head is down: say so)
        console.print(f"[red]the head at {local_cluster.load(name).dashboard} does not answer: {exc}[/red]")
        raise typer.Exit(1) from None
    _print_local_cluster(found, alive)


def _print_local_cluster(found, alive: dict[str, str] | None = None) -> None:
    table = Table(title=f"local cluster {found.name!r}")
    for column in ("node", "namespace", "address", "CPUs", "cores", "memory + object store", "state"):
        table.add_column(column)
    for node in found.nodes:
        state = "" if alive is None else alive.get(node.ip, "missing")
        cores = (node.cores or "any") + (f" (quota {node.cpu_quota:g})" if node.cpu_quota else "")
        memory = f"{node.memory / 2**30:.1f} + {node.object_store_memory / 2**30:.1f} GiB" if node.memory else "-"
        table.add_row(node.name, node.namespace, node.ip, str(node.num_cpus), cores, memory, state)
    console.print(table)
    console.print(f"dashboard and Jobs API {found.dashboard}, MLflow {found.mlflow_uri}, Serve {found.serve_url}")
    console.print(f"shared directory (every node's RAYLOOP_HOME) {found.shared}")
    console.print('for this shell: eval "$(rayloop cluster local env)"')


@app.command()
def generate(
    out: Annotated[Path, typer.Argument(help="output directory (Parquet parts) or a .csv file")],
    rows: Annotated[int, typer.Option(help="number of rows")] = 100_000,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    scenario: Annotated[str | None, typer.Option(help="covariate | prior | concept")] = None,
    onset: Annotated[float, typer.Option(help="where drift starts, as a fraction of the timeline")] = 0.5,
    mode: Annotated[str, typer.Option(help="abrupt | gradual")] = "abrupt",
    bad_rows: Annotated[float, typer.Option(help="fraction of rows to corrupt (to exercise validation)")] = 0.0,
    task: Annotated[str, typer.Option(help="binary | multiclass | regression: the label generated")] = "binary",
) -> None:
    """Write a synthetic dataset (optionally with drift) to Parquet or CSV."""
    if task not in synthetic.TASKS:
        _usage(f"--task must be one of {list(synthetic.TASKS)}, got {task!r}")
    scen = synthetic.Scenario(kind=scenario, onset=onset, mode=mode) if scenario else None
    if out.suffix == ".csv":
        table = synthetic.generate(rows, seed, scen, task=task)
        if bad_rows:
            table, _ = synthetic.corrupt(table, bad_rows, seed)
        out.parent.mkdir(parents=True, exist_ok=True)
        pacsv.write_csv(table, out)
        files = [str(out)]
    else:
        files = synthetic.write_parquet(out, rows, seed, scen, bad_row_fraction=bad_rows, task=task)
    console.print(f"wrote {rows:,} rows to {len(files)} file(s) under {out}")


@app.command()
def example(
    name: Annotated[str, typer.Argument(help=f"one of {', '.join(EXAMPLES)} (scikit-learn's bundled data)")],
    out: Annotated[Path, typer.Argument(help="a .parquet or .csv file to write")],
) -> None:
    """Write a real data set that ships inside scikit-learn (no download) as a plain table: its
    features and the label in `target`, no id and no timestamp column."""
    if name not in EXAMPLES:
        _usage(f"unknown example {name!r}; known: {', '.join(EXAMPLES)}")
    path = write_example(name, out)
    console.print(
        f"wrote {name} ({EXAMPLES[name]}) to {path}; train on it with "
        f"`rayloop run --set data.source={path} --set data.label_column={LABEL} --set registry.model_name={name}`"
    )


def _preprocess(cfg: RayloopConfig, address: str | None):
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
def demo(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    stop: Annotated[
        bool, typer.Option("--stop", help="stop the demo's Ray head (Serve, monitor, jobs) and exit")
    ] = False,
    keep: Annotated[bool, typer.Option(help="leave the head running afterwards, to look at the dashboard")] = True,
    rate: Annotated[float, typer.Option(help="requests per second")] = 60.0,
    clean: Annotated[float, typer.Option(help="seconds of clean traffic before the drift")] = 40.0,
    dashboard_port: Annotated[int, typer.Option(help="the dashboard's port (127.0.0.1)")] = 8265,
    task: Annotated[str, typer.Option(help="binary | multiclass | regression: the synthetic label")] = "binary",
) -> None:
    """The whole loop on this machine: Ray head, pipeline job, Serve, monitor, drift, retrain, rollout."""
    if stop:
        stopped = demo_lib.stop_demo_head()
        console.print("demo head stopped" if stopped else f"no demo head recorded under {paths.home()}")
        return
    if task not in synthetic.TASKS:
        _usage(f"--task must be one of {list(synthetic.TASKS)}, got {task!r}")
    settings = demo_lib.demo_overrides(task)
    source = _source(config, [*settings, *(set_ or [])])
    try:
        cfg = source.load()
    except RayloopError as exc:
        raise _fail(exc) from None
    console.rule("[bold]rayloop demo: drift -> retrain job -> gate -> zero-downtime rollout")
    console.print(
        f"state under [cyan]{paths.home()}[/cyan]; model [cyan]{cfg.registry.model_name}[/cyan]; "
        f"demo settings: {' '.join(settings)}"
    )
    demo_lib.stop_demo_head()  # a previous demo's head, if it was left running
    if demo_lib.archive_previous_run(cfg.registry.model_name):  # its monitor is gone with its head
        console.print(f"the previous demo's monitor state and inference log: {paths.home() / demo_lib.PREVIOUS_DIR}")
    with console.status("starting a Ray head (dashboard on 127.0.0.1, token auth on)"):
        # at least 4 logical CPUs: the replica and a retrain job (Train worker + Ray Data reads) side by side
        head = demo_lib.start_demo_head(dashboard_port, num_cpus=max(4, os.cpu_count() or 1))
    console.print(f"Ray head at {head.address}; dashboard [cyan]{head.dashboard}[/cyan]")
    try:
        summary = demo_lib.drive(source=source, head=head, say=console.print, clean_s=clean, rate=rate)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: stopping the demo head[/yellow]")
        demo_lib.stop_demo_head()
        raise typer.Exit(130) from None
    except Exception:
        console.print("[red]the demo failed; stopping its head[/red]")
        demo_lib.stop_demo_head()
        raise
    quality = summary.get("quality") or {}
    metric = summary.get("quality_metric", "accuracy")
    table = Table(title=f"live {metric} of the answers")
    table.add_column("traffic, model")
    table.add_column(metric, justify="right")
    for key, value in quality.items():
        table.add_row(key, "-" if value is None else f"{value:.4f}")
    console.print(table)
    console.print(
        f"after the drift began: {json.dumps(summary.get('seconds_after_drift', {}))} s; "
        f"failed requests {summary['traffic']['errors'] if summary.get('traffic') else '?'}; "
        f"whole demo {summary['wall_s']} s"
    )
    console.print(f"report: [cyan]{summary['report']}[/cyan]")
    if keep:
        console.print(
            f"where to look: dashboard [cyan]{head.dashboard}[/cyan] (Jobs, Serve, Actors, Metrics); "
            f"`ray job list --address {head.dashboard}`; `rayloop status --address {head.address}`; "
            "the report above. Stop everything with [bold]rayloop demo --stop[/bold]."
        )
    else:
        demo_lib.stop_demo_head()
        console.print("demo head stopped")


def _train_with(fn, cfg: RayloopConfig, address: str | None):
    with console.status("starting Ray"):
        init_ray(address)
    try:
        return fn(cfg)
    except RayloopError as exc:
        raise _fail(exc) from None


def _open_run(cfg: RayloopConfig) -> PreprocessRun:
    """The run to train on, checked before Ray starts: a missing one is one line, not a traceback."""
    try:
        return PreprocessRun.open(cfg.data.preprocess_run)
    except RayloopError as exc:
        raise _fail(exc) from None


@app.command()
def train(config: ConfigOpt = None, set_: SetOpt = None, address: AddressOpt = None) -> None:
    """Train on Ray Train over the latest preprocess run (or data.preprocess_run); register as challenger."""
    cfg = _config(config, set_)
    run = _open_run(cfg)
    outcome = _train_with(lambda c: train_and_register(c, run), cfg, address)
    _print_training(outcome)


@app.command()
def tune(config: ConfigOpt = None, set_: SetOpt = None, address: AddressOpt = None) -> None:
    """Ray Tune + ASHA, refit the best config on train+validation, register as challenger."""
    cfg = _config(config, set_)
    run = _open_run(cfg)
    outcome = _train_with(lambda c: tune_and_register(c, run), cfg, address)
    _print_training(outcome)


@app.command("run")
def run_all(config: ConfigOpt = None, set_: SetOpt = None, address: AddressOpt = None) -> None:
    """The whole training pipeline: preprocess, tune or train, register, promote through the gate."""
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
        str | None,
        typer.Option(help="labelled raw rows (Parquet/CSV path or URI); default: the test rows of the preprocess run"),
    ] = None,
) -> None:
    """Move `champion` to a version if it passes the gate on a labelled holdout; exit 1 when refused."""
    cfg = _config(config, set_)
    try:
        rows = read_table(holdout) if holdout else PreprocessRun.open(cfg.data.preprocess_run).holdout()
        decision = registry.promote(
            cfg.registry.model_name,
            version,
            rows,
            metric=cfg.registry.gate_metric,
            tolerance=cfg.registry.tolerance,
        )
    except RayloopError as exc:
        raise _fail(exc) from None
    _print_gate(cfg.registry.model_name, version, decision.to_dict())
    if not decision.promote:
        raise typer.Exit(1)


@app.command()
def rollback(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Point `champion` back at the previous champion."""
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
    address: Annotated[
        str | None,
        typer.Option(
            help="a running cluster: its dashboard URL (http://HEAD:8265: read through the Jobs API, from "
            "any machine with the token) or its GCS address (joins as a driver; also shows Serve)"
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the status as one JSON document")] = False,
) -> None:
    """Champion and challenger, the monitor, retrain jobs and their outcome, recent decisions, Serve."""
    if address and address.startswith(("http://", "https://")):
        doc = _remote_status(address, config, set_, events)
    else:
        cfg = _config(config, set_)
        serve_address = address or os.environ.get("RAY_ADDRESS")
        doc = _status_doc(cfg, events, serve_address)
    if as_json:
        typer.echo(json.dumps(doc, indent=2, default=str))
        return
    _print_status(doc)


def _status_doc(cfg: RayloopConfig, events: int, serve_address: str | None) -> dict:
    """What `rayloop status` shows, as data: the registry (MLflow), the audit trail and the
    monitor's saved state (RAYLOOP_HOME or monitoring.storage) and, with a cluster, Serve."""
    name = cfg.registry.model_name
    mlflow_client = registry.client()
    aliases = []
    for alias in (registry.CHAMPION, registry.CHALLENGER):
        version = registry.resolve_version(name, alias)
        tags = mlflow_client.get_model_version(name, version).tags if version else {}
        aliases.append({"alias": alias, "version": version, "tags": dict(tags)})
    root = monitor_root(cfg)
    saved = MonitorCore.read_state(root, name)
    return {
        "model": name,
        "aliases": aliases,
        "audit_log": str(paths.audit_log()),
        "events": audit.read(limit=events),
        "monitor_root": root,
        "monitor": summarize_state(name, saved, cfg.monitoring) if saved is not None else None,
        "monitor_stopped": read_stop_mark(root, name),
        "serve": _serve_rows(serve_address) if serve_address else None,
    }


def _remote_status(dashboard: str, config: Path | None, set_: list[str] | None, events: int) -> dict:
    """`rayloop status --json` run on the cluster as a job (its head sees the shared state, the
    monitor's files, the registry and Serve), submitted and read back through the Jobs API."""
    import uuid

    args = ["rayloop", "status", "--json", "--events", str(events)]
    if config is not None:
        args += ["--config", str(config)]  # a path on the cluster
    for item in set_ or []:
        args += ["--set", item]
    sid = f"rayloop-status-{uuid.uuid4().hex[:8]}"
    jobs_client = jobs.client(dashboard)
    try:
        jobs_client.submit_job(entrypoint=shlex.join(args), submission_id=sid, metadata={"rayloop.kind": "status"})
        deadline = time.monotonic() + 120
        while not (info := jobs.job_info(sid, client_=jobs_client)) or not info.finished:
            if time.monotonic() > deadline:
                _usage(f"the status job {sid} did not finish in 120 s (`ray job logs {sid}`)")
            time.sleep(0.5)
    except Exception as exc:  # noqa: BLE001  (no cluster there, no token: say so in one line)
        if isinstance(exc, typer.Exit):
            raise
        console.print(f"[red]cannot read the status through {dashboard}: {exc}[/red]")
        raise typer.Exit(1) from None
    logs = jobs_client.get_job_logs(sid)
    if info.status != "SUCCEEDED":
        console.print(f"[red]the status job {sid} {info.status}:[/red]\n{logs[-2000:]}")
        raise typer.Exit(1)
    return jobs.last_json(logs)


def _print_status(doc: dict) -> None:
    name = doc["model"]
    table = Table(title=f"model {name}")
    for column in ("alias", "version", "task", "test metrics", "gate", "trained"):
        table.add_column(column, justify="right" if column in ("version", "test metrics") else "left")
    placements = []
    for row in doc["aliases"]:
        alias, version, tags = row["alias"], row["version"], row["tags"]
        if version is None:
            table.add_row(alias, "-", "", "", "", "")
            continue
        task = tags.get("rayloop.task", "binary")
        shown = ", ".join(
            f"{m} {tags[f'rayloop.test_{m}']}" for m in TASK_METRICS.get(task, ()) if f"rayloop.test_{m}" in tags
        )
        mode = tags.get("rayloop.training.mode", "")
        trained = f"{tags.get('rayloop.training.num_workers', '?')} workers" if mode == "workers" else mode
        table.add_row(alias, version, task, shown, tags.get("rayloop.gate.decision", ""), trained)
        if mode:
            placements.append(
                f"{alias} v{version} trained in {'local mode' if mode == 'local' else trained} "
                f"(training.num_workers={tags.get('rayloop.training.setting', '?')}): "
                f"{tags.get('rayloop.training.reason', '')}"
            )
    console.print(table)
    for line in placements:
        console.print(line, highlight=False)
    log = Table(title=f"latest decisions ({doc['audit_log']})")
    log.add_column("time")
    log.add_column("event", no_wrap=True, min_width=len("promotion_refused"))
    log.add_column("model")
    log.add_column("version", justify="right")
    log.add_column("detail")
    for entry in doc["events"]:
        detail = entry.get("reason") or (f"from {entry['previous']}" if entry.get("previous") else "")
        if not detail and entry.get("outcome"):
            detail = f"{entry['outcome']}: {entry.get('detail') or ''}"
        if not detail and entry.get("features"):
            detail = "drift: " + ", ".join(f"{f} (PSI {entry.get('psi', {}).get(f, 0):.3f})" for f in entry["features"])
        log.add_row(
            entry["time"], entry["event"], str(entry.get("model", "")), str(entry.get("version", "")), str(detail)
        )
    console.print(log)
    if doc["monitor"] is None:
        console.print(f"monitor: no state for {name} under {doc['monitor_root']} (it starts with `rayloop serve`)")
    else:
        _print_monitor(doc["monitor"])
    mark = doc.get("monitor_stopped")
    if mark:
        when = datetime.fromtimestamp(mark["stopped_at"], timezone.utc).isoformat(timespec="seconds")
        console.print(
            f"[yellow]monitor stopped on purpose by {mark.get('by', '?')} at {when}[/yellow]: "
            "nothing restarts it until `rayloop monitor`"
        )
    if doc["serve"] is not None:
        _print_serve(doc["serve"])


def _serve_rows(address: str | None) -> list[list[str]]:
    from ray import serve

    init_ray(address)
    rows = []
    for app_name, app_status in serve.status().applications.items():
        for dep_name, dep in app_status.deployments.items():
            replicas = ", ".join(
                f"{state.value if hasattr(state, 'value') else state} {n}" for state, n in dep.replica_states.items()
            )
            rows.append(
                [
                    app_name,
                    str(app_status.status.value if hasattr(app_status.status, "value") else app_status.status),
                    dep_name,
                    str(dep.status.value if hasattr(dep.status, "value") else dep.status),
                    replicas,
                ]
            )
    return rows


def _print_serve(rows: list[list[str]]) -> None:
    table = Table(title="Serve applications")
    for column in ("application", "status", "deployment", "deployment status", "replicas"):
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    console.print(table)


def _print_monitor(s: dict) -> None:
    """The DriftMonitor's state as it last saved it (after every batch; `summarize_state`)."""
    name = s["model"]
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
    live = {k: v for k, v in s["live"].items() if v is not None}
    labels = s["labels"]
    table.add_row(
        f"live quality ({s['task']})",
        (", ".join(f"{k} {v:.4f}" for k, v in live.items()) if live else "waiting for labels")
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
    retrain = s.get("retrain") or {}
    records = [*(retrain.get("finished") or []), *([retrain["active"]] if retrain.get("active") else [])]
    if not records:
        return
    jobs_table = Table(title="retrain jobs (`ray job logs <id>`)")
    for column in ("submission id", "trigger", "phase / outcome", "version", "gate", "seconds"):
        jobs_table.add_column(column)
    for record in records[-10:]:
        gate = record.get("gate") or {}
        gate_text = (
            (
                f"{gate.get('metric')} {gate.get('challenger_score')} vs {gate.get('champion_score')} "
                f"(v{gate.get('champion_version')}, {gate.get('holdout_rows')} rows)"
            )
            if gate
            else ""
        )
        seconds = "" if record.get("finished_at") is None else f"{record['finished_at'] - record['decided_at']:.0f}"
        outcome = record.get("outcome") or record["phase"]
        jobs_table.add_row(
            record["submission_id"],
            str(record.get("trigger")),
            outcome + (f": {record['detail']}" if record.get("detail") else ""),
            str(record.get("version") or ""),
            gate_text,
            seconds,
        )
    console.print(jobs_table)


@app.command("serve")
def serve_cmd(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    address: AddressOpt = None,
    version: Annotated[str | None, typer.Option(help="alias or version to serve (default: serving.model_ref)")] = None,
    detach: Annotated[bool, typer.Option(help="return after deploying (needs a running cluster: --address)")] = False,
) -> None:
    """Serve the registered model over HTTP (Ray Serve, 127.0.0.1:serving.port by default)."""
    source = _source(config, set_)
    cfg = _config(config, set_)
    if detach and not (address or os.environ.get("RAY_ADDRESS")):
        _usage("--detach needs a running cluster (--address or RAY_ADDRESS)")
    with console.status("starting Ray Serve"):
        init_ray(address)
        url = up(source, model_ref=version)
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
    source = _source(config, set_)
    cfg = _config(config, set_)
    if not (address or os.environ.get("RAY_ADDRESS")):
        _usage("the monitor lives on a running cluster: pass --address or set RAY_ADDRESS")
    init_ray(address)
    name = cfg.registry.model_name
    if stop:
        stopped = stop_model_monitor(source, by="rayloop monitor --stop")
        console.print(
            f"monitor for {name}: "
            + ("stopped" if stopped else "not running")
            + " (its state stays for the next start; a keeper app leaves it stopped until `rayloop monitor`)"
        )
        return
    with console.status(f"starting the monitor for {name}"):
        start_model_monitor(source)
    console.print(f"monitor for [cyan]{name}[/cyan] is running; `rayloop status` shows its state")


@app.command("traffic")
def traffic_cmd(
    url: Annotated[str, typer.Option(help="the app's base URL")] = "http://127.0.0.1:8000",
    rate: Annotated[float, typer.Option(help="requests per second")] = 50.0,
    duration: Annotated[float, typer.Option(help="seconds to run")] = 60.0,
    drift_at: Annotated[float | None, typer.Option(help="switch to the drift scenario after this many seconds")] = None,
    scenario: Annotated[str, typer.Option(help="covariate, prior, concept or covariate+concept")] = "covariate+concept",
    magnitude: Annotated[float, typer.Option(help="drift strength")] = 3.0,
    rows: Annotated[int, typer.Option(help="rows per request")] = 1,
    label_delay: Annotated[float, typer.Option(help="seconds before a request's true label is posted")] = 2.0,
    label_fraction: Annotated[float, typer.Option(help="share of requests whose label arrives")] = 1.0,
    task: Annotated[str, typer.Option(help="synthetic rows' label: binary | multiclass | regression")] = "binary",
    source: Annotated[
        str | None, typer.Option(help="replay this table (Parquet/CSV) in time order instead of synthetic rows")
    ] = None,
    label_column: Annotated[str, typer.Option(help="the replayed table's label, posted as feedback")] = "label",
    order_by: Annotated[
        str | None, typer.Option(help="replay ordered by this column (default: its timestamp column, else file order)")
    ] = None,
    retries: Annotated[int, typer.Option(help="resend a predict that got no answer or a 5xx this many times")] = 0,
    seed: int = 11,
) -> None:
    """Send traffic to the app and post each row's true label late: synthetic rows (switching to a
    drift scenario at --drift-at), or a real table replayed in order (--source), to backtest the loop."""
    try:
        cfg = TrafficConfig(
            url=url,
            rate=rate,
            duration_s=duration,
            drift_at_s=drift_at,
            rows_per_request=rows,
            task=task,
            source=source,
            label_column=label_column,
            order_by=order_by,
            scenario=synthetic.Scenario(kind=scenario, onset=0.0, magnitude=magnitude),
            label_delay_s=label_delay,
            label_fraction=label_fraction,
            retries=retries,
            seed=seed,
        )
    except ValueError as exc:  # pydantic's ValidationError: names the option and the rule
        _usage(str(exc).replace("\n", " "))
    last = {"answers": 0, "t": 0.0}

    def line(stats: TrafficStats, elapsed: float) -> str:
        s = stats.summary()
        answered = len(stats.answers)
        rps = (answered - last["answers"]) / max(1e-9, elapsed - last["t"])
        last.update(answers=answered, t=elapsed)
        phase = "[red]drift[/red]" if drift_at is not None and elapsed >= drift_at else "clean"
        acc = stats.quality(after_s=max(0.0, elapsed - 10))
        return (
            f"{elapsed:6.0f}s {phase:>5}  {rps:7.1f} req/s  sent {s['sent']:,}  errors {s['errors']}  "
            f"resent {s['resent']}  "
            f"skipped {s['skipped']}  labels {s['labels_posted']:,}  p99 {s['p99_ms'] or 0:.1f} ms  "
            f"{stats.metric}(10s) {'-' if acc is None else f'{acc:.3f}'}  versions {s['versions']}"
        )

    with Live(console=console, refresh_per_second=2) as live:
        stats = run_traffic(cfg, on_second=lambda st, el: live.update(line(st, el)))
    console.print(json.dumps(stats.summary(), indent=2))
    if stats.errors:
        raise typer.Exit(1)


def _print_training(outcome) -> None:
    _print_training_dict(outcome.to_dict())


def _print_training_dict(outcome: dict) -> None:
    table = Table(title=f"{outcome['model_name']} version {outcome['version']} ({outcome['kind']})")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("preprocess run", outcome["preprocess_run_id"])
    table.add_row("MLflow run", outcome["mlflow_run_id"])
    task = outcome.get("task") or {"kind": "binary"}
    table.add_row("task", task["kind"] + (f" {task.get('classes')}" if task.get("classes") else ""))
    table.add_row("rounds / epochs", str(outcome["steps"]))
    for key in TASK_METRICS[task["kind"]]:
        if key in outcome["test_metrics"]:
            table.add_row(f"test {key}", f"{outcome['test_metrics'][key]:.4f}")
    if "interval_coverage" in outcome["test_metrics"]:
        table.add_row("test interval coverage", f"{outcome['test_metrics']['interval_coverage']:.3f}")
    for name, fit in (outcome.get("fits") or {}).items():
        table.add_row(f"{name} fit", f"{'+'.join(fit['splits'])}, {fit['steps']} rounds/epochs")
    if outcome.get("tuning"):
        table.add_row("tuning trials", str(outcome["tuning"]["trials"]))
        table.add_row("tuning trial-seconds", str(outcome["tuning"]["trial_seconds"]))
    table.add_row("seconds", str(outcome["seconds"]))
    console.print(table)


def _print_gate(name: str, version: str, gate: dict) -> None:
    verdict = (
        "[green]promoted to champion[/green]" if gate["promote"] else "[yellow]refused; champion unchanged[/yellow]"
    )
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


if __name__ == "__main__":
    app()
