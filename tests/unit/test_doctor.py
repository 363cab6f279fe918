"""`rayloop doctor`: every shipped file passes, and each unsafe pattern in a bad copy is caught."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from rayloop import doctor
from rayloop.cli import app as cli
from rayloop.doctor import Finding, Listener

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = [
    ROOT / "cluster",
    ROOT / "configs" / "serve" / "tabular.yaml",
    ROOT / "configs" / "demo.yaml",
    *sorted((ROOT / "configs" / "profiles").glob("*.yaml")),
]


def _unsafe(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.level == "unsafe"]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_cluster_file_and_config_is_clean(path):
    assert path.exists()
    findings = doctor.check_cluster_file(path)
    assert findings and _unsafe(findings) == [], _unsafe(findings)
    if path.is_dir():  # every file under it was read
        assert {Path(f.where.split(":")[0]) for f in findings} == set(path.rglob("*.yaml"))
    assert not [f for f in findings if f.level == "warn"], findings


def _write(tmp_path: Path, name: str, docs: list[dict]) -> Path:
    target = tmp_path / name
    target.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return target


@pytest.fixture
def ray_cluster() -> dict:
    return yaml.safe_load((ROOT / "cluster" / "kuberay" / "ray-cluster.yaml").read_text())


def test_kuberay_without_token_auth_or_with_an_exposed_head_is_unsafe(tmp_path, ray_cluster):
    no_auth = copy.deepcopy(ray_cluster)
    del no_auth["spec"]["authOptions"]
    found = _unsafe(doctor.check_cluster_file(_write(tmp_path, "a.yaml", [no_auth])))
    assert [f.what for f in found] == ["Ray token auth is not on"]

    exposed = copy.deepcopy(ray_cluster)
    exposed["spec"]["headGroupSpec"]["serviceType"] = "LoadBalancer"
    (tmp_path / "b").mkdir()  # alone in its folder: the NetworkPolicy check looks at the neighbours
    found = _unsafe(doctor.check_cluster_file(_write(tmp_path / "b", "b.yaml", [exposed])))
    assert len(found) == 1 and "LoadBalancer" in found[0].what

    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "dash"},
        "spec": {"type": "NodePort", "ports": [{"port": 8265}]},
    }
    found = _unsafe(doctor.check_cluster_file(_write(tmp_path, "c.yaml", [service])))
    assert len(found) == 1 and "NodePort" in found[0].what


def test_a_pod_dashboard_on_all_interfaces_needs_a_network_policy_beside_it(tmp_path, ray_cluster):
    alone = _write(tmp_path, "ray-cluster.yaml", [ray_cluster])
    warned = [f for f in doctor.check_cluster_file(alone) if f.level == "warn"]
    assert len(warned) == 1 and "NetworkPolicy" in warned[0].what
    policy = yaml.safe_load((ROOT / "cluster" / "kuberay" / "network-policy.yaml").read_text())
    _write(tmp_path, "network-policy.yaml", [policy])
    assert not [f for f in doctor.check_cluster_file(alone) if f.level != "ok"]


def test_secrets_in_files_are_unsafe(tmp_path, ray_cluster):
    literal = copy.deepcopy(ray_cluster)
    literal["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"].append(
        {"name": "RAY_AUTH_TOKEN", "value": "0123456789abcdef"}
    )
    found = _unsafe(doctor.check_cluster_file(_write(tmp_path, "a.yaml", [literal])))
    assert len(found) == 1 and "RAY_AUTH_TOKEN" in found[0].where
    from_secret = copy.deepcopy(ray_cluster)
    from_secret["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"].append(
        {"name": "RAY_AUTH_TOKEN", "valueFrom": {"secretKeyRef": {"name": "ray", "key": "auth_token"}}}
    )
    (tmp_path / "b").mkdir()
    assert _unsafe(doctor.check_cluster_file(_write(tmp_path / "b", "b.yaml", [from_secret]))) == []

    config = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    config["serving"]["api_key"] = "hunter2hunter2"
    found = _unsafe(doctor.check_cluster_file(_write(tmp_path, "c.yaml", [config])))
    assert [f.where.split(": ")[1] for f in found] == ["serving.api_key"]
    for text, what in [
        ("key: AKIAABCDEFGHIJKLMNOP\n", "AWS access key"),
        ("uri: http://admin:pw@mlflow:5000\n", "password"),
        ("k: |\n  -----BEGIN RSA PRIVATE KEY-----\n", "private key"),
    ]:
        (tmp_path / "d.yaml").write_text(text)
        found = _unsafe(doctor.check_cluster_file(tmp_path / "d.yaml"))
        assert found and what in found[0].what, (text, found)


LAUNCHERS = sorted((ROOT / "cluster" / "launcher").glob("*.yaml"))


def test_every_cloud_has_a_launcher_file():
    assert [p.name for p in LAUNCHERS] == ["aws.yaml", "azure.yaml", "gcp.yaml"]


@pytest.fixture(params=LAUNCHERS, ids=lambda p: p.name)
def launcher(request) -> dict:
    return yaml.safe_load(request.param.read_text())


def test_a_launcher_file_needs_token_auth_and_a_loopback_dashboard(tmp_path, launcher):
    no_token = copy.deepcopy(launcher)
    no_token["worker_start_ray_commands"] = [
        c.replace("RAY_AUTH_MODE=token", "") for c in no_token["worker_start_ray_commands"]
    ]
    found = _unsafe(doctor.check_cluster_file(_write(tmp_path, "a.yaml", [no_token])))
    assert [f.where.rsplit(": ", 1)[1] for f in found] == ["worker_start_ray_commands"]

    public = copy.deepcopy(launcher)
    public["head_start_ray_commands"] = [
        c.replace("--dashboard-host=127.0.0.1", "--dashboard-host=0.0.0.0") for c in public["head_start_ray_commands"]
    ]
    found = _unsafe(doctor.check_cluster_file(_write(tmp_path, "b.yaml", [public])))
    assert len(found) == 1 and "0.0.0.0" in found[0].what

    opened = copy.deepcopy(launcher)
    opened.setdefault("provider", {})["security_group"] = {
        "GroupName": "rayloop",
        "IpPermissions": [
            {"FromPort": 22, "ToPort": 22, "IpProtocol": "TCP", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
            {"FromPort": 8265, "ToPort": 8265, "IpProtocol": "TCP", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
        ],
    }
    found = _unsafe(doctor.check_cluster_file(_write(tmp_path, "c.yaml", [opened])))
    assert len(found) == 1 and "8265-8265" in found[0].what


def test_the_mlflow_server_with_its_store_uri_inline_or_a_public_service_is_unsafe(tmp_path):
    docs = [d for d in yaml.safe_load_all((ROOT / "cluster" / "kuberay" / "mlflow.yaml").read_text()) if d]
    assert _unsafe(doctor.check_cluster_file(_write(tmp_path, "ok.yaml", docs))) == []
    inline = copy.deepcopy(docs)
    deployment = next(d for d in inline if d["kind"] == "Deployment")
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    env[0] = {"name": "MLFLOW_BACKEND_STORE_URI", "value": "postgresql://mlflow:hunter2@db:5432/mlflow"}
    found = _unsafe(doctor.check_cluster_file(_write(tmp_path, "inline.yaml", inline)))
    assert found and "a URI with a password" in found[0].what
    public = copy.deepcopy(docs)
    next(d for d in public if d["kind"] == "Service")["spec"]["type"] = "LoadBalancer"
    found = _unsafe(doctor.check_cluster_file(_write(tmp_path, "public.yaml", public)))
    assert len(found) == 1 and "LoadBalancer" in found[0].what


def test_serve_config_off_the_loopback_is_a_warning(tmp_path):
    spec = yaml.safe_load((ROOT / "configs" / "serve" / "tabular.yaml").read_text())
    spec["http_options"]["host"] = "0.0.0.0"
    found = doctor.check_cluster_file(_write(tmp_path, "serve.yaml", [spec]))
    assert [f.level for f in found] == ["warn"]


def test_listeners_beyond_the_loopback_are_unsafe():
    safe = [
        Listener(1, "gcs_server", "127.0.0.1", 6379),
        Listener(2, "raylet", "::1", 1234),
        Listener(3, "ray::ProxyActor", "::ffff:127.0.0.1", 8000),
    ]
    assert [f.level for f in doctor.check_listeners(safe)] == ["ok"]
    unsafe = doctor.check_listeners(
        [*safe, Listener(4, "raylet", "0.0.0.0", 5), Listener(5, "gcs_server", "192.0.2.2", 6)]
    )
    assert [f.where for f in unsafe] == ["raylet (pid 4)", "gcs_server (pid 5)"]
    assert all(f.level == "unsafe" for f in unsafe)
    assert doctor.check_listeners([]) == []
    # Serve's replica gRPC server: Ray binds it to [::] itself; token-guarded, so a warning
    replica = Listener(6, "ray::ServeReplica:tabular:TabularServer", "::", 34511)
    assert [f.level for f in doctor.check_listeners([*safe, replica])] == ["warn", "ok"]
    assert [f.level for f in doctor.check_listeners([replica], token_auth=False)] == ["unsafe"]
    assert [f.level for f in doctor.check_listeners([Listener(7, "raylet", "::", 9)])] == ["unsafe"]


def test_environment_and_serving_checks(tmp_path):
    token = tmp_path / "auth_token"
    token.write_text("x" * 64)
    token.chmod(0o644)
    found = doctor.check_environment({"RAY_AUTH_MODE": "disabled"}, [token])
    assert [f.level for f in found] == ["unsafe", "unsafe"]
    token.chmod(0o600)
    assert [f.level for f in doctor.check_environment({"RAY_AUTH_MODE": "token"}, [token])] == ["ok", "ok"]
    assert [f.level for f in doctor.check_environment({}, [])] == ["warn"]
    assert doctor.check_serving("127.0.0.1", "T", {})[0].level == "ok"
    assert doctor.check_serving("0.0.0.0", "T", {})[0].level == "unsafe"
    assert doctor.check_serving("0.0.0.0", "T", {"T": "s3cret"})[0].level == "warn"


def test_the_command_exits_1_on_an_unsafe_file_and_0_on_the_shipped_ones(tmp_path, ray_cluster, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAYLOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("COLUMNS", "250")  # one table row per line
    runner = CliRunner()
    ok = runner.invoke(cli, ["doctor", "--no-listeners", str(ROOT / "cluster" / "kuberay")], terminal_width=200)
    assert ok.exit_code == 0, ok.output
    assert "nothing unsafe found" in ok.output
    del ray_cluster["spec"]["authOptions"]
    bad = runner.invoke(
        cli, ["doctor", "--no-listeners", str(_write(tmp_path, "x.yaml", [ray_cluster]))], terminal_width=200
    )
    assert bad.exit_code == 1 and "Ray token auth is not on" in bad.output
    missing = runner.invoke(cli, ["doctor", "--no-listeners", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2
