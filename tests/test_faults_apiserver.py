"""The API server misbehaving: a controller in this process talks to the local control plane through a proxy
(tests/kube_fault_proxy.py) that answers chosen requests with 429 and Retry-After, 500, 503, silence past the
client's timeout, watches cut mid-stream, or watches expired with 410 Gone.

Every rollout still goes through all four rings to Succeeded, with ready capacity never below the target and
never more than the surge above it, as sampled every 20 ms straight from the API server (not through the
proxy); and the proxy's counters show the faults really happened. The controller's Lease is left alone (except
where a test says otherwise): losing it ends a controller on purpose, which tests/test_controller_ha.py covers.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from sqlalchemy import Engine

from cohorts.db import make_engine, upgrade
from rollout.controller.act import REQUEST_TIMEOUT_S
from rollout.controller.controller import Controller
from rollout.controller.crd import install_crd
from rollout.controller.spec import GROUP, PLURAL, VERSION
from rollout.flags.spec import RingTargeting
from rollout.flags.store import FlagStore
from rollout.localcluster.cluster import LocalCluster
from tests.controller_harness import (
    CANARY_RINGS,
    CapacitySampler,
    controller_thread,
    get_rollout,
    rollout,
    statefulset,
    wait_for,
    wait_ready,
)
from tests.kube_fault_proxy import (
    Fault,
    KubeFaultProxy,
    drop_watch,
    gone,
    gone_event,
    internal_error,
    timeout,
    too_many_requests,
    unavailable,
)

REPLICAS = 3
SURGE = 1
BAKES = ("1s", "1s", "0s", "0s")
SEED = 20261127
WRITES = ("POST", "PUT", "PATCH", "DELETE")
STATEFULSETS = r"^/apis/apps/v1/namespaces/[^/]+/statefulsets"
ROLLOUT_STATUS = r"^/apis/ringmaster\.dev/v1alpha1/namespaces/[^/]+/rollouts/[^/]+/status$"
# What the controller reads and writes besides its Lease: Events, StatefulSets, Rollouts and SLOGates.
CONTROLLER_OBJECTS = r"^/(api/v1|apis/apps/v1|apis/ringmaster\.dev/v1alpha1)/"
FINISHED = ("Succeeded", "RolledBack", "Failed")


@dataclass
class Faulted:
    """A namespace with the proxy in front of its API server and a database for the controller."""

    direct: Any
    proxy: KubeFaultProxy
    namespace: str
    engine: Engine

    def add_statefulset(self, name: str) -> None:
        client.AppsV1Api(self.direct).create_namespaced_stateful_set(
            self.namespace, statefulset(name, REPLICAS, "registry.example.com/web:1.0.0"))
        wait_ready(self.direct, self.namespace, name, REPLICAS)

    @contextmanager
    def controller(self, **settings: Any) -> Iterator[Controller]:
        """A controller that reaches the API server only through the proxy; client-go's Lease timing, so that a
        slow round of faults does not depose it."""
        with self.proxy.api_client() as proxied, controller_thread(
                proxied, self.engine, self.namespace, lease_duration_s=15, renew_deadline_s=10, retry_period_s=1,
                workers=2, **settings) as running:
            yield running

    def roll_out(self, targets: Sequence[str], running: Controller, timeout_s: float = 150) -> dict[str, Any]:
        """Roll each target StatefulSet out to version 2 and wait until every rollout has finished."""
        for target in targets:
            client.CustomObjectsApi(self.direct).create_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL,
                rollout(target, target, flag=f"{target}-v2", bakes=BAKES, max_surge=SURGE))

        def finished() -> dict[str, Any] | None:
            if running.stop_event.is_set():
                raise AssertionError(f"the controller stopped (lost its Lease: {running.lost_lease.is_set()})")
            statuses = {target: self.status(target) for target in targets}
            return statuses if all(status.get("phase") in FINISHED for status in statuses.values()) else None

        try:
            statuses: dict[str, Any] = wait_for("every rollout to finish", finished, timeout_s, poll_s=0.25)
        except AssertionError as error:
            phases = {target: (self.status(target).get("phase"), self.status(target).get("message"))
                      for target in targets}
            raise AssertionError(f"{error}: {phases}; faults {dict(self.proxy.injected_by_kind())}") from None
        return statuses

    def status(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = get_rollout(self.direct, self.namespace, name).get("status") or {}
        return found

    def flag_on_rings(self, key: str) -> set[str]:
        targeting = FlagStore(self.engine).get_flag(key).spec.targeting
        assert isinstance(targeting, RingTargeting)
        return {ring for ring, variant in targeting.rings.variants.items() if variant == "on"}


@pytest.fixture
def faulted(local_cluster: LocalCluster, namespace: str, tmp_path: Path) -> Iterator[Faulted]:
    url = f"sqlite:///{tmp_path / 'ringmaster.db'}"
    upgrade(url)
    engine = make_engine(url)
    with local_cluster.api_client() as direct:
        install_crd(direct)
        with KubeFaultProxy.in_front_of(direct.configuration, seed=SEED) as proxy:
            yield Faulted(direct, proxy, namespace, engine)
    engine.dispose()


def informer_errors(running: Controller) -> int:
    return sum(informer.stats.errors for informer in (running.rollouts, running.statefulsets, running.slogates))


def relists_after_gone(running: Controller) -> int:
    return sum(informer.stats.relists_after_gone
               for informer in (running.rollouts, running.statefulsets, running.slogates))


def assert_succeeded_with_capacity_held(faulted: Faulted, statuses: dict[str, Any],
                                        sampler: CapacitySampler) -> None:
    assert sampler.samples, "the sampler saw nothing"
    for target, status in statuses.items():
        assert status["phase"] == "Succeeded", f"{target}: {status.get('phase')} ({status.get('message')})"
        assert [record["ring"] for record in status["history"]] == list(CANARY_RINGS)
        assert faulted.flag_on_rings(f"{target}-v2") == set(CANARY_RINGS)

        def ours(name: str, target: str = target) -> bool:
            return name == target or name.startswith(f"{target}-")

        ready = [sum(count for name, count in sample.ready.items() if ours(name)) for sample in sampler.samples]
        replicas = [sum(count for name, count in sample.replicas.items() if ours(name))
                    for sample in sampler.samples]
        assert min(ready) >= REPLICAS, f"{target}: ready replicas fell below {REPLICAS}: {sorted(set(ready))}"
        assert max(replicas) <= REPLICAS + SURGE, f"{target}: more replicas than the surge allows: {max(replicas)}"
        assert sampler.max_replicas(status["stableStatefulSet"]) == REPLICAS


def test_writes_answered_429_or_503_with_retry_after_are_sent_again_no_sooner_than_asked(faulted: Faulted) -> None:
    faulted.add_statefulset("web")
    proxy = faulted.proxy
    creates = proxy.inject(unavailable(retry_after_s=1), methods=["POST"], path=STATEFULSETS, limit=1)
    # Three in a row on the first scale and the first status write: each is waited out and the request sent again
    # (a fourth would fail the reconcile, which is then retried with backoff).
    scales = proxy.inject(too_many_requests(retry_after_s=1), methods=["PATCH"], path=STATEFULSETS, limit=3)
    statuses = proxy.inject(too_many_requests(retry_after_s=1), methods=["PUT"], path=ROLLOUT_STATUS, limit=3)
    with faulted.controller() as running, CapacitySampler(faulted.direct, faulted.namespace) as sampler:
        finished = faulted.roll_out(["web"], running)
    assert_succeeded_with_capacity_held(faulted, finished, sampler)
    assert (creates.injected, scales.injected, statuses.injected) == (1, 3, 3)
    waits = proxy.retries_after_retry_after()
    assert len(waits) == 7
    early = [(seen.method, seen.path, gap_s) for seen, gap_s in waits
             if gap_s is None or seen.fault is None or gap_s < (seen.fault.retry_after_s or 0)]
    assert not early, f"sent again sooner than Retry-After (or never): {early}"


@pytest.mark.parametrize("fault", [internal_error(), unavailable()], ids=["500", "503"])
def test_server_errors_on_lists_and_writes_are_retried_with_backoff(faulted: Faulted, fault: Fault) -> None:
    faulted.add_statefulset("web")
    proxy = faulted.proxy
    # The controller's first lists fail: its informers back off and list again before it may act.
    lists = proxy.inject(fault, methods=["GET"], path=CONTROLLER_OBJECTS, watch=False, limit=3)
    writes = proxy.inject(fault, methods=WRITES, path=rf"{STATEFULSETS}|{ROLLOUT_STATUS}", probability=0.5, limit=6)
    with faulted.controller() as running, CapacitySampler(faulted.direct, faulted.namespace) as sampler:
        finished = faulted.roll_out(["web"], running)
        failed_reconciles = running.reconciler.stats.errors
        errors = informer_errors(running)
    assert_succeeded_with_capacity_held(faulted, finished, sampler)
    assert lists.injected == 3 and errors >= 3
    assert writes.injected >= 3 and failed_reconciles >= writes.injected


def test_requests_that_time_out_whether_or_not_the_server_acted_on_them(faulted: Faulted) -> None:
    faulted.add_statefulset("web")
    proxy = faulted.proxy
    held_s = REQUEST_TIMEOUT_S + 2
    # A status write the server never sees, and a scale it applies whose answer is lost.
    unseen = proxy.inject(timeout(held_s), methods=["PUT"], path=ROLLOUT_STATUS, limit=1)
    lost = proxy.inject(timeout(held_s, forward=True), methods=["PATCH"], path=STATEFULSETS, limit=1)
    with faulted.controller() as running, CapacitySampler(faulted.direct, faulted.namespace) as sampler:
        finished = faulted.roll_out(["web"], running)
    assert_succeeded_with_capacity_held(faulted, finished, sampler)
    assert (unseen.injected, lost.injected) == (1, 1)


def test_watches_cut_mid_stream_are_resumed(faulted: Faulted) -> None:
    faulted.add_statefulset("web")
    cuts = faulted.proxy.inject(drop_watch(after_s=0.5), watch=True)
    with faulted.controller() as running, CapacitySampler(faulted.direct, faulted.namespace) as sampler:
        finished = faulted.roll_out(["web"], running)
        errors = informer_errors(running)
        lists = sum(informer.stats.lists for informer in (running.rollouts, running.statefulsets, running.slogates))
    assert_succeeded_with_capacity_held(faulted, finished, sampler)
    assert cuts.injected >= 10 and errors >= 10
    # A cut watch goes on from its resourceVersion; a relist is needed only if the server no longer keeps it.
    assert lists < 3 + cuts.injected / 2


def test_watches_expired_with_410_are_listed_again_with_backoff(faulted: Faulted) -> None:
    faulted.add_statefulset("web")
    proxy = faulted.proxy
    every_watch = proxy.inject(gone_event(), watch=True)
    # Watches the server ends every 2 s, so that the rollout sees many watch requests, and 410s among them.
    with faulted.controller(watch_timeout_s=2) as running, \
            CapacitySampler(faulted.direct, faulted.namespace) as sampler:
        wait_for("the controller's caches", lambda: all(
            informer.wait_synced(0) for informer in (running.rollouts, running.statefulsets, running.slogates)), 30)
        started_s = time.monotonic()
        time.sleep(2)
        proxy.remove(every_watch)
        lists = [seen for seen in proxy.seen if seen.method == "GET" and not seen.watch
                 and seen.at_s >= started_s and seen.path.startswith(("/apis/apps/", "/apis/ringmaster.dev/"))]
        # Three informers, each relisting at once after the first 410 and then after 0.25-0.5 s, 0.5-1 s, 1-2 s;
        # at once every time made over a hundred.
        assert len(lists) <= 3 * 5, f"{len(lists)} lists in 2 s: relisted in a tight loop"
        sporadic = proxy.inject(gone(), gone_event(), watch=True, probability=0.5, limit=6)
        finished = faulted.roll_out(["web"], running)
        relists = relists_after_gone(running)
    assert_succeeded_with_capacity_held(faulted, finished, sampler)
    assert every_watch.injected >= 6 and sporadic.injected >= 2
    assert relists >= every_watch.injected // 2


def test_a_storm_of_random_faults_on_a_quarter_of_requests_during_three_rollouts(faulted: Faulted) -> None:
    targets = ["alpha", "bravo", "charlie"]
    for target in targets:
        faulted.add_statefulset(target)
    proxy = faulted.proxy
    proxy.inject(timeout(REQUEST_TIMEOUT_S + 2), timeout(REQUEST_TIMEOUT_S + 2, forward=True), methods=WRITES,
                 path=CONTROLLER_OBJECTS, probability=0.05, limit=2)
    proxy.inject(drop_watch(after_s=0.5), gone(), gone_event(), internal_error(), unavailable(retry_after_s=1),
                 too_many_requests(retry_after_s=1), path=CONTROLLER_OBJECTS, watch=True, probability=0.25)
    proxy.inject(internal_error(), unavailable(), unavailable(retry_after_s=1), too_many_requests(retry_after_s=1),
                 path=CONTROLLER_OBJECTS, watch=False, probability=0.25)
    # Watches the server ends every 3 s, so that watch requests, and the faults on them, are many.
    with faulted.controller(watch_timeout_s=3) as running, \
            CapacitySampler(faulted.direct, faulted.namespace) as sampler:
        finished = faulted.roll_out(targets, running, timeout_s=240)
    assert_succeeded_with_capacity_held(faulted, finished, sampler)
    exposed = [seen for seen in proxy.seen if seen.path.startswith(("/api/v1/", "/apis/apps/", "/apis/ringmaster"))]
    share = proxy.injected() / len(exposed)
    kinds = set(proxy.injected_by_kind())
    print(f"storm: {len(exposed)} requests, {share:.0%} faulted: {dict(proxy.injected_by_kind())}")
    assert 0.15 <= share <= 0.4
    assert {"429", "500", "503"} <= kinds and kinds & {"drop-watch", "410", "410-event"}
