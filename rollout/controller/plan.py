"""The controller's decisions: `plan(rollout, observed, verdicts, andon, now) -> Plan(actions, status, requeue)`.

A pure function of data. It reads the Rollout (spec, recorded status, a pending request), what the
informers and the database show, the gates' new measurements (`verdicts`) and the andon cord; a ring
is promoted when its bake is over and its gates passed (rollout/controller/gating.py). It returns
the status to record and the actions to take, in order. The shell records the status first (with a resourceVersion
precondition) and then executes the actions, each derived from observed state, so a crash or a
change of leader between any two of them resumes without doing anything twice.

The course of a rollout (`status.track`): Pending → Progressing → Succeeded, or → RollingBack →
RolledBack (Failed while a rollback cannot restore capacity). Paused and Halted are shown over an
active track while it is frozen: nothing is scaled, no flag changes, and bake time stands still.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from cohorts.errors import SpecProblem
from rollout.controller import gating, mbb
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
from rollout.controller.observed import (
    REVISION_LABEL,
    ROLLOUT_LABEL,
    AndonView,
    Observed,
    RolloutView,
    StatefulSetView,
)
from rollout.controller.rings import cumulative_shares, ring_replicas
from rollout.controller.spec import (
    GROUP,
    KIND,
    VERSION,
    InvalidRolloutSpec,
    RingStep,
    RolloutSpec,
    check_rings,
    parse_rollout_spec,
)
from rollout.controller.status import (
    ACTIVE_TRACKS,
    CONDITION_TYPES,
    MAX_HISTORY,
    Condition,
    ConditionType,
    GateStatus,
    Phase,
    Pin,
    RingRecord,
    RolloutStatus,
)
from rollout.gates.verdicts import Measurement

# Waiting on something the informers will report anyway; this is only a safety net.
RECHECK_S = 30.0
REQUESTS = ("promote", "abort", "retry", "resume")


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...]
    status: RolloutStatus
    requeue_after_s: float | None


def plan(rollout: RolloutView, observed: Observed, verdicts: Mapping[str, Measurement], andon: AndonView,
         now: datetime) -> Plan:
    """`verdicts`: the gates measured for this reconcile (those `gating.due()` named), by gate name."""
    return _Planner(rollout, observed, verdicts, andon, now).run()


def new_statefulset_name(spec: RolloutSpec) -> str:
    return f"{spec.stateful_set_name}-{spec.revision()}"


def needs_shares(rollout: RolloutView, spec: RolloutSpec) -> bool:
    """Whether this reconcile may start a rollout, so the shell must estimate the cohort set's shares.

    Estimating reads the whole usage population; the shell does it only when this says so.
    """
    status = rollout.status
    return status.track == "Pending" or (
        status.track in ("Succeeded", "RolledBack") and spec.revision() not in (status.stable_revision, status.revision)
    ) or (rollout.request or "").startswith("retry")


class _Planner:
    def __init__(self, rollout: RolloutView, observed: Observed, verdicts: Mapping[str, Measurement],
                 andon: AndonView, now: datetime) -> None:
        self.rollout = rollout
        self.observed = observed
        self.verdicts = verdicts
        self.andon = andon
        self.now = now
        self.before = rollout.status
        self.status = rollout.status
        self.actions: list[Action] = []
        self.requeues: list[float] = []
        self.invalid: str | None = None

    # Bookkeeping

    def update(self, **changes: Any) -> None:
        self.status = self.status.model_copy(update=changes)

    def event(self, kind: Literal["Normal", "Warning"], reason: str, message: str) -> None:
        self.actions.append(RecordEvent(kind, reason, message, revision=self.status.revision,
                                        ring=self.status.current_ring, sequence=self.status.transitions))

    def transition(self, kind: Literal["Normal", "Warning"], reason: str, message: str, **changes: Any) -> None:
        """A change of track or ring: counted, recorded as an Event and a history row."""
        self.update(transitions=self.status.transitions + 1, message=message, **changes)
        self.event(kind, reason, message)

    def requeue(self, after_s: float) -> None:
        self.requeues.append(max(0.0, after_s))

    def statefulset(self, name: str | None) -> StatefulSetView | None:
        return None if name is None else self.observed.statefulsets.get(name)

    # The reconcile

    def run(self) -> Plan:
        self.update(observed_generation=self.rollout.generation)
        spec = self.valid_spec()
        if spec is not None:
            steps = spec.ring_steps(self.observed.cohorts.rings if self.observed.cohorts else ())
            self.handle_request(spec)
            self.advance(spec, steps)
        self.finish()
        return Plan(tuple(self.actions), self.status, min(self.requeues) if self.requeues else None)

    def valid_spec(self) -> RolloutSpec | None:
        try:
            spec = parse_rollout_spec(self.rollout.spec)
        except InvalidRolloutSpec as error:
            self.reject(error.problems)
            return None
        if self.observed.cohorts is None:
            self.hold(f"cohort set {spec.cohort_set!r} cannot be read: {self.observed.cohort_error}")
            return None
        problems = check_rings(spec, self.observed.cohorts.rings) or list(self.observed.gate_problems)
        if problems:
            self.reject(problems)
            return None
        return spec

    def reject(self, problems: Sequence[SpecProblem]) -> None:
        self.invalid = "; ".join(str(problem) for problem in problems)
        self.freeze(self.status.track, f"invalid spec: {self.invalid}")

    def hold(self, message: str) -> None:
        """Wait for something outside Kubernetes (the database) without changing anything; halted
        rather than merely held when the cord is pulled (or cannot be read) over an active rollout."""
        if self.andon.pulled and self.status.track in ACTIVE_TRACKS:
            self.freeze("Halted", f"halted by the andon cord: {self.andon.reason}; and {message}")
        else:
            self.freeze(self.status.track, message)
        self.requeue(RECHECK_S / 6)

    def freeze(self, phase: Phase, message: str) -> None:
        bake_left = self.status.bake_remaining_seconds
        if self.status.bake_until is not None:
            bake_left = max(0.0, (self.status.bake_until - self.now).total_seconds())
        self.update(phase=phase, message=message, bake_until=None, bake_remaining_seconds=bake_left,
                    waiting_since=None)

    def thaw(self) -> None:
        if self.status.bake_remaining_seconds is not None:
            self.update(bake_until=self.now + timedelta(seconds=self.status.bake_remaining_seconds),
                        bake_remaining_seconds=None)

    # Requests: promote, abort, retry, resume (the `ringmaster.dev/request` annotation)

    def handle_request(self, spec: RolloutSpec) -> None:
        value = self.rollout.request
        if value is None:
            if self.status.handled_request is not None:
                self.update(handled_request=None)
            return
        self.actions.append(ClearRequest(value))
        if value == self.status.handled_request:
            return
        self.update(handled_request=value)
        verb = value.split(":", 1)[0].strip().lower()
        track = self.status.track
        if verb == "promote":
            if track == "Progressing" and (self.status.bake_until or self.status.bake_remaining_seconds is not None):
                if self.status.bake_until is not None:
                    self.update(bake_until=self.now)
                else:
                    self.update(bake_remaining_seconds=0.0)
                if any(gate.phase in ("Failed", "Inconclusive") for gate in self.status.gates):
                    self.update(paused_reason=None)  # the human judged what the gates could not
                self.update(gates=[gate.model_copy(update={"phase": "Skipped"})
                                   if gate.phase not in ("Passed",) else gate for gate in self.status.gates])
                self.event("Normal", "Promoted", f"ring {self.status.current_ring} promoted by request; "
                                                 "the rest of its bake and its gates are skipped")
            else:
                self.event("Warning", "NothingToPromote", "promote skips a ring's bake, and no ring is baking")
        elif verb == "abort":
            if track in ("Pending", "Progressing") and self.status.revision is not None:
                self.transition("Warning", "Aborted", "aborted by request: rolling back",
                                track="RollingBack", rollback_reason="aborted by request", paused_reason=None)
            else:
                self.event("Warning", "NothingToAbort", f"abort rolls back a rollout in progress; this one is {track}")
        elif verb == "retry":
            if track == "RolledBack":
                self.transition("Normal", "Retried", "retried by request: starting again from the first ring",
                                track="Pending", paused_reason=None, rollback_reason=None)
            elif track == "Progressing" and self.status.paused_reason is not None:
                self.update(paused_reason=None, waiting_since=None)
                self.event("Normal", "Retried", "retried by request: waiting for the new capacity again")
            elif track == "Failed":
                self.transition("Normal", "Retried", "retried by request: restoring the stable version again",
                                track="RollingBack", waiting_since=None)
            else:
                self.event("Warning", "NothingToRetry", f"retry restarts a rolled-back or failed rollout; "
                                                        f"this one is {track}")
        elif verb == "resume":
            if self.status.paused_reason is not None:
                self.update(paused_reason=None, waiting_since=None,
                            gates=[gating.reopened(gate, self.now) for gate in self.status.gates])
                self.event("Normal", "Resumed", "resumed by request")
            elif spec.paused:
                self.event("Warning", "StillPaused", "spec.paused is true; set it to false to resume")
        else:
            self.event("Warning", "UnknownRequest", f"unknown request {value!r}; use promote, abort, retry or resume")

    # Tracks

    def advance(self, spec: RolloutSpec, steps: list[RingStep]) -> None:
        status = self.status
        desired = spec.revision()
        starting = status.track == "Pending" or (
            status.track in ("Succeeded", "RolledBack") and desired not in (status.stable_revision, status.revision)
        )
        frozen = starting or status.track in ACTIVE_TRACKS
        if frozen and self.andon.pulled:
            self.freeze("Halted", f"halted by the andon cord: {self.andon.reason}")
            return
        if frozen and (spec.paused or status.paused_reason is not None):
            reason = "spec.paused is true" if spec.paused else status.paused_reason
            self.freeze("Paused", f"paused: {reason}")
            return
        self.thaw()
        if status.track == "Progressing" and status.revision != desired:
            self.transition("Normal", "Superseded",
                            f"revision {desired} supersedes {status.revision}: rolling {status.revision} back first",
                            track="RollingBack", rollback_reason=f"superseded by revision {desired}")
        if starting:
            self.start(spec, steps, desired)
        track = self.status.track
        if track == "Progressing":
            self.progress(spec, steps)
        elif track in ("RollingBack", "Failed"):
            self.roll_back(spec)
        elif track == "Succeeded":
            self.retire()
        else:
            self.update(phase=track)

    def start(self, spec: RolloutSpec, steps: list[RingStep], desired: str) -> None:
        if self.recovered(spec, desired):
            return
        stable_name = self.status.stable_stateful_set or spec.stateful_set_name
        stable = self.statefulset(stable_name)
        if stable is None:
            self.update(track="Pending", phase="Pending",
                        message=f"waiting for StatefulSet {stable_name} to exist in namespace {self.rollout.namespace}")
            self.requeue(RECHECK_S)
            return
        if spec.image is not None:
            image = stable.image_of(spec.container)
            if image is None:
                self.reject([SpecProblem("spec.container", f"StatefulSet {stable_name} has no container "
                                                           f"{spec.container!r}; name one of its containers")])
                return
            if self.status.stable_revision is None and image == spec.image:
                self.transition("Normal", "AlreadyRunning", f"StatefulSet {stable_name} already runs {spec.image}",
                                track="Succeeded", phase="Succeeded", stable_stateful_set=stable_name,
                                stable_revision=desired, revision=desired)
                return
        if not stable.settled:
            self.update(track="Pending", phase="Pending",
                        message=f"waiting for StatefulSet {stable_name} to settle "
                                f"({stable.ready_replicas} of {stable.replicas} ready)")
            return
        flag_problem = self.flag_problem(spec)
        if flag_problem is not None:
            self.reject([flag_problem])
            return
        cohorts = self.observed.cohorts
        if cohorts is None or cohorts.shares is None or self.observed.flag_error is not None:
            reason = self.observed.cohort_error or self.observed.flag_error
            self.hold(f"cannot pin the cohort set or read the flag: {reason}")
            return
        shares = cumulative_shares(steps, cohorts.shares.cumulative_shares)
        source = "spec" if any(step.share is not None for step in steps) else cohorts.shares.source
        pin = Pin(cohort_set=spec.cohort_set, version=cohorts.shares.version, epoch=cohorts.shares.epoch,
                  source=source, cumulative_shares=shares, target_replicas=stable.replicas,
                  replicas=ring_replicas(stable.replicas, shares))
        first = steps[0].name
        history = [*self.status.history, RingRecord(ring=first, revision=desired, started_at=self.now)]
        what = f"image {spec.image}" if spec.image is not None else "a new pod template"
        self.transition(
            "Normal", "RolloutStarted",
            f"rolling out revision {desired} ({what}) from {stable_name} to {new_statefulset_name(spec)}: "
            f"{stable.replicas} replicas through rings {', '.join(step.name for step in steps)}, new replicas "
            f"{pin.replicas}",
            track="Progressing", phase="Progressing", revision=desired, stable_stateful_set=stable_name,
            new_stateful_set=new_statefulset_name(spec), pin=pin, ring_index=0, current_ring=first,
            promoted_rings=[], waiting_since=None, bake_until=None, bake_remaining_seconds=None,
            rollback_reason=None, paused_reason=None, history=history[-MAX_HISTORY:], gates=[],
        )

    def recovered(self, spec: RolloutSpec, desired: str) -> bool:
        """A Rollout that lost its status after succeeding: its own StatefulSet of this revision serves, the
        original is at 0. Starting again would pin a target of 0; take the serving one as stable instead."""
        if self.status.stable_stateful_set is not None:
            return False
        serving = self.statefulset(new_statefulset_name(spec))
        original = self.statefulset(spec.stateful_set_name)
        if serving is None or self.rollout.uid not in serving.owner_uids or serving.replicas == 0 or (
                original is not None and original.replicas > 0):
            return False
        self.transition("Normal", "Recovered", f"no status was recorded, but {serving.name} (this Rollout's, "
                                               f"revision {desired}) serves {serving.replicas} replicas and "
                                               f"{spec.stateful_set_name} none: taken as the stable version",
                        track="Succeeded", phase="Succeeded", step="Done", stable_stateful_set=serving.name,
                        stable_revision=desired, revision=desired)
        return True

    def progress(self, spec: RolloutSpec, steps: list[RingStep]) -> None:
        status = self.status
        pin = status.pin
        assert pin is not None  # a Progressing rollout has started, and start pins
        self.update(phase="Progressing")
        stable = self.statefulset(status.stable_stateful_set)
        new = self.statefulset(status.new_stateful_set)
        if stable is None:
            self.update(message=f"StatefulSet {status.stable_stateful_set} is gone; recreate it or abort the rollout")
            return
        if new is None:
            manifest = new_statefulset(self.rollout, spec, stable, status.new_stateful_set or "")
            self.actions.append(CreateStatefulSet(status.new_stateful_set or "", manifest))
            self.update(step="CreatingStatefulSet", message=f"creating StatefulSet {status.new_stateful_set}")
            return
        index = min(status.ring_index, len(pin.replicas) - 1)
        ring = steps[index] if index < len(steps) else RingStep(name=status.current_ring or "ring")
        if not self.sync_flag(spec, status.promoted_rings):
            return
        move = mbb.next_move(new, stable, pin.replicas[index], pin.target_replicas,
                             spec.scaling.surge_replicas(pin.target_replicas))
        if isinstance(move, mbb.Wait):
            self.wait_for(move.on, spec, rolling_back=False)
            return
        self.update(waiting_since=None)
        if isinstance(move, mbb.Scale):
            self.scale(move.target, move.replicas, ring.name)
            return
        promoted = [step.name for step in steps[: index + 1]]
        if status.promoted_rings != promoted:
            self.ring_ready(spec, index, promoted)
        if isinstance(move, mbb.Covered):
            self.scale(stable, move.shrink_to, ring.name)
            return
        self.bake(spec, steps, index, ring)

    def ring_ready(self, spec: RolloutSpec, index: int, promoted: list[str]) -> None:
        history = list(self.status.history)
        if history and history[-1].ring == promoted[-1] and history[-1].ready_at is None:
            history[-1] = history[-1].model_copy(update={"ready_at": self.now})
        self.update(promoted_rings=promoted, history=history, step="FlagOn")
        self.actions.append(self.flag_action(spec, promoted))
        self.event("Normal", "RingReady", f"ring {promoted[-1]}'s capacity is ready: the flag "
                                          f"{spec.flag.key} is on for {', '.join(promoted)}")

    def bake(self, spec: RolloutSpec, steps: list[RingStep], index: int, ring: RingStep) -> None:
        until = self.status.bake_until
        gates = self.observed.gates.get(ring.name, ())
        if until is None:
            until = self.now + timedelta(seconds=ring.bake_s)
            self.update(bake_until=until, gates=gating.start(gates, ring.name, self.now, until),
                        message=f"ring {ring.name} is up; baking until {until.isoformat()}"
                                + (f", judged by gates {', '.join(gate.name for gate in gates)}" if gates else ""))
        self.update(step="Baking")
        self.keep_gates(gates, ring.name, until)
        if self.judge_gates(spec, gates, ring.name, until):
            return
        next_measurements = [gate.next_at for gate in self.status.gates
                             if gate.phase in ("Running", "Held") and gate.next_at is not None]
        if self.now < until:
            held = [gating.explain_hold(gate) for gate in self.status.gates if gate.phase == "Held"]
            if held:
                self.update(message=f"ring {ring.name} is baking until {until.isoformat()}; gates holding: "
                                    + "; ".join(held))
            self.requeue((min([until, *next_measurements]) - self.now).total_seconds())
            return
        specs = {gate.name: gate.spec for gate in gates}
        unsettled = [gate for gate in self.status.gates if not gating.settled(gate, specs.get(gate.name), until)]
        if unsettled:
            self.update(step="AwaitingEvidence",
                        message=f"ring {ring.name} has baked; holding until its gates pass: "
                                + "; ".join(gating.explain_hold(gate) for gate in unsettled))
            self.requeue((min(next_measurements, default=self.now + timedelta(seconds=RECHECK_S)) - self.now)
                         .total_seconds())
            return
        status = self.status
        history = list(status.history)
        if history and history[-1].promoted_at is None:
            history[-1] = history[-1].model_copy(update={"promoted_at": self.now, "outcome": "promoted"})
        if index + 1 < len(steps):
            following = steps[index + 1].name
            history.append(RingRecord(ring=following, revision=status.revision or "", started_at=self.now))
            passed = f" and passed gates {', '.join(gate.name for gate in status.gates)}" if status.gates else ""
            self.transition("Normal", "RingPromoted", f"ring {ring.name} baked{passed}; moving to ring {following}",
                            ring_index=index + 1, current_ring=following, bake_until=None,
                            history=history[-MAX_HISTORY:], gates=[])
            self.progress(spec, steps)
            return
        stable = self.statefulset(status.stable_stateful_set)
        owned = stable is not None and self.rollout.uid in stable.owner_uids
        window = timedelta(seconds=spec.scaling.rollback_window_s)
        self.transition(
            "Normal", "RolloutSucceeded",
            f"revision {status.revision} serves every ring from {status.new_stateful_set}"
            + (f"; {status.stable_stateful_set} is deleted after the rollback window" if owned else ""),
            track="Succeeded", phase="Succeeded", step="Done", stable_stateful_set=status.new_stateful_set,
            stable_revision=status.revision, new_stateful_set=None, bake_until=None, current_ring=None,
            retire_stateful_set=status.stable_stateful_set if owned else None,
            retire_after=self.now + window if owned else None, history=history[-MAX_HISTORY:], gates=[],
        )
        if owned:
            self.requeue(window.total_seconds())

    def keep_gates(self, gates: Sequence[gating.ResolvedGate], ring: str, until: datetime) -> None:
        """The ring's gate statuses, following edits of the spec: gates removed are dropped, added ones start."""
        kept = {gate.name: gate for gate in self.status.gates if gate.ring == ring}
        wanted = [kept.get(gate.name) or gating.start([gate], ring, self.now, until)[0] for gate in gates]
        if wanted != list(self.status.gates):
            self.update(gates=wanted)

    def judge_gates(self, spec: RolloutSpec, gates: Sequence[gating.ResolvedGate], ring: str,
                    until: datetime) -> bool:
        """Record the new measurements; True when a gate failed or is inconclusive and the rollout stopped."""
        specs = {gate.name: gate.spec for gate in gates}
        judged: list[GateStatus] = []
        for gate in self.status.gates:
            measurement = self.verdicts.get(gate.name)
            if measurement is not None and measurement.ring == ring and gate.phase in ("Running", "Held"):
                gate = gating.record(gate, specs[gate.name], measurement, until)
                self.actions.append(RecordGateResult(measurement, sequence=gate.measurements,
                                                     revision=self.status.revision or ""))
            judged.append(gate)
        self.update(gates=judged)
        failed = next((gate for gate in judged if gate.phase == "Failed"), None)
        if failed is not None:
            why = f"gate {failed.name} failed in ring {ring}: {failed.last.message if failed.last else ''}"
            if spec.failure_policy == "pause":
                self.update(paused_reason=why)
                self.freeze("Paused", f"paused: {why}")
                self.event("Warning", "GateFailed", f"{why}; paused (failurePolicy pause): resume or abort")
                return True
            self.transition("Warning", "GateFailed", f"{why}; rolling back", track="RollingBack",
                            phase="RollingBack", rollback_reason=why, bake_until=None)
            self.roll_back(spec)
            return True
        unsure = next((gate for gate in judged if gate.phase == "Inconclusive"), None)
        if unsure is not None:
            why = (f"gate {unsure.name} is inconclusive in ring {ring}: "
                   f"{unsure.last.message if unsure.last else ''}")
            self.update(paused_reason=why)
            self.freeze("Paused", f"paused: {why}; resume to measure again, promote to go on, abort to roll back")
            self.event("Warning", "GateInconclusive", f"{why}; paused for a human: resume, promote or abort")
            return True
        return False

    def roll_back(self, spec: RolloutSpec) -> None:
        status = self.status
        self.update(phase=status.track)
        stable = self.statefulset(status.stable_stateful_set)
        new = self.statefulset(status.new_stateful_set)
        # Users leave the new version before any of its pods go.
        if not self.sync_flag(spec, []):
            return
        if status.promoted_rings:
            self.update(promoted_rings=[])
        if stable is None:
            self.update(message=f"cannot roll back: StatefulSet {status.stable_stateful_set} is gone; recreate it")
            return
        pin = status.pin
        target = pin.target_replicas if pin is not None else stable.replicas
        if new is not None:
            move = mbb.next_move(stable, new, target, target, spec.scaling.surge_replicas(target))
            if isinstance(move, mbb.Wait):
                self.wait_for(move.on, spec, rolling_back=True)
                return
            self.update(waiting_since=None)
            if isinstance(move, mbb.Scale):
                self.scale(move.target, move.replicas, None)
                return
            if isinstance(move, mbb.Covered):
                self.scale(new, move.shrink_to, None)
                return
        history = list(status.history)
        if history and history[-1].outcome is None:
            history[-1] = history[-1].model_copy(update={"outcome": "rolled back"})
        self.transition("Warning", "RolledBack",
                        f"rolled back to {status.stable_stateful_set} ({status.rollback_reason or 'rollback'}); "
                        "the flag is off for every ring", track="RolledBack", phase="RolledBack", step="Done",
                        current_ring=None, bake_until=None, bake_remaining_seconds=None, history=history)

    def retire(self) -> None:
        status = self.status
        self.update(phase="Succeeded")
        if status.retire_stateful_set is None or status.retire_after is None:
            return
        if self.now < status.retire_after:
            self.requeue((status.retire_after - self.now).total_seconds())
            return
        old = self.statefulset(status.retire_stateful_set)
        if old is not None and not old.deleting and old.replicas == 0 and self.rollout.uid in old.owner_uids \
                and old.name != status.stable_stateful_set:
            self.actions.append(DeleteStatefulSet(old.name, old.uid, old.resource_version))
            self.event("Normal", "Retired", f"deleted StatefulSet {old.name}: its rollback window has passed")
        self.update(retire_stateful_set=None, retire_after=None)

    # Steps shared by the tracks

    def scale(self, target: StatefulSetView, replicas: int, ring: str | None) -> None:
        self.actions.append(ScaleStatefulSet(target.name, replicas, target.resource_version))
        side = "New" if target.name == self.status.new_stateful_set else "Old"
        self.update(step=f"Scaling{'Up' if replicas > target.replicas else 'Down'}{side}")
        self.update(message=f"scaling {target.name} from {target.replicas} to {replicas}"
                            + (f" for ring {ring}" if ring else ""),
                    waiting_since=self.now if replicas > target.replicas else self.status.waiting_since)

    def wait_for(self, waiting_on: StatefulSetView, spec: RolloutSpec, *, rolling_back: bool) -> None:
        since = self.status.waiting_since or self.now
        timeout_s = spec.scaling.ready_timeout_s
        message = (f"waiting for {waiting_on.name}: {waiting_on.ready_replicas} of {waiting_on.replicas} ready"
                   + (", observing its latest spec" if waiting_on.observed_generation < waiting_on.generation else ""))
        self.update(waiting_since=since, message=message, step="WaitingForReady")
        elapsed_s = (self.now - since).total_seconds()
        if elapsed_s < timeout_s:
            self.requeue(timeout_s - elapsed_s)
            return
        timed_out = (f"{waiting_on.name} had {waiting_on.ready_replicas} of {waiting_on.replicas} replicas ready "
                     f"after readyTimeout {spec.scaling.ready_timeout}")
        if rolling_back:
            if self.status.track != "Failed":
                self.transition("Warning", "RollbackStalled", f"{timed_out}; still restoring, the new version "
                                                              "keeps serving what the old cannot", track="Failed",
                                phase="Failed")
            return
        if spec.failure_policy == "pause":
            self.update(paused_reason=timed_out)
            self.freeze("Paused", f"paused: {timed_out}")
            self.event("Warning", "ReadyTimeout", f"{timed_out}; paused (failurePolicy pause): resume or abort")
            return
        self.transition("Warning", "ReadyTimeout", f"{timed_out}; rolling back", track="RollingBack",
                        phase="RollingBack", rollback_reason=timed_out, waiting_since=None)
        self.roll_back(spec)

    # The flag

    def flag_problem(self, spec: RolloutSpec) -> SpecProblem | None:
        flag = self.observed.flag
        if flag is None:
            return None
        still_on = sorted(ring for ring, variant in flag.ring_variants.items() if variant == spec.flag.on_variant)
        if still_on:
            # Turning it off would take an earlier release's features away from those users.
            return SpecProblem("spec.flag.key", f"flag {flag.key!r} is still on for {still_on} from an earlier "
                                                "release; give this release a flag of its own, or turn that one off "
                                                "first")
        for field, variant in (("onVariant", spec.flag.on_variant), ("offVariant", spec.flag.off_variant)):
            if variant not in flag.variants:
                return SpecProblem(f"spec.flag.{field}", f"flag {flag.key!r} has no variant {variant!r}; its variants "
                                                         f"are {sorted(flag.variants)}")
        return None

    def flag_action(self, spec: RolloutSpec, on_rings: Sequence[str]) -> SetFlagRings:
        pin = self.status.pin
        assert pin is not None
        return SetFlagRings(key=spec.flag.key, cohort_set=pin.cohort_set, version=pin.version, epoch=pin.epoch,
                            on_rings=tuple(on_rings), on_variant=spec.flag.on_variant,
                            off_variant=spec.flag.off_variant, create=self.observed.flag is None)

    def sync_flag(self, spec: RolloutSpec, on_rings: Sequence[str]) -> bool:
        """Whether the stored flag already turns on exactly `on_rings`; if not, set it and wait a beat."""
        if self.observed.flag_error is not None:
            self.update(message=f"cannot read flag {spec.flag.key}: {self.observed.flag_error}")
            self.requeue(RECHECK_S / 6)
            return False
        flag = self.observed.flag
        pin = self.status.pin
        if pin is None:
            return True
        if flag is not None and flag.turns_on(on_rings, spec.flag.on_variant, spec.flag.off_variant) and (
            flag.cohort_set, flag.version, flag.epoch) == (pin.cohort_set, pin.version, pin.epoch):
            return True
        self.actions.append(self.flag_action(spec, on_rings))
        self.update(step="SettingFlag", message=f"setting flag {spec.flag.key} on for {list(on_rings) or 'no ring'}")
        self.requeue(0)
        return False

    # Conditions and the transition event

    def finish(self) -> None:
        status = self.status
        pin = status.pin
        old = self.statefulset(status.stable_stateful_set)
        new = self.statefulset(status.new_stateful_set)
        if status.track == "Succeeded":
            # The revision rolled out is the stable one now; the old is what it replaced.
            old, new = self.statefulset(status.retire_stateful_set), old
        old_ready = old.ready_replicas if old else 0
        new_ready = new.ready_replicas if new else 0
        self.update(old_ready=old_ready, new_ready=new_ready)
        target = pin.target_replicas if pin else (old.replicas if old else 0)
        wanted: dict[ConditionType, tuple[bool, str, str]] = {
            "Progressing": (status.phase in ("Progressing", "RollingBack"), status.phase, status.message),
            "Paused": (status.phase == "Paused", "Paused" if status.phase == "Paused" else "NotPaused",
                       status.message if status.phase == "Paused" else ""),
            "Halted": (status.phase == "Halted", self.andon.cause if status.phase == "Halted" else "NotHalted",
                       self.andon.reason if status.phase == "Halted" else ""),
            "InvalidSpec": (self.invalid is not None, "InvalidSpec" if self.invalid else "Valid", self.invalid or ""),
            "Available": (old_ready + new_ready >= target, "CapacityReady" if old_ready + new_ready >= target
                          else "CapacityShort", f"{old_ready} old + {new_ready} new ready of {target}"),
        }
        conditions = []
        for kind in CONDITION_TYPES:
            truth, reason, message = wanted[kind]
            value: Literal["True", "False"] = "True" if truth else "False"
            previous = self.before.condition(kind)
            since = previous.last_transition_time if previous and previous.status == value else self.now
            conditions.append(Condition(type=kind, status=value, reason=reason, message=message,
                                        last_transition_time=since))
        self.update(conditions=conditions)
        invalid_before = self.before.condition("InvalidSpec")
        became_invalid = self.invalid is not None and (
            invalid_before is None or invalid_before.status != "True" or self.before.message != self.status.message
        )
        if became_invalid:
            self.event("Warning", "InvalidSpec", self.status.message)
        elif status.phase != self.before.phase and not any(isinstance(a, RecordEvent) for a in self.actions):
            self.update(transitions=self.status.transitions + 1)
            self.event("Warning" if status.phase in ("Halted", "Failed") else "Normal", status.phase, status.message)


