"""The SLOGate CRD on the local API server: what it accepts and refuses, and that every SLOGate the
schema accepts in examples/ is also a gate the controller accepts, field for field."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from rollout.controller.crd import SLOGATE_CRD_PATH, crd_manifest, install_crd
from rollout.gates.spec import GROUP, KIND, PLURAL, VERSION, GateSpec
from rollout.localcluster.cluster import LocalCluster

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "slogates.yaml"


@pytest.fixture(scope="module")
def api(local_cluster: LocalCluster) -> Iterator[client.ApiClient]:
    with local_cluster.api_client() as api_client:
        install_crd(api_client)
        yield api_client


def slogate(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": {"name": name}, "spec": spec}


def create(api: client.ApiClient, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    created: dict[str, Any] = client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, body)
    return created


def test_the_manifest_names_the_resource_the_controller_watches() -> None:
    manifest = crd_manifest(SLOGATE_CRD_PATH)
    assert manifest["metadata"]["name"] == f"{PLURAL}.{GROUP}"
    assert manifest["spec"]["names"]["kind"] == KIND


def test_the_example_slogates_are_stored_whole_and_are_valid_gates(api: client.ApiClient, namespace: str) -> None:
    for document in yaml.safe_load_all(EXAMPLE.read_text()):
        created = create(api, namespace, document)
        assert created["spec"] == document["spec"]  # nothing pruned: the schema knows every field
        GateSpec.model_validate(created["spec"])


@pytest.mark.parametrize(("spec", "field"), [
    ({"threshold": {"query": "up", "max": 1}, "burnRate": {"objective": 99, "errors": "a", "total": "b"}}, "oneOf"),
    ({}, "oneOf"),
    ({"threshold": {"max": 1}}, "spec.threshold.query"),
    ({"burnRate": {"objective": 100, "errors": "a", "total": "b"}}, "spec.burnRate.objective"),
    ({"comparison": {"test": "tTest", "query": "q", "maxRatio": 2}}, "spec.comparison.test"),
    ({"threshold": {"query": "up", "max": 1}, "interval": "soon"}, "spec.interval"),
    ({"threshold": {"query": "up", "max": 1}, "failureLimit": -1}, "spec.failureLimit"),
])
def test_a_malformed_slogate_is_refused_naming_the_field(
        api: client.ApiClient, namespace: str, spec: dict[str, Any], field: str) -> None:
    with pytest.raises(ApiException) as refused:
        create(api, namespace, slogate("bad", spec))
    assert refused.value.status == 422
    assert field in str(refused.value.body)
