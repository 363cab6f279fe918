"""KubeRay manifests: one source (profile + configs/serve/tabular.yaml + pinned Ray), token auth,
nothing exposed beyond the cluster, and enough GPU/CPU for what the cluster config asks."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from rayloop import cluster, paths
from rayloop.cli import app as cli
from rayloop.config import ProfileConfig, load_config, load_profile
from rayloop.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
RAY_VERSION = importlib.metadata.version("ray")


@pytest.fixture(scope="module")
def prod() -> ProfileConfig:
    return load_profile("prod")


@pytest.fixture(scope="module")
def manifests() -> dict[str, list[dict]]:
    return {
        p.name: [d for d in yaml.safe_load_all(p.read_text()) if d] for p in sorted(cluster.KUBERAY_DIR.glob("*.yaml"))
    }


def _cluster_specs(manifests) -> dict[str, dict]:
    """Every RayCluster spec: the RayCluster's, each RayJob's and the RayService's."""
    specs = {}
    for name, docs in manifests.items():
        for doc in docs:
            spec = doc.get("spec", {})
            found = {
                "RayCluster": spec,
                "RayJob": spec.get("rayClusterSpec"),
                "RayService": spec.get("rayClusterConfig"),
            }
            if doc["kind"] in found:
                specs[f"{name}:{doc['kind']}"] = found[doc["kind"]]
    return specs


def _containers(spec: dict) -> list[dict]:
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def test_committed_manifests_are_exactly_what_the_profile_renders(prod):
    diffs = cluster.check(prod)
    assert diffs == [], "run `rayloop cluster render`:\n" + "\n".join(diffs)[:4000]
    assert sorted(p.name for p in cluster.KUBERAY_DIR.glob("*.yaml")) == sorted(cluster.render(prod))


def test_serve_config_v2_is_the_native_serve_config_with_only_the_cluster_differences(manifests, prod):
    service = manifests["ray-service.tabular.yaml"][0]
    embedded = yaml.safe_load(service["spec"]["serveConfigV2"])
    native = yaml.safe_load(cluster.SERVE_CONFIG.read_text())
    assert embedded["applications"][0]["args"]["config"] == f"{cluster.APP_DIR}/{prod.config}"
    assert embedded["http_options"]["host"] == "0.0.0.0"  # inside the pod, behind the NetworkPolicy
    for app in embedded["applications"]:
        app["args"]["config"] = next(a for a in native["applications"] if a["name"] == app["name"])["args"]["config"]
    embedded["http_options"]["host"] = native["http_options"]["host"]
    assert embedded == native


def test_serve_config_v2_is_a_valid_serve_deploy_config(manifests):
    from ray.serve.schema import ServeDeploySchema

    embedded = yaml.safe_load(manifests["ray-service.tabular.yaml"][0]["spec"]["serveConfigV2"])
    schema = (
        ServeDeploySchema.model_validate(embedded)
        if hasattr(ServeDeploySchema, "model_validate")
        else ServeDeploySchema.parse_obj(embedded)
    )
    assert [a.import_path for a in schema.applications] == ["serve_apps.tabular:app_builder"]


def test_ray_version_and_every_image_tag_name_the_pinned_ray(manifests):
    images = []
    for name, spec in _cluster_specs(manifests).items():
        assert spec["rayVersion"] == RAY_VERSION, name
        images += [c["image"] for c in _containers(spec)]
    assert images and all(image.rsplit(":", 1)[1].startswith(f"{RAY_VERSION}-") for image in images), set(images)
    dockerfile = (ROOT / "cluster" / "Dockerfile").read_text()
    assert re.search(rf"^ARG RAY_VERSION={re.escape(RAY_VERSION)}$", dockerfile, re.M)
    assert "FROM rayproject/ray:${RAY_VERSION}-" + cluster.PYTHON_TAG + "-gpu" in dockerfile


def test_every_ray_cluster_has_token_auth_and_keeps_its_dashboard_inside(manifests):
    specs = _cluster_specs(manifests)
    assert {k.split(":")[1] for k in specs} == {"RayCluster", "RayJob", "RayService"}
    for name, spec in specs.items():
        assert spec["authOptions"] == {"mode": "token"}, name
        assert spec["headGroupSpec"]["serviceType"] == "ClusterIP", name
        assert spec["enableInTreeAutoscaling"] is True, name
    dashboard = manifests["dashboard-service.yaml"][0]
    assert dashboard["spec"]["type"] == "ClusterIP"
    assert [p["port"] for p in dashboard["spec"]["ports"]] == [8265]
    kinds = [d["kind"] for docs in manifests.values() for d in docs]
    services = [d for docs in manifests.values() for d in docs if d["kind"] == "Service"]
    assert all(s["spec"].get("type", "ClusterIP") == "ClusterIP" for s in services), kinds


def test_the_network_policy_covers_every_ray_pod_and_opens_nothing_to_everyone(manifests, prod):
    policy = manifests["network-policy.yaml"][0]["spec"]
    selector = policy["podSelector"]["matchLabels"]
    for name, spec in _cluster_specs(manifests).items():
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            labels = group["template"]["metadata"]["labels"]
            assert selector.items() <= labels.items(), f"{name} {group.get('groupName', 'head')} is not covered"
    assert policy["policyTypes"] == ["Ingress"]
    for rule in policy["ingress"]:
        assert rule.get("from"), f"a rule without `from` admits every source: {rule}"
        for peer in rule["from"]:
            assert "ipBlock" not in peer, rule
    by_port: dict[int, set[str]] = {}
    for rule in policy["ingress"]:
        namespaces = {
            p.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name", "ray pods")
            for p in rule["from"]
        }
        for port in rule.get("ports", [{"port": "any"}]):
            by_port.setdefault(port["port"], set()).update(namespaces)
    # the GCS and the Ray Client port take commands: only Ray's own pods reach them
    assert 6379 not in by_port and 10001 not in by_port
    assert by_port[8265] == {prod.operator_namespace}
    assert by_port[8080] == {prod.monitoring_namespace}
    assert set(prod.serve_client_namespaces) <= by_port[8000]


