"""Gates end to end: the controller in this process, the local control plane, the simulated application
scraped by a real Prometheus, and rollouts promoted or rolled back on what Prometheus reports.

The simulated pods serve 20 requests per second with the error ratio of their
`sim.ringmaster.dev/error-ratio` annotation, exactly, so a gate's verdict is known in advance.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client
from sqlalchemy import Engine

from cohorts.db import make_engine, upgrade
from rollout.controller.controller import Controller
from rollout.controller.crd import install_crd
from rollout.controller.history import GateResults
from rollout.controller.spec import GROUP, PLURAL, VERSION
from rollout.flags.errors import FlagNotFound
from rollout.flags.spec import RingTargeting
from rollout.flags.store import FlagStore
from rollout.gates.spec import PLURAL as SLOGATES
from rollout.localcluster.cluster import LocalCluster
from rollout.localcluster.prometheus import PrometheusServer
from tests.controller_harness import (
    CapacitySampler,
    Sampler,
    controller_thread,
    get_rollout,
    rollout,
    statefulset,
    wait_for,
    wait_ready,
)

REPLICAS = 3
SELECTED = 'namespace="{{ namespace }}",statefulset="{{ statefulSet }}"'
REQUESTS = f"sum(increase(sim_http_requests_total{{{SELECTED}}}[{{{{ window }}}}]))"
ERRORS = f'sum(increase(sim_http_requests_total{{{SELECTED},code=~"5.."}}[{{{{ window }}}}]))'

# Every ring: the error budget of a 99 % SLO must not burn 14.4 times too fast (windows scaled to the bake).
BURN_RATE = {"burnRate": {"objective": 99, "errors": ERRORS, "total": REQUESTS,
                          "windows": [{"long": "1h", "short": "5m", "factor": 14.4}]},
             "minSamples": 40, "minWindow": "4s", "interval": "2s"}
# The canary: no more errors than the old version, beyond 2x and 2 points, with 99 % confidence.
VERSUS_BASELINE = {"name": "errors-vs-baseline",
                   "comparison": {"test": "twoProportion", "errors": ERRORS, "total": REQUESTS, "maxRatio": 2,
                                  "maxDifference": 0.02},
                   # 200 requests a side: with fewer, one error more or less (counters count whole errors)
                   # moves a 1 % ratio by more than 2 points, and a healthy canary looks harmful.
                   "minSamples": 200, "minWindow": "4s", "interval": "2s"}


def traffic(spec: dict[str, Any], error_ratio: str) -> dict[str, Any]:
    annotations = spec["template"]["metadata"]["annotations"]
    annotations.update({"sim.ringmaster.dev/rps": "20", "sim.ringmaster.dev/error-ratio": error_ratio})
    return spec


def new_version(error_ratio: str) -> dict[str, Any]:
    template: dict[str, Any] = traffic(statefulset("web", REPLICAS, "registry.example.com/web:2.0.0")["spec"],
                                       error_ratio)["template"]
    return template


def gated_rollout(flag: str, template: dict[str, Any], bakes: tuple[str, ...]) -> dict[str, Any]:
    body = rollout("web", "web", flag=flag, bakes=bakes, template=template, image=None,
                   gates=[{"ref": "error-budget"}])
    body["spec"]["rings"][0]["gates"] = [VERSUS_BASELINE]
    return body


@dataclass
class Gated:
    api_client: Any
    namespace: str
    engine: Engine
    controller: Controller

    def apply(self, body: dict[str, Any], plural: str = PLURAL) -> None:
        client.CustomObjectsApi(self.api_client).create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, plural, body)

    def status(self, name: str = "web") -> dict[str, Any]:
        found: dict[str, Any] = get_rollout(self.api_client, self.namespace, name).get("status") or {}
        return found

    def wait(self, what: str, predicate: Any, timeout_s: float = 150, name: str = "web") -> dict[str, Any]:
        def reached() -> bool:
            if self.controller.stop_event.is_set():
                raise AssertionError(f"the controller stopped (lost its Lease: {self.controller.lost_lease.is_set()}) "
                                     f"while waiting for {what}")
            return bool(predicate(self.status(name)))

        try:
            wait_for(what, reached, timeout_s, poll_s=0.25)
        except AssertionError as error:
            status = self.status(name)
            raise AssertionError(f"{error}; {name} is {status.get('phase')} ({status.get('message')}), gates "
                                 f"{json.dumps(status.get('gates'))}") from None
        return self.status(name)

    def flag_on_rings(self, key: str) -> set[str]:
        targeting = FlagStore(self.engine).get_flag(key).spec.targeting
        assert isinstance(targeting, RingTargeting)
        return {ring for ring, variant in targeting.rings.variants.items() if variant == "on"}

    def verdicts(self, name: str = "web") -> list[tuple[str, str, str]]:
        return [(entry.ring, entry.gate, entry.verdict)
                for entry in GateResults(self.engine).entries(self.namespace, name)]


@contextmanager
def controller(local_cluster: LocalCluster, namespace: str, tmp_path: Path, prometheus_url: str) -> Iterator[Gated]:
    """A controller in this process on `namespace`, its gates querying `prometheus_url`, on a database of its own."""
    url = f"sqlite:///{tmp_path / 'ringmaster.db'}"
    upgrade(url)
    engine = make_engine(url)
    with local_cluster.api_client() as api_client:
        install_crd(api_client)
        # One controller, no hand-over to test: client-go's lease timing, so a loaded machine does not depose it.
        with controller_thread(api_client, engine, namespace, lease_duration_s=15, renew_deadline_s=10,
                               retry_period_s=1, workers=2, prometheus_url=prometheus_url) as running:
            yield Gated(api_client, namespace, engine, running)
    engine.dispose()


@contextmanager
def controller_on(local_cluster: LocalCluster, namespace: str, tmp_path: Path, prometheus_url: str) -> Iterator[Gated]:
    """The old version (1 % errors) serving, the SLOGate `error-budget`, and a controller querying `prometheus_url`."""
    with controller(local_cluster, namespace, tmp_path, prometheus_url) as gated:
        old = statefulset("web", REPLICAS, "registry.example.com/web:1.0.0")
        traffic(old["spec"], "0.01")
        client.AppsV1Api(gated.api_client).create_namespaced_stateful_set(namespace, old)
        wait_ready(gated.api_client, namespace, "web", REPLICAS)
        gated.apply({"apiVersion": f"{GROUP}/{VERSION}", "kind": "SLOGate", "metadata": {"name": "error-budget"},
                     "spec": BURN_RATE}, plural=SLOGATES)
        yield gated


def assert_capacity_held(sampler: CapacitySampler) -> None:
    assert sampler.samples, "the sampler saw nothing"
    short = sorted({total for total in sampler.total_ready() if total < REPLICAS})
    assert not short, f"ready replicas fell below {REPLICAS}: {short}"


def test_a_healthy_version_passes_its_gates_in_all_four_rings(
        local_cluster: LocalCluster, namespace: str, tmp_path: Path) -> None:
    with controller_on(local_cluster, namespace, tmp_path, local_cluster.prometheus_url) as gated, \
            CapacitySampler(gated.api_client, namespace) as sampler:
        gated.apply(gated_rollout("web-v2", new_version("0.01"), bakes=("8s", "6s", "6s", "0s")))
        status = gated.wait("Succeeded", lambda status: status.get("phase") in ("Succeeded", "RolledBack", "Paused"),
                            timeout_s=240)
    assert status["phase"] == "Succeeded", status.get("message")
    assert_capacity_held(sampler)
    assert gated.flag_on_rings("web-v2") == {"canary", "early-adopter", "stable", "laggard"}
    # Measurements are recorded with the actions, after the status that ends the rollout.
    wait_for("the last measurement recorded", lambda: ("laggard", "error-budget", "Passed") in gated.verdicts(), 10)
    passed = {(ring, gate) for ring, gate, verdict in gated.verdicts() if verdict == "Passed"}
    assert passed == {("canary", "errors-vs-baseline"), ("canary", "error-budget"), ("early-adopter", "error-budget"),
                      ("stable", "error-budget"), ("laggard", "error-budget")}
    assert not [entry for entry in gated.verdicts() if entry[2] in ("Failed", "Inconclusive")]


class FlagWatch(Sampler):
    """Reads a flag's rings every 20 ms, to tell when it was turned off against the capacity samples."""

    def __init__(self, gated: Gated, key: str) -> None:
        super().__init__()
        self.gated, self.key = gated, key

    def read(self) -> frozenset[str]:
        try:
            return frozenset(self.gated.flag_on_rings(self.key))
        except FlagNotFound:
            return frozenset()


