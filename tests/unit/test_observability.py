"""configs/prometheus and configs/grafana: promtool accepts the config and the rules, the rules'
unit tests pass, the dashboard's PromQL parses, and every rayloop metric they name (with the
labels they select on) is declared in rayloop/metrics.py, so renaming a metric breaks a test.

promtool comes with Debian's `prometheus` package: `make test` unpacks it into .venv/tools when it
is not on PATH (scripts/install-prometheus.sh). Without it these tests fail.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from rayloop import metrics, paths
from tests.support import (
    ALERTS,
    ALERTS_TEST_YML,
    ALERTS_YML,
    PROMETHEUS_DIR,
    PROMETHEUS_YML,
    ROOT,
    alert_rules,
    dashboard,
    dashboard_exprs,
    dashboard_panels,
    prometheus_tool,
    promql,
)

METRIC = re.compile(r"\bray_rayloop_[a-z_]+")
SELECTOR = re.compile(r"\b(ray_rayloop_[a-z_]+)\s*\{([^}]*)\}")
MATCHER_LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


@pytest.fixture(scope="module")
def promtool() -> str:
    return prometheus_tool("promtool")


def run_promtool(promtool: str, *args: str | Path) -> str:
    done = subprocess.run([promtool, *map(str, args)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"promtool {' '.join(map(str, args))} failed:\n{output}"
    return output


# ---- what rayloop declares ----------------------------------------------------------------------
def declared() -> dict[str, metrics.MetricSpec]:
    """Every name Prometheus can see for a rayloop metric -> its spec (histograms: the three series)."""
    specs = [value for value in vars(metrics).values() if isinstance(value, metrics.MetricSpec)]
    names: dict[str, metrics.MetricSpec] = {}
    for spec in specs:
        base = metrics.exported_name(spec)
        suffixes = ("_bucket", "_sum", "_count") if spec.kind == "histogram" else ("",)
        for suffix in suffixes:
            names[base + suffix] = spec
    return names


def labels_of(name: str, spec: metrics.MetricSpec) -> set[str]:
    return set(spec.tags) | ({"le"} if name.endswith("_bucket") else set())


def config_exprs() -> list[tuple[str, str]]:
    alerts = [(f"alert {rule['alert']}", rule["expr"]) for rule in alert_rules()]
    return alerts + list(dashboard_exprs())


# ---- Prometheus config and rules ----------------------------------------------------------------
def test_prometheus_config_passes_promtool_and_points_at_the_demo_heads_service_discovery_file(promtool):
    from ray._private.ray_constants import PROMETHEUS_SERVICE_DISCOVERY_FILE

    output = run_promtool(promtool, "check", "config", PROMETHEUS_YML)
    assert "SUCCESS: 5 rules found" in output, output  # the config loads alerts.yml

    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    assert config["rule_files"] == ["alerts.yml"]
    assert "web" not in config  # the listen address is a flag, 127.0.0.1 in the documented command
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "ray"]
    (sd_file,) = [path for sd in job["file_sd_configs"] for path in sd["files"]]
    # relative to the config's directory, as Prometheus resolves it: the demo head's temp dir
    demo_temp_dir = ROOT / paths.DEFAULT_HOME / "ray-demo"
    assert (PROMETHEUS_DIR / sd_file).resolve() == (demo_temp_dir / PROMETHEUS_SERVICE_DISCOVERY_FILE).resolve()
    assert "--web.listen-address=127.0.0.1:9090" in PROMETHEUS_YML.read_text()


def test_alert_rules_pass_promtool_check_and_their_unit_tests(promtool):
    assert "SUCCESS: 5 rules found" in run_promtool(promtool, "check", "rules", ALERTS_YML)
    assert "SUCCESS" in run_promtool(promtool, "test", "rules", ALERTS_TEST_YML)


def test_each_alert_has_a_severity_a_summary_a_description_and_a_runbook_hint():
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} == ALERTS
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), rule["alert"]
        assert "rayloop status" in rule["annotations"]["runbook"], rule["alert"]
    tested = set(re.findall(r"alertname:\s*(\w+)", ALERTS_TEST_YML.read_text()))
    assert tested == ALERTS, "every alert needs promtool unit tests in alerts.test.yml"


def test_every_rayloop_metric_and_label_in_the_alerts_and_the_dashboard_is_declared_in_metrics_py():
    known = declared()
    exprs = config_exprs()
    assert len(exprs) > len(ALERTS) + 20
    problems = []
    for where, expr in exprs:
        used = METRIC.findall(expr)
        if not used:
            problems.append(f"{where}: names no rayloop metric: {expr}")
        for name in used:
            if name not in known:
                problems.append(f"{where}: {name} is not a metric in rayloop/metrics.py")
        for name, matchers in SELECTOR.findall(expr):
            if name in known:
                for label in MATCHER_LABEL.findall(matchers):
                    if label not in labels_of(name, known[name]):
                        problems.append(f"{where}: {name} has no label {label!r}")
        # labels grouped by must be labels of one of the expression's metrics
        available = set().union(*(labels_of(n, known[n]) for n in used if n in known))
        for grouping in GROUPING.findall(expr):
            for label in filter(None, (part.strip() for part in grouping.split(","))):
                if label not in available:
                    problems.append(f"{where}: groups by {label!r}, which none of its metrics has")
    assert not problems, "\n".join(problems)


def test_the_name_check_catches_a_renamed_metric_and_label():
    known = declared()
    assert "ray_rayloop_serve_requests_total" in known and "ray_rayloop_serve_requests" not in known
    assert "ray_rayloop_serve_latency_ms_bucket" in known and "ray_rayloop_serve_latency_ms" not in known
    assert "ray_rayloop_monitor_drift_drifted" in known
    bad = 'sum by (model_version) (rate(ray_rayloop_serve_request_total{statuz="500"}[5m]))'
    assert [n for n in METRIC.findall(bad) if n not in known] == ["ray_rayloop_serve_request_total"]
    ((name, matchers),) = SELECTOR.findall(bad.replace("request_total", "requests_total"))
    assert [label for label in MATCHER_LABEL.findall(matchers) if label not in labels_of(name, known[name])] == [
        "statuz"
    ]


def test_dashboard_expressions_are_valid_promql(promtool, tmp_path):
    # promtool parses rule expressions: one recording rule per dashboard query
    rules = [
        {"record": f"rayloop:dashboard:{i}", "expr": promql(expr)} for i, (_, expr) in enumerate(dashboard_exprs())
    ]
    path = tmp_path / "dashboard-exprs.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert f"SUCCESS: {len(rules)} rules found" in run_promtool(promtool, "check", "rules", path)


# ---- Grafana dashboard ---------------------------------------------------------------------------
def test_dashboard_is_importable_json_with_unique_ids_and_a_prometheus_datasource_variable():
    board = dashboard()
    assert board["uid"] == "rayloop" and board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    panels = dashboard_panels()
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", panel["datasource"]) == panel["datasource"], panel["title"]
            assert target["refId"] and target["expr"], panel["title"]
    for annotation in board["annotations"]["list"]:
        if "expr" in annotation:
            assert annotation["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def rows() -> dict[str, list[dict]]:
    """Row title -> the panels under it (in a row's `panels` when collapsed, else after it)."""
    out: dict[str, list[dict]] = {}
    current: list[dict] | None = None
    for panel in dashboard()["panels"]:
        if panel["type"] == "row":
            current = out.setdefault(panel["title"], list(panel.get("panels", [])))
        elif current is not None:
            current.append(panel)
    return out


def row_exprs(title_part: str) -> list[str]:
    matching = [panels for title, panels in rows().items() if title_part.lower() in title.lower()]
    assert matching, f"no dashboard row titled like {title_part!r}: {sorted(rows())}"
    return [target["expr"] for panel in matching[0] for target in panel["targets"]]


def grouped_by(expr: str, label: str) -> bool:
    return any(label in [p.strip() for p in g.split(",")] for g in GROUPING.findall(expr))


@pytest.mark.parametrize(
    ("row", "specs", "label"),
    [
        ("per model version", (metrics.REQUESTS, metrics.LATENCY_MS, metrics.BATCH_ROWS), "model_version"),
        ("drift per feature", (metrics.DRIFT_DRIFTED, metrics.DRIFT_PSI, metrics.DRIFT_JS, metrics.ALARMS), "feature"),
        ("live quality", (metrics.LIVE_QUALITY, metrics.REFERENCE_QUALITY), "metric"),
        ("retrain timeline", (metrics.RETRAIN_PHASE, metrics.RETRAINS, metrics.DECISIONS), None),
    ],
)
def test_dashboard_has_the_four_areas(row, specs, label):
    exprs = row_exprs(row)
    for spec in specs:
        name = metrics.exported_name(spec)
        using = [e for e in exprs if re.search(rf"\b{name}(_bucket|_sum|_count)?\b", e)]
        assert using, f"row {row!r} has no panel on {name}"
        if label is not None:
            assert any(grouped_by(e, label) for e in using), f"row {row!r} does not split {name} by {label}"


def test_the_request_metrics_carry_the_model_version():
    for spec in (metrics.REQUESTS, metrics.LATENCY_MS, metrics.BATCH_ROWS, metrics.ROWS, metrics.PREDICTIONS):
        assert "model_version" in spec.tags, spec.name