def test_every_container_gets_the_profiles_state_checkpoints_and_mlflow(manifests, prod):
    for name, spec in _cluster_specs(manifests).items():
        for container in _containers(spec):
            env = {e["name"]: e["value"] for e in container["env"]}
            assert prod.env().items() <= env.items(), (name, container["name"])
            assert {"name": "rayloop-state", "mountPath": prod.home} in container["volumeMounts"]
    for job in ("pipeline", "retrain"):
        spec = manifests[f"ray-job.{job}.yaml"][0]["spec"]
        assert spec["entrypoint"] == f"python -m workloads.{job} --config {cluster.APP_DIR}/{prod.config}"
        assert spec["shutdownAfterJobFinishes"] is True


def _groups(spec: dict) -> list[dict]:
    out = []
    for group in spec["workerGroupSpecs"]:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        out.append(
            {
                "name": group["groupName"],
                "cpus": float(limits["cpu"]),
                "gpus": float(limits.get("nvidia.com/gpu", 0)),
                "max": group["maxReplicas"],
            }
        )
    return out


def test_the_worker_groups_fit_what_the_cluster_config_asks(manifests, prod):
    config = load_config(ROOT / prod.config)
    groups = _groups(manifests["ray-cluster.yaml"][0]["spec"])
    assert any(g["gpus"] >= 1 for g in groups) and any(g["gpus"] == 0 for g in groups)
    for gpu_group in ("gpu-serve", "gpu-train"):
        group = next(g for g in groups if g["name"] == gpu_group)
        assert group["gpus"] >= 1
        tolerations = next(
            w for w in manifests["ray-cluster.yaml"][0]["spec"]["workerGroupSpecs"] if w["groupName"] == gpu_group
        )["template"]["spec"]["tolerations"]
        assert tolerations[0]["key"] == "nvidia.com/gpu"

    def capacity(cpus: float, gpus: float) -> int:
        """How many units of (cpus, gpus) the groups hold at their maximum size."""
        return sum(int(g["max"] * min(g["cpus"] // cpus, g["gpus"] // gpus if gpus else float("inf"))) for g in groups)

    t, s = config.training, config.serving
    asks = {
        "training workers": (t.cpus_per_worker, 1.0 if t.use_gpu else 0.0, t.num_workers),
        "tune trials": (config.tuning.cpus_per_trial, 0.0, config.tuning.max_concurrent_trials),
        "serve replicas": (s.replica_cpus, s.replica_gpus, s.max_replicas),
    }
    for what, (cpus, gpus, count) in asks.items():
        assert capacity(cpus, gpus) >= count, f"{what}: {count} x ({cpus} CPU, {gpus} GPU) do not fit {groups}"


def test_render_check_fails_on_a_hand_edited_manifest(tmp_path, prod):
    runner = CliRunner()
    assert runner.invoke(cli, ["cluster", "render", "--profile", "prod", "--out", str(tmp_path)]).exit_code == 0
    assert runner.invoke(cli, ["cluster", "render", "--check", "--out", str(tmp_path)]).exit_code == 0
    edited = tmp_path / "ray-service.tabular.yaml"
    edited.write_text(edited.read_text().replace("route_prefix: /", "route_prefix: /v2"))
    result = runner.invoke(cli, ["cluster", "render", "--check", "--out", str(tmp_path)], terminal_width=200)
    assert result.exit_code == 1
    assert "-      route_prefix: /v2" in result.output and "+      route_prefix: /" in result.output


def test_the_local_profile_is_the_code_default(monkeypatch, tmp_path):
    local = load_profile("local")
    assert local.home == paths.DEFAULT_HOME and local.storage is None and local.mlflow_tracking_uri is None
    assert load_config(ROOT / local.config) == load_config(None)
    monkeypatch.setenv("RAYLOOP_HOME", str(tmp_path))
    monkeypatch.delenv("RAYLOOP_STORAGE", raising=False)
    assert paths.checkpoint_storage("train") == str(tmp_path / "train")
    monkeypatch.setenv("RAYLOOP_STORAGE", "s3://bucket/ckpt/")
    assert paths.checkpoint_storage("tune") == "s3://bucket/ckpt/tune"


def test_env_profile_prints_the_profiles_exports():
    result = CliRunner().invoke(cli, ["env", "--profile", "prod"])
    assert result.exit_code == 0
    prod = load_profile("prod")
    assert result.output.splitlines() == [f"export {k}={v}" for k, v in prod.env().items()]


def test_a_profile_refuses_credentials_and_unknown_keys(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmlflow_tracking_uri: http://admin:hunter2@mlflow:5000\n")
    with pytest.raises(ConfigError, match="mlflow_tracking_uri: .*credentials"):
        load_profile(bad)
    bad.write_text("name: x\nstorag: s3://b\n")
    with pytest.raises(ConfigError, match=r"storag: unknown key; allowed keys here: .*storage"):
        load_profile(bad)
    with pytest.raises(ConfigError, match=r"known profiles: \['local', 'prod'\]"):
        load_profile("staging")
