"""KubeRay manifests rendered from one profile and the native Serve config.

`rayloop cluster render` writes cluster/kuberay/*.yaml; a test renders them again and fails when a
committed file differs, so the RayService's serveConfigV2 cannot drift from
configs/serve/tabular.yaml, nor an image tag from the pinned Ray, nor the storage or MLflow URI
from configs/profiles/<profile>.yaml. Pure: builds plain dicts and YAML text, no Kubernetes client.
"""

from __future__ import annotations

import copy
import difflib
import importlib.metadata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rayloop.config import ProfileConfig

__all__ = [
    "APP_DIR",
    "KUBERAY_DIR",
    "PYTHON_TAG",
    "SERVE_CONFIG",
    "WORKER_GROUPS",
    "WorkerGroup",
    "check",
    "image",
    "ray_version",
    "render",
    "serve_config",
    "write",
]

ROOT = Path(__file__).resolve().parent.parent
SERVE_CONFIG = ROOT / "configs" / "serve" / "tabular.yaml"
KUBERAY_DIR = ROOT / "cluster" / "kuberay"
# where cluster/Dockerfile puts the project inside the image (installed editable from there)
APP_DIR = "/home/ray/rayloop"
PYTHON_TAG = "py311"
LABELS = {"app.kubernetes.io/part-of": "rayloop"}
CLUSTER_NAME = "rayloop"
# ports the NetworkPolicy and the Services name
GCS_PORT, DASHBOARD_PORT, CLIENT_PORT, SERVE_PORT, METRICS_PORT, AGENT_PORT = 6379, 8265, 10001, 8000, 8080, 52365
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def ray_version() -> str:
    """The pinned Ray: the one installed with rayloop (pyproject pins the minor)."""
    return importlib.metadata.version("ray")


def image(profile: ProfileConfig) -> str:
    """Every pod runs this image; its tag is the pinned Ray's (cluster/Dockerfile builds it FROM
    rayproject/ray with the same tag)."""
    return f"{profile.image}:{ray_version()}-{PYTHON_TAG}-gpu"


@dataclass(frozen=True)
class WorkerGroup:
    """One KubeRay worker group; KubeRay turns the limits into Ray's CPU and GPU resources."""

    name: str
    cpus: int
    memory: str
    gpus: int
    min_replicas: int
    max_replicas: int
    node_selector: dict[str, str] = field(default_factory=dict)
    purpose: str = ""


WORKER_GROUPS = (
    WorkerGroup(
        "cpu", 16, "64Gi", 0, 1, 8, purpose="Ray Data preprocessing, LightGBM training and tuning, the monitor"
    ),
    # L4 class: TensorRT fp16 serving; GKE labels shown, use the EKS/AKS equivalents elsewhere
    WorkerGroup(
        "gpu-serve",
        8,
        "32Gi",
        1,
        0,
        8,
        {"cloud.google.com/gke-accelerator": "nvidia-l4"},
        purpose="Serve replicas (serving.replica_gpus: 1)",
    ),
    # H100 class: data-parallel MLP training (training.use_gpu); one GPU per Ray worker pod
    WorkerGroup(
        "gpu-train",
        24,
        "192Gi",
        1,
        0,
        8,
        {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"},
        purpose="Ray Train workers with use_gpu",
    ),
)
HEAD = WorkerGroup("head", 4, "16Gi", 0, 1, 1, purpose="GCS, dashboard, Serve controller; no tasks (num-cpus 0)")


def _env(profile: ProfileConfig) -> list[dict[str, str]]:
    env = {**profile.env(), "RAY_USAGE_STATS_ENABLED": "0"}
    return [{"name": key, "value": value} for key, value in env.items()]


def _container(profile: ProfileConfig, name: str, group: WorkerGroup, ports: dict[str, int]) -> dict[str, Any]:
    amounts: dict[str, Any] = {"cpu": str(group.cpus), "memory": group.memory}
    if group.gpus:
        amounts["nvidia.com/gpu"] = str(group.gpus)
    container: dict[str, Any] = {
        "name": name,
        "image": image(profile),
        "env": _env(profile),
        "resources": {"requests": dict(amounts), "limits": dict(amounts)},
    }
    if ports:
        container["ports"] = [{"name": port_name, "containerPort": port} for port_name, port in ports.items()]
    if profile.state_volume_claim:
        container["volumeMounts"] = [{"name": "rayloop-state", "mountPath": profile.home}]
    return container


def _pod(profile: ProfileConfig, container: dict[str, Any], group: WorkerGroup) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [container]}
    if group.node_selector:
        spec["nodeSelector"] = dict(group.node_selector)
    if group.gpus:
        spec["tolerations"] = [dict(GPU_TOLERATION)]
    if profile.state_volume_claim:
        spec["volumes"] = [
            {"name": "rayloop-state", "persistentVolumeClaim": {"claimName": profile.state_volume_claim}}
        ]
    return {"metadata": {"labels": dict(LABELS)}, "spec": spec}


