"""The rollout routes and `ringmaster rollout` against the local control plane, with no controller running:
each test creates Rollouts and writes their status itself, then reads and steers them over HTTP."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from kubernetes import client

from cohorts.db import make_engine
from rollout.api.app import create_app
from rollout.controller.crd import install_crd
from rollout.controller.history import GateResultEntry, GateResults, HistoryEntry, RolloutHistory
from rollout.controller.observed import REQUEST_ANNOTATION
from rollout.controller.spec import GROUP, PLURAL, VERSION
from rollout.controller.status import Condition, GateResult, GateStatus, Pin, RingRecord, RolloutStatus
from rollout.localcluster.cluster import LocalCluster
from rollout.settings import ServiceSettings
from tests.auth_helpers import authorized
from tests.controller_harness import get_rollout, rollout
from tests.test_api import assert_problem
from tests.test_cli import (
    cli_environment,
    free_port,
    run,
    serving,
)

NOW = datetime.now(UTC).replace(microsecond=0)
ACTOR = "ana@example.com"
ERRORS_QUERY = ('sum(rate(http_requests_total{app="web",code=~"5.."}[5m])) / '
                'sum(rate(http_requests_total{app="web"}[5m]))')
LATENCY_QUERY = 'histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket{app="web"}[5m])))'


@pytest.fixture(scope="module")
def kube(local_cluster: LocalCluster) -> Iterator[client.ApiClient]:
    with local_cluster.api_client() as api_client:
        install_crd(api_client)
        yield api_client


@pytest.fixture
def api(database_url: str, local_cluster: LocalCluster, kube: client.ApiClient) -> Iterator[TestClient]:
    settings = ServiceSettings(database_url=database_url, kubeconfig=local_cluster.kubeconfig)
    with TestClient(create_app(settings), headers=authorized(database_url, ACTOR)) as test_client:
        yield test_client


def pin(target_replicas: int = 3) -> Pin:
    return Pin(cohort_set="default", version=1, epoch=0, source="configured",
               cumulative_shares=[5.0, 20.0, 90.0, 100.0], target_replicas=target_replicas, replicas=[1, 1, 3, 3])


def baking_canary() -> RolloutStatus:
    """Progressing in ring canary, its capacity up, baking."""
    return RolloutStatus(
        phase="Progressing", track="Progressing", message="ring canary is up; baking", revision="3f9a0c1d2e",
        new_stateful_set="web-3f9a0c1d2e", stable_stateful_set="web", pin=pin(), ring_index=0,
        current_ring="canary", promoted_rings=["canary"], bake_until=NOW + timedelta(minutes=20), old_ready=2,
        new_ready=1, history=[RingRecord(ring="canary", revision="3f9a0c1d2e", started_at=NOW, ready_at=NOW)],
        conditions=[Condition(type="Available", status="True", reason="CapacityReady",
                              message="2 old + 1 new ready of 3", last_transition_time=NOW)],
    )


def gating_canary() -> RolloutStatus:
    """Baking ring canary with two gates: the error ratio passing, the p99 latency held for want of samples."""
    return baking_canary().model_copy(update={"gates": [
        GateStatus(name="error-ratio", kind="threshold", ring="canary", phase="Running", measurements=3, passed=3,
                   next_at=NOW + timedelta(minutes=1),
                   last=GateResult(at=NOW, verdict="Passed", values={"value": 0.002}, threshold="value <= 0.01",
                                   message="value 0.002 is at most 0.01", queries=[ERRORS_QUERY])),
        GateStatus(name="latency-p99", kind="threshold", ring="canary", phase="Held", measurements=2, passed=1,
                   next_at=NOW + timedelta(minutes=1),
                   last=GateResult(at=NOW, verdict="TooFewSamples", values={"value": 0.41, "samples": 12},
                                   threshold="value <= 0.5", message="12 samples, at least 100 needed; holding",
                                   queries=[LATENCY_QUERY])),
    ]})


def moving_capacity() -> RolloutStatus:
    return baking_canary().model_copy(update={"bake_until": None, "promoted_rings": [],
                                              "message": "scaling web-3f9a0c1d2e from 0 to 1 for ring canary"})


def failure_policy_paused() -> RolloutStatus:
    return moving_capacity().model_copy(update={
        "phase": "Paused", "paused_reason": "web-3f9a0c1d2e had 0 of 1 replicas ready after readyTimeout 2m"})


def finished(track: str) -> RolloutStatus:
    return RolloutStatus(phase=track, track=track, message=f"{track}", revision="3f9a0c1d2e", pin=pin(),
                         stable_stateful_set="web-3f9a0c1d2e" if track == "Succeeded" else "web",
                         old_ready=0 if track == "Succeeded" else 3, new_ready=3 if track == "Succeeded" else 0)


def create(kube: client.ApiClient, namespace: str, name: str, status: RolloutStatus | None = None,
           *, paused: bool = False) -> dict[str, Any]:
    """A Rollout, as `kubectl apply` makes it, with `status` written as the controller would have."""
    rollouts = client.CustomObjectsApi(kube)
    body = rollout(name, "web", flag=f"{name}-v2")
    if paused:
        body["spec"]["paused"] = True
    created: dict[str, Any] = rollouts.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    if status is None:
        return created
    replaced: dict[str, Any] = rollouts.replace_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, name, {**created, "status": status.to_wire()})
    return replaced


def record(database_url: str, namespace: str, name: str, uid: str) -> None:
    engine = make_engine(database_url)
    try:
        history = RolloutHistory(engine)
        for sequence, (reason, message) in enumerate([("RolloutStarted", "starting revision 3f9a0c1d2e"),
                                                      ("RingReady", "ring canary's capacity is ready")]):
            history.record(HistoryEntry(at=NOW + timedelta(seconds=sequence), namespace=namespace, name=name,
                                        rollout_uid=uid, sequence=sequence, reason=reason, type="Normal",
                                        revision="3f9a0c1d2e", ring="canary", message=message))
    finally:
        engine.dispose()


MEASUREMENTS = [
    # gate, sequence, verdict, values, message
    ("error-ratio", 0, "Passed", {"value": 0.001}, "value 0.001 is at most 0.01"),
    ("latency-p99", 0, "Passed", {"value": 0.38, "samples": 140}, "value 0.38 is at most 0.5"),
    ("error-ratio", 1, "Passed", {"value": 0.004}, "value 0.004 is at most 0.01"),
    ("latency-p99", 1, "TooFewSamples", {"value": 0.41, "samples": 12}, "12 samples, at least 100 needed; holding"),
    ("error-ratio", 2, "Passed", {"value": 0.002}, "value 0.002 is at most 0.01"),
]


def measure(database_url: str, namespace: str, name: str, uid: str,
            measurements: list[tuple[str, int, str, dict[str, float], str]] = MEASUREMENTS) -> None:
    """Gate measurements of ring canary, kept in the database as the controller records them, one a minute."""
    engine = make_engine(database_url)
    try:
        results = GateResults(engine)
        for minute, (gate, sequence, verdict, values, message) in enumerate(measurements):
            query, threshold = (ERRORS_QUERY, "value <= 0.01") if gate == "error-ratio" else (
                LATENCY_QUERY, "value <= 0.5")
            assert results.record(GateResultEntry(
                at=NOW + timedelta(minutes=minute), namespace=namespace, name=name, rollout_uid=uid,
                revision="3f9a0c1d2e", ring="canary", gate=gate, kind="threshold", sequence=sequence,
                verdict=verdict, values=values, threshold=threshold, message=message, queries=[query]))
    finally:
        engine.dispose()


def test_list_shows_each_rollout_with_its_phase_ring_replicas_and_target(
        api: TestClient, kube: client.ApiClient, namespace: str) -> None:
    create(kube, namespace, "web", baking_canary())
    create(kube, namespace, "api")
    answer = api.get("/api/v1/rollouts", params={"namespace": namespace})
    assert answer.status_code == 200, answer.text
    items = answer.json()["items"]
    assert [item["name"] for item in items] == ["api", "web"]
    fresh, web = items
    assert {key: web[key] for key in ("namespace", "phase", "track", "currentRing", "revision", "oldReady",
                                      "newReady", "targetReplicas", "promotedRings", "paused", "message")} == {
        "namespace": namespace, "phase": "Progressing", "track": "Progressing", "currentRing": "canary",
        "revision": "3f9a0c1d2e", "oldReady": 2, "newReady": 1, "targetReplicas": 3, "promotedRings": ["canary"],
        "paused": False, "message": "ring canary is up; baking"}
    assert 0 <= web["ageSeconds"] < 120 and web["creationTimestamp"].startswith(str(NOW.year))
    assert (fresh["phase"], fresh["targetReplicas"], fresh["currentRing"]) == (None, None, None)
    everywhere = api.get("/api/v1/rollouts").json()["items"]
    assert {(namespace, "api"), (namespace, "web")} <= {(item["namespace"], item["name"]) for item in everywhere}


def test_get_shows_spec_status_and_the_lasting_history(
        api: TestClient, kube: client.ApiClient, namespace: str, database_url: str) -> None:
    created = create(kube, namespace, "web", baking_canary())
    record(database_url, namespace, "web", created["metadata"]["uid"])
    answer = api.get(f"/api/v1/rollouts/{namespace}/web")
    assert answer.status_code == 200, answer.text
    detail = answer.json()
    assert (detail["name"], detail["phase"], detail["uid"], detail["pendingRequest"]) == (
        "web", "Progressing", created["metadata"]["uid"], None)
    assert detail["spec"]["statefulSetName"] == "web" and detail["spec"]["flag"] == {"key": "web-v2"}
    status = detail["status"]
    assert status["pin"]["targetReplicas"] == 3 and status["bakeUntil"].startswith(str(NOW.year))
    assert [condition["reason"] for condition in status["conditions"]] == ["CapacityReady"]
    assert [(ring["ring"], ring["revision"]) for ring in status["history"]] == [("canary", "3f9a0c1d2e")]
    assert [(entry["reason"], entry["sequence"], entry["ring"]) for entry in detail["history"]] == [
        ("RolloutStarted", 0, "canary"), ("RingReady", 1, "canary")]


def test_gates_show_where_each_gate_stands_and_the_kept_measurements_oldest_first(
        api: TestClient, kube: client.ApiClient, namespace: str, database_url: str) -> None:
    created = create(kube, namespace, "web", gating_canary())
    measure(database_url, namespace, "web", created["metadata"]["uid"])
    fresh = create(kube, namespace, "api")
    measure(database_url, namespace, "api", fresh["metadata"]["uid"], MEASUREMENTS[:1])
    answer = api.get(f"/api/v1/rollouts/{namespace}/web/gates")
    assert answer.status_code == 200, answer.text
    gates = answer.json()
    assert (gates["namespace"], gates["name"], gates["phase"], gates["currentRing"]) == (
        namespace, "web", "Progressing", "canary")
    assert [GateStatus.model_validate(gate) for gate in gates["gates"]] == gating_canary().gates
    held = gates["gates"][1]
    assert (held["phase"], held["consecutiveErrors"], held["last"]["verdict"], held["last"]["values"]) == (
        "Held", 0, "TooFewSamples", {"value": 0.41, "samples": 12})
    assert [(entry["gate"], entry["sequence"], entry["verdict"], entry["values"], entry["message"])
            for entry in gates["history"]] == MEASUREMENTS
    first = gates["history"][0]
    assert datetime.fromisoformat(first["at"]) == NOW and {key: first[key] for key in (
        "rolloutUid", "revision", "ring", "kind", "threshold", "queries")} == {
        "rolloutUid": created["metadata"]["uid"], "revision": "3f9a0c1d2e", "ring": "canary", "kind": "threshold",
        "threshold": "value <= 0.01", "queries": [ERRORS_QUERY]}
    latest = api.get(f"/api/v1/rollouts/{namespace}/web/gates", params={"limit": 2}).json()["history"]
    assert [(entry["gate"], entry["sequence"]) for entry in latest] == [("latency-p99", 1), ("error-ratio", 2)]
    unstarted = api.get(f"/api/v1/rollouts/{namespace}/api/gates").json()
    assert (unstarted["phase"], unstarted["gates"], len(unstarted["history"])) == (None, [], 1)
    for limit in (0, 5001):
        assert_problem(api.get(f"/api/v1/rollouts/{namespace}/web/gates", params={"limit": limit}), 422, "limit")
    documented = api.get("/openapi.json").json()
    answer_schema = documented["paths"]["/api/v1/rollouts/{namespace}/{name}/gates"]["get"]["responses"]["200"]
    assert answer_schema["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/RolloutGates"}
    assert set(documented["components"]["schemas"]["GateStatus"]["properties"]) >= {"consecutiveErrors", "last"}


ACCEPTED = [
    # action, the rollout's state, spec.paused before, spec.paused after (None: no paused field)
    ("promote", baking_canary, False, None),
    ("pause", baking_canary, False, True),
    ("resume", baking_canary, True, False),
    ("resume", failure_policy_paused, False, False),
    ("abort", baking_canary, False, None),
    ("retry", lambda: finished("RolledBack"), False, None),
    ("retry", failure_policy_paused, False, None),
    ("retry", lambda: finished("Failed"), False, None),
]


@pytest.mark.parametrize(("action", "state", "paused_before", "paused_after"), ACCEPTED)
def test_each_action_sets_exactly_its_annotation_or_spec_field(
        api: TestClient, kube: client.ApiClient, namespace: str, action: str, state: Any, paused_before: bool,
        paused_after: bool | None) -> None:
    before = create(kube, namespace, "web", state(), paused=paused_before)
    answer = api.post(f"/api/v1/rollouts/{namespace}/web/{action}", json={"reason": "dashboards are green"})
    assert answer.status_code == 202, answer.text
    accepted = answer.json()
    after = get_rollout(kube, namespace, "web")
    expected_spec = dict(before["spec"])
    if paused_after is not None:
        expected_spec["paused"] = paused_after
    assert after["spec"] == expected_spec
    assert after["status"] == before["status"]
    annotations = after["metadata"].get("annotations") or {}
    if action == "pause":
        assert accepted["request"] is None and annotations == {}
    else:
        assert re.fullmatch(rf"{action}:[0-9a-f]{{8}}", accepted["request"]), accepted
        assert annotations == {REQUEST_ANNOTATION: accepted["request"]}
    assert (accepted["action"], accepted["name"], accepted["namespace"], accepted["paused"]) == (
        action, "web", namespace, after["spec"].get("paused") is True)
    events = client.CoreV1Api(kube).list_namespaced_event(namespace).items
    assert [(event.reason, event.message) for event in events] == [
        (f"{action.capitalize()}Requested", f"{action} requested by {ACTOR}: dashboards are green")]


REFUSED = [
    ("abort", lambda: finished("Succeeded"), False, "has Succeeded"),
    ("abort", lambda: finished("RolledBack"), False, "already RolledBack"),
    ("abort", lambda: None, False, "has not started a revision"),
    ("promote", moving_capacity, False, "has no ring baking"),
    ("promote", lambda: finished("Succeeded"), False, "only a Progressing rollout bakes"),
    ("retry", baking_canary, False, "retry restarts a RolledBack or Failed rollout"),
    ("retry", baking_canary, True, "use `resume`"),
    ("resume", baking_canary, False, "is not paused"),
]


@pytest.mark.parametrize(("action", "state", "paused", "why"), REFUSED)
def test_an_action_that_cannot_apply_is_refused_with_409_saying_why_and_changes_nothing(
        api: TestClient, kube: client.ApiClient, namespace: str, action: str, state: Any, paused: bool,
        why: str) -> None:
    before = create(kube, namespace, "web", state(), paused=paused)
    body = assert_problem(api.post(f"/api/v1/rollouts/{namespace}/web/{action}"), 409)
    assert body["type"].endswith("/action-not-applicable") and f"{namespace}/web" in body["detail"]
    assert why in body["detail"], body
    assert get_rollout(kube, namespace, "web")["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


def test_a_missing_rollout_is_404(api: TestClient, kube: client.ApiClient, namespace: str) -> None:
    for answer in (api.get(f"/api/v1/rollouts/{namespace}/nothing"),
                   api.get(f"/api/v1/rollouts/{namespace}/nothing/gates"),
                   api.post(f"/api/v1/rollouts/{namespace}/nothing/pause")):
        assert f"there is no Rollout {namespace}/nothing" in assert_problem(answer, 404)["detail"]


def test_an_unknown_action_or_a_long_reason_is_422_naming_what_is_allowed(
        api: TestClient, kube: client.ApiClient, namespace: str) -> None:
    create(kube, namespace, "web", baking_canary())
    unknown = assert_problem(api.post(f"/api/v1/rollouts/{namespace}/web/restart"), 422, "action")
    assert all(action in unknown["detail"] for action in ("promote", "pause", "resume", "abort", "retry"))
    assert_problem(api.post(f"/api/v1/rollouts/{namespace}/web/pause", json={"reason": "x" * 501}), 422, "reason")
    assert "annotations" not in get_rollout(kube, namespace, "web")["metadata"]


def test_without_kubernetes_the_rollout_routes_answer_503_saying_how_to_configure_it(
        database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Not in a cluster, and no local control plane in this data folder.
    monkeypatch.setenv("RINGMASTER_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with TestClient(create_app(ServiceSettings(database_url=database_url)),
                    headers=authorized(database_url)) as unconfigured:
        for answer in (unconfigured.get("/api/v1/rollouts"), unconfigured.get("/api/v1/rollouts/default/web"),
                       unconfigured.get("/api/v1/rollouts/default/web/gates"),
                       unconfigured.post("/api/v1/rollouts/default/web/pause")):
            body = assert_problem(answer, 503)
            assert body["title"] == "Kubernetes is not configured" and "RINGMASTER_KUBECONFIG" in body["detail"]
        assert unconfigured.get("/api/v1/flags").status_code == 200


def test_an_unreachable_api_server_is_503_naming_it(database_url: str, tmp_path: Path) -> None:
    address = f"https://127.0.0.1:{free_port()}"
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "gone",
        "clusters": [{"name": "gone", "cluster": {"server": address, "insecure-skip-tls-verify": True}}],
        "users": [{"name": "gone", "user": {"token": "t"}}],
        "contexts": [{"name": "gone", "context": {"cluster": "gone", "user": "gone"}}],
    }))
    with TestClient(create_app(ServiceSettings(database_url=database_url, kubeconfig=kubeconfig))) as cut_off:
        body = assert_problem(cut_off.get("/api/v1/rollouts"), 503)
    assert body["title"] == "Kubernetes is unreachable" and address in body["detail"]


# The CLI against a live `ringmaster serve` that reaches the local control plane.


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, local_cluster: LocalCluster,
           kube: client.ApiClient) -> Iterator[dict[str, str]]:
    data_dir = tmp_path_factory.mktemp("ringmaster-data")
    port = free_port()
    environment = cli_environment(data_dir, port, kubeconfig=local_cluster.kubeconfig)
    with serving(environment, port, data_dir / "serve.log"):
        yield environment


def test_cli_lists_rollouts_as_a_table_and_as_json(
        server: dict[str, str], kube: client.ApiClient, namespace: str) -> None:
    create(kube, namespace, "web", baking_canary())
    table = run(server, "rollout", "list", "--namespace", namespace).stdout
    header, row = table.strip().splitlines()
    assert header.split()[:8] == ["NAMESPACE", "NAME", "PHASE", "RING", "PROGRESS", "OLD", "NEW", "TARGET"]
    assert row.split()[:9] == [namespace, "web", "Progressing", "canary", "▮▯▯▯", "1/4", "2", "1", "3"]
    listed = json.loads(run(server, "rollout", "list", "-n", namespace, "--json").stdout)
    assert [(item["name"], item["targetReplicas"]) for item in listed] == [("web", 3)]


def test_cli_get_shows_the_summary_conditions_and_rings(
        server: dict[str, str], kube: client.ApiClient, namespace: str) -> None:
    create(kube, namespace, "web", baking_canary())
    shown = run(server, "rollout", "get", f"{namespace}/web").stdout
    assert f"{namespace}/web  Progressing  ring canary (1 of 4)  revision 3f9a0c1d2e" in shown
    assert "2 old + 1 new ready of 3" in shown and "CapacityReady" in shown and "bake until" in shown
    assert json.loads(run(server, "rollout", "get", f"{namespace}/web", "--json").stdout)["uid"]


def test_cli_gates_shows_each_gate_and_its_measurements_queries_on_request_and_json(
        server: dict[str, str], kube: client.ApiClient, namespace: str) -> None:
    created = create(kube, namespace, "web", gating_canary())
    measure(f"sqlite:///{server['RINGMASTER_DATA_DIR']}/ringmaster.db", namespace, "web", created["metadata"]["uid"])
    shown = run(server, "rollout", "gates", f"{namespace}/web").stdout
    assert f"{namespace}/web  Progressing  ring canary" in shown
    rows = [line.split() for line in shown.splitlines()]
    next_at = (NOW + timedelta(minutes=1)).strftime("%Y-%m-%d %H:%M:%S").split()
    assert [row for row in rows if row[:1] in (["error-ratio"], ["latency-p99"])] == [
        ["error-ratio", "threshold", "canary", "Running", "3", "3/0/0", "Passed", "value=0.002", *next_at],
        ["latency-p99", "threshold", "canary", "Held", "2", "1/0/0", "TooFewSamples", "samples=12", "value=0.41",
         *next_at]]
    measured = [row for row in rows if row[2:3] == ["3f9a0c1d2e"]]
    assert [(row[4], row[5], " ".join(row[6:])) for row in measured] == [
        (gate, verdict, message) for gate, _, verdict, _, message in MEASUREMENTS]
    assert "http_requests_total" not in shown
    with_queries = run(server, "rollout", "gates", f"{namespace}/web", "-q").stdout
    assert "http_request_duration_seconds_bucket" in with_queries and "http_requests_total" in with_queries
    answer = json.loads(run(server, "rollout", "gates", f"{namespace}/web", "--json", "--limit", "1").stdout)
    assert [gate["name"] for gate in answer["gates"]] == ["error-ratio", "latency-p99"]
    assert [(entry["gate"], entry["verdict"]) for entry in answer["history"]] == [("error-ratio", "Passed")]


def test_cli_actions_set_the_request_and_a_refusal_exits_1_saying_why(
        server: dict[str, str], kube: client.ApiClient, namespace: str) -> None:
    create(kube, namespace, "web", baking_canary())
    promoted = run(server, "rollout", "promote", f"{namespace}/web", "--reason", "metrics are fine").stdout
    request = get_rollout(kube, namespace, "web")["metadata"]["annotations"][REQUEST_ANNOTATION]
    assert request.startswith("promote:") and f"{REQUEST_ANNOTATION}={request}" in promoted
    assert "spec.paused is true" in run(server, "rollout", "pause", f"{namespace}/web").stdout
    assert get_rollout(kube, namespace, "web")["spec"]["paused"] is True
    create(kube, namespace, "done", finished("Succeeded"))
    refused = run(server, "rollout", "abort", f"{namespace}/done", check=False)
    assert refused.returncode == 1 and "409" in refused.stderr and "has Succeeded" in refused.stderr
    malformed = run(server, "rollout", "get", "web", check=False)
    assert malformed.returncode == 1 and "NAMESPACE/NAME" in malformed.stderr
