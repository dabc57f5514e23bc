"""deploy/ as a kustomize base: it renders, the API server accepts every object, and its RBAC grants
the controller and the service exactly what their code needs, no more (the list below) and no less (a
rollout goes through every ring, steered through the service, with each process impersonating its
ServiceAccount on the local control plane, which authorizes with RBAC).

The local control plane is Kubernetes 1.20, which serves PodDisruptionBudgets as policy/v1beta1 only;
the base uses policy/v1 (1.21 and later), and the tests apply it through tests/deploy/kubernetes-1.20,
an overlay that patches only that apiVersion.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from cohorts.db import make_engine, upgrade
from rollout.api.app import create_app
from rollout.controller.controller import Controller, ControllerSettings
from rollout.controller.spec import GROUP, PLURAL, VERSION
from rollout.localcluster.cluster import LocalCluster
from rollout.settings import ServiceSettings
from tests.auth_helpers import authorized
from tests.controller_harness import get_rollout, rollout, statefulset, wait_for, wait_ready

REPOSITORY = Path(__file__).resolve().parents[1]
BASE = REPOSITORY / "deploy"
KUBERNETES_1_20 = REPOSITORY / "tests" / "deploy" / "kubernetes-1.20"
SYSTEM = "ringmaster-system"
CONTROLLER = "ringmaster-controller"
SERVICE = "ringmaster"
IMAGE = "ghcr.io/ringmaster-dev/ringmaster:0.1.0"
CLUSTER = "*"  # the scope of a grant made by a ClusterRoleBinding

# What the code needs, in one place: (ServiceAccount, scope, apiGroup, resource, verb), from reading
# rollout/controller/*.py, rollout/api/rollouts.py and rollout/kube.py; the andon cord, flags and Slack
# use the database and Slack only. CRDs are applied with the base, so the controller runs --no-install-crd
# and needs no rights on customresourcedefinitions.
NEEDS: frozenset[tuple[str, str, str, str, str]] = frozenset({
    # reactor.py: the informers list, then watch, in every namespace.
    *((CONTROLLER, CLUSTER, group, resource, verb)
      for group, resource in (("ringmaster.dev", "rollouts"), ("ringmaster.dev", "slogates"), ("apps", "statefulsets"))
      for verb in ("list", "watch")),
    (CONTROLLER, CLUSTER, "ringmaster.dev", "rollouts", "patch"),  # act.py _clear_request
    (CONTROLLER, CLUSTER, "ringmaster.dev", "rollouts/status", "update"),  # act.py write_status (PUT)
    # plan.py new_statefulset: an owner reference with blockOwnerDeletion (OwnerReferencesPermissionEnforcement).
    (CONTROLLER, CLUSTER, "ringmaster.dev", "rollouts/finalizers", "update"),
    (CONTROLLER, CLUSTER, "apps", "statefulsets", "create"),  # act.py _create
    (CONTROLLER, CLUSTER, "apps", "statefulsets", "patch"),  # act.py _scale (JSON patch)
    (CONTROLLER, CLUSTER, "apps", "statefulsets", "delete"),  # act.py _delete (retired after rollbackWindow)
    (CONTROLLER, CLUSTER, "", "events", "create"),  # act.py _record
    # leader.py: read, create, renew and release the Lease, in ringmaster-system only.
    *((CONTROLLER, SYSTEM, "coordination.k8s.io", "leases", verb) for verb in ("get", "create", "update")),
    # api/rollouts.py: list (every namespace or one), get, and patch (actions) Rollouts; an Event per action.
    *((SERVICE, CLUSTER, "ringmaster.dev", "rollouts", verb) for verb in ("get", "list", "patch")),
    (SERVICE, CLUSTER, "", "events", "create"),
})

needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None,
                                   reason="kubectl is not installed (make test installs it)")
pytestmark = needs_kubectl


def kustomize(folder: Path) -> list[dict[str, Any]]:
    rendered = subprocess.run(["kubectl", "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    return [document for document in yaml.safe_load_all(rendered.stdout) if document]


def kubectl(local_cluster: LocalCluster, *arguments: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(["kubectl", "--kubeconfig", str(local_cluster.kubeconfig), *arguments], input=stdin,
                          capture_output=True, text=True, timeout=120)


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(obj for obj in objects if obj["kind"] == kind and obj["metadata"]["name"] == name)


def granted(objects: list[dict[str, Any]]) -> set[tuple[str, str, str, str, str]]:
    """Every (ServiceAccount, scope, apiGroup, resource, verb) the rendered bindings grant."""
    roles = {(obj["kind"], obj["metadata"].get("namespace", CLUSTER), obj["metadata"]["name"]): obj
             for obj in objects if obj["kind"] in ("Role", "ClusterRole")}
    grants = set()
    for binding in (obj for obj in objects if obj["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        scope = CLUSTER if binding["kind"] == "ClusterRoleBinding" else binding["metadata"]["namespace"]
        reference = binding["roleRef"]
        role = roles[(reference["kind"], CLUSTER if reference["kind"] == "ClusterRole" else scope,
                      reference["name"])]
        for subject in binding["subjects"]:
            assert (subject["kind"], subject["namespace"]) == ("ServiceAccount", SYSTEM), subject
            for rule in role["rules"]:
                assert set(rule) == {"apiGroups", "resources", "verbs"}, f"{role['metadata']['name']}: {rule}"
                grants |= {(subject["name"], scope, group, resource, verb) for group in rule["apiGroups"]
                           for resource in rule["resources"] for verb in rule["verbs"]}
    return grants


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return kustomize(BASE)


def test_the_base_renders_the_crds_rbac_and_both_processes_into_ringmaster_system(base: list[dict[str, Any]]) -> None:
    kinds = sorted((obj["kind"], obj["metadata"]["name"]) for obj in base)
    assert kinds == sorted([
        ("CustomResourceDefinition", "rollouts.ringmaster.dev"),
        ("CustomResourceDefinition", "slogates.ringmaster.dev"),
        ("Namespace", SYSTEM), ("ConfigMap", "ringmaster-config"),
        ("ServiceAccount", CONTROLLER), ("ClusterRole", CONTROLLER), ("ClusterRoleBinding", CONTROLLER),
        ("Role", "ringmaster-controller-leader-election"), ("RoleBinding", "ringmaster-controller-leader-election"),
        ("Deployment", CONTROLLER), ("PodDisruptionBudget", CONTROLLER),
        ("ServiceAccount", SERVICE), ("ClusterRole", "ringmaster-service"),
        ("ClusterRoleBinding", "ringmaster-service"),
        ("Deployment", SERVICE), ("Service", SERVICE), ("PodDisruptionBudget", SERVICE),
    ])
    namespaced = [obj for obj in base if obj["kind"] not in (
        "CustomResourceDefinition", "Namespace", "ClusterRole", "ClusterRoleBinding")]
    assert {obj["metadata"]["namespace"] for obj in namespaced} == {SYSTEM}
    # The CRDs are the very files rollout/controller/crd.py installs.
    for path in sorted((BASE / "crd").glob("*.yaml")):
        manifest = yaml.safe_load(path.read_text())
        rendered = find(base, "CustomResourceDefinition", manifest["metadata"]["name"])
        assert {**rendered, "metadata": {**rendered["metadata"], "labels": {}}} == {
            **manifest, "metadata": {**manifest["metadata"], "labels": {}}}
    # The database URL is a Secret the user creates; no Secret is in the base.
    assert not [obj for obj in base if obj["kind"] == "Secret"]


def containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    spec = deployment["spec"]["template"]["spec"]
    found: list[dict[str, Any]] = spec.get("initContainers", []) + spec["containers"]
    return found


def test_both_deployments_run_the_image_unprivileged_with_probes_and_the_database_secret(
        base: list[dict[str, Any]]) -> None:
    for name in (CONTROLLER, SERVICE):
        deployment = find(base, "Deployment", name)
        pod = deployment["spec"]["template"]["spec"]
        assert deployment["spec"]["replicas"] == 2
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert find(base, "PodDisruptionBudget", name)["spec"]["minAvailable"] == 1
        for container in containers(deployment):
            assert container["image"] == IMAGE
            assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                                    "capabilities": {"drop": ["ALL"]}}
            database = next(env for env in container["env"] if env["name"] == "RINGMASTER_DATABASE_URL")
            assert database["valueFrom"] == {"secretKeyRef": {"name": "ringmaster-database", "key": "url"}}
    controller = find(base, "Deployment", CONTROLLER)
    assert controller["spec"]["template"]["spec"]["serviceAccountName"] == CONTROLLER
    [container] = containers(controller)
    assert container["args"][:2] == ["controller", "--no-install-crd"]
    environment = {env["name"]: env for env in container["env"]}
    assert environment["RINGMASTER_CONTROLLER_METRICS_ADDRESS"]["value"] == "0.0.0.0:8090"
    assert environment["RINGMASTER_LEASE_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert container["ports"] == [{"name": "metrics", "containerPort": 8090}]
    assert (container["livenessProbe"]["httpGet"], container["readinessProbe"]["httpGet"]) == (
        {"path": "/healthz", "port": "metrics"}, {"path": "/readyz", "port": "metrics"})
    service = find(base, "Deployment", SERVICE)
    assert service["spec"]["template"]["spec"]["serviceAccountName"] == SERVICE
    migrate, serve = containers(service)
    assert migrate["args"] == ["db", "upgrade"]
    assert serve["args"][:3] == ["serve", "--host", "0.0.0.0"]
    assert (serve["livenessProbe"]["httpGet"], serve["readinessProbe"]["httpGet"]) == (
        {"path": "/healthz", "port": "http"}, {"path": "/readyz", "port": "http"})
    slack = [env for env in serve["env"] if env["name"].startswith("RINGMASTER_SLACK_")]
    assert slack and all(env["valueFrom"]["secretKeyRef"]["optional"] is True for env in slack)
    ports = {port["name"]: port["port"] for port in find(base, "Service", SERVICE)["spec"]["ports"]}
    assert ports == {"http": 8080, "flagd-sync": 8015}


def test_every_setting_in_the_config_map_is_one_the_code_reads(base: list[dict[str, Any]]) -> None:
    code = "\n".join(path.read_text() for folder in ("rollout", "cohorts")
                     for path in sorted((REPOSITORY / folder).rglob("*.py")))
    for key in find(base, "ConfigMap", "ringmaster-config")["data"]:
        assert f'"{key}"' in code, f"{key} is in the ConfigMap, but no code reads it"


def test_the_rbac_grants_exactly_what_the_code_needs(base: list[dict[str, Any]]) -> None:
    grants = granted(base)
    assert not NEEDS - grants, f"missing: {sorted(NEEDS - grants)}"
    assert not grants - NEEDS, f"more than the code needs: {sorted(grants - NEEDS)}"


def test_the_api_server_accepts_every_object(local_cluster: LocalCluster) -> None:
    objects = kustomize(KUBERNETES_1_20)
    assert {obj["apiVersion"] for obj in objects if obj["kind"] == "PodDisruptionBudget"} == {"policy/v1beta1"}
    # A server-side dry run of namespaced objects needs their namespace to exist.
    created = kubectl(local_cluster, "apply", "-f", "-", stdin=yaml.safe_dump(find(objects, "Namespace", SYSTEM)))
    assert created.returncode == 0, created.stderr
    applied = kubectl(local_cluster, "apply", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump_all(objects))
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.count("(server dry run)") == len(objects), applied.stdout


# Reality: the RBAC applied for real, each process impersonating its ServiceAccount


def impersonating(local_cluster: LocalCluster, service_account: str) -> client.ApiClient:
    """An API client acting as `service_account` of ringmaster-system (the admin may impersonate anyone)."""
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(local_cluster.kubeconfig), client_configuration=configuration)
    return client.ApiClient(configuration, header_name="Impersonate-User",
                            header_value=f"system:serviceaccount:{SYSTEM}:{service_account}")


class ImpersonatedKubernetes:
    """Stands in for the service's `rollout.api.rollouts.Kubernetes`: the rollout routes ask it for a client."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self._api_client = api_client

    def api_client(self) -> client.ApiClient:
        return self._api_client


