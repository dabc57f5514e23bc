"""What the controller relies on from Kubernetes, checked through the official client against the
local control plane, so nothing later rests on an assumption."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from rollout.localcluster.cluster import LocalCluster
from tests.polling import eventually

GROUP = "contract.ringmaster.dev"
PLURAL = "widgets"
# The client sends custom-object patches as merge patches unless told otherwise, lists included.
JSON_PATCH = "application/json-patch+json"


@pytest.fixture(scope="module")
def api(local_cluster: LocalCluster) -> Iterator[client.ApiClient]:
    with local_cluster.api_client() as api_client:
        yield api_client


@pytest.fixture(scope="module")
def widgets(api: client.ApiClient) -> str:
    """A CRD with status and scale subresources and a structural schema, installed once."""
    extensions = client.ApiextensionsV1Api(api)
    name = f"{PLURAL}.{GROUP}"
    schema = {
        "type": "object",
        "properties": {
            "spec": {"type": "object", "required": ["size"], "properties": {
                "size": {"type": "integer", "minimum": 0}, "color": {"type": "string"}}},
            "status": {"type": "object", "properties": {
                "phase": {"type": "string"}, "observedGeneration": {"type": "integer"},
                "readySize": {"type": "integer"}}},
        },
    }
    definition = {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": name},
        "spec": {
            "group": GROUP, "scope": "Namespaced",
            "names": {"plural": PLURAL, "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
            "versions": [{
                "name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": schema},
                "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.size",
                                                          "statusReplicasPath": ".status.readySize"}},
            }],
        },
    }
    try:
        extensions.create_custom_resource_definition(definition)
    except ApiException as error:
        if error.status != 409:
            raise

    def established() -> bool:
        conditions = extensions.read_custom_resource_definition(name).status.conditions or []
        return any(condition.type == "Established" and condition.status == "True" for condition in conditions)

    eventually(established, what="the CRD being established")
    return name


def make_widget(api: client.ApiClient, namespace: str, name: str, size: int = 1, **labels: str) -> dict[str, Any]:
    body = {"apiVersion": f"{GROUP}/v1", "kind": "Widget",
            "metadata": {"name": name, "labels": labels}, "spec": {"size": size}}
    created: dict[str, Any] = client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, "v1", namespace, PLURAL, body)
    return created


def test_the_schema_rejects_malformed_objects(api: client.ApiClient, widgets: str, namespace: str) -> None:
    objects = client.CustomObjectsApi(api)
    with pytest.raises(ApiException) as raised:
        objects.create_namespaced_custom_object(GROUP, "v1", namespace, PLURAL, {
            "apiVersion": f"{GROUP}/v1", "kind": "Widget", "metadata": {"name": "bad"}, "spec": {"size": -1}})
    assert raised.value.status == 422 and "spec.size" in raised.value.body


def test_create_get_list_and_merge_patch(api: client.ApiClient, widgets: str, namespace: str) -> None:
    objects = client.CustomObjectsApi(api)
    make_widget(api, namespace, "one")
    with pytest.raises(ApiException) as raised:
        make_widget(api, namespace, "one")
    assert raised.value.status == 409
    objects.patch_namespaced_custom_object(GROUP, "v1", namespace, PLURAL, "one", {"spec": {"color": "red"}})
    got = objects.get_namespaced_custom_object(GROUP, "v1", namespace, PLURAL, "one")
    assert got["spec"] == {"size": 1, "color": "red"}
    listed = objects.list_namespaced_custom_object(GROUP, "v1", namespace, PLURAL)
    assert [item["metadata"]["name"] for item in listed["items"]] == ["one"]
    assert listed["metadata"]["resourceVersion"]


def test_json_patch_with_a_resource_version_test_is_a_precondition(
    api: client.ApiClient, widgets: str, namespace: str
) -> None:
    objects = client.CustomObjectsApi(api)
    version = make_widget(api, namespace, "guarded")["metadata"]["resourceVersion"]

    def resize(size: int) -> None:
        objects.patch_namespaced_custom_object(GROUP, "v1", namespace, PLURAL, "guarded", [
            {"op": "test", "path": "/metadata/resourceVersion", "value": version},
            {"op": "replace", "path": "/spec/size", "value": size},
        ], _content_type=JSON_PATCH)

    resize(2)
    with pytest.raises(ApiException) as raised:
        resize(3)
    assert raised.value.status == 422
    assert objects.get_namespaced_custom_object(GROUP, "v1", namespace, PLURAL, "guarded")["spec"]["size"] == 2


def test_a_stale_update_is_refused_with_409(api: client.ApiClient, widgets: str, namespace: str) -> None:
    objects = client.CustomObjectsApi(api)
    stale = make_widget(api, namespace, "contested")
    objects.patch_namespaced_custom_object(GROUP, "v1", namespace, PLURAL, "contested", {"spec": {"size": 5}})
    stale["spec"]["size"] = 9
    with pytest.raises(ApiException) as raised:
        objects.replace_namespaced_custom_object(GROUP, "v1", namespace, PLURAL, "contested", stale)
    assert raised.value.status == 409


def test_status_and_spec_are_written_separately_and_only_spec_bumps_generation(
    api: client.ApiClient, widgets: str, namespace: str
) -> None:
    objects = client.CustomObjectsApi(api)
    created = make_widget(api, namespace, "split")
    assert created["metadata"]["generation"] == 1
    after_status = objects.patch_namespaced_custom_object_status(
        GROUP, "v1", namespace, PLURAL, "split", {"status": {"phase": "Ready"}, "spec": {"size": 7}})
    assert after_status["status"] == {"phase": "Ready"}
    assert after_status["spec"]["size"] == 1 and after_status["metadata"]["generation"] == 1
    after_spec = objects.patch_namespaced_custom_object(
        GROUP, "v1", namespace, PLURAL, "split", {"spec": {"size": 4}, "status": {"phase": "Broken"}})
    assert after_spec["status"] == {"phase": "Ready"}
    assert after_spec["metadata"]["generation"] == 2
    labelled = objects.patch_namespaced_custom_object(
        GROUP, "v1", namespace, PLURAL, "split", {"metadata": {"labels": {"team": "web"}}})
    assert labelled["metadata"]["generation"] == 2


def test_label_selectors_filter_lists(api: client.ApiClient, widgets: str, namespace: str) -> None:
    make_widget(api, namespace, "a", ring="canary")
    make_widget(api, namespace, "b", ring="stable")
    make_widget(api, namespace, "c")
    objects = client.CustomObjectsApi(api)

    def names(selector: str) -> list[str]:
        listed = objects.list_namespaced_custom_object(GROUP, "v1", namespace, PLURAL, label_selector=selector)
        return sorted(item["metadata"]["name"] for item in listed["items"])

    assert names("ring=canary") == ["a"]
    assert names("ring in (canary,stable)") == ["a", "b"]
    assert names("!ring") == ["c"]
    assert names("ring,ring!=canary") == ["b"]


def test_a_watch_asking_for_bookmarks_resumes_from_a_resource_version(
    api: client.ApiClient, widgets: str, namespace: str
) -> None:
    objects = client.CustomObjectsApi(api)
    start = objects.list_namespaced_custom_object(GROUP, "v1", namespace, PLURAL)["metadata"]["resourceVersion"]
    make_widget(api, namespace, "watched")
    objects.patch_namespaced_custom_object(GROUP, "v1", namespace, PLURAL, "watched", {"spec": {"size": 2}})
    seen = []
    stream = watch.Watch()
    for event in stream.stream(objects.list_namespaced_custom_object, GROUP, "v1", namespace, PLURAL,
                               resource_version=start, allow_watch_bookmarks=True, timeout_seconds=5,
                               _request_timeout=15):
        seen.append((event["type"], event["object"]["spec"]["size"]))
        if len(seen) == 2:
            stream.stop()
    assert seen == [("ADDED", 1), ("MODIFIED", 2)]


def event(namespace: str, name: str) -> client.CoreV1Event:
    return client.CoreV1Event(metadata=client.V1ObjectMeta(name=name), reason="Tested", message=name,
                              involved_object=client.V1ObjectReference(kind="Pod", name="p", namespace=namespace))


def test_an_expired_resource_version_gets_410_and_a_relist_recovers(
    local_cluster: LocalCluster, api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api)
    old = core.create_namespaced_event(namespace, event(namespace, "first")).metadata.resource_version
    core.create_namespaced_event(namespace, event(namespace, "second"))
    core.create_namespaced_event(namespace, event(namespace, "third"))
    # A watch from `old` starts at the revision after it, which compaction must have removed.
    # Events are not in the API server's watch cache, so their watches read etcd's history directly.
    local_cluster.compact_etcd()
    with pytest.raises(ApiException) as raised:
        for _ in watch.Watch().stream(core.list_namespaced_event, namespace, resource_version=old,
                                      timeout_seconds=5, _request_timeout=15):
            pass
    assert raised.value.status == 410
    relisted = core.list_namespaced_event(namespace)
    assert sorted(item.metadata.name for item in relisted.items) == ["first", "second", "third"]
    core.create_namespaced_event(namespace, event(namespace, "fourth"))
    for watched in watch.Watch().stream(core.list_namespaced_event, namespace,
                                        resource_version=relisted.metadata.resource_version,
                                        timeout_seconds=5, _request_timeout=15):
        assert (watched["type"], watched["object"].metadata.name) == ("ADDED", "fourth")
        break


def micro_time(moment: datetime) -> datetime:
    # The 1.20 server refuses a MicroTime without a fraction; keep microseconds non-zero.
    return moment.replace(microsecond=moment.microsecond or 1)


def test_leases_are_created_renewed_and_taken_over_with_fencing(api: client.ApiClient, namespace: str) -> None:
    leases = client.CoordinationV1Api(api)
    now = datetime.now(UTC)
    lease = leases.create_namespaced_lease(namespace, client.V1Lease(
        metadata=client.V1ObjectMeta(name="ringmaster-controller"),
        spec=client.V1LeaseSpec(holder_identity="replica-a", lease_duration_seconds=2,
                                 acquire_time=micro_time(now), renew_time=micro_time(now), lease_transitions=0)))
    lease.spec.renew_time = micro_time(datetime.now(UTC))
    renewed = leases.replace_namespaced_lease("ringmaster-controller", namespace, lease)
    assert renewed.metadata.resource_version != lease.metadata.resource_version
    # replica-b sees the lease expire and takes it over with the version it read ...
    seen_by_b = leases.read_namespaced_lease("ringmaster-controller", namespace)
    seen_by_b.spec.holder_identity = "replica-b"
    seen_by_b.spec.acquire_time = seen_by_b.spec.renew_time = micro_time(datetime.now(UTC) + timedelta(seconds=3))
    seen_by_b.spec.lease_transitions = 1
    taken = leases.replace_namespaced_lease("ringmaster-controller", namespace, seen_by_b)
    assert taken.spec.holder_identity == "replica-b"
    # ... and replica-a, deposed, cannot renew with the version it last wrote.
    renewed.spec.renew_time = micro_time(datetime.now(UTC))
    with pytest.raises(ApiException) as raised:
        leases.replace_namespaced_lease("ringmaster-controller", namespace, renewed)
    assert raised.value.status == 409
    assert leases.read_namespaced_lease("ringmaster-controller", namespace).spec.holder_identity == "replica-b"


def statefulset(name: str, replicas: int, annotations: dict[str, str] | None = None) -> client.V1StatefulSet:
    labels = {"app": name}
    return client.V1StatefulSet(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1StatefulSetSpec(
            replicas=replicas, service_name=name, selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels, annotations=annotations or {}),
                spec=client.V1PodSpec(containers=[client.V1Container(name="app", image="example/web:1.0")])),
            volume_claim_templates=[client.V1PersistentVolumeClaim(
                metadata=client.V1ObjectMeta(name="data"),
                spec=client.V1PersistentVolumeClaimSpec(
                    access_modes=["ReadWriteOnce"],
                    resources=client.V1VolumeResourceRequirements(requests={"storage": "1Gi"})))],
        ),
    )


def ready_statefulset(apps: client.AppsV1Api, namespace: str, name: str, replicas: int) -> client.V1StatefulSet:
    def ready() -> client.V1StatefulSet | None:
        current = apps.read_namespaced_stateful_set(name, namespace)
        status = current.status
        done = (status.observed_generation == current.metadata.generation and status.replicas == replicas
                and (status.ready_replicas or 0) == replicas and status.current_revision == status.update_revision)
        return current if done else None

    return eventually(ready, timeout_s=60, what=f"{name} having {replicas} ready replicas")


def test_statefulsets_scale_through_scale_in_order_and_keep_their_claims(
    api: client.ApiClient, namespace: str
) -> None:
    apps = client.AppsV1Api(api)
    core = client.CoreV1Api(api)
    apps.create_namespaced_stateful_set(namespace, statefulset("web", 1))
    ready_statefulset(apps, namespace, "web", 1)
    started = core.list_namespaced_pod(namespace).metadata.resource_version
    apps.patch_namespaced_stateful_set_scale("web", namespace, {"spec": {"replicas": 3}})
    ready_statefulset(apps, namespace, "web", 3)
    scale = apps.read_namespaced_stateful_set_scale("web", namespace)
    assert (scale.spec.replicas, scale.status.replicas) == (3, 3)

    # OrderedReady: web-2 is created only once web-1 is Ready.
    events: list[tuple[str, str, bool]] = []
    for event in watch.Watch().stream(core.list_namespaced_pod, namespace, resource_version=started,
                                      timeout_seconds=2, _request_timeout=10):
        pod = event["object"]
        ready = any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))
        events.append((event["type"], pod.metadata.name, ready))
    first_web_2 = next(index for index, event in enumerate(events) if event[1] == "web-2")
    assert any(name == "web-1" and ready for _, name, ready in events[:first_web_2])

    apps.patch_namespaced_stateful_set_scale("web", namespace, {"spec": {"replicas": 1}})
    ready_statefulset(apps, namespace, "web", 1)
    eventually(lambda: [pod.metadata.name for pod in core.list_namespaced_pod(namespace).items] == ["web-0"],
               what="web-1 and web-2 being deleted")
    claims = sorted(claim.metadata.name for claim in core.list_namespaced_persistent_volume_claim(namespace).items)
    assert claims == ["data-web-0", "data-web-1", "data-web-2"]


def test_pods_that_never_become_ready_hold_a_statefulset_back(api: client.ApiClient, namespace: str) -> None:
    apps = client.AppsV1Api(api)
    core = client.CoreV1Api(api)
    apps.create_namespaced_stateful_set(namespace, statefulset("stuck", 2, {"sim.ringmaster.dev/ready": "never"}))
    eventually(lambda: core.list_namespaced_pod(namespace).items, what="stuck-0 being created")
    time.sleep(3)
    current = apps.read_namespaced_stateful_set("stuck", namespace)
    assert (current.status.ready_replicas or 0) == 0
    assert [pod.metadata.name for pod in core.list_namespaced_pod(namespace).items] == ["stuck-0"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed (make test installs it)")
def test_kubectl_can_get_and_apply(local_cluster: LocalCluster, namespace: str) -> None:
    kubectl = ["kubectl", "--kubeconfig", str(local_cluster.kubeconfig), "--namespace", namespace]
    manifest = f"""
apiVersion: v1
kind: ConfigMap
metadata:
  name: applied-{secrets.token_hex(2)}
data:
  ring: canary
"""
    applied = subprocess.run([*kubectl, "apply", "-f", "-"], input=manifest, capture_output=True, text=True,
                             timeout=60)
    assert applied.returncode == 0, applied.stderr
    listed = subprocess.run([*kubectl, "get", "configmaps", "-o", "name"], capture_output=True, text=True,
                            timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert "configmap/applied-" in listed.stdout
