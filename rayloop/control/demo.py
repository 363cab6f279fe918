"""`rayloop demo`: the whole loop on one machine, as a user would run it on a cluster.

1. `ray start --head` on 127.0.0.1 (dashboard on 127.0.0.1:8265, token auth on), state under RAYLOOP_HOME;
2. `workloads.pipeline` submitted as a Ray job (preprocess -> tune -> train -> register -> gate);
3. the Serve app deployed, with its DriftMonitor;
4. synthetic traffic with late labels, switching to an abrupt covariate + concept drift;
5. a live timeline of what the loop does (drift windows, decision, retrain job, gate, rollout,
   the live quality of the answers), an HTML report with plots under RAYLOOP_HOME/reports.

The head keeps running afterwards so the dashboard, `ray job list` and `rayloop status` can be
looked at; `rayloop demo --stop` (or Ctrl-C during the run) stops everything it started.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rayloop import paths, registry
from rayloop.config import ConfigSource
from rayloop.control import jobs
from rayloop.control.head import LocalHead, start_head, stop_session
from rayloop.control.up import up
from rayloop.monitoring.handle import get_monitor
from rayloop.runtime import init_ray
from rayloop.tasks import TASK_METRICS
from rayloop.traffic import TrafficConfig, run_traffic

__all__ = [
    "DEMO_OVERRIDES",
    "PREVIOUS_DIR",
    "demo_overrides",
    "LoopWatcher",
    "archive_previous_run",
    "drive",
    "start_demo_head",
    "stop_demo_head",
    "write_report",
]

# On top of configs/demo.yaml: sizes and clocks that fit the loop into a few minutes on 2 cores.
DEMO_OVERRIDES = [
    "data.synthetic.n_rows=20000",
    "tuning.num_samples=2",
    "tuning.max_concurrent_trials=1",
    "tuning.time_budget_s=45",
    "training.lightgbm.num_boost_round=150",
    "serving.min_replicas=1",
    "serving.max_replicas=1",
    "monitoring.window_size=400",
    "monitoring.consecutive_windows=2",
    "monitoring.min_labels=150",
    "monitoring.cooldown_s=120",
    "monitoring.flush_interval_s=5",
    "retrain.min_labelled_rows=1500",
    "retrain.max_label_wait_s=120",
    # the gate judges what the demo shows and the app answers with: the label. Under this drift
    # the old model keeps much of its ranking while many of its labels are wrong, so an AUC gate
    # can refuse a retrained model that fixes the labels
    "registry.gate_metric=accuracy",
]


def demo_overrides(task: str = "binary") -> list[str]:
    """DEMO_OVERRIDES for the synthetic data of `task` (its declared schema follows the task); a
    regression is gated on its default metric (RMSE) and judged live by MAE."""
    if task == "binary":
        return list(DEMO_OVERRIDES)
    out = [o for o in DEMO_OVERRIDES if not o.startswith("registry.gate_metric=")]
    out += [f"data.synthetic.task={task}", f"registry.model_name=rayloop-{task}"]
    if task == "multiclass":
        out.append("registry.gate_metric=accuracy")  # what the app answers with, as for binary
    return out


HEAD_FILE = "demo-head.json"
PREVIOUS_DIR = "demo-previous"  # under RAYLOOP_HOME: the last demo's monitor state and inference log


def archive_previous_run(model_name: str) -> list[Path]:
    """Give a new demo a monitor that starts from nothing.

    The DriftMonitor reloads its saved state by design, so a second demo in the same home would
    start with the first one's windows, cooldown, spent daily retrain budget and finished
    retrains. The previous demo's monitor state and inference log move to
    RAYLOOP_HOME/demo-previous/ (replacing the run before), where they can still be read; the
    registry keeps its versions. Returns where they went.
    """
    home = paths.home()
    sources = [
        Path(paths.monitor_state_dir(str(home), model_name)),
        Path(paths.inference_log_root(str(home), model_name)),
    ]
    if not any(source.exists() for source in sources):
        return []
    target = home / PREVIOUS_DIR
    shutil.rmtree(target, ignore_errors=True)
    moved = []
    for source in sources:
        if source.exists():
            destination = target / source.parent.name / model_name
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(source), str(destination))
            moved.append(destination)
    return moved


def start_demo_head(dashboard_port: int = 8265, num_cpus: int | None = None) -> LocalHead:
    """The demo's head (dashboard on 127.0.0.1:`dashboard_port`), recorded under RAYLOOP_HOME so
    `rayloop demo --stop` finds it later."""
    head = start_head(paths.home() / "ray-demo", dashboard_port=dashboard_port, num_cpus=num_cpus)
    (paths.ensure(paths.home()) / HEAD_FILE).write_text(
        json.dumps({"address": head.address, "dashboard": head.dashboard, "session_dir": head.session_dir})
    )
    return head


def stop_demo_head() -> bool:
    """Stop the demo's head (never other Ray clusters); False when none is recorded."""
    marker_file = paths.home() / HEAD_FILE
    if not marker_file.exists():
        return False
    stop_session(json.loads(marker_file.read_text())["session_dir"])
    marker_file.unlink(missing_ok=True)
    return True


