"""Leader election: of the controller's replicas, only the holder of a coordination.k8s.io/v1 Lease acts.

A `LeaderElector` runs a daemon thread that tries to take the Lease every `retry_period_s` and, while it
holds it, renews it as often. Every write replaces the Lease at the resourceVersion just read or written,
so of two candidates racing for it only one wins; the other gets 409 Conflict and tries again later.

Whether another holder's Lease has expired is judged on this process's monotonic clock: from when this
elector last saw the Lease change, never by comparing the remote renewTime with the local wall clock.
A leader whose renewals have failed for `renew_deadline_s`, shorter than the lease duration, stops leading
before any other candidate may take the Lease over. `stop(release=True)` hands the Lease over at once,
so a rolling restart does not wait for it to expire.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

logger = logging.getLogger(__name__)

# A request that hangs longer than this is retried rather than awaited.
MAX_REQUEST_TIMEOUT_S = 5.0
# The API server or the network failing: logged, and the next round tries again.
_API_ERRORS = (ApiException, urllib3.exceptions.HTTPError)


class _MicroTime(datetime):
    # The client writes datetimes with isoformat(), which drops a zero fraction; the 1.20 API server
    # then refuses the MicroTime with 400 Bad Request.
    def isoformat(self, sep: str = "T", timespec: str = "microseconds") -> str:
        return super().isoformat(sep, timespec)


def micro_time(moment: datetime) -> datetime:
    """`moment` in UTC, written as a Kubernetes MicroTime: always six fraction digits, as 1.20 requires."""
    utc = moment.astimezone(UTC)
    return _MicroTime.combine(utc.date(), utc.timetz())


@dataclass(frozen=True)
class LeaseRecord:
    """What the Lease said when this elector last read or wrote it."""

    holder_identity: str | None
    lease_duration_seconds: int | None
    lease_transitions: int
    renew_time: datetime | None
    resource_version: str

    @classmethod
    def of(cls, lease: Any) -> LeaseRecord:
        spec = lease.spec or client.V1LeaseSpec()
        return cls(
            holder_identity=spec.holder_identity or None,
            lease_duration_seconds=spec.lease_duration_seconds,
            lease_transitions=spec.lease_transitions or 0,
            renew_time=spec.renew_time,
            resource_version=lease.metadata.resource_version,
        )


class LeaderElector:
    """Campaigns for one Lease on behalf of one process.

    `identity` must be unique per process (e.g. the pod name): a Lease held by this identity is taken
    back without waiting for it to expire. The callbacks run in the elector's thread and must return
    fast (set an event, start a thread), or renewals stall; an exception they raise is logged and the
    election carries on. `on_stopped_leading` is called once per term: when renewals fail past the
    deadline, when another holder is seen, or in `stop()`, before the Lease is released.
    """

    def __init__(
        self,
        api_client: client.ApiClient,
        *,
        namespace: str,
        name: str,
        identity: str,
        lease_duration_s: float = 15.0,
        renew_deadline_s: float = 10.0,
        retry_period_s: float = 2.0,
        on_started_leading: Callable[[], None] | None = None,
        on_stopped_leading: Callable[[], None] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        _require_ordered_durations(lease_duration_s, renew_deadline_s, retry_period_s)
        if not identity:
            raise ValueError("identity: must not be empty; use a name unique to this process, e.g. the pod name")
        self._leases = client.CoordinationV1Api(api_client)
        self._namespace = namespace
        self._name = name
        self._identity = identity
        self._lease_duration_s = lease_duration_s
        self._renew_deadline_s = renew_deadline_s
        self._retry_period_s = retry_period_s
        # Short enough to notice a lost Lease in time, long enough to survive a busy API server.
        self._request_timeout_s = min(max(retry_period_s, 1.0), renew_deadline_s / 2, MAX_REQUEST_TIMEOUT_S)
        self._on_started_leading = on_started_leading
        self._on_stopped_leading = on_stopped_leading
        self._monotonic = monotonic

        self._lock = threading.Lock()
        self._leadership_changed = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        # Guarded by _lock: read by is_leader() from any thread.
        self._leading = False
        self._renewed_at_s = 0.0
        self._observed: LeaseRecord | None = None
        self._observed_at_s = 0.0
        # The Lease as this elector last wrote it while holding it; its resourceVersion fences the next write.
        self._held: Any = None

    @property
    def identity(self) -> str:
        return self._identity

    @property
    def namespace(self) -> str:
        return self._namespace

    @property
    def lease_name(self) -> str:
        return self._name

    @property
    def observed_record(self) -> LeaseRecord | None:
        """The Lease as last seen (holder, transitions, ...), or None before the first successful read."""
        with self._lock:
            return self._observed

    def start(self) -> None:
        """Campaign in a daemon thread until `stop()`; one start per elector."""
        if self._thread is not None:
            raise RuntimeError(f"elector {self._identity} was already started; create a new LeaderElector")
        self._thread = threading.Thread(target=self._campaign, name=f"leader-elector-{self._name}", daemon=True)
        self._thread.start()

    def is_leader(self) -> bool:
        """True only while the last successful renewal is younger than `renew_deadline_s`."""
        with self._lock:
            return self._leads_locked()

    def wait_until_leader(self, timeout_s: float | None = None) -> bool:
        """Block until this elector leads (True), the timeout passes or `stop()` is called (False)."""
        with self._leadership_changed:
            self._leadership_changed.wait_for(
                lambda: self._leads_locked() or self._stopping.is_set(), timeout=timeout_s)
            return self._leads_locked()

    def stop(self, release: bool = True) -> None:
        """Stop campaigning; if this elector holds the Lease and `release`, let the next candidate take it at once."""
        self._stopping.set()
        with self._leadership_changed:
            self._leadership_changed.notify_all()
        if self._thread is not None:
            self._thread.join()
        self._end_term("the elector was stopped", logging.INFO)
        if release and self._held is not None:
            self._release()

    def try_acquire_or_renew(self) -> bool:
        """One round of the election: renew the Lease if held, else take it if free or expired.

        The thread started by `start()` runs this every `retry_period_s`; call it directly only instead of
        `start()`, to drive the election yourself. Returns whether this elector leads after the round.
        """
        self._end_term_if_renewal_overdue()
        try:
            if self._held is None or not self._renew():
                self._acquire()
        except _API_ERRORS as error:
            logger.warning("Lease %s/%s: %s; %s retries in %.1f s", self._namespace, self._name,
                           _describe(error), self._identity, self._retry_period_s)
        self._end_term_if_renewal_overdue()
        return self.is_leader()

    # The campaign

    def _campaign(self) -> None:
        while not self._stopping.is_set():
            try:
                self.try_acquire_or_renew()
            except Exception:
                # A bug in one round must not leave a leader that never notices it stopped leading.
                logger.exception("leader election round of %s failed unexpectedly; retrying", self._identity)
            self._stopping.wait(self._retry_period_s)

    def _renew(self) -> bool:
        """Write the held Lease again; False if it changed since (the caller then reads it)."""
        attempt_at_s = self._monotonic()
        try:
            written = self._leases.replace_namespaced_lease(
                self._name, self._namespace, self._claim(self._held), _request_timeout=self._request_timeout_s)
        except ApiException as error:
            if error.status != 409:
                raise
            logger.info("Lease %s/%s changed since %s last renewed it; reading it again",
                        self._namespace, self._name, self._identity)
            self._held = None
            return False
        self._hold(written, attempt_at_s)
        return True

    def _acquire(self) -> None:
        """Read the Lease (creating it if missing) and take it if it is free, ours or expired."""
        lease, created_at_s = self._read_or_create()
        if created_at_s is not None:
            self._hold(lease, created_at_s)
            return
        record = self._observe(lease)
        holder = record.holder_identity
        if holder is not None and holder != self._identity:
            self._held = None
            self._end_term(f"the Lease is held by {holder}", logging.WARNING)
            duration_s = record.lease_duration_seconds or math.ceil(self._lease_duration_s)
            if not self._unchanged_for(duration_s):
                return
            logger.info("Lease %s/%s of %s has not changed for %d s; %s takes it over",
                        self._namespace, self._name, holder, duration_s, self._identity)
        attempt_at_s = self._monotonic()
        try:
            written = self._leases.replace_namespaced_lease(
                self._name, self._namespace, self._claim(lease), _request_timeout=self._request_timeout_s)
        except ApiException as error:
            if error.status != 409:
                raise
            logger.info("another candidate wrote Lease %s/%s first; %s retries in %.1f s",
                        self._namespace, self._name, self._identity, self._retry_period_s)
            return
        self._hold(written, attempt_at_s)

    def _read_or_create(self) -> tuple[Any, float | None]:
        """The Lease, and when this elector started creating it if it did."""
        try:
            return self._leases.read_namespaced_lease(
                self._name, self._namespace, _request_timeout=self._request_timeout_s), None
        except ApiException as error:
            if error.status != 404:
                raise
        attempt_at_s = self._monotonic()
        try:
            return self._leases.create_namespaced_lease(
                self._namespace, self._claim(None), _request_timeout=self._request_timeout_s), attempt_at_s
        except ApiException as error:
            if error.status != 409:
                raise
        # Another candidate created it between our read and our create.
        return self._leases.read_namespaced_lease(
            self._name, self._namespace, _request_timeout=self._request_timeout_s), None

    def _claim(self, current: Any) -> Any:
        """The Lease naming this elector as holder, renewed now, at `current`'s resourceVersion."""
        now = micro_time(datetime.now(UTC))
        if current is None:
            metadata = client.V1ObjectMeta(name=self._name, namespace=self._namespace)
            spec = client.V1LeaseSpec()
        else:
            metadata, spec = current.metadata, current.spec or client.V1LeaseSpec()
        kept = spec.holder_identity == self._identity
        transitions = spec.lease_transitions or 0
        return client.V1Lease(metadata=metadata, spec=client.V1LeaseSpec(
            holder_identity=self._identity,
            lease_duration_seconds=math.ceil(self._lease_duration_s),
            acquire_time=micro_time(spec.acquire_time) if kept and spec.acquire_time else now,
            renew_time=now,
            lease_transitions=transitions if kept or current is None else transitions + 1,
        ))

    def _release(self) -> None:
        held = self._held
        self._held = None
        spec = held.spec
        released = client.V1Lease(metadata=held.metadata, spec=client.V1LeaseSpec(
            holder_identity=None,
            lease_duration_seconds=1,
            acquire_time=micro_time(spec.acquire_time) if spec.acquire_time else None,
            renew_time=micro_time(datetime.now(UTC)),
            lease_transitions=spec.lease_transitions,
        ))
        try:
            written = self._leases.replace_namespaced_lease(
                self._name, self._namespace, released, _request_timeout=self._request_timeout_s)
        except _API_ERRORS as error:
            if isinstance(error, ApiException) and error.status == 409:
                logger.info("Lease %s/%s was taken over meanwhile; %s has nothing to release",
                            self._namespace, self._name, self._identity)
                return
            logger.warning("%s could not release Lease %s/%s (%s); it expires within %d s",
                           self._identity, self._namespace, self._name, _describe(error),
                           math.ceil(self._lease_duration_s))
            return
        self._observe(written)
        logger.info("%s released Lease %s/%s", self._identity, self._namespace, self._name)

    # Bookkeeping

    def _observe(self, lease: Any) -> LeaseRecord:
        """Remember the Lease, and when it last changed on this elector's clock."""
        record = LeaseRecord.of(lease)
        seen_at_s = self._monotonic()
        with self._lock:
            if record != self._observed:
                self._observed, self._observed_at_s = record, seen_at_s
        return record

    def _unchanged_for(self, duration_s: float) -> bool:
        """Whether the Lease has not changed, as far as this elector saw, for `duration_s` of its clock."""
        with self._lock:
            return self._monotonic() - self._observed_at_s >= duration_s

    def _hold(self, written: Any, attempt_at_s: float) -> None:
        """Record a successful write of the Lease naming this elector; start a term if none is running."""
        self._held = written
        self._observe(written)
        with self._leadership_changed:
            # The write began at attempt_at_s; others count the lease duration from no earlier than that.
            self._renewed_at_s = attempt_at_s
            started = not self._leading
            self._leading = True
            self._leadership_changed.notify_all()
        if started:
            logger.info("%s leads (Lease %s/%s)", self._identity, self._namespace, self._name)
            self._call(self._on_started_leading, "on_started_leading")

    def _leads_locked(self) -> bool:
        return self._leading and self._monotonic() - self._renewed_at_s < self._renew_deadline_s

    def _end_term_if_renewal_overdue(self) -> None:
        with self._lock:
            overdue = self._leading and not self._leads_locked()
        if overdue:
            self._end_term(f"no renewal succeeded within {self._renew_deadline_s} s", logging.WARNING)

    def _end_term(self, reason: str, level: int) -> None:
        with self._lock:
            was_leading, self._leading = self._leading, False
        if was_leading:
            logger.log(level, "%s stopped leading (Lease %s/%s): %s", self._identity, self._namespace, self._name,
                       reason)
            self._call(self._on_stopped_leading, "on_stopped_leading")

    def _call(self, callback: Callable[[], None] | None, what: str) -> None:
        if callback is None:
            return
        try:
            callback()
        except Exception:
            logger.exception("%s of %s raised; the election carries on", what, self._identity)


def _require_ordered_durations(lease_duration_s: float, renew_deadline_s: float, retry_period_s: float) -> None:
    if not retry_period_s > 0:
        raise ValueError(f"retry_period_s: {retry_period_s} is not positive; use e.g. 2.0")
    if not renew_deadline_s > retry_period_s:
        raise ValueError(
            f"renew_deadline_s: {renew_deadline_s} must exceed retry_period_s ({retry_period_s}), "
            "so that a leader retries a failed renewal before giving up")
    if not lease_duration_s > renew_deadline_s:
        raise ValueError(
            f"lease_duration_s: {lease_duration_s} must exceed renew_deadline_s ({renew_deadline_s}), "
            "so that a leader stops leading before another candidate may take the Lease over")


def _describe(error: Exception) -> str:
    if isinstance(error, ApiException):
        return f"{error.status} {error.reason}"
    return f"{type(error).__name__}: {error}"