def new_statefulset(rollout: RolloutView, spec: RolloutSpec, stable: StatefulSetView, name: str) -> dict[str, Any]:
    """The new revision's StatefulSet: the stable one's shape, the new pods, a selector of its own, 0 replicas."""
    revision = spec.revision()
    selector = {**stable.selector, REVISION_LABEL: revision}
    if spec.template is not None:
        template = copy.deepcopy(spec.template)
    else:
        template = copy.deepcopy(dict(stable.template))
        containers = template["spec"]["containers"]
        chosen = next(c for c in containers if spec.container is None or c.get("name") == spec.container)
        chosen["image"] = spec.image
    metadata = template.setdefault("metadata", {})
    metadata["labels"] = {**(metadata.get("labels") or {}), **selector, ROLLOUT_LABEL: rollout.name}
    kept = {key: value for key, value in stable.raw_spec.items()
            if key in ("serviceName", "podManagementPolicy", "volumeClaimTemplates", "updateStrategy",
                       "revisionHistoryLimit", "minReadySeconds")}
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {
            "name": name,
            "namespace": rollout.namespace,
            "labels": {ROLLOUT_LABEL: rollout.name, REVISION_LABEL: revision},
            "ownerReferences": [{
                "apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": rollout.name, "uid": rollout.uid,
                "controller": True, "blockOwnerDeletion": True,
            }],
        },
        "spec": {**kept, "replicas": 0, "selector": {"matchLabels": selector}, "template": template},
    }

