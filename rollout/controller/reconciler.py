"""One reconcile of one Rollout: observe (caches and database) → measure the gates that are due
(Prometheus) → plan (pure) → act (the measurements' records, the status, then the other actions).

The informers' caches hold the Rollouts, StatefulSets and SLOGates; the database holds the cohort
sets and the flags. After a status write the cache lags until the watch delivers the change, so the object the
API server returned is used instead while the cache still shows the version the write replaced.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from cohorts.cache import CompiledSetCache
from cohorts.errors import CohortError
from cohorts.estimate import estimate_shares
from cohorts.rotation import epoch_at
from cohorts.store import CohortStore
from rollout.controller import gating
from rollout.controller.act import Executor, StaleWrite
from rollout.controller.actions import RecordGateResult
from rollout.controller.metrics import ControllerMetrics
from rollout.controller.observed import (
    AndonView,
    CohortShares,
    CohortView,
    FlagView,
    Observed,
    RolloutView,
    StatefulSetView,
)
from rollout.controller.plan import Plan, needs_shares, new_statefulset_name, plan
from rollout.controller.spec import InvalidRolloutSpec, RolloutSpec, parse_rollout_spec
from rollout.flags.errors import FlagError, FlagNotFound
from rollout.flags.spec import RingTargeting
from rollout.flags.store import FlagStore
from rollout.gates.evaluate import GateContext, evaluate
from rollout.gates.prometheus import PrometheusQueries
from rollout.gates.verdicts import Judgment, Measurement

log = logging.getLogger(__name__)


@dataclass
class ReconcileStats:
    """Figures the benchmark reads: durations in seconds, counts (API requests are the Executor's)."""

    reconciles: int = 0
    errors: int = 0
    plan_s: list[float] = field(default_factory=list)
    reconcile_s: list[float] = field(default_factory=list)
    keep_samples: int = 100_000

    def sample(self, plan_s: float, reconcile_s: float) -> None:
        self.reconciles += 1
        if len(self.plan_s) < self.keep_samples:
            self.plan_s.append(plan_s)
            self.reconcile_s.append(reconcile_s)


class Reconciler:
    def __init__(
        self,
        *,
        rollout_of: Callable[[str, str], Mapping[str, Any] | None],
        statefulset_of: Callable[[str, str], Mapping[str, Any] | None],
        cohort_store: CohortStore,
        compiled_sets: CompiledSetCache,
        flag_store: FlagStore,
        executor: Executor,
        slogates_of: Callable[[str], Mapping[str, Any]] = lambda _: {},
        prometheus: PrometheusQueries | None = None,
        andon_of: Callable[[RolloutView], AndonView] = lambda _: AndonView(),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        metrics: ControllerMetrics | None = None,
    ) -> None:
        self.rollout_of = rollout_of
        self.statefulset_of = statefulset_of
        self.cohort_store = cohort_store
        self.compiled_sets = compiled_sets
        self.flag_store = flag_store
        self.executor = executor
        self.slogates_of = slogates_of
        self.prometheus = prometheus
        self.andon_of = andon_of
        self.clock = clock
        self.metrics = metrics or ControllerMetrics()
        self.stats = ReconcileStats()
        # key -> (resourceVersion the write replaced, the object the API server returned)
        self._written: dict[str, tuple[str, Mapping[str, Any]]] = {}
        self._written_lock = threading.Lock()

    def reconcile(self, key: str) -> float | None:
        """Bring one Rollout a step further; returns when to look again (None: on the next change).

        Raises StaleWrite when a precondition failed (retry at once from fresh state) and anything
        else the API or the database raised (retry with backoff).
        """
        started_s = time.perf_counter()
        namespace, name = key.split("/", 1)
        obj = self._current(key, self.rollout_of(namespace, name))
        if obj is None:
            with self._written_lock:
                self._written.pop(key, None)
            return None
        rollout = RolloutView.from_object(obj)
        now = self.clock()
        observed = self.observe(rollout, now)
        andon = self.andon_of(rollout)
        verdicts = self.measure(rollout, observed, andon, now)
        plan_started_s = time.perf_counter()
        decided: Plan = plan(rollout, observed, verdicts, andon, now)
        plan_s = time.perf_counter() - plan_started_s
        # A measurement is a fact whatever becomes of the plan: it is recorded before the status that counts it, so a
        # controller that dies in between loses none (it measures again, and number n keeps its first row).
        measured = [action for action in decided.actions if isinstance(action, RecordGateResult)]
        try:
            for recorded in measured:
                self.executor.execute(rollout, recorded)
                self.metrics.gate_recorded(recorded.measurement)
            if decided.status != rollout.status:
                written = self.executor.write_status(rollout, decided.status)
                with self._written_lock:
                    self._written[key] = (rollout.resource_version, written)
                self.metrics.status_written(rollout.status, decided.status)
            for action in decided.actions:
                if not isinstance(action, RecordGateResult):
                    self.executor.execute(rollout, action)
        finally:
            self.stats.sample(plan_s, time.perf_counter() - started_s)
        return decided.requeue_after_s

    def _current(self, key: str, cached: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
        with self._written_lock:
            written = self._written.get(key)
        if cached is None or written is None:
            return cached
        replaced_version, newer = written
        if cached.get("metadata", {}).get("resourceVersion") == replaced_version:
            return newer
        with self._written_lock:
            self._written.pop(key, None)
        return cached

    # Observe

    def observe(self, rollout: RolloutView, now: datetime) -> Observed:
        try:
            spec: RolloutSpec | None = parse_rollout_spec(rollout.spec)
        except InvalidRolloutSpec:
            spec = None
        statefulsets = self._statefulsets(rollout, spec)
        if spec is None:
            return Observed(statefulsets=statefulsets)
        cohorts, cohort_error = self._cohorts(rollout, spec, now)
        flag, flag_error = self._flag(spec)
        steps = spec.ring_steps(cohorts.rings if cohorts else ())
        gates, gate_problems = gating.resolve_gates(spec, steps, self.slogates_of(rollout.namespace))
        return Observed(statefulsets=statefulsets, cohorts=cohorts, cohort_error=cohort_error, flag=flag,
                        flag_error=flag_error, gates=gates, gate_problems=tuple(gate_problems))

    # Measure

    def measure(self, rollout: RolloutView, observed: Observed, andon: AndonView,
                now: datetime) -> dict[str, Measurement]:
        """Query Prometheus for the gates due now; nothing while the rollout is frozen or superseded."""
        status = rollout.status
        try:
            spec: RolloutSpec | None = parse_rollout_spec(rollout.spec)
        except InvalidRolloutSpec:
            spec = None
        names = gating.due(status, spec, andon.pulled, now)
        if not names or spec is None or observed.cohorts is None:
            return {}
        ring = status.current_ring or ""
        gates = {gate.name: gate for gate in observed.gates.get(ring, ())}
        steps = {step.name: step for step in spec.ring_steps(observed.cohorts.rings)}
        bake_s = float(steps[ring].bake_s) if ring in steps else 0.0
        record = status.history[-1] if status.history and status.history[-1].ring == ring else None
        exposed_since = record.ready_at if record and record.ready_at else (
            (status.bake_until or now) - timedelta(seconds=bake_s))
        stable = observed.statefulsets.get(status.stable_stateful_set or "")
        new = observed.statefulsets.get(status.new_stateful_set or "")
        context = GateContext(
            namespace=rollout.namespace, rollout=rollout.name, ring=ring,
            promoted_rings=tuple(status.promoted_rings), stable_stateful_set=status.stable_stateful_set or "",
            new_stateful_set=status.new_stateful_set or "",
            stable_revision=(stable.update_revision or "") if stable else "",
            new_revision=(new.update_revision or "") if new else "",
            bake_s=bake_s, baked_s=max(0.0, (now - exposed_since).total_seconds()),
        )
        measured = {}
        for name in names:
            gate = gates.get(name)
            if gate is None:
                continue
            if self.prometheus is None:
                measured[name] = Measurement(name, gate.spec.kind, ring, now, (), Judgment(
                    "Error", message="no Prometheus is configured; set RINGMASTER_PROMETHEUS_URL"))
            else:
                measured[name] = evaluate(name, gate.spec, context, self.prometheus, now)
        return measured

    def _statefulsets(self, rollout: RolloutView, spec: RolloutSpec | None) -> dict[str, StatefulSetView]:
        status = rollout.status
        wanted = {status.stable_stateful_set, status.new_stateful_set, status.retire_stateful_set}
        if spec is not None:
            wanted |= {spec.stateful_set_name, new_statefulset_name(spec)}
        views = {}
        for name in wanted - {None}:
            obj = self.statefulset_of(rollout.namespace, name) if name else None
            if obj is not None:
                views[obj["metadata"]["name"]] = StatefulSetView.from_object(obj)
        return views

    def _cohorts(self, rollout: RolloutView, spec: RolloutSpec, now: datetime) -> tuple[CohortView | None, str | None]:
        try:
            stored = self.cohort_store.get_set(spec.cohort_set)
            shares = None
            if needs_shares(rollout, spec):
                compiled = self.compiled_sets.get(spec.cohort_set)
                epoch = epoch_at(compiled.split.rotation if compiled.split else None, now)
                population = self.cohort_store.usage_population() if spec.sizing == "estimate" else iter(())
                estimate = estimate_shares(compiled, population, epoch, source="usage")
                shares = CohortShares(version=estimate.version, epoch=estimate.epoch, source=estimate.source,
                                      cumulative_shares={ring.ring: ring.cumulative_share for ring in estimate.rings})
        except (CohortError, SQLAlchemyError) as error:
            return None, str(error).splitlines()[0]
        return CohortView(name=spec.cohort_set, rings=tuple(stored.spec.rings), shares=shares), None

    def _flag(self, spec: RolloutSpec) -> tuple[FlagView | None, str | None]:
        try:
            stored = self.flag_store.get_flag(spec.flag.key)
        except FlagNotFound:
            return None, None
        except (FlagError, SQLAlchemyError) as error:
            return None, str(error).splitlines()[0]
        targeting = stored.spec.targeting
        mapping = targeting.rings if isinstance(targeting, RingTargeting) else None
        return FlagView(
            key=stored.key,
            variants=frozenset(stored.spec.variants),
            cohort_set=mapping.cohort_set if mapping else None,
            ring_variants=dict(mapping.variants) if mapping else {},
            otherwise=mapping.otherwise if mapping else None,
            version=mapping.version if mapping else None,
            epoch=mapping.epoch if mapping else None,
        ), None


__all__ = ["ReconcileStats", "Reconciler", "StaleWrite"]
