"""A small, deterministic Kubernetes for `plan()`: the Rollout, StatefulSets, the flag store, the andon cord, a clock.

A reconcile does what the real shell does: read the world into views (`StatefulSetView.from_object` on
API-shaped dicts), plan, write the returned status first, then execute the actions in order; a write
whose precondition fails answers like the API server (404, 409, 422) and ends the reconcile. A tick
plays the StatefulSet controller and the kubelet: `observedGeneration` catches up, pods scaled away
go at once, new pods start unready and become ready one per tick, or never, for a broken image.

After every single change to the world, `Promises.check` verifies what make-before-break promises
users, and raises `BrokenPromise` naming the promise, the moment and the world.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

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
from rollout.controller.gating import due, resolve_gates
from rollout.controller.observed import (
    REQUEST_ANNOTATION,
    AndonView,
    CohortShares,
    CohortView,
    FlagView,
    Observed,
    RolloutView,
    StatefulSetView,
)
from rollout.controller.plan import Plan, plan
from rollout.controller.spec import InvalidRolloutSpec, RolloutSpec, Scaling, parse_rollout_spec
from rollout.controller.status import Phase, RolloutStatus, parse_status
from rollout.gates.verdicts import Judgment, Measurement

NAMESPACE = "prod"
ROLLOUT_NAME = "web"
ROLLOUT_UID = "5d0c7a4e-rollout-web"
STATEFULSET = "web"
CONTAINER = "web"
OLD_IMAGE = "registry.example.com/web:1.0.0"
NEW_IMAGE = "registry.example.com/web:2.0.0"
NEWER_IMAGE = "registry.example.com/web:3.0.0"
RINGS = ("canary", "early-adopter", "stable", "laggard")
CUMULATIVE_SHARES = {"canary": 0.05, "early-adopter": 0.2, "stable": 0.8, "laggard": 1.0}
COHORTS = CohortView(
    name="default", rings=RINGS,
    shares=CohortShares(version=1, epoch=0, source="configured", cumulative_shares=CUMULATIVE_SHARES),
)
START = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
STEP = timedelta(seconds=1)
# Actions that change the world; events and clearing a request do not.
WRITES = (CreateStatefulSet, ScaleStatefulSet, DeleteStatefulSet, SetFlagRings)


class ApiError(Exception):
    """A write the API server or the flag store refuses: 404 missing, 409 stale or taken, 422 invalid."""

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        super().__init__(f"{code}: {message}")


class BrokenPromise(AssertionError):
    """The rollout let users down; the message names the promise, the moment and the world."""


@dataclass(frozen=True)
class Crash:
    """The controller dies during a reconcile: after the status write (or before it) and `actions_done` actions."""

    status_written: bool
    actions_done: int


@dataclass(frozen=True)
class Snapshot:
    at: datetime
    cause: str
    replicas: Mapping[str, int]
    ready: Mapping[str, int]
    flag_on: frozenset[str]


@dataclass
class Pod:
    ordinal: int
    ready: bool = False


@dataclass
class SimulatedStatefulSet:
    name: str
    uid: str
    spec: dict[str, Any]
    owner_references: list[dict[str, Any]]
    resource_version: int
    generation: int = 1
    observed_generation: int = 0
    pods: list[Pod] = field(default_factory=list)

    @property
    def replicas(self) -> int:
        return int(self.spec.get("replicas", 1))

    @property
    def ready_replicas(self) -> int:
        return sum(pod.ready for pod in self.pods)

    @property
    def image(self) -> str:
        image: str = self.spec["template"]["spec"]["containers"][0]["image"]
        return image

    def to_object(self) -> dict[str, Any]:
        """The object as the API server returns it; like the server, zero counts are left out of status."""
        revision = f"{self.name}-{self.generation:04d}"
        status: dict[str, Any] = {"observedGeneration": self.observed_generation, "currentRevision": revision,
                                  "updateRevision": revision}
        if self.pods:
            status["replicas"] = len(self.pods)
        if self.ready_replicas:
            status["readyReplicas"] = self.ready_replicas
        return {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": self.name, "namespace": NAMESPACE, "uid": self.uid,
                         "resourceVersion": str(self.resource_version), "generation": self.generation,
                         "ownerReferences": copy.deepcopy(self.owner_references)},
            "spec": copy.deepcopy(self.spec),
            "status": status,
        }


def statefulset_manifest_problem(manifest: Mapping[str, Any], name: str) -> str | None:
    """What the API server would refuse in a StatefulSet manifest (the part plan() decides), or None."""
    metadata = manifest.get("metadata")
    spec = manifest.get("spec")
    if not isinstance(metadata, dict) or metadata.get("name") != name or not isinstance(spec, dict):
        return "metadata.name and spec are required"
    template = spec.get("template")
    pod_spec = template.get("spec") if isinstance(template, dict) else None
    containers = pod_spec.get("containers") if isinstance(pod_spec, dict) else None
    if not isinstance(containers, list) or not containers:
        return "spec.template.spec.containers: Required value"
    for index, container in enumerate(containers):
        if not isinstance(container, dict) or not isinstance(container.get("image"), str) \
                or not isinstance(container.get("name"), str):
            return f"spec.template.spec.containers[{index}]: name and image are required"
    labels = _mapping(_mapping(_mapping(template).get("metadata")).get("labels"))
    selector = _mapping(_mapping(spec.get("selector")).get("matchLabels"))
    if not selector or any(labels.get(key) != value for key, value in selector.items()):
        return "spec.template.metadata.labels: Invalid value: `selector` does not match template `labels`"
    if spec.get("replicas") != 0:
        return "a new revision's StatefulSet starts with 0 replicas"
    return None


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


class Promises:
    """What make-before-break promises users, checked after every change to the world.

    - capacity: ready replicas of all StatefulSets together never drop below the target N;
    - surge: replicas asked for never exceed N + maxSurge;
    - ring size: the new StatefulSet never has more replicas than the plan for the furthest ring entered;
    - flag after capacity: the flag is on for ring i only while the new version has pin.replicas[i] ready;
    - flag off before rollback: the new StatefulSet loses a replica only while the flag is off for every ring.

    `in_force` counts the checks that had something to check, so a test can show a promise was exercised.
    """

    def __init__(self, world: World) -> None:
        self.world = world
        self.acting = RolloutStatus()
        self.furthest_ring = 0
        self.last_new: tuple[str, int, int] | None = None
        self.in_force: Counter[str] = Counter()

    def act_on(self, status: RolloutStatus) -> None:
        """The world is now being driven by a plan that decided `status`."""
        if status.track == "Progressing":
            restarted = self.acting.track != "Progressing" or self.acting.revision != status.revision
            self.furthest_ring = status.ring_index if restarted else max(self.furthest_ring, status.ring_index)
        self.acting = status

    def check(self, cause: str) -> None:
        world = self.world
        target = world.target_replicas
        if target is not None:
            ready = sum(sset.ready_replicas for sset in world.statefulsets.values())
            self.require("capacity", ready >= target, f"{ready} replicas ready, fewer than the target {target}", cause)
            asked = sum(sset.replicas for sset in world.statefulsets.values())
            surge = world.surge_replicas()
            self.require("surge", asked <= target + surge, f"{asked} replicas asked for, more than {target} + "
                                                            f"surge {surge}", cause)
        status = self.acting
        pin = status.pin
        new = world.statefulsets.get(world.new_name(status.revision)) if status.revision else None
        if pin is not None and new is not None:
            ring = min(self.furthest_ring, len(pin.replicas) - 1)
            self.require("ring size", new.replicas <= pin.replicas[ring],
                         f"{new.name} has {new.replicas} replicas, the plan for ring {ring} is {pin.replicas[ring]}",
                         cause)
        on_rings = world.flag_on_rings
        if pin is not None and on_rings:
            new_ready = new.ready_replicas if new is not None else 0
            for ring_name in sorted(on_rings & set(RINGS)):
                needed = pin.replicas[RINGS.index(ring_name)]
                self.require("flag after capacity", new_ready >= needed,
                             f"the flag is on for {ring_name} with {new_ready} new replicas ready of {needed}", cause)
        if new is not None:
            last = self.last_new
            if last is not None and last[0] == new.name and (new.replicas < last[1] or new.ready_replicas < last[2]):
                self.require("flag off before rollback", not on_rings,
                             f"{new.name} went from {last[1]} to {new.replicas} replicas ({last[2]} to "
                             f"{new.ready_replicas} ready) with the flag on for {sorted(on_rings)}", cause)
            self.last_new = (new.name, new.replicas, new.ready_replicas)

    def require(self, promise: str, kept: bool, broken: str, cause: str) -> None:
        self.in_force[promise] += 1
        if not kept:
            raise BrokenPromise(f"{promise}: {broken}, at {self.world.now:%H:%M:%S} after {cause}; "
                                f"{self.world.describe()}")


class World:
    """The Kubernetes side of a rollout, and the shell that drives plan() against it."""

    def __init__(self, spec: Any, *, replicas: int = 10, image: str = OLD_IMAGE, statefulset_exists: bool = True):
        self.now = START
        self.statefulsets: dict[str, SimulatedStatefulSet] = {}
        self.flags: dict[str, FlagView] = {}
        self.andon = AndonView()
        # Prometheus, as the gates see it: SLOGates by name, and what a gate measures (gate, ring, time).
        self.slogates: dict[str, Any] = {}
        self.measure: Callable[[str, str, datetime], Judgment] = lambda *_: Judgment("Passed", message="fine")
        self.measurements: list[Measurement] = []
        self.gate_results: list[RecordGateResult] = []
        self.events: list[tuple[datetime, RecordEvent]] = []
        self.plans: list[Plan] = []
        self.timeline: list[Snapshot] = []
        self.flag_changes: list[tuple[frozenset[str], int]] = []
        # image → the first pod ordinal that never becomes ready (0: no pod of that image ever does)
        self.never_ready_from: dict[str, int] = {}
        self.ready_per_tick = 1
        self.target_replicas: int | None = None
        self._resource_version = 0
        self._uids = 0
        self._surge = 1
        self.rollout: dict[str, Any] = {
            "apiVersion": "ringmaster.dev/v1alpha1",
            "kind": "Rollout",
            "metadata": {"name": ROLLOUT_NAME, "namespace": NAMESPACE, "uid": ROLLOUT_UID, "generation": 1,
                         "resourceVersion": self.next_resource_version(), "annotations": {}},
            "spec": copy.deepcopy(spec),
        }
        self.promises = Promises(self)
        if statefulset_exists:
            self.add_original_statefulset(replicas, image)

    # The world's objects

    def add_original_statefulset(self, replicas: int, image: str) -> None:
        """The user's StatefulSet `web`, settled: every replica ready at its latest spec."""
        self._uids += 1
        labels = {"app": STATEFULSET}
        spec = {
            "replicas": replicas,
            "serviceName": STATEFULSET,
            "podManagementPolicy": "OrderedReady",
            "selector": {"matchLabels": dict(labels)},
            "template": {"metadata": {"labels": dict(labels)},
                         "spec": {"containers": [{"name": CONTAINER, "image": image}]}},
        }
        self.statefulsets[STATEFULSET] = SimulatedStatefulSet(
            name=STATEFULSET, uid=f"uid-{self._uids}", spec=spec, owner_references=[],
            resource_version=int(self.next_resource_version()), observed_generation=1,
            pods=[Pod(ordinal, ready=True) for ordinal in range(replicas)],
        )
        self.target_replicas = replicas
        self.record(f"StatefulSet {STATEFULSET} created by its user")

    def next_resource_version(self) -> str:
        self._resource_version += 1
        return str(self._resource_version)

    @property
    def spec(self) -> Any:
        return self.rollout["spec"]

    def spec_model(self) -> RolloutSpec | None:
        try:
            return parse_rollout_spec(self.spec)
        except InvalidRolloutSpec:
            return None

    @property
    def status(self) -> RolloutStatus:
        return parse_status(self.rollout.get("status"))

    @property
    def flag(self) -> FlagView | None:
        flag = self.spec.get("flag") if isinstance(self.spec, dict) else None
        key = flag.get("key") if isinstance(flag, dict) else None
        return self.flags.get(key) if isinstance(key, str) else None

    @property
    def flag_on_rings(self) -> frozenset[str]:
        """The rings the rollout's flag gives anything but its default (off) variant."""
        flag = self.flag
        if flag is None:
            return frozenset()
        return frozenset(ring for ring, variant in flag.ring_variants.items() if variant != flag.otherwise)

    def new_name(self, revision: str) -> str:
        return f"{STATEFULSET}-{revision}"

    def replicas(self, name: str) -> int:
        sset = self.statefulsets.get(name)
        return sset.replicas if sset is not None else 0

    def ready(self, name: str) -> int:
        sset = self.statefulsets.get(name)
        return sset.ready_replicas if sset is not None else 0

    def surge_replicas(self) -> int:
        spec = self.spec_model()
        if spec is not None:
            self._surge = spec.scaling.surge_replicas(self.target_replicas or 0)
        elif self._surge == 1 and self.target_replicas:
            self._surge = Scaling().surge_replicas(self.target_replicas)
        return self._surge

    def describe(self) -> str:
        sets = ", ".join(f"{sset.name} {sset.ready_replicas}/{sset.replicas} ready (generation "
                         f"{sset.observed_generation}/{sset.generation})" for sset in self.statefulsets.values())
        status = self.promises.acting
        return (f"StatefulSets: {sets or 'none'}; flag on for {sorted(self.flag_on_rings)}; "
                f"status {status.phase} ring {status.ring_index} ({status.message})")

    def events_named(self, reason: str) -> list[RecordEvent]:
        return [event for _, event in self.events if event.reason == reason]

    # What users and operators do

    def update_spec(self, changes: Mapping[str, Any]) -> None:
        self.rollout["spec"] = {**self.spec, **copy.deepcopy(dict(changes))}
        self.rollout["metadata"]["generation"] += 1
        self.rollout["metadata"]["resourceVersion"] = self.next_resource_version()

    def request(self, value: str) -> None:
        self.rollout["metadata"]["annotations"][REQUEST_ANNOTATION] = value
        self.rollout["metadata"]["resourceVersion"] = self.next_resource_version()

    @property
    def pending_request(self) -> str | None:
        request: str | None = self.rollout["metadata"]["annotations"].get(REQUEST_ANNOTATION)
        return request

    def pull_andon(self, reason: str) -> None:
        self.andon = AndonView(pulled=True, reason=reason)

    def release_andon(self) -> None:
        self.andon = AndonView()

    # The shell: observe, plan, write the status, act

    def observe(self) -> tuple[RolloutView, Observed]:
        rollout = RolloutView.from_object(copy.deepcopy(self.rollout))
        spec = self.spec if isinstance(self.spec, dict) else {}
        cohort_set = spec.get("cohortSet", COHORTS.name)
        known = cohort_set == COHORTS.name
        model = self.spec_model()
        gates, gate_problems = resolve_gates(model, model.ring_steps(RINGS), self.slogates) if model else ({}, [])
        observed = Observed(
            statefulsets={name: StatefulSetView.from_object(sset.to_object())
                          for name, sset in self.statefulsets.items()},
            cohorts=COHORTS if known else None,
            cohort_error=None if known else f"cohort set {cohort_set!r} does not exist",
            flag=self.flag,
            gates=gates,
            gate_problems=tuple(gate_problems),
        )
        return rollout, observed

    def measured(self, rollout: RolloutView, observed: Observed) -> dict[str, Measurement]:
        """The gates due now, measured by `self.measure`, as the shell would query Prometheus."""
        status = rollout.status
        ring = status.current_ring or ""
        kinds = {gate.name: gate.spec.kind for gate in observed.gates.get(ring, ())}
        return {name: Measurement(name, kinds.get(name, "threshold"), ring, self.now, (f"query of {name}",),
                                  self.measure(name, ring, self.now))
                for name in due(status, self.spec_model(), self.andon.pulled, self.now)}

    def reconcile(self, crash: Crash | None = None) -> Plan:
        rollout, observed = self.observe()
        verdicts = self.measured(rollout, observed)
        self.measurements.extend(verdicts.values())
        decided = plan(rollout, observed, verdicts, self.andon, self.now)
        self.plans.append(decided)
        if crash is None or crash.status_written:
            self.write_status(decided.status)
        self.promises.act_on(decided.status)
        self.promises.check("the status write")
        actions_done = len(decided.actions) if crash is None else crash.actions_done
        for action in decided.actions[:actions_done]:
            try:
                self.execute(action)
            except ApiError:
                break
            if isinstance(action, WRITES):
                self.record(type(action).__name__)
        return decided

    def write_status(self, status: RolloutStatus) -> None:
        wire = json.loads(json.dumps(status.to_wire()))
        if parse_status(wire) != status:
            raise BrokenPromise(f"the status does not read back as written: {wire}")
        self.rollout["status"] = wire
        self.rollout["metadata"]["resourceVersion"] = self.next_resource_version()

    def execute(self, action: Action) -> None:
        match action:
            case CreateStatefulSet(name=name, manifest=manifest):
                if name in self.statefulsets:
                    return  # 409 AlreadyExists: an earlier attempt created it, as the shell reads it
                problem = statefulset_manifest_problem(manifest, name)
                if problem is not None:
                    raise ApiError(422, problem)
                self._uids += 1
                self.statefulsets[name] = SimulatedStatefulSet(
                    name=name, uid=f"uid-{self._uids}", spec=copy.deepcopy(dict(manifest["spec"])),
                    owner_references=copy.deepcopy(manifest["metadata"].get("ownerReferences") or []),
                    resource_version=int(self.next_resource_version()),
                )
            case ScaleStatefulSet(name=name, replicas=replicas, resource_version=resource_version):
                sset = self.statefulset_at(name, resource_version)
                sset.spec["replicas"] = replicas
                sset.generation += 1
                sset.resource_version = int(self.next_resource_version())
            case DeleteStatefulSet(name=name, uid=uid, resource_version=resource_version):
                if name not in self.statefulsets:
                    return  # 404: already gone
                sset = self.statefulset_at(name, resource_version)
                if sset.uid != uid:
                    raise ApiError(409, f"statefulsets {name!r} has uid {sset.uid}, not {uid}")
                del self.statefulsets[name]
            case SetFlagRings():
                self.set_flag_rings(action)
            case RecordEvent():
                self.events.append((self.now, action))
            case ClearRequest(value=value):
                annotations = self.rollout["metadata"]["annotations"]
                if annotations.get(REQUEST_ANNOTATION) == value:
                    del annotations[REQUEST_ANNOTATION]
            case RecordGateResult():
                self.gate_results.append(action)

    def statefulset_at(self, name: str, resource_version: str) -> SimulatedStatefulSet:
        sset = self.statefulsets.get(name)
        if sset is None:
            raise ApiError(404, f"statefulsets {name!r} not found")
        if str(sset.resource_version) != resource_version:
            raise ApiError(409, f"statefulsets {name!r}: resourceVersion is {sset.resource_version}, "
                                f"not {resource_version}")
        return sset

    def set_flag_rings(self, action: SetFlagRings) -> None:
        # Like the shell: create the flag when the store has none, else replace its targeting.
        existing = self.flags.get(action.key)
        variants = existing.variants if existing is not None else frozenset({action.on_variant, action.off_variant})
        self.flags[action.key] = FlagView(
            key=action.key, variants=variants, cohort_set=action.cohort_set,
            ring_variants=dict.fromkeys(action.on_rings, action.on_variant), otherwise=action.off_variant,
            version=action.version, epoch=action.epoch,
        )
        status = self.promises.acting
        new_ready = self.ready(self.new_name(status.revision)) if status.revision else 0
        self.flag_changes.append((frozenset(action.on_rings), new_ready))

    # The StatefulSet controller and the kubelet

    def tick(self) -> None:
        for sset in list(self.statefulsets.values()):
            if self.settle(sset):
                sset.resource_version = int(self.next_resource_version())
                self.record(f"a tick of {sset.name}")

    def settle(self, sset: SimulatedStatefulSet) -> bool:
        changed = sset.observed_generation != sset.generation
        sset.observed_generation = sset.generation
        if len(sset.pods) > sset.replicas:
            del sset.pods[sset.replicas:]
            changed = True
        became_ready = 0
        for pod in sset.pods:
            if not pod.ready and became_ready < self.ready_per_tick and self.can_become_ready(sset, pod.ordinal):
                pod.ready = True
                became_ready += 1
                changed = True
        if len(sset.pods) < sset.replicas:
            sset.pods.extend(Pod(ordinal) for ordinal in range(len(sset.pods), sset.replicas))
            changed = True
        return changed

    def can_become_ready(self, sset: SimulatedStatefulSet, ordinal: int) -> bool:
        first_broken = self.never_ready_from.get(sset.image)
        return first_broken is None or ordinal < first_broken

    def record(self, cause: str) -> None:
        self.timeline.append(Snapshot(
            at=self.now, cause=cause,
            replicas={name: sset.replicas for name, sset in self.statefulsets.items()},
            ready={name: sset.ready_replicas for name, sset in self.statefulsets.items()},
            flag_on=self.flag_on_rings,
        ))
        self.promises.check(cause)

    # Time

    def step(self, crash: Crash | None = None) -> Plan:
        """One reconcile, one tick of the StatefulSet controller and kubelet, one second."""
        decided = self.reconcile(crash)
        self.tick()
        self.now += STEP
        return decided

    def run_until(self, done: Callable[[RolloutStatus], bool], *, max_steps: int = 600,
                  crashes: Mapping[int, Crash] | None = None) -> RolloutStatus:
        for number in range(max_steps):
            self.step((crashes or {}).get(number))
            if done(self.status):
                return self.status
        raise AssertionError(f"not done after {max_steps} steps: {self.describe()}")

    def run_until_phase(self, *phases: Phase, max_steps: int = 600,
                        crashes: Mapping[int, Crash] | None = None) -> RolloutStatus:
        return self.run_until(lambda status: status.phase in phases, max_steps=max_steps, crashes=crashes)