# ---- watching the loop -------------------------------------------------------------------------
@dataclass
class LoopWatcher:
    """Polls the DriftMonitor and turns what changed into timeline events (and plot data)."""

    monitor: Any  # the actor handle
    say: Callable[[str], None]
    started: float = field(default_factory=time.time)
    events: list[dict[str, Any]] = field(default_factory=list)
    windows: list[dict[str, Any]] = field(default_factory=list)
    _seen_window: int = -1
    _record: dict[str, Any] | None = None
    _finished: int = 0

    def event(self, kind: str, text: str, **fields: Any) -> None:
        t = time.time() - self.started
        self.events.append({"t": round(t, 1), "kind": kind, "text": text, **fields})
        self.say(f"[{t:6.1f}s] {text}")

    def poll(self) -> dict[str, Any] | None:
        """One look; returns the retrain record that just finished, if one did."""
        import ray

        history, retrains = ray.get([self.monitor.history.remote(50), self.monitor.retrains.remote()], timeout=30)
        for window in history:
            if window["window"] <= self._seen_window:
                continue
            self._seen_window = window["window"]
            top = sorted(window["scores"].items(), key=lambda kv: -kv[1]["psi"])
            self.windows.append(
                {
                    "t": window["end"] - self.started,
                    "window": window["window"],
                    "alarm": window["alarm"],
                    "max_psi": top[0][1]["psi"] if top else 0.0,
                    "drifted": window["drifted"],
                    "live": window["live_metric"],
                    "version": window["reference_version"],
                }
            )
            if window["alarm"]:
                shown = ", ".join(f"{n} (PSI {window['scores'][n]['psi']:.2f})" for n in window["drifted"][:5])
                more = f" and {len(window['drifted']) - 5} more" if len(window["drifted"]) > 5 else ""
                self.event(
                    "drift",
                    f"window {window['window']}: [red]drift[/red] in {shown}{more}",
                    window=window["window"],
                    features=window["drifted"],
                )
            else:
                self.event(
                    "window",
                    f"window {window['window']}: no drift (max PSI {top[0][1]['psi'] if top else 0:.3f}, "
                    f"reference v{window['reference_version']})",
                    window=window["window"],
                )
            if window.get("decision") and window["decision"]["action"] == "retrain":
                self.event("decision", f"[bold]retrain decision[/bold]: {window['decision']['reason']}")
        active = retrains.get("active")
        if active and (
            self._record is None
            or self._record.get("phase") != active["phase"]
            or self._record.get("submission_id") != active["submission_id"]
        ):
            if active["phase"] == "waiting_labels":
                self.event("waiting", f"waiting for labels since the drift began ({active['labelled']} so far)")
            elif active["phase"] == "submitted":
                self.event(
                    "submitted",
                    f"retrain job [cyan]{active['submission_id']}[/cyan] submitted through the Jobs "
                    f"API ({active['labelled']} labelled recent rows); `ray job logs {active['submission_id']}`",
                    submission_id=active["submission_id"],
                )
            elif active["phase"] == "rolling_out":
                gate = active["gate"]
                self.event(
                    "gate",
                    f"gate: challenger v{active['version']} {gate.get('metric')} "
                    f"{gate.get('challenger_score')} vs champion v{gate.get('champion_version')} "
                    f"{gate.get('champion_score')} on {gate.get('holdout_rows')} recent labelled rows: "
                    "[green]promoted[/green]; rolling out to every replica",
                )
        self._record = active
        finished = retrains.get("finished") or []
        if len(finished) > self._finished:
            self._finished = len(finished)
            done = finished[-1]
            colour = "green" if done["outcome"] == "promoted" else "yellow"
            self.event(
                "outcome",
                f"retrain {done['submission_id']}: [{colour}]{done['outcome']}[/{colour}] "
                f"({done['detail']}) after {done['finished_at'] - done['decided_at']:.0f}s",
                outcome=done["outcome"],
                version=done.get("version"),
            )
            return done
        return None