@pytest.fixture(scope="module")
def installed(local_cluster: LocalCluster) -> None:
    applied = kubectl(local_cluster, "apply", "-f", "-", stdin=yaml.safe_dump_all(kustomize(KUBERNETES_1_20)))
    assert applied.returncode == 0, applied.stderr


@pytest.fixture
def as_controller(local_cluster: LocalCluster, installed: None) -> Iterator[client.ApiClient]:
    with impersonating(local_cluster, CONTROLLER) as api_client:
        yield api_client


def test_a_service_account_may_do_nothing_its_role_does_not_grant(
        local_cluster: LocalCluster, as_controller: client.ApiClient, namespace: str) -> None:
    with pytest.raises(ApiException) as refused:
        client.CoreV1Api(as_controller).list_namespaced_secret(namespace)
    assert refused.value.status == 403
    with pytest.raises(ApiException) as refused:
        client.CoordinationV1Api(as_controller).read_namespaced_lease("anything", namespace)
    assert refused.value.status == 403  # leases only in ringmaster-system
    with impersonating(local_cluster, SERVICE) as as_service, pytest.raises(ApiException) as refused:
        client.AppsV1Api(as_service).list_namespaced_stateful_set(namespace)
    assert refused.value.status == 403


def test_a_rollout_goes_through_every_ring_with_each_process_as_its_service_account(
        local_cluster: LocalCluster, as_controller: client.ApiClient, namespace: str, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ringmaster.db'}"
    upgrade(url)
    engine = make_engine(url)
    # Every namespace, as deployed: the informers list and watch cluster-wide, the Lease is in ringmaster-system.
    controller = Controller(as_controller, engine, ControllerSettings(
        identity=f"test-{secrets.token_hex(3)}", lease_namespace=SYSTEM, lease_name=f"test-{secrets.token_hex(3)}",
        lease_duration_s=4, renew_deadline_s=3, retry_period_s=0.5, workers=2))
    running = threading.Thread(target=controller.run, daemon=True)
    running.start()
    app = create_app(ServiceSettings(database_url=url))
    try:
        with local_cluster.api_client() as admin, impersonating(local_cluster, SERVICE) as as_service, \
                TestClient(app, headers=authorized(url)) as service:
            app.state.kubernetes = ImpersonatedKubernetes(as_service)
            apps = client.AppsV1Api(admin)
            apps.create_namespaced_stateful_set(namespace, statefulset("web", 3, "registry.example.com/web:1"))
            wait_ready(admin, namespace, "web", 3)
            # Flags of their own: the controller watches every namespace, and one an earlier test deleted may
            # still hold a Rollout, whose flag it would turn on in this test's database too.
            release = secrets.token_hex(3)
            first = rollout("web", "web", flag=f"web-v2-{release}", bakes=("1h", "0s", "0s", "0s"))
            first["spec"]["scaling"]["rollbackWindow"] = "1s"
            client.CustomObjectsApi(admin).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, first)

            def status() -> dict[str, Any]:
                found: dict[str, Any] = get_rollout(admin, namespace, "web").get("status") or {}
                return found

            wait_for("canary to bake", lambda: status().get("bakeUntil"), 90)
            # The service lists (every namespace, then one), reads, and steers with a promote request.
            assert [item["name"] for item in service.get("/api/v1/rollouts").json()["items"]
                    if item["namespace"] == namespace] == ["web"]
            assert service.get("/api/v1/rollouts", params={"namespace": namespace}).status_code == 200
            assert service.get(f"/api/v1/rollouts/{namespace}/web").status_code == 200
            assert service.post(f"/api/v1/rollouts/{namespace}/web/promote").status_code == 202
            # The controller handles the request (and clears its annotation), then finishes every ring.
            wait_for("web to succeed", lambda: status().get("phase") == "Succeeded", 90)
            second = status()["stableStatefulSet"]
            # A second revision (a release with a flag of its own) retires the first one's StatefulSet, which
            # the controller created, after the 1 s rollback window.
            client.CustomObjectsApi(admin).patch_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, "web", {"spec": {
                    "image": "registry.example.com/web:3", "flag": {"key": f"web-v3-{release}"},
                    "rings": [{"name": ring["name"], "bake": "0s"} for ring in first["spec"]["rings"]]}})
            wait_for("the second revision to succeed", lambda: status().get("phase") == "Succeeded"
                     and status()["stableStatefulSet"] != second, 90)
            wait_for(f"StatefulSet {second} to be deleted", lambda: second not in {
                item.metadata.name for item in apps.list_namespaced_stateful_set(namespace).items}, 30)
            annotations = get_rollout(admin, namespace, "web")["metadata"].get("annotations") or {}
            assert "ringmaster.dev/request" not in annotations
            # Events are courtesies whose failure is only logged: check they were written.
            reasons = {event.reason for event in client.CoreV1Api(admin).list_namespaced_event(namespace).items}
            assert {"PromoteRequested", "Promoted", "RolloutSucceeded", "Retired"} <= reasons
            # Listed and watched cluster-wide without a refusal.
            assert all(informer.stats.errors == 0
                       for informer in (controller.rollouts, controller.statefulsets, controller.slogates))
    finally:
        controller.stop()
        running.join(timeout=30)
        engine.dispose()
