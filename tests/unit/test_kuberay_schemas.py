"""Every resource in cluster/kuberay/ validates strictly: a field the schema does not list is an
error (Kubernetes would prune it silently and the setting would be lost).

KubeRay's resources against KubeRay's own CRD schemas (tests/schemas/kuberay/, SOURCE names the
KubeRay commit). The core objects beside them (PersistentVolumeClaim, Service, Deployment,
NetworkPolicy, ServiceAccount) against schemas assembled from the upstream Kubernetes types those
CRDs embed (a whole v1 Service, PodTemplateSpec, PersistentVolumeClaimSpec, LabelSelector, object
metadata), plus the few fields of the Deployment, NetworkPolicy and ServiceAccount types listed
here by hand: no Kubernetes schema is downloaded or added as a dependency."""

from __future__ import annotations

import copy
import gzip
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from rayloop import cluster

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas" / "kuberay"
KINDS = ("RayCluster", "RayJob", "RayService")


def strict(schema: Any) -> Any:
    """A CRD's OpenAPI schema as a JSON Schema that refuses unknown fields: every object with
    listed properties gets additionalProperties: false, unless Kubernetes keeps unknown fields
    there (x-kubernetes-preserve-unknown-fields); int-or-string fields take either."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict(value) for key, value in schema.items()}
    if out.get("x-kubernetes-int-or-string") is True:
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if (
        out.get("type") == "object"
        and isinstance(out.get("properties"), dict)
        and "additionalProperties" not in out
        and out.get("x-kubernetes-preserve-unknown-fields") is not True
    ):
        out["additionalProperties"] = False
    return out


def crd(kind: str) -> dict[str, Any]:
    return json.loads(gzip.decompress((SCHEMAS / f"{kind}.v1.json.gz").read_bytes()))


@pytest.fixture(scope="module")
def validators() -> dict[str, jsonschema.Draft7Validator]:
    return {kind: jsonschema.Draft7Validator(strict(crd(kind))) for kind in KINDS}


def _obj(api_version: str, kind: str, meta: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """An object schema: apiVersion and kind fixed, metadata, and its own fields."""
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata"],
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": {**meta, "required": ["name", "namespace"]},
            **fields,
        },
    }


def core_schemas(ray_cluster: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """kind -> schema of the core objects we render, built from the upstream types that the
    RayCluster CRD embeds (generated from the Kubernetes API by controller-gen)."""
    head = ray_cluster["properties"]["spec"]["properties"]["headGroupSpec"]["properties"]
    service = head["headService"]  # a whole v1 Service
    template = head["template"]  # v1 PodTemplateSpec
    meta = service["properties"]["metadata"]  # name, namespace, labels, annotations, finalizers
    pod = template["properties"]["spec"]["properties"]
    pvc_spec = pod["volumes"]["items"]["properties"]["ephemeral"]["properties"]["volumeClaimTemplate"]["properties"][
        "spec"
    ]
    affinity = pod["affinity"]["properties"]["podAffinity"]["properties"]
    selector = affinity["requiredDuringSchedulingIgnoredDuringExecution"]["items"]["properties"]["labelSelector"]
    # networking.k8s.io/v1 NetworkPolicySpec, NetworkPolicyPeer, NetworkPolicyPort, IPBlock
    peer = {
        "type": "object",
        "properties": {
            "podSelector": selector,
            "namespaceSelector": selector,
            "ipBlock": {
                "type": "object",
                "required": ["cidr"],
                "properties": {"cidr": {"type": "string"}, "except": {"type": "array", "items": {"type": "string"}}},
            },
        },
    }
    port = {
        "type": "object",
        "properties": {
            "protocol": {"enum": ["TCP", "UDP", "SCTP"]},
            "port": {"x-kubernetes-int-or-string": True},
            "endPort": {"type": "integer"},
        },
    }
    rule = {"type": "array", "items": {"type": "object", "properties": {"ports": {"type": "array", "items": port}}}}
    ingress, egress = copy.deepcopy(rule), copy.deepcopy(rule)
    ingress["items"]["properties"]["from"] = {"type": "array", "items": peer}
    egress["items"]["properties"]["to"] = {"type": "array", "items": peer}
    return {
        "Service": {**service, "required": ["apiVersion", "kind", "metadata", "spec"]},
        "PersistentVolumeClaim": _obj("v1", "PersistentVolumeClaim", meta, spec=pvc_spec),
        # apps/v1 DeploymentSpec
        "Deployment": _obj(
            "apps/v1",
            "Deployment",
            meta,
            spec={
                "type": "object",
                "required": ["selector", "template"],
                "properties": {
                    "replicas": {"type": "integer"},
                    "selector": selector,
                    "template": template,
                    "strategy": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                    "minReadySeconds": {"type": "integer"},
                    "revisionHistoryLimit": {"type": "integer"},
                    "progressDeadlineSeconds": {"type": "integer"},
                    "paused": {"type": "boolean"},
                },
            },
        ),
        "NetworkPolicy": _obj(
            "networking.k8s.io/v1",
            "NetworkPolicy",
            meta,
            spec={
                "type": "object",
                "required": ["podSelector"],
                "properties": {
                    "podSelector": selector,
                    "policyTypes": {"type": "array", "items": {"enum": ["Ingress", "Egress"]}},
                    "ingress": ingress,
                    "egress": egress,
                },
            },
        ),
        # v1 ServiceAccount
        "ServiceAccount": _obj(
            "v1",
            "ServiceAccount",
            meta,
            automountServiceAccountToken={"type": "boolean"},
            imagePullSecrets={"type": "array"},
            secrets={"type": "array"},
        ),
    }


@pytest.fixture(scope="module")
def core_validators() -> dict[str, jsonschema.Draft7Validator]:
    return {
        kind: jsonschema.Draft7Validator(strict(schema)) for kind, schema in core_schemas(crd("RayCluster")).items()
    }


@pytest.fixture(scope="module")
def core_objects() -> list[tuple[str, dict]]:
    found = []
    for path in sorted(cluster.KUBERAY_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and not doc.get("apiVersion", "").startswith("ray.io/"):
                found.append((f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return found


@pytest.fixture(scope="module")
def resources() -> list[tuple[str, dict]]:
    found = []
    for path in sorted(cluster.KUBERAY_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("apiVersion", "").startswith("ray.io/"):
                found.append((f"{path.name}:{doc['kind']}", doc))
    return found


def _errors(validator: jsonschema.Draft7Validator, doc: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:300]}" for e in validator.iter_errors(doc)]


def test_every_rendered_kind_is_there(resources):
    assert {doc["kind"] for _, doc in resources} == set(KINDS)
    assert all(doc["apiVersion"] == "ray.io/v1" for _, doc in resources)


def test_every_kuberay_resource_validates_against_its_crd_strictly(resources, validators):
    for name, doc in resources:
        assert _errors(validators[doc["kind"]], doc) == [], name


def test_the_strict_schema_refuses_an_unknown_or_misplaced_field(resources, validators):
    name, doc = next((n, d) for n, d in resources if d["kind"] == "RayService")
    unknown = copy.deepcopy(doc)
    unknown["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParam"] = {"num-cpus": "0"}  # a typo
    assert any("rayStartParam" in e for e in _errors(validators["RayService"], unknown)), name
    wrong_type = copy.deepcopy(doc)
    wrong_type["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicas"] = "two"
    assert _errors(validators["RayService"], wrong_type), name


def test_every_core_object_has_a_schema_and_validates_strictly(core_objects, core_validators):
    kinds = {doc["kind"] for _, doc in core_objects}
    assert kinds == {"PersistentVolumeClaim", "Service", "Deployment", "NetworkPolicy", "ServiceAccount"}, kinds
    assert "Secret" not in kinds  # the MLflow store's Secret is made by hand, never rendered
    for name, doc in core_objects:
        assert _errors(core_validators[doc["kind"]], doc) == [], name


@pytest.mark.parametrize(
    ("kind", "mutate", "field"),
    [
        ("Service", lambda d: d["spec"]["ports"][0].update(targetport=5000), "targetport"),
        (
            "Deployment",
            lambda d: d["spec"]["template"]["spec"]["containers"][0].update(readinessprobe={}),
            "readinessprobe",
        ),
        ("Deployment", lambda d: d["spec"].update(replica=2), "replica"),
        ("NetworkPolicy", lambda d: d["spec"]["ingress"][0].update(From=[]), "From"),
        ("NetworkPolicy", lambda d: d["spec"]["ingress"][0]["from"][0].update(podselector={}), "podselector"),
        ("PersistentVolumeClaim", lambda d: d["spec"].update(storageClass="efs-sc"), "storageClass"),
        ("ServiceAccount", lambda d: d["metadata"].update(label={}), "label"),
    ],
)
def test_the_core_schemas_refuse_a_misspelled_field(core_objects, core_validators, kind, mutate, field):
    doc = copy.deepcopy(next(d for _, d in core_objects if d["kind"] == kind))
    mutate(doc)
    assert any(field in e for e in _errors(core_validators[kind], doc)), (kind, field)


def test_the_core_schemas_refuse_a_wrong_type(core_objects, core_validators):
    deployment = copy.deepcopy(next(d for _, d in core_objects if d["kind"] == "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "five thousand"
    assert _errors(core_validators["Deployment"], deployment)
    policy = copy.deepcopy(next(d for _, d in core_objects if d["kind"] == "NetworkPolicy"))
    policy["spec"]["ingress"][0]["ports"][0]["protocol"] = "HTTP"
    assert _errors(core_validators["NetworkPolicy"], policy)