# ---- the report --------------------------------------------------------------------------------
def write_report(
    target: Path,
    *,
    windows: list[dict],
    quality: list[dict],
    events: list[dict],
    summary: dict,
    metric: str = "accuracy",
) -> Path:
    """One self-contained HTML file: drift per window and the answers' quality over time (accuracy,
    or MAE for a regression), events marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    marks = [e for e in events if e["kind"] in ("drift_start", "decision", "submitted", "outcome")]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True)
    if windows:
        top.plot(
            [w["t"] for w in windows], [w["max_psi"] for w in windows], marker="o", color="#1f77b4", label="max PSI"
        )
        alarms = [w for w in windows if w["alarm"]]
        top.scatter(
            [w["t"] for w in alarms], [w["max_psi"] for w in alarms], color="#d62728", zorder=3, label="drift alarm"
        )
    top.set_ylabel("max PSI per window")
    top.legend(loc="upper left")
    versions = sorted({v for a in quality for v in a["versions"]})
    for version in versions:
        pts = [
            (a["t"], a["quality"])
            for a in quality
            if a["quality"] is not None and max(a["versions"], key=a["versions"].get) == version
        ]
        bottom.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=f"answered by v{version}")
    bottom.set_ylabel(f"{metric} of answers (5 s buckets)")
    bottom.set_xlabel("seconds since traffic started")
    bottom.legend(loc="lower left")
    for axis in (top, bottom):
        for mark in marks:
            axis.axvline(mark["t"], color="grey", linestyle="--", linewidth=0.8)
    for mark in marks:
        top.annotate(mark["kind"], (mark["t"], top.get_ylim()[1]), rotation=90, va="top", ha="right", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    image = base64.b64encode(buffer.getvalue()).decode()
    rows = "".join(
        f"<tr><td>{e['t']:.1f}</td><td>{html.escape(e['kind'])}</td><td>{html.escape(_plain(e['text']))}</td></tr>"
        for e in events
        if e["kind"] != "window"
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(f"""<!doctype html><html><head><meta charset="utf-8"><title>rayloop demo</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}td{{padding:2px 8px;vertical-align:top}}
pre{{background:#f5f5f5;padding:1em;overflow:auto}}</style></head><body>
<h1>rayloop demo: drift &rarr; retrain &rarr; gate &rarr; rollout</h1>
<img src="data:image/png;base64,{image}" alt="drift and {metric} over time">
<h2>Timeline</h2><table><tr><th>s</th><th>event</th><th>what</th></tr>{rows}</table>
<h2>Summary</h2><pre>{html.escape(json.dumps(summary, indent=2, default=str))}</pre></body></html>""")
    return target


def _plain(text: str) -> str:
    return re.sub(r"\[/?[a-z ]+\]", "", text)


def drive(
    *,
    source: ConfigSource,
    head: LocalHead,
    say: Callable[[str], None],
    clean_s: float = 40.0,
    rate: float = 60.0,
    after_s: float = 25.0,
    max_wait_s: float = 300.0,
) -> dict[str, Any]:
    """Steps 2-5 against a started head; returns the summary (and writes the report)."""
    import ray

    config = source.load()
    name = config.registry.model_name
    t0 = time.time()
    timings: dict[str, float] = {}
    sid = f"rayloop-demo-pipeline-{int(t0)}"
    jobs.submit_workload("pipeline", sid, source=source, address=head.dashboard)
    say(f"pipeline job [cyan]{sid}[/cyan] submitted (`ray job logs {sid} --address {head.dashboard}`)")
    last = None
    while True:
        info = jobs.job_info(sid, head.dashboard)
        if info is not None and info.status != last:
            say(f"pipeline job: {info.status}")
            last = info.status
        if info is not None and info.finished:
            break
        time.sleep(2)
    if info.status != "SUCCEEDED":
        raise RuntimeError(
            f"the pipeline job {info.status}: {info.message}\n" + jobs.client(head.dashboard).get_job_logs(sid)[-3000:]
        )
    timings["pipeline_s"] = round(time.time() - t0, 1)
    champion = registry.resolve_version(name, registry.CHAMPION)
    champion_bundle = registry.load_bundle(name, champion)
    metrics = champion_bundle.metrics
    shown = ", ".join(f"{k} {metrics[k]:.4f}" for k in TASK_METRICS[champion_bundle.task.kind] if k in metrics)
    say(f"champion: {name} v{champion}, test {shown}")

    os.environ.update({k: v for k, v in head.env.items() if k.startswith(("RAY_", "RAYLOOP_"))})
    init_ray(head.address, log_to_driver=False)  # the timeline, not every worker's log
    url = up(source)
    timings["deploy_s"] = round(time.time() - t0 - timings["pipeline_s"], 1)
    say(f"serving at [cyan]{url}/v1/predict[/cyan] (docs {url}/docs); DriftMonitor started")
    monitor = get_monitor(name)

    traffic = TrafficConfig(
        url=url,
        task=config.data.synthetic.task,
        rate=rate,
        duration_s=clean_s + max_wait_s + after_s,
        drift_at_s=clean_s,
        label_delay_s=1.0,
        seed=int(t0) % 1000,
    )
    stop = threading.Event()
    box: dict[str, Any] = {}
    sender = threading.Thread(target=lambda: box.update(stats=run_traffic(traffic, stop=stop)), daemon=True)
    traffic_start = time.time()
    sender.start()
    watcher = LoopWatcher(monitor, say, started=traffic_start)
    watcher.event(
        "traffic", f"traffic: {rate:g} req/s, labels 1 s later; abrupt covariate + concept drift at {clean_s:g}s"
    )
    done = None
    drift_logged = False
    deadline = traffic_start + clean_s + max_wait_s
    try:
        while time.time() < deadline and done is None:
            if not drift_logged and time.time() - traffic_start >= clean_s:
                watcher.event(
                    "drift_start", "[bold]drift starts[/bold]: the inputs shift and the label function changes"
                )
                drift_logged = True
            done = watcher.poll()
            time.sleep(1.0)
        if done is not None:
            promoted_at = time.time()
            while time.time() < promoted_at + after_s:
                watcher.poll()
                time.sleep(1.0)
    finally:
        stop.set()
        sender.join(timeout=60)
    stats = box.get("stats")
    summary: dict[str, Any] = {
        "model": name,
        "first_champion": champion,
        "timings": timings,
        "traffic": stats.summary() if stats else None,
        "retrain": done,
    }
    if stats is not None:
        summary["quality_metric"] = stats.metric
        summary["quality"] = {
            "clean, champion": stats.quality(version=champion, drift=False),
            "drift, champion": stats.quality(version=champion, drift=True),
        }
        if done is not None and done.get("version"):
            summary["quality"][f"drift, v{done['version']}"] = stats.quality(version=done["version"], drift=True)
    drift_t = next((e["t"] for e in watcher.events if e["kind"] == "drift_start"), None)
    for kind in ("drift", "submitted", "outcome"):
        t = next((e["t"] for e in watcher.events if e["kind"] == kind and (drift_t is None or e["t"] >= drift_t)), None)
        if t is not None and drift_t is not None:
            summary.setdefault("seconds_after_drift", {})[kind] = round(t - drift_t, 1)
    report = write_report(
        paths.ensure(paths.reports_dir()) / f"demo-{time.strftime('%Y%m%d-%H%M%S')}.html",
        windows=watcher.windows,
        quality=stats.timeline(5.0) if stats else [],
        metric=stats.metric if stats else "accuracy",
        events=watcher.events,
        summary=summary,
    )
    summary["report"] = str(report)
    summary["wall_s"] = round(time.time() - t0, 1)
    (report.with_suffix(".json")).write_text(json.dumps({**summary, "events": watcher.events}, indent=2, default=str))
    ray.shutdown()
    return summary
