"""The imperative shell's hands: write a plan's status, then execute its actions, in order.

Every Kubernetes write carries a precondition (the resourceVersion the plan read, or the uid), so a
write planned on a stale view, or sent by a controller that lost the Lease, fails instead of undoing
newer work. A failed write stops the plan; the reconcile is retried from freshly observed state.
A write the API server answers with 429 or 503 and Retry-After is sent again after that wait, a few times,
whatever its method (the client library does so only for GET, PUT and DELETE).
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from rollout.controller.actions import (
    Action,
    ClearRequest,
    CreateStatefulSet,
    DeleteStatefulSet,
    RecordEvent,
    RecordGateResult,
    ScaleStatefulSet,
    SetFlagRings,
)
from rollout.controller.history import GateResultEntry, GateResults, HistoryEntry, RolloutHistory
from rollout.controller.observed import REQUEST_ANNOTATION, RolloutView
from rollout.controller.spec import GROUP, KIND, PLURAL, VERSION
from rollout.controller.status import RolloutStatus
from rollout.flags.errors import FlagNotFound
from rollout.flags.spec import FlagSpec, RingTargeting, RingVariants
from rollout.flags.store import FlagStore
from rollout.gates.verdicts import finite

log = logging.getLogger(__name__)

COMPONENT = "ringmaster-controller"
# A test hook: the crash-safety test makes the controller SIGKILL itself after this many writes.
KILL_AFTER_WRITES_ENV = "RINGMASTER_FAULT_KILL_AFTER_WRITES"
REQUEST_TIMEOUT_S = 10.0
JSON_PATCH = "application/json-patch+json"
# The answers with which the API server says it did not act on a request and when to send it again, as urllib3
# (which retries GET, PUT and DELETE on them three times) reads them.
RETRY_AFTER_STATUSES = frozenset({429, 503})
RETRY_AFTER_ATTEMPTS = 3
# A longer wait is not spent holding a worker: the error goes to the work queue, which retries with backoff.
MAX_RETRY_AFTER_S = REQUEST_TIMEOUT_S

T = TypeVar("T")


class StaleWrite(Exception):
    """A precondition failed: what the plan was based on has changed, or this controller is not the leader."""


def retry_after_s(error: ApiException) -> float | None:
    """How long the API server asked to wait before sending the request again (429 or 503 with Retry-After in
    seconds, the form it uses), or None when it did not ask."""
    if error.status not in RETRY_AFTER_STATUSES or not error.headers:
        return None
    try:
        seconds = float(error.headers.get("Retry-After", ""))
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


class Executor:
    def __init__(
        self,
        api_client: Any,
        flag_store: FlagStore,
        history: RolloutHistory,
        gate_results: GateResults,
        *,
        is_leader: Callable[[], bool] = lambda: True,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.apps = client.AppsV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.flag_store = flag_store
        self.history = history
        self.gate_results = gate_results
        self.is_leader = is_leader
        self.clock = clock
        self.sleep = sleep
        self.writes = 0
        self.api_requests = 0
        self._counter_lock = threading.Lock()
        kill_after = os.environ.get(KILL_AFTER_WRITES_ENV)
        self.kill_after_writes = int(kill_after) if kill_after else None

    def _count_request(self) -> None:
        with self._counter_lock:  # several workers share one executor
            self.api_requests += 1

    def _send(self, request: Callable[[], T]) -> T:
        """Send one request; when the API server asks to send it again after a while, wait and do so, at most
        RETRY_AFTER_ATTEMPTS times, still as the leader."""
        waits = 0
        while True:
            self._count_request()
            try:
                return request()
            except ApiException as error:
                wait_s = retry_after_s(error)
                if wait_s is None or wait_s > MAX_RETRY_AFTER_S or waits == RETRY_AFTER_ATTEMPTS:
                    raise
                log.info("the API server answered %s; sending the request again in %.1f s", error.status, wait_s)
            waits += 1
            self.sleep(wait_s)
            self._fence()

    def _wrote(self) -> None:
        with self._counter_lock:
            self.writes += 1
            writes = self.writes
        if self.kill_after_writes is not None and writes >= self.kill_after_writes:
            log.warning("fault injection: killing the controller after %d writes", self.writes)
            os.kill(os.getpid(), signal.SIGKILL)

    def _fence(self) -> None:
        if not self.is_leader():
            raise StaleWrite("this controller does not hold the Lease; the leader does the writing")

    def write_status(self, rollout: RolloutView, status: RolloutStatus) -> dict[str, Any]:
        """Record `status` if the Rollout is still at the resourceVersion the plan read; returns the object."""
        self._fence()
        body = {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
            "metadata": {"name": rollout.name, "namespace": rollout.namespace,
                         "resourceVersion": rollout.resource_version},
            "status": status.to_wire(),
        }
        try:
            written: dict[str, Any] = self._send(lambda: self.custom.replace_namespaced_custom_object_status(
                GROUP, VERSION, rollout.namespace, PLURAL, rollout.name, body, _request_timeout=REQUEST_TIMEOUT_S))
        except ApiException as error:
            if error.status in (404, 409):
                raise StaleWrite(f"status of {rollout.key}: {error.reason}") from error
            raise
        self._wrote()
        return written

    def execute(self, rollout: RolloutView, action: Action) -> None:
        self._fence()
        if isinstance(action, CreateStatefulSet):
            self._create(rollout, action)
        elif isinstance(action, ScaleStatefulSet):
            self._scale(rollout, action)
        elif isinstance(action, DeleteStatefulSet):
            self._delete(rollout, action)
        elif isinstance(action, SetFlagRings):
            self._set_flag(rollout, action)
        elif isinstance(action, RecordEvent):
            self._record(rollout, action)
            return  # an Event is no step of the rollout: no fault is injected after it
        elif isinstance(action, ClearRequest):
            self._clear_request(rollout, action)
        elif isinstance(action, RecordGateResult):
            self._record_gate_result(rollout, action)
            return  # a database row, no step of the rollout
        self._wrote()

    def _create(self, rollout: RolloutView, action: CreateStatefulSet) -> None:
        try:
            self._send(lambda: self.apps.create_namespaced_stateful_set(
                rollout.namespace, dict(action.manifest), _request_timeout=REQUEST_TIMEOUT_S))
        except ApiException as error:
            if error.status != 409:  # already there: an earlier attempt created it
                raise
        log.info("%s: created StatefulSet %s", rollout.key, action.name)

    def _scale(self, rollout: RolloutView, action: ScaleStatefulSet) -> None:
        patch = [
            {"op": "test", "path": "/metadata/resourceVersion", "value": action.resource_version},
            {"op": "replace", "path": "/spec/replicas", "value": action.replicas},
        ]
        try:
            self._send(lambda: self.apps.patch_namespaced_stateful_set(
                action.name, rollout.namespace, patch, _content_type=JSON_PATCH, _request_timeout=REQUEST_TIMEOUT_S))
        except ApiException as error:
            if error.status in (404, 409, 422):
                raise StaleWrite(f"StatefulSet {action.name} changed since it was read") from error
            raise
        log.info("%s: scaled StatefulSet %s to %d", rollout.key, action.name, action.replicas)

    def _delete(self, rollout: RolloutView, action: DeleteStatefulSet) -> None:
        options = client.V1DeleteOptions(
            preconditions=client.V1Preconditions(uid=action.uid, resource_version=action.resource_version),
            propagation_policy="Background",
        )
        try:
            self._send(lambda: self.apps.delete_namespaced_stateful_set(
                action.name, rollout.namespace, body=options, _request_timeout=REQUEST_TIMEOUT_S))
        except ApiException as error:
            if error.status == 404:
                return
            if error.status == 409:
                raise StaleWrite(f"StatefulSet {action.name} changed since it was read") from error
            raise
        log.info("%s: deleted StatefulSet %s", rollout.key, action.name)

    def _set_flag(self, rollout: RolloutView, action: SetFlagRings) -> None:
        targeting = RingTargeting(rings=RingVariants(
            cohort_set=action.cohort_set, version=action.version, epoch=action.epoch,
            variants=dict.fromkeys(action.on_rings, action.on_variant), otherwise=action.off_variant,
        ))
        actor = f"rollout/{rollout.namespace}/{rollout.name}"
        comment = f"on for {', '.join(action.on_rings) or 'no ring'}"
        try:
            current = self.flag_store.get_flag(action.key)
        except FlagNotFound:
            spec = FlagSpec(
                key=action.key, type="boolean", variants={action.on_variant: True, action.off_variant: False},
                default_variant=action.off_variant, targeting=targeting,
                description=f"released ring by ring by Rollout {rollout.namespace}/{rollout.name}",
            )
            self.flag_store.create_flag(spec, actor, comment)
        else:
            spec = current.spec.model_copy(update={"targeting": targeting})
            self.flag_store.update_flag(spec, actor, comment, expected_version=current.version)
        log.info("%s: flag %s %s", rollout.key, action.key, comment)

    def _record(self, rollout: RolloutView, action: RecordEvent) -> None:
        now = self.clock()
        stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{rollout.name}.{secrets.token_hex(8)}", "namespace": rollout.namespace},
            "involvedObject": {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": rollout.name,
                               "namespace": rollout.namespace, "uid": rollout.uid},
            "reason": action.reason, "message": action.message[:1024], "type": action.type,
            "source": {"component": COMPONENT}, "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
        }
        try:
            self._send(lambda: self.core.create_namespaced_event(
                rollout.namespace, event, _request_timeout=REQUEST_TIMEOUT_S))
        except ApiException as error:
            # An Event is a courtesy; the status and the database hold the record.
            log.warning("%s: event %s not recorded: %s", rollout.key, action.reason, error.reason)
        # The Event first: with the database down (the cord then counts as pulled) it still tells why.
        if action.sequence is not None:
            self.history.record(HistoryEntry(
                at=now, namespace=rollout.namespace, name=rollout.name, rollout_uid=rollout.uid,
                sequence=action.sequence, reason=action.reason, type=action.type, revision=action.revision,
                ring=action.ring, message=action.message,
            ))

    def _record_gate_result(self, rollout: RolloutView, action: RecordGateResult) -> None:
        measurement = action.measurement
        judgment = measurement.judgment
        self.gate_results.record(GateResultEntry(
            at=measurement.at, namespace=rollout.namespace, name=rollout.name, rollout_uid=rollout.uid,
            revision=action.revision, ring=measurement.ring, gate=measurement.gate, kind=measurement.kind,
            sequence=action.sequence, verdict=measurement.verdict, values=finite(judgment.values),
            threshold=judgment.threshold, message=judgment.message, queries=list(measurement.queries),
        ))

    def _clear_request(self, rollout: RolloutView, action: ClearRequest) -> None:
        path = "/metadata/annotations/" + REQUEST_ANNOTATION.replace("~", "~0").replace("/", "~1")
        patch = [{"op": "test", "path": path, "value": action.value}, {"op": "remove", "path": path}]
        try:
            self._send(lambda: self.custom.patch_namespaced_custom_object(
                GROUP, VERSION, rollout.namespace, PLURAL, rollout.name, patch,
                _content_type=JSON_PATCH, _request_timeout=REQUEST_TIMEOUT_S))
        except ApiException as error:
            if error.status not in (404, 409, 422):  # already gone or replaced by a newer request
                raise
