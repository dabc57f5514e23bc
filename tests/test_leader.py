"""Leader election on a Lease: one replica leads, hands over at once on release, and is replaced when it dies.

Durations are short (lease 2 s, renew deadline 1.5 s, retry 0.3 s) and every wait polls with a deadline.
"""

from __future__ import annotations

import logging
import math
import re
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubernetes import client

from rollout.controller.leader import LeaderElector, micro_time
from rollout.localcluster.cluster import LocalCluster

LEASE_S = 2.0
RENEW_S = 1.5
RETRY_S = 0.3
LEASE_NAME = "ringmaster-controller"

MakeCandidate = Callable[..., LeaderElector]


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


class Callbacks:
    """Counts how often an elector started and stopped leading."""

    def __init__(self) -> None:
        self.started = 0
        self.stopped = 0

    def on_started(self) -> None:
        self.started += 1

    def on_stopped(self) -> None:
        self.stopped += 1


def eventually(check: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Poll `check` until it holds; return how long that took."""
    started_s = time.monotonic()
    while not check():
        if time.monotonic() - started_s > timeout_s:
            raise AssertionError(f"{what} did not hold within {timeout_s} s")
        time.sleep(0.02)
    return time.monotonic() - started_s


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture
def candidate(local_cluster: LocalCluster, namespace: str) -> Iterator[MakeCandidate]:
    """Makes electors for the Lease in this test's namespace, each with an API client of its own."""
    with ExitStack() as cleanup:

        def make(identity: str, **options: Any) -> LeaderElector:
            api_client = cleanup.enter_context(local_cluster.api_client())
            durations = {"lease_duration_s": LEASE_S, "renew_deadline_s": RENEW_S, "retry_period_s": RETRY_S}
            elector = LeaderElector(api_client, namespace=namespace, name=LEASE_NAME, identity=identity,
                                    **(durations | options))
            cleanup.callback(elector.stop, release=False)
            return elector

        yield make


@pytest.fixture
def leases(local_cluster: LocalCluster) -> Iterator[Any]:
    with local_cluster.api_client() as api_client:
        yield client.CoordinationV1Api(api_client)


def test_one_of_two_candidates_leads(candidate: MakeCandidate) -> None:
    electors = [candidate("replica-a"), candidate("replica-b")]
    for elector in electors:
        elector.start()
    eventually(lambda: any(elector.is_leader() for elector in electors), 5, "a candidate leads")
    leader = next(elector for elector in electors if elector.is_leader())
    follower = next(elector for elector in electors if elector is not leader)

    # Longer than the lease: a follower that took the lease for expired would show up.
    deadline_s = time.monotonic() + 2 * LEASE_S
    while time.monotonic() < deadline_s:
        assert [elector.is_leader() for elector in electors].count(True) == 1
        assert leader.is_leader()
        time.sleep(0.05)
    observed = follower.observed_record
    assert observed is not None and observed.holder_identity == leader.identity


def test_a_released_lease_is_taken_over_at_once(candidate: MakeCandidate) -> None:
    # A long lease, so that a handover by expiry could not pass for one by release.
    durations = {"lease_duration_s": 10.0, "renew_deadline_s": 7.0}
    leaving, staying = candidate("replica-a", **durations), candidate("replica-b", **durations)
    leaving.start()
    assert leaving.wait_until_leader(timeout_s=5)
    staying.start()
    eventually(lambda: staying.observed_record is not None, 5, "replica-b reads the Lease")

    leaving.stop(release=True)
    assert not leaving.is_leader()
    started_s = time.monotonic()
    assert staying.wait_until_leader(timeout_s=RETRY_S + 1)
    handover_s = time.monotonic() - started_s
    print(f"released lease taken over in {handover_s:.2f} s")
    assert handover_s < RETRY_S + 1


def test_a_dead_leader_is_replaced_after_the_lease_expires(candidate: MakeCandidate, leases: Any,
                                                           namespace: str) -> None:
    dying, surviving = candidate("replica-a"), candidate("replica-b")
    dying.start()
    assert dying.wait_until_leader(timeout_s=5)
    surviving.start()
    eventually(lambda: surviving.observed_record is not None, 5, "replica-b reads the Lease")

    dying.stop(release=False)
    stopped_s = time.monotonic()
    last_renewal = leases.read_namespaced_lease(LEASE_NAME, namespace).spec.renew_time
    assert surviving.wait_until_leader(timeout_s=LEASE_S + 2)
    handover_s = time.monotonic() - stopped_s
    print(f"dead leader replaced {handover_s:.2f} s after it stopped")
    assert handover_s < LEASE_S + 2
    # Both times come from this host's wall clock: replica-b took over no earlier than a lease after
    # replica-a's last renewal, though it judged expiry on its own monotonic clock.
    taken = leases.read_namespaced_lease(LEASE_NAME, namespace).spec
    assert taken.holder_identity == "replica-b"
    assert taken.acquire_time - last_renewal >= timedelta(seconds=LEASE_S)


def test_lease_records_holder_and_transitions(candidate: MakeCandidate, leases: Any, namespace: str) -> None:
    first, second = candidate("replica-a"), candidate("replica-b")
    first.start()
    assert first.wait_until_leader(timeout_s=5)
    created = leases.read_namespaced_lease(LEASE_NAME, namespace).spec
    assert (created.holder_identity, created.lease_transitions) == ("replica-a", 0)
    assert created.lease_duration_seconds == math.ceil(LEASE_S)
    eventually(lambda: leases.read_namespaced_lease(LEASE_NAME, namespace).spec.renew_time > created.renew_time,
               2 * RETRY_S + 1, "the leader renews the Lease")

    first.stop(release=True)
    released = leases.read_namespaced_lease(LEASE_NAME, namespace).spec
    assert (released.holder_identity, released.lease_duration_seconds) == (None, 1)
    assert released.lease_transitions == 0

    second.start()
    assert second.wait_until_leader(timeout_s=5)
    taken = leases.read_namespaced_lease(LEASE_NAME, namespace).spec
    assert (taken.holder_identity, taken.lease_transitions) == ("replica-b", 1)
    assert taken.acquire_time > created.acquire_time
    raw = leases.read_namespaced_lease(LEASE_NAME, namespace, _preload_content=False).json()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", raw["spec"]["renewTime"])


def test_expiry_is_judged_on_the_observers_clock(candidate: MakeCandidate) -> None:
    leader_clock, observer_clock = FakeClock(), FakeClock()
    leader_callbacks = Callbacks()
    leader = candidate("replica-a", monotonic=leader_clock, on_started_leading=leader_callbacks.on_started,
                       on_stopped_leading=leader_callbacks.on_stopped)
    observer = candidate("replica-b", monotonic=observer_clock)
    assert leader.try_acquire_or_renew()
    assert not observer.try_acquire_or_renew()

    observer_clock.advance(LEASE_S - 0.1)
    assert leader.try_acquire_or_renew()
    observer_clock.advance(0.2)
    assert not observer.try_acquire_or_renew(), "a renewal seen just now restarts the lease"
    observer_clock.advance(LEASE_S - 0.1)
    assert not observer.try_acquire_or_renew()
    observer_clock.advance(0.2)
    assert observer.try_acquire_or_renew(), "unchanged for a lease on the observer's clock: expired"

    assert not leader.try_acquire_or_renew()
    assert (leader_callbacks.started, leader_callbacks.stopped) == (1, 1)


def test_is_leader_never_outlives_the_renew_deadline(candidate: MakeCandidate) -> None:
    clock, callbacks = FakeClock(), Callbacks()
    elector = candidate("replica-a", monotonic=clock, on_started_leading=callbacks.on_started,
                        on_stopped_leading=callbacks.on_stopped)
    assert elector.try_acquire_or_renew()
    clock.advance(RENEW_S - 0.01)
    assert elector.is_leader()
    # No round ran: the elector's thread might be stuck, and still is_leader() turns False.
    clock.advance(0.02)
    assert not elector.is_leader()
    assert callbacks.stopped == 0

    assert elector.try_acquire_or_renew(), "the Lease is still ours: a new term begins"
    assert (callbacks.started, callbacks.stopped) == (2, 1)


def test_leadership_is_lost_when_renewals_fail_past_the_deadline(local_cluster: LocalCluster, namespace: str) -> None:
    callbacks = Callbacks()
    with local_cluster.api_client() as api_client:
        elector = LeaderElector(api_client, namespace=namespace, name=LEASE_NAME, identity="replica-a",
                                lease_duration_s=LEASE_S, renew_deadline_s=RENEW_S, retry_period_s=RETRY_S,
                                on_started_leading=callbacks.on_started, on_stopped_leading=callbacks.on_stopped)
        try:
            renewals_fail_then_recover(elector, api_client.configuration, callbacks)
        finally:
            elector.stop()


def renewals_fail_then_recover(elector: LeaderElector, configuration: Any, callbacks: Callbacks) -> None:
    elector.start()
    assert elector.wait_until_leader(timeout_s=5)
    reachable_host = configuration.host
    # The kubeconfig loader's hook would point the client back at the cluster before every request.
    configuration.refresh_api_key_hook = None
    configuration.host = f"https://127.0.0.1:{closed_port()}"

    lost_after_s = eventually(lambda: not elector.is_leader(), RENEW_S + 0.5, "leadership is lost")
    eventually(lambda: callbacks.stopped == 1, RETRY_S + 1, "on_stopped_leading is called")
    time.sleep(3 * RETRY_S)
    assert (callbacks.started, callbacks.stopped) == (1, 1)
    print(f"leadership lost {lost_after_s:.2f} s after the API server became unreachable")

    configuration.host = reachable_host
    assert elector.wait_until_leader(timeout_s=RETRY_S + 2), "the elector kept campaigning through the errors"
    assert (callbacks.started, callbacks.stopped) == (2, 1)


def test_api_errors_are_logged_and_retried(caplog: pytest.LogCaptureFixture) -> None:
    def failed_rounds() -> list[logging.LogRecord]:
        return [record for record in caplog.records if record.name == "rollout.controller.leader"]

    configuration = client.Configuration(host=f"http://127.0.0.1:{closed_port()}")
    with client.ApiClient(configuration) as unreachable, caplog.at_level(logging.WARNING):
        elector = LeaderElector(unreachable, namespace="default", name=LEASE_NAME, identity="replica-a",
                                lease_duration_s=LEASE_S, renew_deadline_s=RENEW_S, retry_period_s=RETRY_S)
        elector.start()
        eventually(lambda: len(failed_rounds()) >= 3, 5 * RETRY_S + 3, "three rounds fail and are logged")
        assert not elector.wait_until_leader(timeout_s=0)
        elector.stop()
    assert all(record.levelno == logging.WARNING for record in failed_rounds())


@pytest.mark.parametrize(("lease_duration_s", "renew_deadline_s", "retry_period_s", "refused"), [
    (15.0, 10.0, 0.0, "retry_period_s"),
    (15.0, 10.0, -1.0, "retry_period_s"),
    (15.0, 2.0, 2.0, "renew_deadline_s"),
    (10.0, 10.0, 2.0, "lease_duration_s"),
    (5.0, 10.0, 2.0, "lease_duration_s"),
])
def test_invalid_durations_are_refused(lease_duration_s: float, renew_deadline_s: float, retry_period_s: float,
                                       refused: str) -> None:
    with pytest.raises(ValueError, match=f"^{refused}:"):
        LeaderElector(client.ApiClient(), namespace="default", name=LEASE_NAME, identity="replica-a",
                      lease_duration_s=lease_duration_s, renew_deadline_s=renew_deadline_s,
                      retry_period_s=retry_period_s)


def test_micro_times_are_written_with_six_fraction_digits() -> None:
    # The 1.20 API server refuses a MicroTime without a fraction; a whole second must still carry one.
    whole_second = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    spec = client.V1LeaseSpec(renew_time=micro_time(whole_second))
    assert client.ApiClient().sanitize_for_serialization(spec)["renewTime"] == "2024-05-01T12:00:00.000000+00:00"
