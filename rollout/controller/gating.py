"""Gates over a ring's bake, as pure functions: which gates a ring has, when each is measured next,
what a measurement does to its counters, and what the ring's gates say together.

The shell measures (rollout/gates/evaluate.py queries Prometheus) only the gates `due()` names, and
hands the measurements to `plan()`, which records them here. Only positive evidence of harm fails a
gate; no data, too few samples and query errors hold the ring (it never promotes without evidence),
and query errors are retried with backoff; inconclusive evidence pauses the rollout for a human.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from cohorts.errors import SpecProblem
from rollout.controller.spec import RingStep, RolloutSpec
from rollout.controller.status import GateResult, GateStatus, RolloutStatus
from rollout.gates.spec import GateSpec
from rollout.gates.verdicts import HOLDING, Measurement, finite

# A query error is retried after 1 s, 2 s, 4 s ... but never later than the gate's interval.
FIRST_RETRY_S = 1.0


@dataclass(frozen=True)
class ResolvedGate:
    """A gate of a ring with its spec: written inline, or read from the SLOGate it refers to."""

    name: str
    spec: GateSpec
    source: str  # "inline" or "SLOGate/<name>"


def resolve_gates(
    spec: RolloutSpec, steps: Sequence[RingStep], slogates: Mapping[str, Any]
) -> tuple[dict[str, tuple[ResolvedGate, ...]], list[SpecProblem]]:
    """Every ring's gates, with references looked up in `slogates` (name -> the SLOGate's raw spec,
    the Rollout's namespace only); problems name the field and the fix."""
    by_ring: dict[str, tuple[ResolvedGate, ...]] = {}
    problems: list[SpecProblem] = []
    for ring_index, ring in enumerate(steps):
        resolved = []
        uses = [(f"spec.gates[{index}]", use) for index, use in enumerate(spec.gates)]
        uses += [(f"spec.rings[{ring_index}].gates[{index}]", use) for index, use in enumerate(ring.gates)]
        for field, use in uses:
            if use.gate is not None:
                resolved.append(ResolvedGate(use.gate_name, use.gate, "inline"))
                continue
            raw = slogates.get(use.ref or "")
            if raw is None:
                problems.append(SpecProblem(f"{field}.ref", f"SLOGate {use.ref!r} does not exist in this namespace; "
                                                            "create it, or fix the name"))
                continue
            try:
                resolved.append(ResolvedGate(use.gate_name, GateSpec.model_validate(raw), f"SLOGate/{use.ref}"))
            except ValidationError as error:
                first = error.errors()[0]
                where = ".".join(str(part) for part in first["loc"])
                problems.append(SpecProblem(f"{field}.ref", f"SLOGate {use.ref!r} is invalid: spec.{where}: "
                                                            f"{first['msg'].removeprefix('Value error, ')}"))
        by_ring[ring.name] = tuple(resolved)
    unique: dict[str, SpecProblem] = {}
    for problem in problems:
        unique.setdefault(problem.field, problem)
    return by_ring, list(unique.values())


def start(gates: Sequence[ResolvedGate], ring: str, bake_started: datetime, bake_until: datetime) -> list[GateStatus]:
    """The gates of a ring whose bake begins: each first measured one interval in, or when the bake ends."""
    return [
        GateStatus(name=gate.name, kind=gate.spec.kind, ring=ring,
                   next_at=min(bake_started + timedelta(seconds=gate.spec.interval_s), bake_until))
        for gate in gates
    ]


def due(status: RolloutStatus, spec: RolloutSpec | None, andon_pulled: bool, now: datetime) -> list[str]:
    """The gates of the ring being baked whose next measurement is due; none while the rollout is
    frozen (paused, halted by the cord) or its spec names another revision (it is about to be superseded)."""
    if spec is None or spec.paused or andon_pulled or status.paused_reason is not None \
            or spec.revision() != status.revision:
        return []
    if status.track != "Progressing" or status.phase != "Progressing" or status.step not in BAKING_STEPS:
        return []
    return [gate.name for gate in status.gates
            if gate.ring == status.current_ring and gate.phase in ("Running", "Held")
            and gate.next_at is not None and gate.next_at <= now]


BAKING_STEPS = frozenset({"Baking", "AwaitingEvidence"})


def record(gate: GateStatus, spec: GateSpec, measurement: Measurement, bake_until: datetime) -> GateStatus:
    """The gate after one more measurement: counters, phase and the time of the next one."""
    verdict = measurement.verdict
    now = measurement.at
    counts = {
        "measurements": gate.measurements + 1,
        "passed": gate.passed + (verdict == "Passed"),
        "failed": gate.failed + (verdict == "Failed"),
        "inconclusive": gate.inconclusive + (verdict == "Inconclusive"),
        "consecutive_errors": gate.consecutive_errors + 1 if verdict == "Error" else 0,
    }
    judged = counts["passed"] + counts["failed"] + counts["inconclusive"]
    if counts["failed"] > spec.failure_limit:
        phase = "Failed"
    elif counts["inconclusive"] > spec.inconclusive_limit or (
            spec.consecutive_error_limit is not None and counts["consecutive_errors"] > spec.consecutive_error_limit):
        phase = "Inconclusive"
    elif spec.count is not None and judged >= spec.count and verdict == "Passed":
        phase = "Passed"
    elif verdict in HOLDING:
        phase = "Held"
    else:
        phase = "Running"
    interval = timedelta(seconds=spec.interval_s)
    if verdict == "Error":
        # The exponent is capped: 2 ** 47 s no longer fits a timedelta, and the interval caps the wait anyway.
        backoff_s = FIRST_RETRY_S * 2 ** min(counts["consecutive_errors"] - 1, 30)
        next_at = now + min(interval, timedelta(seconds=backoff_s))
    elif now < bake_until and spec.count is None:
        next_at = min(now + interval, bake_until)  # one measurement lands at the end of the bake
    else:
        next_at = now + interval
    judgment = measurement.judgment
    last = GateResult(at=now, verdict=verdict, values=finite(judgment.values), threshold=judgment.threshold,
                      message=judgment.message, queries=list(measurement.queries))
    return gate.model_copy(update={**counts, "phase": phase, "next_at": next_at, "last": last})


def settled(gate: GateStatus, spec: GateSpec | None, bake_until: datetime) -> bool:
    """Whether the gate lets the ring be promoted once its bake is over: its `count` measured and passed,
    or (without a count) its latest measurement, taken when the bake ended or later, passed."""
    if gate.phase in ("Passed", "Skipped"):
        return True
    if spec is None or spec.count is not None or gate.phase != "Running" or gate.last is None:
        return False
    return gate.last.verdict == "Passed" and gate.last.at >= bake_until


def reopened(gate: GateStatus, now: datetime) -> GateStatus:
    """A gate a human resumed after it paused the rollout: measured again from now, its tally kept."""
    if gate.phase not in ("Failed", "Inconclusive"):
        return gate
    return gate.model_copy(update={"phase": "Running", "failed": 0, "inconclusive": 0, "consecutive_errors": 0,
                                   "next_at": now})


def explain_hold(gate: GateStatus) -> str:
    if gate.last is None:
        return f"{gate.name}: not measured yet"
    return f"{gate.name}: {gate.last.verdict} ({gate.last.message})" if gate.last.message else \
        f"{gate.name}: {gate.last.verdict}"