def cluster_spec(profile: ProfileConfig, *, max_scale: float = 1.0) -> dict[str, Any]:
    """A RayCluster spec: token auth, in-tree autoscaler, CPU and GPU worker groups.

    `max_scale` shrinks maxReplicas for the clusters a RayJob creates for itself.
    """
    head_ports = {
        "gcs-server": GCS_PORT,
        "dashboard": DASHBOARD_PORT,
        "client": CLIENT_PORT,
        "serve": SERVE_PORT,
        "metrics": METRICS_PORT,
    }
    workers = []
    for group in WORKER_GROUPS:
        maximum = max(group.min_replicas, 1, round(group.max_replicas * max_scale))
        workers.append(
            {
                "groupName": group.name,
                "replicas": group.min_replicas,
                "minReplicas": group.min_replicas,
                "maxReplicas": maximum,
                "rayStartParams": {"metrics-export-port": str(METRICS_PORT)},
                "template": _pod(profile, _container(profile, "ray-worker", group, {"metrics": METRICS_PORT}), group),
            }
        )
    return {
        "rayVersion": ray_version(),
        # KubeRay >= 1.5.1 creates a random token in a Secret and sets RAY_AUTH_MODE=token and
        # RAY_AUTH_TOKEN on every Ray container; clients read it from that Secret
        "authOptions": {"mode": "token"},
        "enableInTreeAutoscaling": True,
        "autoscalerOptions": {"upscalingMode": "Default", "idleTimeoutSeconds": 300},
        "headGroupSpec": {
            # the head Service stays inside the cluster; reach the dashboard with kubectl port-forward
            "serviceType": "ClusterIP",
            "rayStartParams": {
                "num-cpus": "0",
                # inside the pod: the KubeRay operator and the RayJob submitter call the dashboard
                # through the head Service; network-policy.yaml limits who may
                "dashboard-host": "0.0.0.0",
                "metrics-export-port": str(METRICS_PORT),
            },
            "template": _pod(profile, _container(profile, "ray-head", HEAD, head_ports), HEAD),
        },
        "workerGroupSpecs": workers,
    }


def _metadata(profile: ProfileConfig, name: str) -> dict[str, Any]:
    return {"name": name, "namespace": profile.namespace, "labels": dict(LABELS)}


def _config_path(profile: ProfileConfig) -> str:
    return profile.config if profile.config.startswith("/") else f"{APP_DIR}/{profile.config}"


def serve_config(profile: ProfileConfig) -> dict[str, Any]:
    """configs/serve/tabular.yaml as the cluster runs it: the profile's rayloop config, and the
    proxy listening on the pod's address (the serve Service and the NetworkPolicy gate it)."""
    config = copy.deepcopy(yaml.safe_load(SERVE_CONFIG.read_text()))
    config["http_options"] = {**config.get("http_options", {}), "host": "0.0.0.0", "port": SERVE_PORT}
    for app in config["applications"]:
        app.setdefault("args", {})["config"] = _config_path(profile)
    return config


