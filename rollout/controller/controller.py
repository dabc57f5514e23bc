"""`ringmaster controller`: the process that watches Rollouts and StatefulSets and reconciles them.

Informers (list, then watch) fill caches in every replica, so a standby is warm; a Lease elects the
one leader that runs the workers. Events feed a level-triggered work queue that never hands one
Rollout to two workers at once; a failed reconcile is retried with exponential backoff, a bake
timer is a delayed requeue, and the informers' periodic resync is the safety net. On SIGTERM the
workers finish, the Lease is released (a rolling restart hands over at once) and the process exits.
Losing the Lease stops the workers, and the process exits non-zero so its supervisor restarts it.
With a metrics address, an HTTP endpoint serves /metrics, /healthz and /readyz (docs/metrics.md).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from cohorts.cache import CompiledSetCache
from cohorts.store import CohortStore
from rollout.andon.store import AndonStore
from rollout.andon.watch import DEFAULT_POLL_S, CordWatcher
from rollout.controller.act import Executor, StaleWrite
from rollout.controller.endpoint import Endpoint, parse_address
from rollout.controller.history import GateResults, RolloutHistory
from rollout.controller.leader import LeaderElector
from rollout.controller.metrics import ControllerMetrics, ControllerState
from rollout.controller.reactor import Informer, ResourceKind
from rollout.controller.reconciler import Reconciler
from rollout.controller.spec import GROUP, KIND, PLURAL, VERSION
from rollout.controller.workqueue import WorkQueue
from rollout.flags.store import FlagStore
from rollout.gates.prometheus import Prometheus
from rollout.gates.spec import PLURAL as SLOGATE_PLURAL

log = logging.getLogger(__name__)

ROLLOUTS = ResourceKind(GROUP, VERSION, PLURAL)
STATEFULSETS = ResourceKind("apps", "v1", "statefulsets")
SLOGATES = ResourceKind(GROUP, VERSION, SLOGATE_PLURAL)
EXIT_LOST_LEASE = 3


def default_identity() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class ControllerSettings:
    namespace: str | None = None
    identity: str = ""
    lease_namespace: str = "default"
    lease_name: str = "ringmaster-controller"
    lease_duration_s: float = 15.0
    renew_deadline_s: float = 10.0
    retry_period_s: float = 2.0
    workers: int = 4
    resync_s: float = 300.0
    watch_timeout_s: int = 300
    prometheus_url: str | None = None
    andon_poll_s: float = DEFAULT_POLL_S
    # HOST:PORT of /metrics, /healthz and /readyz; None (or "off") serves none, port 0 any free port.
    metrics_address: str | None = None


class Controller:
    def __init__(self, api_client: Any, engine: Engine, settings: ControllerSettings) -> None:
        self.settings = settings
        self.queue = WorkQueue()
        self.rollouts = Informer(api_client, ROLLOUTS, self._on_rollout, namespace=settings.namespace,
                                 resync_s=settings.resync_s, watch_timeout_s=settings.watch_timeout_s,
                                 request_timeout_s=settings.watch_timeout_s + 30, name="rollouts")
        self.statefulsets = Informer(api_client, STATEFULSETS, self._on_statefulset, namespace=settings.namespace,
                                     resync_s=settings.resync_s, watch_timeout_s=settings.watch_timeout_s,
                                     request_timeout_s=settings.watch_timeout_s + 30, name="statefulsets")
        self.slogates = Informer(api_client, SLOGATES, self._on_slogate, namespace=settings.namespace,
                                 resync_s=settings.resync_s, watch_timeout_s=settings.watch_timeout_s,
                                 request_timeout_s=settings.watch_timeout_s + 30, name="slogates")
        self.stop_event = threading.Event()
        self.lost_lease = threading.Event()
        self.elector = LeaderElector(
            api_client, namespace=settings.lease_namespace, name=settings.lease_name,
            identity=settings.identity or default_identity(), lease_duration_s=settings.lease_duration_s,
            renew_deadline_s=settings.renew_deadline_s, retry_period_s=settings.retry_period_s,
            on_stopped_leading=self._on_stopped_leading,
        )
        cohort_store = CohortStore(engine)
        flag_store = FlagStore(engine)
        self.executor = Executor(api_client, flag_store, RolloutHistory(engine), GateResults(engine),
                                 is_leader=self.elector.is_leader)
        self.prometheus = Prometheus(settings.prometheus_url) if settings.prometheus_url else None
        self.cord = CordWatcher(AndonStore(engine), on_change=self._on_cord_change, poll_s=settings.andon_poll_s)
        self.metrics = ControllerMetrics()
        self.reconciler = Reconciler(
            rollout_of=self.rollouts.get, statefulset_of=self.statefulsets.get,
            cohort_store=cohort_store, compiled_sets=CompiledSetCache(cohort_store), flag_store=flag_store,
            executor=self.executor, slogates_of=self._slogates_in, prometheus=self.prometheus,
            andon_of=lambda rollout: self.cord.view(rollout.namespace, rollout.name), metrics=self.metrics,
        )
        self.metrics.watch(ControllerState(
            is_leader=self.elector.is_leader, rollouts=self.rollouts.list, queue_depth=lambda: len(self.queue),
            informers=self._informers(), cord=lambda: self.cord.state if self.cord.running else None,
        ))
        address = parse_address(settings.metrics_address or "off")
        self.endpoint = None if address is None else Endpoint(
            address, self.metrics.registry, healthy=self._unhealthy, ready=self._unready)
        self._workers: list[threading.Thread] = []
        # (namespace, StatefulSet name) -> the Rollouts that name it, for StatefulSets no Rollout owns.
        self._rollouts_naming: dict[tuple[str, str], set[str]] = {}
        self._named_by: dict[str, set[tuple[str, str]]] = {}
        self._index_lock = threading.Lock()

    # Events into the queue

    def _on_rollout(self, event: str, obj: Mapping[str, Any]) -> None:
        metadata = obj.get("metadata", {})
        namespace = metadata.get("namespace", "")
        key = f"{namespace}/{metadata.get('name')}"
        spec = obj.get("spec") or {}
        status = obj.get("status") or {}
        named = set() if event == "DELETED" else {
            (namespace, name) for name in (spec.get("statefulSetName"), status.get("stableStatefulSet"),
                                           status.get("newStatefulSet")) if isinstance(name, str)}
        with self._index_lock:
            for stale in self._named_by.get(key, set()) - named:
                self._rollouts_naming.get(stale, set()).discard(key)
            for fresh in named:
                self._rollouts_naming.setdefault(fresh, set()).add(key)
            if named:
                self._named_by[key] = named
            else:
                self._named_by.pop(key, None)
        self.queue.add(key)

    def _on_statefulset(self, _event: str, obj: Mapping[str, Any]) -> None:
        metadata = obj.get("metadata", {})
        namespace = metadata.get("namespace", "")
        name = metadata.get("name")
        for owner in metadata.get("ownerReferences") or []:
            if owner.get("kind") == KIND and owner.get("apiVersion", "").startswith(f"{GROUP}/"):
                self.queue.add(f"{namespace}/{owner.get('name')}")
        # The user's own StatefulSet has no owner: find the Rollouts that name it.
        with self._index_lock:
            naming = list(self._rollouts_naming.get((namespace, name), ()))
        for key in naming:
            self.queue.add(key)

    def _on_slogate(self, _event: str, obj: Mapping[str, Any]) -> None:
        # Few Rollouts per namespace, rare SLOGate changes: look at every Rollout there again.
        namespace = obj.get("metadata", {}).get("namespace", "")
        for rollout in self.rollouts.list(namespace):
            self.queue.add(f"{namespace}/{rollout['metadata']['name']}")

    def _on_cord_change(self) -> None:
        # A pull or a release may concern any rollout: look at every one again, at once.
        for rollout in self.rollouts.list():
            metadata = rollout.get("metadata", {})
            self.queue.add(f"{metadata.get('namespace', '')}/{metadata.get('name')}")

    def _slogates_in(self, namespace: str) -> dict[str, Any]:
        return {gate["metadata"]["name"]: gate.get("spec") for gate in self.slogates.list(namespace)}

    def _informers(self) -> tuple[Informer, ...]:
        return self.rollouts, self.statefulsets, self.slogates

    def _unhealthy(self) -> str | None:
        stopped = [informer.name for informer in self._informers() if not informer.running]
        return f"informers not running: {', '.join(stopped)}" if stopped else None

    def _unready(self) -> str | None:
        unsynced = [informer.name for informer in self._informers() if not informer.wait_synced(0)]
        return f"caches not synced yet: {', '.join(unsynced)}" if unsynced else None

    def _on_stopped_leading(self) -> None:
        if not self.stop_event.is_set():
            log.error("lost the Lease %s/%s: stopping the workers", self.settings.lease_namespace,
                      self.settings.lease_name)
            self.lost_lease.set()
            self.stop_event.set()

    # The loop

    def run(self) -> int:
        """Run until `stop()` (exit code 0) or until the Lease is lost (EXIT_LOST_LEASE)."""
        for informer in self._informers():
            informer.start()
        if self.endpoint is not None:
            self.endpoint.start()
        self.elector.start()
        log.info("controller %s: campaigning for Lease %s/%s", self.elector.identity,
                 self.settings.lease_namespace, self.settings.lease_name)
        try:
            while not self.stop_event.is_set():
                if self.elector.wait_until_leader(timeout_s=0.5):
                    break
            if self.stop_event.is_set():
                return EXIT_LOST_LEASE if self.lost_lease.is_set() else 0
            log.info("controller %s leads", self.elector.identity)
            while not all(informer.wait_synced(1.0) for informer in self._informers()):
                if self.stop_event.is_set():
                    return EXIT_LOST_LEASE if self.lost_lease.is_set() else 0
            self.cord.start()
            for rollout in self.rollouts.list():
                self._on_rollout("SYNC", rollout)
            for index in range(self.settings.workers):
                worker = threading.Thread(target=self._work, name=f"reconcile-{index}", daemon=True)
                worker.start()
                self._workers.append(worker)
            self.stop_event.wait()
            return EXIT_LOST_LEASE if self.lost_lease.is_set() else 0
        finally:
            self.queue.shutdown()
            for worker in self._workers:
                worker.join(timeout=30)
            self.cord.stop()
            self.elector.stop(release=not self.lost_lease.is_set())
            for informer in self._informers():
                informer.stop()
            if self.endpoint is not None:
                self.endpoint.stop()

    def stop(self) -> None:
        self.stop_event.set()

    def _work(self) -> None:
        while not self.stop_event.is_set():
            key = self.queue.get(timeout_s=1.0)
            if key is None:
                continue
            started_s = time.perf_counter()
            try:
                if not self.elector.is_leader():
                    continue
                requeue_after_s = self.reconciler.reconcile(key)
                self.metrics.reconciled(time.perf_counter() - started_s)
                self.queue.forget(key)
                if requeue_after_s is not None:
                    self.queue.add_after(key, requeue_after_s)
            except StaleWrite as error:
                self.metrics.reconciled(time.perf_counter() - started_s, error, conflict=True)
                log.info("%s: %s; reconciling again from fresh state", key, error)
                self.queue.add_rate_limited(key)
            except Exception as error:
                self.metrics.reconciled(time.perf_counter() - started_s, error)
                self.reconciler.stats.errors += 1
                delay_s = self.queue.add_rate_limited(key)
                log.exception("%s: reconcile failed; retrying in %.2fs", key, delay_s)
            finally:
                self.queue.done(key)
