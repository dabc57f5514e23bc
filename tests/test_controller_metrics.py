"""The controller's metrics and probes: scraped over HTTP from a controller running against the local
control plane, as Prometheus and the kubelet would see them; the pure parts beside them; and the Grafana
dashboard (deploy/grafana/ringmaster.json) held to the metrics that are really exported."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine

from cohorts.db import make_engine, upgrade
from rollout.andon.metrics import AndonCollector
from rollout.andon.scope import Scope
from rollout.andon.store import AndonStore, Pull
from rollout.andon.watch import CordState
from rollout.api.app import ServiceMetrics
from rollout.controller.controller import Controller
from rollout.controller.crd import install_crd
from rollout.controller.endpoint import Endpoint, parse_address
from rollout.controller.metrics import ControllerMetrics, ControllerState, ring_outcomes
from rollout.controller.spec import GROUP, PLURAL, VERSION
from rollout.controller.status import RingRecord, RolloutStatus
from rollout.gates.verdicts import Judgment, Measurement
from rollout.localcluster.cluster import LocalCluster
from tests.controller_harness import (
    CANARY_RINGS,
    controller_thread,
    get_rollout,
    rollout,
    statefulset,
    wait_for,
    wait_ready,
)

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "ringmaster.json"
REPLICAS = 3
# Sample name -> {labels as sorted (name, value) pairs: value}
Scrape = dict[str, dict[tuple[tuple[str, str], ...], float]]


def parse(exposition: str) -> Scrape:
    samples: Scrape = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def scrape(controller: Controller) -> Scrape:
    assert controller.endpoint is not None
    status, body = get(f"{controller.endpoint.url}/metrics")
    assert status == 200
    return parse(body)


def value(samples: Scrape, metric: str, /, **labels: str) -> float | None:
    return samples.get(metric, {}).get(tuple(sorted(labels.items())))


# Pure parts


NOW = datetime(2026, 11, 27, 12, tzinfo=UTC)


def record(ring: str, outcome: str | None = None, revision: str = "abc") -> RingRecord:
    return RingRecord(ring=ring, revision=revision, started_at=NOW, outcome=outcome)


def test_a_ring_transition_is_counted_when_its_record_gains_an_outcome_and_never_again() -> None:
    baking = RolloutStatus(history=[record("canary")])
    promoted = RolloutStatus(history=[record("canary", "promoted"), record("early-adopter")])
    rolled_back = RolloutStatus(history=[record("canary", "promoted"), record("early-adopter", "rolled back")])
    assert ring_outcomes(baking, promoted) == [("canary", "promoted")]
    assert ring_outcomes(promoted, promoted) == []
    assert ring_outcomes(promoted, rolled_back) == [("early-adopter", "rolled_back")]
    # A new revision's canary is another passage, though the ring's name is the same.
    again = RolloutStatus(history=[*rolled_back.history, record("canary", "promoted", revision="def")])
    assert ring_outcomes(rolled_back, again) == [("canary", "promoted")]


@pytest.mark.parametrize(("text", "parsed"), [
    ("127.0.0.1:8090", ("127.0.0.1", 8090)), ("0.0.0.0:0", ("0.0.0.0", 0)), ("[::1]:9000", ("::1", 9000)),
    ("", None), ("off", None), (" OFF ", None),
])
def test_a_metrics_address_is_host_and_port_or_off(text: str, parsed: tuple[str, int] | None) -> None:
    assert parse_address(text) == parsed


@pytest.mark.parametrize("text", ["8090", ":8090", "localhost", "127.0.0.1:http", "127.0.0.1:70000"])
def test_a_malformed_metrics_address_is_refused_with_an_example(text: str) -> None:
    with pytest.raises(ValueError, match=re.escape("use e.g. 127.0.0.1:8090")):
        parse_address(text)


def test_the_endpoint_answers_probes_with_the_reason_they_fail() -> None:
    registry = CollectorRegistry()
    unready: list[str] = ["caches not synced yet: rollouts"]
    endpoint = Endpoint(("127.0.0.1", 0), registry, healthy=lambda: None,
                        ready=lambda: unready[0] if unready else None)
    endpoint.start()
    try:
        assert get(f"{endpoint.url}/healthz") == (200, "ok\n")
        assert get(f"{endpoint.url}/readyz") == (503, "caches not synced yet: rollouts\n")
        unready.clear()
        assert get(f"{endpoint.url}/readyz") == (200, "ok\n")
        assert get(f"{endpoint.url}/elsewhere")[0] == 404
        assert get(f"{endpoint.url}/metrics")[0] == 200
    finally:
        endpoint.stop()


def test_a_port_in_use_is_refused_at_start_up_naming_the_address() -> None:
    taken = Endpoint(("127.0.0.1", 0), CollectorRegistry(), healthy=lambda: None, ready=lambda: None)
    try:
        with pytest.raises(ValueError, match=re.escape(f"cannot serve metrics at 127.0.0.1:{taken.port}")):
            Endpoint(("127.0.0.1", taken.port), CollectorRegistry(), healthy=lambda: None, ready=lambda: None)
    finally:
        taken.stop()


# The dashboard


def controller_exposition() -> str:
    """A controller registry with every family present: leading, one rollout, the cord read, one of each
    observation."""
    metrics = ControllerMetrics()
    pull = Pull(id=1, scope=Scope(), reason="incident", actor="ana", via="api", at=NOW)
    metrics.watch(ControllerState(
        is_leader=lambda: True, queue_depth=lambda: 0, informers=(),
        rollouts=lambda: [{"metadata": {"namespace": "shop", "name": "web"}, "status": {"phase": "Halted"}}],
        cord=lambda: CordState(pulls=(pull,)),
    ))
    metrics.reconciled(0.01)
    metrics.reconciled(0.01, RuntimeError("boom"))
    metrics.status_written(RolloutStatus(history=[record("canary")]),
                           RolloutStatus(history=[record("canary", "promoted")]))
    metrics.gate_recorded(Measurement("errors", "threshold", "canary", NOW, (), Judgment("Passed")))
    return generate_latest(metrics.registry).decode()


def service_exposition(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'service.db'}"
    upgrade(url)
    engine = make_engine(url)
    try:
        metrics = ServiceMetrics()
        metrics.registry.register(AndonCollector(AndonStore(engine)))
        return generate_latest(metrics.registry).decode()
    finally:
        engine.dispose()


def exported_names(exposition: str) -> set[str]:
    """Every name a query may use: families, and the series of counters and histograms."""
    names = set()
    for family in text_string_to_metric_families(exposition):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}.get(family.type, ())
        names.update(family.name + suffix for suffix in suffixes)
    return names


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def test_the_dashboard_queries_only_metrics_that_are_exported_and_shows_every_controller_metric(
        tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    controller_names = exported_names(controller_exposition())
    exported = controller_names | exported_names(service_exposition(tmp_path))
    used: set[str] = set()
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            names = set(re.findall(r"\bringmaster_[a-zA-Z0-9_:]*", target["expr"]))
            assert names, f"panel {panel['title']!r} queries no Ringmaster metric: {target['expr']}"
            assert names <= exported, f"panel {panel['title']!r} queries {sorted(names - exported)}, not exported"
            used |= names
    # The text format shows a counter's and a histogram's creation time as a gauge of its own: no panel needs it.
    families = {family.name for family in text_string_to_metric_families(controller_exposition())
                if not family.name.endswith("_created")}
    shown = {name for name in families if any(used_name.startswith(name) for used_name in used)}
    assert shown == families, f"no panel shows {sorted(families - shown)}"
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"


# Against the local control plane


@dataclass
class Line:
    api_client: Any
    namespace: str
    engine: Engine
    controller: Controller

    def apply(self, body: dict[str, Any]) -> None:
        client.CustomObjectsApi(self.api_client).create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, body)

    def status(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = get_rollout(self.api_client, self.namespace, name).get("status") or {}
        return found


@pytest.fixture
def line(local_cluster: LocalCluster, namespace: str, tmp_path: Path) -> Iterator[Line]:
    url = f"sqlite:///{tmp_path / 'ringmaster.db'}"
    upgrade(url)
    engine = make_engine(url)
    with local_cluster.api_client() as api_client:
        install_crd(api_client)
        apps = client.AppsV1Api(api_client)
        apps.create_namespaced_stateful_set(namespace, statefulset("web", REPLICAS, "registry.example.com/web:1"))
        wait_ready(api_client, namespace, "web", REPLICAS)
        with controller_thread(api_client, engine, namespace, lease_duration_s=4, renew_deadline_s=3,
                               retry_period_s=0.5, workers=2, metrics_address="127.0.0.1:0") as controller:
            yield Line(api_client, namespace, engine, controller)
    engine.dispose()


def test_a_successful_rollout_shows_in_the_metrics_of_the_leader(line: Line) -> None:
    assert line.controller.endpoint is not None
    url = line.controller.endpoint.url
    wait_for("/readyz to answer 200", lambda: get(f"{url}/readyz")[0] == 200, 30)
    assert get(f"{url}/healthz") == (200, "ok\n")
    line.apply(rollout("web", "web", flag="web-v2"))
    wait_for("web to succeed", lambda: line.status("web").get("phase") == "Succeeded", 90)
    samples = scrape(line.controller)
    assert value(samples, "ringmaster_controller_leader") == 1
    assert value(samples, "ringmaster_rollout_info", namespace=line.namespace, name="web", phase="Succeeded",
                 ring="") == 1
    assert len(samples["ringmaster_rollout_info"]) == 1
    for ring in CANARY_RINGS:
        assert value(samples, "ringmaster_ring_transitions_total", ring=ring, outcome="promoted") == 1
    reconciles = value(samples, "ringmaster_reconcile_duration_seconds_count", result="success") or 0
    assert reconciles > 0
    assert value(samples, "ringmaster_reconcile_duration_seconds_bucket", result="success", le="+Inf") == reconciles
    assert "ringmaster_reconcile_errors_total" not in samples  # no reconcile failed
    for resource in ("rollouts", "statefulsets", "slogates"):
        assert value(samples, "ringmaster_informer_synced", resource=resource) == 1
    assert value(samples, "ringmaster_andon_active", scope="global") == 0
    assert value(samples, "ringmaster_andon_state_unknown") == 0
    assert value(samples, "ringmaster_workqueue_depth") is not None


def test_a_standby_is_ready_and_says_it_does_not_lead(line: Line) -> None:
    wait_for("the first controller to lead", line.controller.elector.is_leader, 30)
    with controller_thread(line.api_client, line.engine, line.namespace, lease_duration_s=4, renew_deadline_s=3,
                           retry_period_s=0.5, metrics_address="127.0.0.1:0") as standby:
        assert standby.endpoint is not None
        url = standby.endpoint.url
        wait_for("the standby's /readyz to answer 200", lambda: get(f"{url}/readyz")[0] == 200, 30)
        samples = scrape(standby)
    assert value(samples, "ringmaster_controller_leader") == 0
    # Facts every replica shares come from the leader only, so sums over replicas count each rollout once.
    assert "ringmaster_rollout_info" not in samples and "ringmaster_andon_active" not in samples


def test_a_pulled_cord_shows_active_with_the_rollouts_halted_and_gate_verdicts_counted(line: Line) -> None:
    # No Prometheus is configured, so the gate's every measurement is an Error that holds the ring.
    gate = {"name": "errors", "interval": "1s", "threshold": {"query": "vector(0)", "max": 1}}
    line.apply(rollout("web", "web", flag="web-v2", bakes=("1h", "0s", "0s", "0s"), gates=[gate]))
    wait_for("a gate measurement", lambda: value(scrape(line.controller), "ringmaster_gate_verdicts_total",
                                                 kind="threshold", verdict="Error"), 60)
    pull = AndonStore(line.engine).pull(Scope(), "checkout errors up", "ana")
    wait_for("web Halted", lambda: line.status("web").get("phase") == "Halted", 10)
    samples = scrape(line.controller)
    assert value(samples, "ringmaster_andon_active", scope="global") == 1
    assert value(samples, "ringmaster_andon_active", scope="namespace") == 0
    assert value(samples, "ringmaster_rollout_info", namespace=line.namespace, name="web", phase="Halted",
                 ring="canary") == 1
    AndonStore(line.engine).release(pull.id, "fixed", "bob")
    wait_for("the cord released in the metrics", lambda: value(
        scrape(line.controller), "ringmaster_andon_active", scope="global") == 0, 10)
