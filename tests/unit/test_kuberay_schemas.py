"""Every KubeRay resource in cluster/kuberay/ validates against KubeRay's own CRD schema, strictly:
a field the schema does not list is an error (Kubernetes would prune it silently and the
setting would be lost). The schemas: tests/schemas/kuberay/ (SOURCE names the KubeRay commit)."""

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


@pytest.fixture(scope="module")
def validators() -> dict[str, jsonschema.Draft7Validator]:
    out = {}
    for kind in KINDS:
        schema = json.loads(gzip.decompress((SCHEMAS / f"{kind}.v1.json.gz").read_bytes()))
        out[kind] = jsonschema.Draft7Validator(strict(schema))
    return out


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