class _Literal(str):
    """A string dumped as a YAML block (`|`), as serveConfigV2 is usually written."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(
    _Literal, lambda dumper, value: dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
)


def _dump(document: dict[str, Any]) -> str:
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120)


def _ray_job(profile: ProfileConfig, name: str, workload: str, deadline_s: int) -> dict[str, Any]:
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": _metadata(profile, name),
        "spec": {
            # the same entrypoint as `ray job submit -- python -m workloads.<name>`
            "entrypoint": f"python -m workloads.{workload} --config {_config_path(profile)}",
            "submissionMode": "K8sJobMode",
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": 600,
            "activeDeadlineSeconds": deadline_s,
            "backoffLimit": 0,
            "rayClusterSpec": cluster_spec(profile, max_scale=0.5),
        },
    }


HEADER = """\
# Generated by `rayloop cluster render --profile {profile}` from configs/profiles/{profile}.yaml,
# configs/serve/tabular.yaml and the pinned Ray ({ray}). Do not edit: change those and render again
# (tests/unit/test_kuberay.py fails when this file and a fresh render differ).
{usage}"""

USAGE = {
    "ray-cluster.yaml": "#   kubectl apply -f cluster/kuberay/ray-cluster.yaml\n"
    "#   kubectl port-forward -n {ns} svc/rayloop-dashboard 8265:8265   # dashboard, Jobs API\n",
    "ray-job.pipeline.yaml": "#   kubectl apply -f cluster/kuberay/ray-job.pipeline.yaml"
    "   # preprocess -> tune -> train -> gate\n",
    "ray-job.retrain.yaml": "#   kubectl create -f cluster/kuberay/ray-job.retrain.yaml"
    "   # a retrain by hand; the monitor\n"
    "#   submits its own through the Jobs API of the cluster it runs on\n",
    "ray-service.tabular.yaml": "#   kubectl apply -f cluster/kuberay/ray-service.tabular.yaml\n"
    "#   kubectl port-forward -n {ns} svc/rayloop-tabular-serve-svc 8000:8000\n",
    "dashboard-service.yaml": "#   kubectl port-forward -n {ns} svc/rayloop-dashboard 8265:8265\n",
    "network-policy.yaml": "#   kubectl apply -f cluster/kuberay/network-policy.yaml\n",
}


def render(profile: ProfileConfig) -> dict[str, str]:
    """File name -> YAML text of every KubeRay manifest."""
    serve_text = _dump(serve_config(profile))
    documents: dict[str, list[dict[str, Any]]] = {
        "ray-cluster.yaml": [
            {
                "apiVersion": "ray.io/v1",
                "kind": "RayCluster",
                "metadata": _metadata(profile, CLUSTER_NAME),
                "spec": cluster_spec(profile),
            }
        ],
        "ray-job.pipeline.yaml": [_ray_job(profile, "rayloop-pipeline", "pipeline", 4 * 3600)],
        "ray-job.retrain.yaml": [_ray_job(profile, "rayloop-retrain", "retrain", 2 * 3600)],
        "ray-service.tabular.yaml": [
            {
                "apiVersion": "ray.io/v1",
                "kind": "RayService",
                "metadata": _metadata(profile, "rayloop-tabular"),
                "spec": {"serveConfigV2": _Literal(serve_text), "rayClusterConfig": cluster_spec(profile)},
            }
        ],
        "dashboard-service.yaml": [_dashboard_service(profile)],
        "network-policy.yaml": [_network_policy(profile)],
    }
    out = {}
    for name, docs in documents.items():
        usage = USAGE[name].format(ns=profile.namespace)
        header = HEADER.format(profile=profile.name, ray=ray_version(), usage=usage)
        out[name] = header + "---\n".join(_dump(doc) for doc in docs)
    return out


def _dashboard_service(profile: ProfileConfig) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(profile, "rayloop-dashboard"),
        "spec": {
            "type": "ClusterIP",  # never LoadBalancer or NodePort: the Jobs API runs code
            "selector": {"ray.io/cluster": CLUSTER_NAME, "ray.io/node-type": "head"},
            "ports": [{"name": "dashboard", "port": DASHBOARD_PORT, "targetPort": DASHBOARD_PORT}],
        },
    }


def _from_namespace(namespace: str) -> dict[str, Any]:
    return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}


def _network_policy(profile: ProfileConfig) -> dict[str, Any]:
    """Ray pods accept traffic only from each other, the operator (dashboard and agent: it
    deploys Serve apps and submits jobs), Prometheus (metrics) and the listed Serve clients."""

    def ports(*numbers: int) -> list[dict[str, Any]]:
        return [{"protocol": "TCP", "port": number} for number in numbers]

    rules: list[dict[str, Any]] = [
        {"from": [{"podSelector": {"matchLabels": dict(LABELS)}}]},
        {"from": [_from_namespace(profile.operator_namespace)], "ports": ports(DASHBOARD_PORT, AGENT_PORT, SERVE_PORT)},
        {"from": [_from_namespace(profile.monitoring_namespace)], "ports": ports(METRICS_PORT)},
    ]
    if profile.serve_client_namespaces:
        rules.append(
            {"from": [_from_namespace(ns) for ns in profile.serve_client_namespaces], "ports": ports(SERVE_PORT)}
        )
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(profile, "rayloop-ray"),
        "spec": {"podSelector": {"matchLabels": dict(LABELS)}, "policyTypes": ["Ingress"], "ingress": rules},
    }


def write(profile: ProfileConfig, target: Path = KUBERAY_DIR) -> list[Path]:
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render(profile).items():
        (target / name).write_text(text)
        written.append(target / name)
    return written


def check(profile: ProfileConfig, target: Path = KUBERAY_DIR) -> list[str]:
    """Unified diffs between the committed manifests and a fresh render; empty when they agree."""
    diffs = []
    for name, text in render(profile).items():
        path = target / name
        current = path.read_text() if path.exists() else ""
        if current != text:
            diffs.append(
                "".join(
                    difflib.unified_diff(
                        current.splitlines(keepends=True),
                        text.splitlines(keepends=True),
                        f"{path} (committed)",
                        f"{path} (rendered)",
                    )
                )
                or f"{path}: missing"
            )
    return diffs
