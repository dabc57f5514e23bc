"""The node simulator against the real API server and StatefulSet controller: what a test or the controller
can rely on from the simulated node, its pods and their metrics."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client
from kubernetes.utils import parse_quantity
from prometheus_client.parser import text_string_to_metric_families

from rollout.localcluster.cluster import LocalCluster
from rollout.localcluster.lifecycle import parse_timestamp

NODE = "sim-node-1"
T = TypeVar("T")


@pytest.fixture
def core(local_cluster: LocalCluster) -> Iterator[client.CoreV1Api]:
    with local_cluster.api_client() as api_client:
        yield client.CoreV1Api(api_client)


@pytest.fixture
def apps(local_cluster: LocalCluster) -> Iterator[client.AppsV1Api]:
    with local_cluster.api_client() as api_client:
        yield client.AppsV1Api(api_client)


def eventually(observe: Callable[[], T | None], what: str, timeout_s: float = 30.0) -> T:
    """What `observe` returns once it returns something, polling until `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        seen = observe()
        if seen is not None:
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:g} s: {what}")
        time.sleep(0.2)


def raw(response: object) -> Any:
    """The JSON of a call made with _preload_content=False: the pod as the server has it."""
    return json.loads(response.data)  # type: ignore[attr-defined]


def pod(core: client.CoreV1Api, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = raw(core.read_namespaced_pod(name, namespace, _preload_content=False))
    except client.ApiException as error:
        if error.status == 404:
            return None
        raise
    return found


def pods(core: client.CoreV1Api, namespace: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = raw(core.list_namespaced_pod(namespace, _preload_content=False))["items"]
    return items


def is_ready(found: dict[str, Any] | None) -> bool:
    conditions = (found or {}).get("status", {}).get("conditions") or []
    return any(condition["type"] == "Ready" and condition["status"] == "True" for condition in conditions)


def ready_pod(core: client.CoreV1Api, namespace: str, name: str, timeout_s: float = 30.0) -> dict[str, Any]:
    return eventually(
        lambda: found if is_ready(found := pod(core, namespace, name)) else None, f"{name} Ready", timeout_s
    )


def running_pod(core: client.CoreV1Api, namespace: str, name: str) -> dict[str, Any]:
    def running() -> dict[str, Any] | None:
        found = pod(core, namespace, name)
        return found if found and found["status"].get("phase") == "Running" else None

    return eventually(running, f"{name} Running")


def statefulset(
    apps: client.AppsV1Api,
    namespace: str,
    name: str = "web",
    replicas: int = 1,
    annotations: dict[str, str] | None = None,
    version: str = "1.0.0",
) -> None:
    labels = {"app": name}
    body = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name},
        "spec": {
            "serviceName": name,
            "replicas": replicas,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {
                    "labels": {**labels, "app.kubernetes.io/version": version},
                    "annotations": annotations or {},
                },
                "spec": {"containers": [{"name": "app", "image": f"example/{name}:{version}"}]},
            },
        },
    }
    apps.create_namespaced_stateful_set(namespace, client.V1StatefulSet.from_dict(body), _preload_content=False)


def ready_replicas(apps: client.AppsV1Api, namespace: str, name: str = "web") -> int:
    found = raw(apps.read_namespaced_stateful_set(name, namespace, _preload_content=False))
    return int(found.get("status", {}).get("readyReplicas") or 0)


def scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {
        sample.name + json.dumps(sample.labels, sort_keys=True): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape_if_served(url: str) -> dict[str, float] | None:
    """A scrape, or None while the simulator has not yet started serving a pod it reported Ready."""
    try:
        return scrape(url)
    except urllib.error.HTTPError as answer:
        if answer.code != 404:
            raise
        return None


def node(core: client.CoreV1Api, name: str) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = raw(core.read_node(name, _preload_content=False))
    except client.ApiException as error:
        if error.status == 404:
            return None
        raise
    return found


def warnings(core: client.CoreV1Api, namespace: str, reason: str) -> list[dict[str, Any]]:
    selector = f"reason={reason},type=Warning"
    found: list[dict[str, Any]] = raw(
        core.list_namespaced_event(namespace, field_selector=selector, _preload_content=False)
    )["items"]
    return found


def healthy(local_cluster: LocalCluster) -> bool:
    try:
        with urllib.request.urlopen(f"{local_cluster.metrics_url}/healthz", timeout=5) as response:
            return bool(response.status == 200)
    except urllib.error.HTTPError:
        return False


def targets(local_cluster: LocalCluster, namespace: str) -> dict[str, dict[str, str]]:
    groups = json.loads(local_cluster.targets_file.read_text())
    return {group["labels"]["pod"]: group["labels"] for group in groups if group["labels"]["namespace"] == namespace}


def test_the_node_is_ready_with_room_for_many_pods_and_a_fresh_heartbeat(
    local_cluster: LocalCluster, core: client.CoreV1Api
) -> None:
    eventually(lambda: healthy(local_cluster) or None, "the simulator healthy")
    found = node(core, NODE)
    assert found is not None
    ready = next(condition for condition in found["status"]["conditions"] if condition["type"] == "Ready")
    assert ready["status"] == "True"
    assert parse_quantity(found["status"]["allocatable"]["pods"]) >= 100
    assert time.time() - parse_timestamp(ready["lastHeartbeatTime"]) < 30


def test_statefulset_pods_are_scheduled_on_the_node_and_become_ready(
    core: client.CoreV1Api, apps: client.AppsV1Api, namespace: str
) -> None:
    statefulset(apps, namespace, replicas=2)
    eventually(lambda: ready_replicas(apps, namespace) == 2 or None, "2 ready replicas")
    for found in pods(core, namespace):
        assert found["spec"]["nodeName"] == NODE
        assert found["status"]["phase"] == "Running"
        conditions = {condition["type"]: condition["status"] for condition in found["status"]["conditions"]}
        assert conditions == {"PodScheduled": "True", "Initialized": "True", "ContainersReady": "True", "Ready": "True"}
        (container,) = found["status"]["containerStatuses"]
        assert (container["ready"], container["started"], container["restartCount"]) == (True, True, 0)
        assert container["image"] == "example/web:1.0.0"
        assert "startedAt" in container["state"]["running"]


def test_a_pod_becomes_ready_after_its_ready_delay(
    core: client.CoreV1Api, apps: client.AppsV1Api, namespace: str
) -> None:
    statefulset(apps, namespace, annotations={"sim.ringmaster.dev/ready-delay": "3s"})
    found = ready_pod(core, namespace, "web-0")
    started_s = parse_timestamp(found["status"]["containerStatuses"][0]["state"]["running"]["startedAt"])
    ready = next(condition for condition in found["status"]["conditions"] if condition["type"] == "Ready")
    assert parse_timestamp(ready["lastTransitionTime"]) - started_s == 3


def test_a_pod_annotated_never_ready_runs_but_never_becomes_ready(
    core: client.CoreV1Api, apps: client.AppsV1Api, namespace: str
) -> None:
    statefulset(apps, namespace, annotations={"sim.ringmaster.dev/ready": "never"})
    running = running_pod(core, namespace, "web-0")
    time.sleep(3)  # three times the default ready delay
    assert not is_ready(pod(core, namespace, "web-0"))
    assert running["status"]["containerStatuses"][0]["state"]["running"]
    assert ready_replicas(apps, namespace) == 0


def test_a_pod_annotated_crash_after_crashes_over_and_over_and_comes_back_ready(
    core: client.CoreV1Api, apps: client.AppsV1Api, namespace: str
) -> None:
    statefulset(
        apps, namespace, annotations={"sim.ringmaster.dev/crash-after": "1s", "sim.ringmaster.dev/ready-delay": "500ms"}
    )

    def crashed_twice() -> dict[str, Any] | None:
        found = pod(core, namespace, "web-0")
        statuses = (found or {}).get("status", {}).get("containerStatuses") or [{}]
        return found if statuses[0].get("restartCount", 0) >= 2 else None

    found = eventually(crashed_twice, "web-0 restarted twice")
    last_run = found["status"]["containerStatuses"][0]["lastState"]["terminated"]
    assert (last_run["exitCode"], last_run["reason"]) == (1, "Error")
    back = ready_pod(core, namespace, "web-0")
    assert back["status"]["containerStatuses"][0]["restartCount"] >= 2


def test_a_deleted_pod_finishes_deleting_and_its_statefulset_replaces_it(
    core: client.CoreV1Api, apps: client.AppsV1Api, namespace: str
) -> None:
    statefulset(apps, namespace)
    first = ready_pod(core, namespace, "web-0")
    core.delete_namespaced_pod("web-0", namespace, _preload_content=False)  # graceful: 30 s by default

    def replacement_ready() -> dict[str, Any] | None:
        found = pod(core, namespace, "web-0")
        return found if found and is_ready(found) and found["metadata"]["uid"] != first["metadata"]["uid"] else None

    replacement = eventually(replacement_ready, "a new web-0 Ready")
    assert replacement["spec"]["nodeName"] == NODE


def test_scaling_a_statefulset_down_removes_its_pods(
    core: client.CoreV1Api, apps: client.AppsV1Api, namespace: str
) -> None:
    statefulset(apps, namespace, replicas=2)
    eventually(lambda: ready_replicas(apps, namespace) == 2 or None, "2 ready replicas")
    apps.patch_namespaced_stateful_set_scale("web", namespace, {"spec": {"replicas": 0}}, _preload_content=False)
    eventually(lambda: pods(core, namespace) == [] or None, "no pods left")


def test_a_ready_pod_serves_traffic_at_its_annotated_rate_and_error_ratio(
    local_cluster: LocalCluster, core: client.CoreV1Api, apps: client.AppsV1Api, namespace: str
) -> None:
    statefulset(
        apps,
        namespace,
        annotations={"sim.ringmaster.dev/rps": "200", "sim.ringmaster.dev/error-ratio": "0.1"},
    )
    ready_pod(core, namespace, "web-0")
    url = f"{local_cluster.metrics_url}/pods/{namespace}/web-0/metrics"
    first = eventually(lambda: scrape_if_served(url), "web-0's metrics being served")
    time.sleep(1.5)
    second = scrape(url)
    ok, failed = 'sim_http_requests_total{"code": "200"}', 'sim_http_requests_total{"code": "500"}'
    assert second[ok] > first[ok] and second[failed] > first[failed]
    assert second[failed] / (second[ok] + second[failed]) == pytest.approx(0.1, abs=0.01)
    assert second["sim_http_request_duration_seconds_count{}"] == second[ok] + second[failed]


def test_an_error_ratio_set_on_a_running_pod_takes_effect_without_resetting_its_counters(
    local_cluster: LocalCluster, core: client.CoreV1Api, apps: client.AppsV1Api, namespace: str
) -> None:
    statefulset(apps, namespace, annotations={"sim.ringmaster.dev/rps": "200"})
    ready_pod(core, namespace, "web-0")
    url = f"{local_cluster.metrics_url}/pods/{namespace}/web-0/metrics"
    ok, failed = 'sim_http_requests_total{"code": "200"}', 'sim_http_requests_total{"code": "500"}'
    healthy_traffic = scrape(url)
    assert healthy_traffic[failed] == 0
    bad = {"metadata": {"annotations": {"sim.ringmaster.dev/error-ratio": "0.5"}}}
    core.patch_namespaced_pod("web-0", namespace, bad, _preload_content=False)
    eventually(lambda: scrape(url)[failed] > 0 or None, "errors counted")
    assert scrape(url)[ok] >= healthy_traffic[ok]


def test_a_pod_that_is_not_ready_answers_no_scrape(
    local_cluster: LocalCluster, apps: client.AppsV1Api, core: client.CoreV1Api, namespace: str
) -> None:
    statefulset(apps, namespace, annotations={"sim.ringmaster.dev/ready": "never"})
    running_pod(core, namespace, "web-0")
    with pytest.raises(urllib.error.HTTPError) as answer:
        scrape(f"{local_cluster.metrics_url}/pods/{namespace}/web-0/metrics")
    assert answer.value.code == 404


def test_the_targets_file_lists_ready_pods_with_their_statefulset_revision_and_version(
    local_cluster: LocalCluster, core: client.CoreV1Api, apps: client.AppsV1Api, namespace: str
) -> None:
    statefulset(apps, namespace, replicas=2, version="2.1.0")
    eventually(lambda: len(targets(local_cluster, namespace)) == 2 or None, "2 targets")
    revision = ready_pod(core, namespace, "web-0")["metadata"]["labels"]["controller-revision-hash"]
    assert targets(local_cluster, namespace)["web-0"] == {
        "__metrics_path__": f"/pods/{namespace}/web-0/metrics",
        "namespace": namespace,
        "pod": "web-0",
        "statefulset": "web",
        "revision": revision,
        "version": "2.1.0",
    }
    apps.patch_namespaced_stateful_set_scale("web", namespace, {"spec": {"replicas": 0}}, _preload_content=False)
    eventually(lambda: targets(local_cluster, namespace) == {} or None, "no targets left")


def test_a_bad_annotation_is_reported_as_an_event_on_the_pod_which_still_runs(
    core: client.CoreV1Api, apps: client.AppsV1Api, namespace: str
) -> None:
    statefulset(apps, namespace, annotations={"sim.ringmaster.dev/crash-after": "soon"})
    ready_pod(core, namespace, "web-0")
    events = eventually(lambda: warnings(core, namespace, "InvalidSimulatorAnnotation") or None, "a warning event")
    (event,) = events
    assert event["involvedObject"]["name"] == "web-0"
    assert event["message"].startswith("sim.ringmaster.dev/crash-after: 'soon' is not a duration")


def test_the_simulator_stops_within_two_seconds_of_sigterm_and_leaves_no_targets(
    local_cluster: LocalCluster, core: client.CoreV1Api, tmp_path: Path
) -> None:
    # A second simulator with a Node of its own; no pod is created meanwhile, so it schedules nothing.
    node_name = f"sim-node-stop-{datetime.now(UTC):%H%M%S}"
    targets_file = tmp_path / "targets.json"
    command = [
        sys.executable,
        "-m",
        "rollout.localcluster.simulator",
        "--kubeconfig",
        str(local_cluster.kubeconfig),
        "--metrics-port",
        "0",
        "--targets-file",
        str(targets_file),
        "--node-name",
        node_name,
    ]
    with (tmp_path / "simulator.log").open("w") as log:
        simulator = subprocess.Popen(command, stderr=log)
    try:
        eventually(lambda: node(core, node_name), f"node {node_name} registered")
        simulator.send_signal(signal.SIGTERM)
        assert simulator.wait(timeout=2) == 0
        assert json.loads(targets_file.read_text()) == []
    finally:
        simulator.kill()
        simulator.wait()
        core.delete_node(node_name, _preload_content=False)
