"""The controller against the local control plane: real API server, real StatefulSet controller, simulated pods.

Each test runs a controller in this process on a namespace of its own and samples both StatefulSets
throughout, so the make-before-break invariant is checked on what the API server reported, not on
what the controller believed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from sqlalchemy import Engine

from cohorts.db import make_engine, upgrade
from rollout.controller.controller import Controller
from rollout.controller.crd import install_crd
from rollout.controller.history import RolloutHistory
from rollout.controller.spec import GROUP, PLURAL, VERSION
from rollout.flags.spec import RingTargeting
from rollout.flags.store import FlagStore
from rollout.localcluster.cluster import LocalCluster
from tests.controller_harness import (
    CANARY_RINGS,
    CapacitySampler,
    controller_thread,
    get_rollout,
    phase_of,
    rollout,
    statefulset,
    wait_for,
    wait_ready,
)

REPLICAS = 3


@dataclass
class Running:
    api_client: Any
    namespace: str
    engine: Engine
    controller: Controller

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api_client)

    def apply(self, body: dict[str, Any]) -> None:
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body)

    def patch(self, name: str, patch: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name, patch)

    def request(self, name: str, value: str) -> None:
        self.patch(name, {"metadata": {"annotations": {"ringmaster.dev/request": value}}})

    def status(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = get_rollout(self.api_client, self.namespace, name).get("status") or {}
        return found

    def wait_phase(self, name: str, phase: str, timeout_s: float = 90) -> dict[str, Any]:
        wait_for(f"{name} to be {phase}", lambda: phase_of(self.api_client, self.namespace, name) == phase, timeout_s)
        return self.status(name)

    def flag_on_rings(self, key: str) -> set[str]:
        targeting = FlagStore(self.engine).get_flag(key).spec.targeting
        assert isinstance(targeting, RingTargeting)
        return {ring for ring, variant in targeting.rings.variants.items() if variant == "on"}


@pytest.fixture
def running(local_cluster: LocalCluster, namespace: str, tmp_path: Path) -> Iterator[Running]:
    url = f"sqlite:///{tmp_path / 'ringmaster.db'}"
    upgrade(url)
    engine = make_engine(url)
    with local_cluster.api_client() as api_client:
        install_crd(api_client)
        with controller_thread(api_client, engine, namespace, lease_duration_s=4, renew_deadline_s=3,
                               retry_period_s=0.5, workers=2) as controller:
            apps = client.AppsV1Api(api_client)
            apps.create_namespaced_stateful_set(namespace, statefulset("web", REPLICAS,
                                                                       "registry.example.com/web:1.0.0"))
            wait_ready(api_client, namespace, "web", REPLICAS)
            yield Running(api_client, namespace, engine, controller)
    engine.dispose()


def assert_capacity_held(sampler: CapacitySampler, *, surge: int = 1) -> None:
    assert sampler.samples, "the sampler saw nothing"
    short = [total for total in sampler.total_ready() if total < REPLICAS]
    assert not short, f"ready replicas fell below {REPLICAS}: {sorted(set(short))}"
    assert max(sampler.total_replicas()) <= REPLICAS + surge


def test_a_rollout_goes_through_every_ring_with_capacity_never_below_target(running: Running) -> None:
    with CapacitySampler(running.api_client, running.namespace) as sampler:
        running.apply(rollout("web", "web", flag="web-v2", bakes=("1s", "1s", "0s", "0s")))
        status = running.wait_phase("web", "Succeeded")
    assert_capacity_held(sampler)
    new = status["stableStatefulSet"]
    assert new.startswith("web-") and status["stableRevision"] == status["revision"]
    apps = client.AppsV1Api(running.api_client)
    assert apps.read_namespaced_stateful_set(new, running.namespace).status.ready_replicas == REPLICAS
    assert apps.read_namespaced_stateful_set("web", running.namespace).spec.replicas == 0
    assert sampler.max_replicas(new) == REPLICAS
    assert [record["ring"] for record in status["history"]] == list(CANARY_RINGS)
    assert all(record.get("promotedAt") for record in status["history"])
    assert running.flag_on_rings("web-v2") == set(CANARY_RINGS)
    # The pinned sizes: default cohort set, configured shares, 3 replicas.
    assert status["pin"]["replicas"][-1] == REPLICAS and status["pin"]["targetReplicas"] == REPLICAS
    # The status is written first, the history row with the actions after it.
    wait_for("the last transition in the history", lambda: RolloutHistory(running.engine).entries(
        running.namespace, "web")[-1].reason == "RolloutSucceeded", 10)
    reasons = [entry.reason for entry in RolloutHistory(running.engine).entries(running.namespace, "web")]
    assert reasons[0] == "RolloutStarted" and reasons[-1] == "RolloutSucceeded"
    events = client.CoreV1Api(running.api_client).list_namespaced_event(running.namespace).items
    assert {"RolloutStarted", "RingReady", "RolloutSucceeded"} <= {event.reason for event in events}


def test_a_version_that_never_becomes_ready_is_rolled_back_after_ready_timeout(running: Running) -> None:
    broken = statefulset("web", REPLICAS, "registry.example.com/web:2.0.0")["spec"]["template"]
    broken["metadata"]["annotations"]["sim.ringmaster.dev/ready"] = "never"
    with CapacitySampler(running.api_client, running.namespace) as sampler:
        running.apply(rollout("web", "web", flag="web-broken", template=broken, ready_timeout="3s"))
        status = running.wait_phase("web", "RolledBack")
    assert_capacity_held(sampler)
    assert "readyTimeout" in status["message"] or "readyTimeout" in (status.get("rollbackReason") or "")
    apps = client.AppsV1Api(running.api_client)
    assert apps.read_namespaced_stateful_set("web", running.namespace).status.ready_replicas == REPLICAS
    assert apps.read_namespaced_stateful_set(status["newStatefulSet"], running.namespace).spec.replicas == 0
    assert running.flag_on_rings("web-broken") == set()


def test_abort_turns_the_flag_off_then_restores_the_old_version(running: Running) -> None:
    with CapacitySampler(running.api_client, running.namespace) as sampler:
        running.apply(rollout("web", "web", flag="web-abort", bakes=("0s", "1h", "0s", "0s")))
        wait_for("early-adopter to bake", lambda: running.status("web").get("bakeUntil")
                 and running.status("web").get("currentRing") == "early-adopter", 90)
        # The status is written before the actions it plans, so the flag follows a moment later.
        wait_for("the flag on for early-adopter", lambda: running.flag_on_rings("web-abort") == {
            "canary", "early-adopter"}, 10)
        running.request("web", "abort")
        status = running.wait_phase("web", "RolledBack")
    assert_capacity_held(sampler)
    assert running.flag_on_rings("web-abort") == set()
    assert status["rollbackReason"] == "aborted by request"
    # The request was handled once and cleared.
    annotations = get_rollout(running.api_client, running.namespace, "web")["metadata"].get("annotations") or {}
    assert "ringmaster.dev/request" not in annotations


def test_promote_skips_the_rest_of_a_bake(running: Running) -> None:
    running.apply(rollout("web", "web", flag="web-promote", bakes=("1h", "0s", "0s", "0s")))
    wait_for("canary to bake", lambda: running.status("web").get("bakeUntil"), 60)
    running.request("web", "promote")
    running.wait_phase("web", "Succeeded")


def test_pause_freezes_a_rollout_and_resume_continues_it(running: Running) -> None:
    running.apply(rollout("web", "web", flag="web-pause", bakes=("2s", "0s", "0s", "0s")))
    wait_for("canary to bake", lambda: running.status("web").get("bakeUntil"), 60)
    running.patch("web", {"spec": {"paused": True}})
    status = running.wait_phase("web", "Paused")
    assert status["currentRing"] == "canary" and status.get("bakeRemainingSeconds") is not None
    conditions = {condition["type"]: condition["status"] for condition in status["conditions"]}
    assert conditions["Paused"] == "True"
    running.patch("web", {"spec": {"paused": False}})
    running.wait_phase("web", "Succeeded")


def test_a_new_image_mid_rollout_supersedes_the_one_in_flight(running: Running) -> None:
    with CapacitySampler(running.api_client, running.namespace) as sampler:
        running.apply(rollout("web", "web", flag="web-next", bakes=("1h", "0s", "0s", "0s")))
        wait_for("canary to bake", lambda: running.status("web").get("bakeUntil"), 60)
        first = running.status("web")["newStatefulSet"]
        running.patch("web", {"spec": {"image": "registry.example.com/web:3.0.0", "rings": [
            {"name": ring, "bake": "0s"} for ring in CANARY_RINGS]}})
        status = running.wait_phase("web", "Succeeded", timeout_s=120)
    assert_capacity_held(sampler)
    assert status["stableStatefulSet"] not in (first, "web")
    apps = client.AppsV1Api(running.api_client)
    assert apps.read_namespaced_stateful_set(first, running.namespace).spec.replicas == 0
    image = apps.read_namespaced_stateful_set(status["stableStatefulSet"], running.namespace).spec.template.spec
    assert image.containers[0].image == "registry.example.com/web:3.0.0"


def test_an_invalid_rollout_gets_invalid_spec_and_the_others_carry_on(running: Running) -> None:
    bad = rollout("bad", "web", flag="web-bad")
    bad["spec"]["rings"][1]["name"] = "insiders"
    running.apply(bad)
    wait_for("InvalidSpec", lambda: any(
        condition["type"] == "InvalidSpec" and condition["status"] == "True"
        for condition in running.status("bad").get("conditions", [])), 30)
    assert "spec.rings[1].name" in running.status("bad")["message"]
    running.apply(rollout("good", "web", flag="web-good"))
    running.wait_phase("good", "Succeeded")
