"""What the controller tells Prometheus: its own registry (tests run several controllers in one process),
counters and a histogram observed by the shell, and a collector that reads the controller's state at
each scrape (the rollouts in the cache, the cord as this replica sees it, the queue, the informers,
the Lease) instead of keeping a second copy of it.

Label choices, for a controller with 10,000 rollouts (docs/metrics.md gives the reasons in full):
- One series per rollout only where the value is per rollout: `ringmaster_rollout_info`, whose `phase`
  label replaces a separate 1/0 series per phase (8 phases would be 80,000 series).
- Histograms and counters have no namespace or name labels: a histogram is ~15 series per label set,
  and a rollout's own reconciles and errors are in its Events, history and the controller's log.
- Facts every replica shares (the rollouts, the cord) are exported by the leader only, so a sum or
  count over all replicas counts each rollout once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import urllib3
from kubernetes.client.exceptions import ApiException
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError

from rollout.andon.watch import CordState
from rollout.controller.reactor import Informer, KubeObject
from rollout.controller.status import RolloutStatus
from rollout.gates.verdicts import Measurement

# From a reconcile that finds nothing to do (ms) to one that waits for Prometheus and the database (s).
RECONCILE_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SCOPE_KINDS = ("global", "namespace", "rollout")
# RingRecord.outcome as a label value.
OUTCOME_LABELS = {"promoted": "promoted", "rolled back": "rolled_back"}


class ControllerMetrics:
    """The registry of one controller, and what the shell observes into it."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.reconcile_duration = Histogram(
            "ringmaster_reconcile_duration_seconds",
            "Time one reconcile of one Rollout took, by result (success, conflict: a precondition failed and it "
            "is retried at once, error)", ["result"], buckets=RECONCILE_BUCKETS_S, registry=self.registry)
        self.reconcile_errors = Counter(
            "ringmaster_reconcile_errors", "Reconciles that failed and were retried with backoff, by what failed "
            "(kubernetes, database, other)", ["cause"], registry=self.registry)
        self.ring_transitions = Counter(
            "ringmaster_ring_transitions", "Rings that ended their passage, by ring and outcome (promoted, "
            "rolled_back)", ["ring", "outcome"], registry=self.registry)
        self.gate_verdicts = Counter(
            "ringmaster_gate_verdicts", "Gate measurements recorded, by gate kind and verdict",
            ["kind", "verdict"], registry=self.registry)

    def reconciled(self, duration_s: float, error: BaseException | None = None, *, conflict: bool = False) -> None:
        result = "conflict" if conflict else "error" if error is not None else "success"
        self.reconcile_duration.labels(result).observe(duration_s)
        if error is not None and not conflict:
            self.reconcile_errors.labels(error_cause(error)).inc()

    def status_written(self, before: RolloutStatus, after: RolloutStatus) -> None:
        for ring, outcome in ring_outcomes(before, after):
            self.ring_transitions.labels(ring, outcome).inc()

    def gate_recorded(self, measurement: Measurement) -> None:
        self.gate_verdicts.labels(measurement.kind, measurement.verdict).inc()

    def watch(self, state: ControllerState) -> None:
        """Read `state` at every scrape from now on."""
        self.registry.register(StateCollector(state))


def error_cause(error: BaseException) -> str:
    if isinstance(error, ApiException | urllib3.exceptions.HTTPError):
        return "kubernetes"
    if isinstance(error, SQLAlchemyError):
        return "database"
    return "other"


def ring_outcomes(before: RolloutStatus, after: RolloutStatus) -> list[tuple[str, str]]:
    """The (ring, outcome) of every ring whose passage ended between two statuses: its record in the
    history gained an outcome. A record is known by its ring, revision and start."""
    ended_before = {(record.ring, record.revision, record.started_at)
                    for record in before.history if record.outcome is not None}
    return [(record.ring, OUTCOME_LABELS.get(record.outcome, record.outcome.replace(" ", "_")))
            for record in after.history
            if record.outcome is not None and (record.ring, record.revision, record.started_at) not in ended_before]


@dataclass(frozen=True)
class ControllerState:
    """Where the collector reads the controller's state; callables, so it never holds a stale copy."""

    is_leader: Callable[[], bool]
    rollouts: Callable[[], list[KubeObject]]
    queue_depth: Callable[[], int]
    informers: Sequence[Informer]
    # The cord as this replica sees it; None while it does not watch the cord (a standby).
    cord: Callable[[], CordState | None]


class StateCollector(Collector):
    def __init__(self, state: ControllerState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        leading = self.state.is_leader()
        yield GaugeMetricFamily("ringmaster_controller_leader", "1 if this replica holds the Lease and reconciles",
                                value=1 if leading else 0)
        yield GaugeMetricFamily("ringmaster_workqueue_depth", "Rollouts waiting to be reconciled, now or after "
                                "a timer (a bake, a retry)", value=self.state.queue_depth())
        yield from self._informers()
        if leading:
            yield self._rollouts()
        cord = self.state.cord()
        if leading and cord is not None:
            yield from self._cord(cord)

    def _rollouts(self) -> Metric:
        info = GaugeMetricFamily("ringmaster_rollout_info", "1 per Rollout, labelled with its phase and the ring "
                                 "it is in ('' when none); exported by the leader",
                                 labels=["namespace", "name", "phase", "ring"])
        for rollout in self.state.rollouts():
            metadata = rollout.get("metadata") or {}
            # The raw status, not parse_status(): a scrape reads every rollout and must stay cheap.
            status = rollout.get("status") or {}
            info.add_metric([metadata.get("namespace", ""), metadata.get("name", ""),
                             str(status.get("phase") or "Pending"), str(status.get("currentRing") or "")], 1)
        return info

    def _cord(self, cord: CordState) -> Iterator[Metric]:
        active = GaugeMetricFamily("ringmaster_andon_active", "Active pulls of the andon cord, by scope kind "
                                   "(0 everywhere: the line runs)", labels=["scope"])
        for kind in SCOPE_KINDS:
            active.add_metric([kind], sum(1 for pull in cord.pulls if pull.scope.kind == kind))
        yield active
        yield GaugeMetricFamily("ringmaster_andon_state_unknown", "1 while the controller cannot read the cord's "
                                "state: every rollout is halted as if it were pulled",
                                value=1 if cord.unreadable is not None else 0)

    def _informers(self) -> Iterator[Metric]:
        synced = GaugeMetricFamily("ringmaster_informer_synced", "1 once the informer's first list filled its cache",
                                   labels=["resource"])
        counters = {
            "lists": CounterMetricFamily("ringmaster_informer_lists", "Full lists (at start and after a watch "
                                         "expired)", labels=["resource"]),
            "watches": CounterMetricFamily("ringmaster_informer_watches", "Watches opened", labels=["resource"]),
            "relists_after_gone": CounterMetricFamily("ringmaster_informer_relists_after_gone", "Lists again "
                                                      "because the watch's resourceVersion expired (410 Gone)",
                                                      labels=["resource"]),
            "errors": CounterMetricFamily("ringmaster_informer_errors", "Lists and watches that failed and were "
                                          "retried with backoff", labels=["resource"]),
        }
        for informer in self.state.informers:
            resource = informer.kind.plural
            synced.add_metric([resource], 1 if informer.wait_synced(0) else 0)
            for field, family in counters.items():
                family.add_metric([resource], getattr(informer.stats, field))
        yield synced
        yield from counters.values()
