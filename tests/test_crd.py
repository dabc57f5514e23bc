"""The Rollout CRD (deploy/crd/rollouts.yaml) on the real API server: it installs, it refuses
malformed specs with 422 naming the field, its status subresource keeps spec and status apart,
and `kubectl get` shows its printer columns."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from cohorts.spec import DEFAULT_RINGS
from rollout.controller.crd import CRD_PATH, crd_manifest, install_crd
from rollout.controller.spec import GROUP, KIND, PLURAL, VERSION, InvalidRolloutSpec, check_rings, parse_rollout_spec
from rollout.controller.status import Condition, Pin, RingRecord, RolloutStatus, parse_status
from rollout.localcluster.cluster import LocalCluster

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "rollout.yaml"
needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None,
                                   reason="kubectl is not installed (make test installs it)")


@pytest.fixture(scope="module")
def api(local_cluster: LocalCluster) -> Iterator[client.ApiClient]:
    with local_cluster.api_client() as api_client:
        install_crd(api_client)
        yield api_client


@pytest.fixture
def rollouts(api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


def rollout(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": {"name": name}, "spec": spec}


def valid_spec() -> dict[str, Any]:
    return {
        "statefulSetName": "web",
        "image": "registry.example.com/web:2.0.0",
        "rings": [{"name": "canary", "bake": "20s", "share": 5}, {"name": "early-adopter"},
                  {"name": "stable"}, {"name": "laggard", "bake": "0s"}],
        "flag": {"key": "web-v2"},
        "scaling": {"maxSurge": 1, "readyTimeout": "2m", "rollbackWindow": "5m"},
    }


def create(rollouts: client.CustomObjectsApi, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    created: dict[str, Any] = rollouts.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    return created


def read(rollouts: client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = rollouts.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    return found


def patch_status(rollouts: client.CustomObjectsApi, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
    patched: dict[str, Any] = rollouts.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name,
                                                                             body)
    return patched


def test_crd_manifest_is_found_beside_the_package_and_names_the_controllers_resource() -> None:
    manifest = crd_manifest()
    assert CRD_PATH.is_file()
    assert manifest["metadata"]["name"] == f"{PLURAL}.{GROUP}"
    assert manifest["spec"]["names"]["kind"] == KIND
    assert [version["name"] for version in manifest["spec"]["versions"]] == [VERSION]


def test_installing_the_crd_again_replaces_it_and_it_stays_established(api: client.ApiClient) -> None:
    install_crd(api)
    definition = client.ApiextensionsV1Api(api).read_custom_resource_definition(f"{PLURAL}.{GROUP}")
    conditions = {condition.type: condition.status for condition in definition.status.conditions}
    assert conditions["Established"] == "True"
    assert conditions["NamesAccepted"] == "True"
    assert definition.spec.names.short_names == ["rmr"]


def test_example_rollout_parses_and_is_accepted_by_the_api_server(
    rollouts: client.CustomObjectsApi, namespace: str
) -> None:
    document = yaml.safe_load(EXAMPLE.read_text())
    spec = parse_rollout_spec(document["spec"])
    assert spec.stateful_set_name == "web"
    assert spec.image == "registry.example.com/web:2.0.0"
    assert [ring.name for ring in spec.rings] == list(DEFAULT_RINGS)
    assert [ring.bake_s for ring in spec.rings] == [20, 20, 20, 0]
    assert check_rings(spec, DEFAULT_RINGS) == []
    assert (spec.flag.key, spec.scaling.max_surge) == ("web-v2", 1)
    assert (spec.scaling.ready_timeout_s, spec.scaling.rollback_window_s) == (120, 300)

    created = create(rollouts, namespace, document)
    assert created["spec"] == document["spec"]


def test_a_valid_rollout_is_stored_as_written(rollouts: client.CustomObjectsApi, namespace: str) -> None:
    spec = {**valid_spec(), "container": "web", "cohortSet": "default", "sizing": "configured",
            "failurePolicy": "pause", "paused": True,
            "flag": {"key": "web-v2", "onVariant": "new", "offVariant": "old"}}
    spec["scaling"]["maxSurge"] = "25%"
    created = create(rollouts, namespace, rollout("web", spec))
    assert created["spec"] == spec
    assert created["metadata"]["generation"] == 1


def test_a_pod_template_is_kept_whole(rollouts: client.CustomObjectsApi, namespace: str) -> None:
    template = {"metadata": {"labels": {"app": "web"}, "annotations": {"sim.ringmaster.dev/ready-delay": "2s"}},
                "spec": {"containers": [{"name": "web", "image": "registry.example.com/web:2.0.0",
                                         "ports": [{"containerPort": 8080}], "env": [{"name": "A", "value": "1"}]}]}}
    spec = {key: value for key, value in valid_spec().items() if key != "image"} | {"template": template}
    created = create(rollouts, namespace, rollout("web", spec))
    assert created["spec"]["template"] == template


def _without(field: str) -> Callable[[dict[str, Any]], None]:
    return lambda spec: spec.pop(field)


def _setting(*path: str | int, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(spec: dict[str, Any]) -> None:
        target: Any = spec
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value
    return mutate


MALFORMED = {
    "missing flag": (_without("flag"), "spec.flag"),
    "missing statefulSetName": (_without("statefulSetName"), "spec.statefulSetName"),
    "bake not a duration": (_setting("rings", 0, "bake", value="3x"), "spec.rings.bake"),
    "bake with a space": (_setting("rings", 0, "bake", value="1 m"), "spec.rings.bake"),
    "maxSurge an object": (_setting("scaling", "maxSurge", value={"count": 1}), "spec.scaling.maxSurge"),
    "maxSurge zero": (_setting("scaling", "maxSurge", value=0), "spec.scaling.maxSurge"),
    "maxSurge over 100%": (_setting("scaling", "maxSurge", value="150%"), "spec.scaling.maxSurge"),
    "readyTimeout not a duration": (_setting("scaling", "readyTimeout", value="soon"), "spec.scaling.readyTimeout"),
    "share 150": (_setting("rings", 0, "share", value=150), "spec.rings.share"),
    "share 0": (_setting("rings", 0, "share", value=0), "spec.rings.share"),
    "ring without a name": (_setting("rings", 1, value={"bake": "1m"}), "spec.rings.name"),
    "failurePolicy explode": (_setting("failurePolicy", value="explode"), "spec.failurePolicy"),
    "sizing unknown": (_setting("sizing", value="guess"), "spec.sizing"),
    "statefulSetName with uppercase": (_setting("statefulSetName", value="Web"), "spec.statefulSetName"),
    "statefulSetName too long": (_setting("statefulSetName", value="w" * 47), "spec.statefulSetName"),
    "flag key with a space": (_setting("flag", "key", value="web v2"), "spec.flag.key"),
    "empty image": (_setting("image", value=""), "spec.image"),
    "paused not a boolean": (_setting("paused", value="maybe"), "spec.paused"),
}


@pytest.mark.parametrize("case", MALFORMED.keys())
def test_malformed_specs_are_refused_with_422_naming_the_field(
    case: str, rollouts: client.CustomObjectsApi, namespace: str
) -> None:
    mutate, field = MALFORMED[case]
    spec = valid_spec()
    mutate(spec)
    with pytest.raises(ApiException) as refused:
        create(rollouts, namespace, rollout("web", spec))
    assert refused.value.status == 422
    causes = json.loads(refused.value.body)["details"]["causes"]
    assert field in [cause["field"] for cause in causes], causes
    # The controller, reading the same spec, refuses it too.
    with pytest.raises(InvalidRolloutSpec):
        parse_rollout_spec(spec)


@pytest.mark.parametrize("versions", [{"image": "registry.example.com/web:2.0.0", "template": {"spec": {}}}, {}])
def test_exactly_one_of_image_and_template_is_required(
    versions: dict[str, Any], rollouts: client.CustomObjectsApi, namespace: str
) -> None:
    spec = {key: value for key, value in valid_spec().items() if key != "image"} | versions
    with pytest.raises(ApiException) as refused:
        create(rollouts, namespace, rollout("web", spec))
    assert refused.value.status == 422
    assert "oneOf" in json.loads(refused.value.body)["message"]


def test_unknown_spec_fields_are_pruned_not_refused(rollouts: client.CustomObjectsApi, namespace: str) -> None:
    spec = valid_spec()
    spec["rings"][0]["bakeTime"] = "1h"
    spec["scaling"]["readytimeout"] = "9m"
    spec["replicas"] = 5
    created = create(rollouts, namespace, rollout("web", spec))
    assert created["spec"] == valid_spec()


def test_status_patch_changes_status_only_and_spec_change_bumps_generation(
    rollouts: client.CustomObjectsApi, namespace: str
) -> None:
    create(rollouts, namespace, rollout("web", valid_spec()))
    patched = patch_status(rollouts, namespace, "web", {
        "spec": {"paused": True},
        "status": {"phase": "Progressing", "currentRing": "canary", "observedGeneration": 1},
    })
    assert patched["spec"] == valid_spec()
    assert patched["status"] == {"phase": "Progressing", "currentRing": "canary", "observedGeneration": 1}
    assert patched["metadata"]["generation"] == 1

    changed = rollouts.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "web", {
        "spec": {"image": "registry.example.com/web:2.0.1"}, "status": {"phase": "Failed"},
    })
    assert changed["spec"]["image"] == "registry.example.com/web:2.0.1"
    assert changed["status"]["phase"] == "Progressing"
    assert changed["metadata"]["generation"] == 2


def test_status_as_the_controller_writes_it_is_stored_whole(
    rollouts: client.CustomObjectsApi, namespace: str
) -> None:
    create(rollouts, namespace, rollout("web", valid_spec()))
    now = datetime(2026, 11, 27, 12, 0, 30, 250000, tzinfo=UTC)
    status = RolloutStatus(
        phase="Paused", track="Progressing", message="paused: spec.paused is true", observed_generation=1,
        revision="3f9a0c1d2e", new_stateful_set="web-3f9a0c1d2e", stable_stateful_set="web",
        pin=Pin(cohort_set="default", version=3, epoch=151, source="configured",
                cumulative_shares=[0.05, 0.2, 0.9, 1.0], target_replicas=3, replicas=[1, 1, 3, 3]),
        ring_index=1, current_ring="early-adopter", promoted_rings=["canary"], bake_remaining_seconds=12.5,
        handled_request="promote:2", old_ready=2, new_ready=1, transitions=4,
        history=[RingRecord(ring="canary", revision="3f9a0c1d2e", started_at=now, ready_at=now, promoted_at=now,
                            outcome="promoted"),
                 RingRecord(ring="early-adopter", revision="3f9a0c1d2e", started_at=now)],
        conditions=[Condition(type="Paused", status="True", reason="Paused", message="paused",
                              last_transition_time=now)],
    )
    patched = patch_status(rollouts, namespace, "web", {"status": status.to_wire()})
    assert parse_status(patched["status"]) == status


def test_status_phase_outside_the_known_phases_is_refused(rollouts: client.CustomObjectsApi, namespace: str) -> None:
    create(rollouts, namespace, rollout("web", valid_spec()))
    with pytest.raises(ApiException) as refused:
        patch_status(rollouts, namespace, "web", {"status": {"phase": "Exploded"}})
    assert refused.value.status == 422
    assert "status.phase" in refused.value.body


def kubectl(local_cluster: LocalCluster, namespace: str, *arguments: str) -> list[list[str]]:
    """`kubectl get ...` as rows of whitespace-separated cells, the header first."""
    done = subprocess.run(["kubectl", "--kubeconfig", str(local_cluster.kubeconfig), "--namespace", namespace,
                           *arguments], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return [line.split() for line in done.stdout.splitlines()]


@needs_kubectl
def test_kubectl_get_shows_phase_ring_step_replicas_and_flag_rings_and_wide_adds_flag_revision_and_message(
    local_cluster: LocalCluster, rollouts: client.CustomObjectsApi, namespace: str
) -> None:
    create(rollouts, namespace, rollout("web", valid_spec()))
    patch_status(rollouts, namespace, "web", {"status": {
        "phase": "Progressing", "currentRing": "canary", "step": "Baking", "oldReady": 2, "newReady": 1,
        "pin": {"targetReplicas": 3}, "promotedRings": ["canary"], "revision": "3f9a0c1d2e", "message": "baking",
    }})
    for resource in ("rollouts", "rmr", "rollout.ringmaster.dev"):
        header, row = kubectl(local_cluster, namespace, "get", resource)
        assert header == ["NAME", "PHASE", "RING", "STEP", "OLD", "NEW", "TARGET", "FLAG-ON", "AGE"]
        assert row[:8] == ["web", "Progressing", "canary", "Baking", "2", "1", "3", '["canary"]']
    header, row = kubectl(local_cluster, namespace, "get", "rmr", "-o", "wide")
    assert header == ["NAME", "PHASE", "RING", "STEP", "OLD", "NEW", "TARGET", "FLAG-ON", "FLAG", "REVISION",
                      "MESSAGE", "AGE"]
    assert row[:11] == ["web", "Progressing", "canary", "Baking", "2", "1", "3", '["canary"]', "web-v2",
                        "3f9a0c1d2e", "baking"]


@needs_kubectl
def test_kubectl_applies_the_example_and_gets_it_by_short_name(
    local_cluster: LocalCluster, api: client.ApiClient, namespace: str
) -> None:
    done = subprocess.run(["kubectl", "--kubeconfig", str(local_cluster.kubeconfig), "--namespace", namespace,
                           "apply", "-f", str(EXAMPLE)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    header, row = kubectl(local_cluster, namespace, "get", "rmr", "web")
    assert header[0] == "NAME" and row[0] == "web"


def test_a_copy_of_the_manifest_with_a_changed_description_replaces_the_installed_one(
    api: client.ApiClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    manifest = copy.deepcopy(crd_manifest())
    schema = manifest["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    schema["description"] = "changed by a test"
    changed = tmp_path / "rollouts.yaml"
    changed.write_text(yaml.safe_dump(manifest))
    extensions = client.ApiextensionsV1Api(api)
    name = f"{PLURAL}.{GROUP}"
    monkeypatch.setattr("rollout.controller.crd.CRD_PATH", changed)
    install_crd(api)
    installed = extensions.read_custom_resource_definition(name).spec.versions[0].schema.open_apiv3_schema
    assert installed.description == "changed by a test"
    monkeypatch.undo()
    install_crd(api)
    restored = extensions.read_custom_resource_definition(name).spec.versions[0].schema.open_apiv3_schema
    assert restored.description == crd_manifest()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["description"]
