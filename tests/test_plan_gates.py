"""plan() with gates: a ring is promoted only on evidence, only evidence of harm fails it, and what a
measurement holds, pauses or rolls back, against the simulated world whose make-before-break promises
are checked after every change.

The world's `measure` plays Prometheus: it answers each measurement of a gate in a ring at a time.
"""

from __future__ import annotations

import itertools
import json
import math
from datetime import datetime, timedelta
from typing import Any

from rollout.controller.status import GateStatus, RolloutStatus
from rollout.gates.verdicts import Judgment, Verdict
from tests.simulated_world import RINGS, STATEFULSET, World
from tests.test_plan import revision_of, rollout_spec

ERROR_RATIO = {"name": "error-ratio", "threshold": {"query": "sum(rate(errors[{{ window }}]))", "max": 0.01},
               "interval": "2s"}


def gated(bake: str = "10s", gate: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    return rollout_spec(bake=bake, gates=[gate or ERROR_RATIO], **overrides)


def answer(verdict: Verdict, message: str = "") -> Judgment:
    return Judgment(verdict, values={"value": 0.5}, threshold="at most 0.01", message=message or verdict)


def gate_named(status: RolloutStatus, name: str) -> GateStatus:
    return next(gate for gate in status.gates if gate.name == name)


def baking(ring: str) -> Any:
    return lambda status: status.current_ring == ring and status.bake_until is not None


def test_a_healthy_release_is_measured_in_every_ring_and_promoted_through_all_four() -> None:
    world = World(gated(), replicas=10)

    status = world.run_until_phase("Succeeded", "RolledBack", "Paused")

    assert status.phase == "Succeeded", status.message
    rings_measured = [measurement.ring for measurement in world.measurements]
    assert set(rings_measured) == set(RINGS)
    for ring in RINGS:
        assert rings_measured.count(ring) >= 5  # every 2 s over a 10 s bake
    assert len(world.gate_results) == len(world.measurements)
    assert [result.sequence for result in world.gate_results if result.measurement.ring == "canary"] == \
        list(range(1, rings_measured.count("canary") + 1))


def test_a_ring_is_promoted_only_after_a_measurement_taken_when_its_bake_ended_passes() -> None:
    world = World(gated(bake="9s"), replicas=10)
    status = world.run_until(baking("canary"))
    assert status.bake_until is not None
    bake_until = status.bake_until

    status = world.run_until(lambda status: status.current_ring == "early-adopter")

    canary = [measurement for measurement in world.measurements if measurement.ring == "canary"]
    assert canary[-1].at >= bake_until and canary[-1].verdict == "Passed"
    assert status.history[0].promoted_at == canary[-1].at


def test_no_data_holds_a_baked_ring_until_evidence_arrives() -> None:
    world = World(gated(), replicas=10)
    data_from: list[datetime] = []

    def measure(gate: str, ring: str, now: datetime) -> Judgment:
        if data_from and now >= data_from[0]:
            return answer("Passed")
        return answer("NoData", "the query returned nothing")

    world.measure = measure
    status = world.run_until(baking("canary"))
    assert status.bake_until is not None
    for _ in range(60):
        world.step()
    status = world.status
    assert (status.phase, status.current_ring, status.step) == ("Progressing", "canary", "AwaitingEvidence")
    assert "holding until its gates pass" in status.message and "the query returned nothing" in status.message
    assert gate_named(status, "error-ratio").phase == "Held"
    assert world.flag_on_rings == frozenset({"canary"})

    data_from.append(world.now)
    status = world.run_until(lambda status: status.current_ring == "early-adopter")
    assert status.phase == "Progressing"


def test_too_few_samples_hold_like_no_data() -> None:
    world = World(gated(), replicas=10)
    world.measure = lambda *_: answer("TooFewSamples", "12 requests, 100 needed")
    world.run_until(baking("canary"))
    for _ in range(40):
        world.step()
    assert (world.status.current_ring, world.status.step) == ("canary", "AwaitingEvidence")


def test_positive_evidence_of_harm_rolls_back_make_before_break_with_the_flag_off_first() -> None:
    spec = gated()
    world = World(spec, replicas=10)
    world.measure = lambda gate, ring, now: answer("Failed", "error ratio 0.20 above 0.01")

    status = world.run_until_phase("RolledBack", "Succeeded", max_steps=200)

    assert status.phase == "RolledBack"
    assert status.rollback_reason is not None and "gate error-ratio failed in ring canary" in status.rollback_reason
    assert world.flag_on_rings == frozenset()
    assert world.replicas(STATEFULSET) == 10 and world.replicas(world.new_name(revision_of(spec))) == 0
    assert [event.reason for event in world.events_named("GateFailed")] == ["GateFailed"]
    assert world.promises.in_force["flag off before rollback"] > 0


def test_failure_limit_tolerates_that_many_failed_measurements() -> None:
    gate = {**ERROR_RATIO, "failureLimit": 2}
    world = World(gated(bake="20s", gate=gate), replicas=10)
    failures: list[datetime] = []

    def measure(gate_name: str, ring: str, now: datetime) -> Judgment:
        if ring == "canary" and len(failures) < 2:
            failures.append(now)
            return answer("Failed")
        return answer("Passed")

    world.measure = measure
    assert world.run_until_phase("Succeeded", "RolledBack").phase == "Succeeded"

    world = World(gated(bake="20s", gate=gate), replicas=10)
    world.measure = lambda *_: answer("Failed")
    status = world.run_until_phase("Succeeded", "RolledBack")
    assert status.phase == "RolledBack"
    assert [m.verdict for m in world.measurements] == ["Failed"] * 3


def test_with_failure_policy_pause_a_failed_gate_pauses_and_resume_measures_again() -> None:
    world = World(gated(failurePolicy="pause"), replicas=10)
    healthy: list[bool] = []
    world.measure = lambda *_: answer("Passed") if healthy else answer("Failed", "error ratio 0.2")

    status = world.run_until_phase("Paused", "RolledBack")
    assert status.phase == "Paused" and status.paused_reason is not None
    assert "gate error-ratio failed in ring canary" in status.paused_reason
    taken = len(world.measurements)
    for _ in range(20):
        world.step()
    assert len(world.measurements) == taken  # a paused rollout is not measured
    assert world.flag_on_rings == frozenset({"canary"})

    healthy.append(True)
    world.request("resume")
    assert world.run_until_phase("Succeeded", "RolledBack", "Paused").phase == "Succeeded"


def test_inconclusive_evidence_pauses_for_a_human_and_promote_goes_on() -> None:
    world = World(gated(), replicas=10)
    world.measure = lambda gate, ring, now: (
        answer("Inconclusive", "ratio 1.8x but p=0.2") if ring == "canary" else answer("Passed"))

    status = world.run_until_phase("Paused", "RolledBack", "Succeeded")
    assert status.phase == "Paused"
    assert "inconclusive" in status.message and "promote" in status.message
    assert gate_named(status, "error-ratio").phase == "Inconclusive"
    assert [event.reason for event in world.events_named("GateInconclusive")] == ["GateInconclusive"]

    world.request("promote")
    status = world.run_until(lambda status: status.current_ring == "early-adopter")
    assert status.phase == "Progressing"
    assert world.run_until_phase("Succeeded", "Paused", "RolledBack").phase == "Succeeded"


def test_inconclusive_then_abort_rolls_back() -> None:
    world = World(gated(), replicas=10)
    world.measure = lambda *_: answer("Inconclusive")
    world.run_until_phase("Paused")
    world.request("abort")
    assert world.run_until_phase("RolledBack").rollback_reason == "aborted by request"


def test_an_unreachable_prometheus_holds_and_is_retried_with_backoff_up_to_the_interval() -> None:
    gate = {**ERROR_RATIO, "interval": "10s"}
    world = World(gated(bake="5s", gate=gate), replicas=10)
    up: list[bool] = []
    world.measure = lambda *_: answer("Passed") if up else answer("Error", "connection refused")

    world.run_until(baking("canary"))
    for _ in range(60):
        world.step()
    errors = [measurement.at for measurement in world.measurements]
    gaps = [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(errors)]
    assert gaps[:4] == [1, 2, 4, 8] and set(gaps[4:]) == {10}
    status = world.status
    assert (status.phase, status.current_ring) == ("Progressing", "canary")
    assert gate_named(status, "error-ratio").consecutive_errors == len(errors)
    assert "connection refused" in status.message

    up.append(True)
    assert world.run_until(lambda status: status.current_ring == "early-adopter").phase == "Progressing"


def test_consecutive_error_limit_pauses_for_a_human_instead_of_holding_forever() -> None:
    world = World(gated(gate={**ERROR_RATIO, "consecutiveErrorLimit": 3}), replicas=10)
    world.measure = lambda *_: answer("Error", "connection refused")
    status = world.run_until_phase("Paused", "RolledBack", max_steps=200)
    assert status.phase == "Paused"
    assert [m.verdict for m in world.measurements] == ["Error"] * 4


def test_a_count_takes_that_many_measurements_and_then_stops_measuring() -> None:
    gate = {**ERROR_RATIO, "count": 3, "interval": "2s"}
    world = World(gated(bake="30s", gate=gate), replicas=10)
    world.run_until(lambda status: status.current_ring == "early-adopter")
    assert [m.ring for m in world.measurements].count("canary") == 3


def test_a_rings_own_gate_is_judged_in_that_ring_only() -> None:
    spec = rollout_spec(bake="6s")
    spec["rings"][0]["gates"] = [{**ERROR_RATIO, "name": "canary-latency"}]
    world = World(spec, replicas=10)
    assert world.run_until_phase("Succeeded").phase == "Succeeded"
    assert {(m.gate, m.ring) for m in world.measurements} == {("canary-latency", "canary")}


def test_a_reference_to_a_missing_slogate_is_an_invalid_spec_until_it_exists() -> None:
    world = World(rollout_spec(bake="6s", gates=[{"ref": "error-budget"}]), replicas=10)
    for _ in range(5):
        world.step()
    status = world.status
    invalid = status.condition("InvalidSpec")
    assert invalid is not None and invalid.status == "True"
    assert "spec.gates[0].ref: SLOGate 'error-budget' does not exist" in invalid.message
    assert world.replicas(STATEFULSET) == 10 and len(world.statefulsets) == 1

    world.slogates["error-budget"] = {k: v for k, v in ERROR_RATIO.items() if k != "name"}
    assert world.run_until_phase("Succeeded").phase == "Succeeded"
    assert {m.gate for m in world.measurements} == {"error-budget"}


def test_an_invalid_slogate_names_its_field() -> None:
    world = World(rollout_spec(gates=[{"ref": "error-budget"}]), replicas=10)
    world.slogates["error-budget"] = {"threshold": {"query": "up"}, "interval": "soon"}
    world.step()
    invalid = world.status.condition("InvalidSpec")
    assert invalid is not None and invalid.status == "True"
    assert "SLOGate 'error-budget' is invalid" in invalid.message


def test_nothing_is_measured_while_the_andon_cord_is_pulled() -> None:
    world = World(gated(bake="20s"), replicas=10)
    world.run_until(baking("canary"))
    world.step()
    world.pull_andon("incident 4711")
    world.step()
    taken = len(world.measurements)
    for _ in range(30):
        world.step()
    assert world.status.phase == "Halted" and len(world.measurements) == taken
    world.release_andon()
    assert world.run_until_phase("Succeeded").phase == "Succeeded"


def test_the_last_measurement_of_each_gate_is_in_the_status_with_its_numbers() -> None:
    world = World(gated(bake="20s"), replicas=10)
    world.measure = lambda *_: answer("Passed")
    world.run_until(lambda status: bool(status.gates) and status.gates[0].last is not None)
    gate = world.status.gates[0]
    assert gate.last is not None
    assert (gate.name, gate.kind, gate.ring, gate.last.verdict) == ("error-ratio", "threshold", "canary", "Passed")
    assert gate.last.values == {"value": 0.5} and gate.last.threshold == "at most 0.01"
    assert gate.last.queries == ["query of error-ratio"]
    assert gate.next_at is not None and gate.next_at - gate.last.at == timedelta(seconds=2)


def test_an_infinite_ratio_is_left_out_of_the_status_which_stays_valid_json() -> None:
    world = World(gated(bake="20s"), replicas=10)
    world.measure = lambda *_: Judgment("Passed", values={"ratio": math.inf, "newRatio": 0.01, "pValue": math.nan},
                                        message="infinitely worse, within maxDifference")
    world.run_until(lambda status: bool(status.gates) and status.gates[0].last is not None)
    last = world.status.gates[0].last
    assert last is not None and last.values == {"newRatio": 0.01}
    json.dumps(world.status.to_wire(), allow_nan=False)


def test_a_long_outage_is_retried_at_the_interval_however_many_errors_pile_up() -> None:
    gate = {**ERROR_RATIO, "interval": "2s"}
    world = World(gated(bake="5s", gate=gate), replicas=10)
    up: list[bool] = []
    world.measure = lambda *_: answer("Passed") if up else answer("Error", "connection refused")
    world.run_until(baking("canary"))
    for _ in range(400):  # far more errors in a row than 2 ** n seconds could count
        world.step()
    assert gate_named(world.status, "error-ratio").consecutive_errors > 100
    up.append(True)
    assert world.run_until(lambda status: status.current_ring == "early-adopter").phase == "Progressing"