def test_a_version_with_many_errors_is_halted_in_canary_and_rolled_back_flag_first(
        local_cluster: LocalCluster, namespace: str, tmp_path: Path) -> None:
    with controller_on(local_cluster, namespace, tmp_path, local_cluster.prometheus_url) as gated, \
            CapacitySampler(gated.api_client, namespace) as sampler, FlagWatch(gated, "web-bad") as flag:
        gated.apply(gated_rollout("web-bad", new_version("0.3"), bakes=("30s", "6s", "6s", "0s")))
        new = gated.wait("the canary to get the flag",
                         lambda status: status.get("promotedRings") == ["canary"])["newStatefulSet"]
        status = gated.wait("RolledBack", lambda status: status.get("phase") in ("RolledBack", "Succeeded"))
    assert status["phase"] == "RolledBack", status.get("message")
    assert_capacity_held(sampler)
    assert "failed in ring canary" in status["rollbackReason"]
    assert gated.flag_on_rings("web-bad") == set()
    assert [record["ring"] for record in status["history"]] == ["canary"]
    failed = [(ring, gate) for ring, gate, verdict in gated.verdicts() if verdict == "Failed"]
    assert failed and all(ring == "canary" for ring, _ in failed)
    # The new version never grew past the canary, and every ring had lost the flag before it shrank.
    assert max(sample.replicas.get(new, 0) for sample in sampler.samples) == 1
    grown = next(index for index, sample in enumerate(sampler.samples) if sample.replicas.get(new) == 1)
    shrunk_at = next(sample.at_s for sample in sampler.samples[grown:] if sample.replicas.get(new) == 0)
    assert [rings for at_s, rings in flag.readings if at_s <= shrunk_at][-1] == frozenset()
    assert any(rings == {"canary"} for _, rings in flag.readings)


