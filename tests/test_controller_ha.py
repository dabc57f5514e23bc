"""High availability: two `ringmaster controller` processes, one leader, hand-over on death and on SIGTERM,
and writes from a controller that is not (or no longer) the leader refused."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from cohorts.db import make_engine, upgrade
from rollout.controller.act import Executor, StaleWrite
from rollout.controller.crd import install_crd
from rollout.controller.history import GateResults, RolloutHistory
from rollout.controller.observed import RolloutView
from rollout.controller.spec import GROUP, PLURAL, VERSION
from rollout.flags.store import FlagStore
from rollout.localcluster.cluster import LocalCluster
from tests.controller_harness import CapacitySampler, get_rollout, phase_of, rollout, statefulset, wait_for, wait_ready
from tests.controller_processes import ControllerProcess, lease_holder

LEASE_DURATION_S = 3.0


@pytest.fixture
def database_file_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'ringmaster.db'}"
    upgrade(url)
    return url


@pytest.fixture
def api_client(local_cluster: LocalCluster) -> Iterator[client.ApiClient]:
    with local_cluster.api_client() as api_client:
        install_crd(api_client)
        yield api_client


def test_one_leader_writes_and_a_killed_leader_is_replaced_within_the_lease(
    local_cluster: LocalCluster, api_client: client.ApiClient, namespace: str, database_file_url: str, tmp_path: Path
) -> None:
    apps = client.AppsV1Api(api_client)
    apps.create_namespaced_stateful_set(namespace, statefulset("web", 3, "registry.example.com/web:1.0.0"))
    wait_ready(api_client, namespace, "web", 3)
    first = ControllerProcess(local_cluster.kubeconfig, namespace, database_file_url, "first", tmp_path,
                              lease_duration_s=LEASE_DURATION_S)
    wait_for("the first controller to lead", lambda: lease_holder(api_client, namespace) == "first", 30)
    second = ControllerProcess(local_cluster.kubeconfig, namespace, database_file_url, "second", tmp_path,
                               lease_duration_s=LEASE_DURATION_S)
    try:
        with CapacitySampler(api_client, namespace) as sampler:
            client.CustomObjectsApi(api_client).create_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL,
                rollout("web", "web", flag="web-ha", bakes=("0s", "3s", "0s", "0s")))
            wait_for("early-adopter", lambda: (get_rollout(api_client, namespace, "web").get("status") or {}).get(
                "currentRing") == "early-adopter", 60, poll_s=0.05)
            assert "leads" not in second.log(), "the standby acted while the first controller led"
            first.kill()
            # Liveness, not a timing figure (docs/controller.md has the measured hand-over): the standby
            # leads once the Lease expires, well before a resync or a restart would have helped.
            wait_for("the second controller to lead", lambda: lease_holder(api_client, namespace) == "second",
                     LEASE_DURATION_S + 30, poll_s=0.05)
            wait_for("Succeeded", lambda: phase_of(api_client, namespace, "web") == "Succeeded", 90)
        assert min(sampler.total_ready()) >= 3
        assert max(sampler.total_replicas()) <= 4

        # A rolling restart: SIGTERM releases the Lease, and a standby takes over at once.
        third = ControllerProcess(local_cluster.kubeconfig, namespace, database_file_url, "third", tmp_path,
                                  lease_duration_s=30)
        time.sleep(1.0)  # let the third one start campaigning as a standby
        assert lease_holder(api_client, namespace) == "second"
        assert second.terminate() == 0
        # A Lease left to expire would keep the third one waiting 30 s; released, it leads at its next try.
        wait_for("the third controller to lead well before the 30 s Lease would expire",
                 lambda: lease_holder(api_client, namespace) == "third", 20, poll_s=0.05)
        assert third.terminate() == 0
    finally:
        for process in (first, second):
            if process.alive():
                process.kill()


def test_a_controller_that_is_not_the_leader_or_read_a_stale_rollout_cannot_write(
    api_client: client.ApiClient, namespace: str, database_file_url: str
) -> None:
    custom = client.CustomObjectsApi(api_client)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, rollout("web", "web", flag="fenced"))
    stale = RolloutView.from_object(get_rollout(api_client, namespace, "web"))
    engine = make_engine(database_file_url)
    deposed = Executor(api_client, FlagStore(engine), RolloutHistory(engine), GateResults(engine),
                       is_leader=lambda: False)
    with pytest.raises(StaleWrite, match="Lease"):
        deposed.write_status(stale, stale.status.model_copy(update={"message": "from a deposed leader"}))
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "web", {"spec": {"paused": True}})
    leader = Executor(api_client, FlagStore(engine), RolloutHistory(engine), GateResults(engine))
    with pytest.raises(StaleWrite):
        leader.write_status(stale, stale.status.model_copy(update={"message": "planned on a stale read"}))
    assert "message" not in (get_rollout(api_client, namespace, "web").get("status") or {})
    engine.dispose()