def test_prometheus_stopped_mid_bake_holds_the_rollout_until_it_is_back(
        local_cluster: LocalCluster, namespace: str, tmp_path: Path) -> None:
    prometheus = PrometheusServer(tmp_path / "prometheus" / "data", targets_file=local_cluster.targets_file)
    prometheus.start()
    try:
        with controller_on(local_cluster, namespace, tmp_path, prometheus.url) as gated:
            gated.apply(gated_rollout("web-v2", new_version("0.01"), bakes=("40s", "0s", "0s", "0s")))
            baking = gated.wait("a passing measurement in canary", lambda status: status.get("currentRing") == "canary"
                                and any((gate.get("last") or {}).get("verdict") == "Passed"
                                        for gate in status.get("gates", [])))
            prometheus.stop()
            assert baking["step"] == "Baking", "the bake ended before Prometheus was stopped; lengthen it"
            held = gated.wait("the gates to hold", lambda status: any(
                (gate.get("last") or {}).get("verdict") == "Error" for gate in status.get("gates", [])))
            assert held["phase"] == "Progressing" and held["currentRing"] == "canary"
            # Past the end of the bake the ring is still held: no promotion without evidence.
            held = gated.wait("the bake to end", lambda status: status.get("step") == "AwaitingEvidence")
            assert held["currentRing"] == "canary" and held["promotedRings"] == ["canary"]
            assert "Error" in held["message"]
            prometheus.start()
            status = gated.wait("Succeeded", lambda status: status.get("phase") in ("Succeeded", "RolledBack"),
                                timeout_s=180)
            assert status["phase"] == "Succeeded", status.get("message")
            verdicts = [verdict for ring, _, verdict in gated.verdicts() if ring == "canary"]
            assert "Error" in verdicts and verdicts[-1] == "Passed"
    finally:
        prometheus.stop()
