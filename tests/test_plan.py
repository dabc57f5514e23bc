"""plan(): what a Rollout does to a (simulated) cluster, ring by ring, make-before-break, and what it never does.

Every test drives `plan()` against `tests/simulated_world.py`, whose promises (ready capacity never below
the target, never more than target + maxSurge asked for, the new version never bigger than its ring's
plan, the flag on for a ring only once its capacity is ready, and off for everyone before the new
version loses a replica) are checked after every single change to the world.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rollout.controller.actions import Action
from rollout.controller.plan import Plan
from rollout.controller.spec import parse_rollout_spec
from rollout.controller.status import RolloutStatus
from tests.simulated_world import (
    CONTAINER,
    NEW_IMAGE,
    NEWER_IMAGE,
    RINGS,
    STATEFULSET,
    WRITES,
    Crash,
    World,
)

FLAG_KEY = "web-v2"
NEW_TEMPLATE: dict[str, Any] = {
    "metadata": {"labels": {"app": STATEFULSET, "tier": "frontend"}},
    "spec": {"containers": [{"name": CONTAINER, "image": NEW_IMAGE}]},
}


def rollout_spec(bake: str = "10s", **overrides: Any) -> dict[str, Any]:
    """A valid Rollout spec, as `kubectl get -o json` shows it, moving `web` to NEW_IMAGE."""
    spec: dict[str, Any] = {
        "statefulSetName": STATEFULSET,
        "image": NEW_IMAGE,
        "container": CONTAINER,
        "rings": [{"name": ring, "bake": bake} for ring in RINGS],
        "flag": {"key": FLAG_KEY},
        "scaling": {"maxSurge": "25%", "readyTimeout": "30s", "rollbackWindow": "5m"},
    }
    spec.update(overrides)
    return spec


def revision_of(spec: dict[str, Any]) -> str:
    return parse_rollout_spec(spec).revision()


def writes(decided: Plan) -> list[Action]:
    """The actions of a plan that change the world (not Events, not clearing a request)."""
    return [action for action in decided.actions if isinstance(action, WRITES)]


def baking(ring_index: int) -> Callable[[RolloutStatus], bool]:
    return lambda status: status.ring_index == ring_index and status.bake_until is not None


# A whole rollout


@pytest.mark.parametrize("replicas", [10, 3, 1])
def test_a_rollout_ends_with_every_replica_and_every_ring_on_the_new_version(replicas: int) -> None:
    spec = rollout_spec()
    world = World(spec, replicas=replicas)

    status = world.run_until_phase("Succeeded", "RolledBack", "Failed")

    new = world.new_name(revision_of(spec))
    assert status.phase == "Succeeded", status.message
    assert (status.stable_stateful_set, status.stable_revision) == (new, revision_of(spec))
    assert (world.replicas(new), world.ready(new)) == (replicas, replicas)
    assert world.replicas(STATEFULSET) == 0
    assert world.flag_on_rings == frozenset(RINGS)
    assert [(record.ring, record.outcome) for record in status.history] == [(ring, "promoted") for ring in RINGS]
    assert all(record.ready_at is not None and record.promoted_at is not None for record in status.history)
    held = world.promises.in_force
    assert min(held["capacity"], held["surge"], held["ring size"], held["flag after capacity"]) > 0, held


def test_each_ring_gets_the_new_replicas_its_pinned_share_asks_for() -> None:
    world = World(rollout_spec(), replicas=10)

    status = world.run_until_phase("Succeeded")

    assert status.pin is not None
    assert status.pin.cumulative_shares == [0.05, 0.2, 0.8, 1.0]
    assert (status.pin.target_replicas, status.pin.replicas) == (10, [1, 2, 8, 10])
    turned_on = [(rings, new_ready) for rings, new_ready in world.flag_changes if rings]
    assert turned_on == [
        (frozenset(RINGS[:1]), 1), (frozenset(RINGS[:2]), 2), (frozenset(RINGS[:3]), 8), (frozenset(RINGS), 10),
    ]


def test_old_statefulset_is_not_scaled_down_until_new_is_ready() -> None:
    spec = rollout_spec()
    world = World(spec, replicas=10)

    world.run_until_phase("Succeeded")

    new = world.new_name(revision_of(spec))
    for before, after in pairwise(world.timeline):
        if after.replicas.get(STATEFULSET, 0) < before.replicas.get(STATEFULSET, 0):
            assert after.ready[new] + after.replicas[STATEFULSET] >= 10, after


# Bake


def test_a_ring_is_not_promoted_before_its_bake_ends() -> None:
    world = World(rollout_spec(bake="45s"), replicas=10)
    status = world.run_until(baking(0))
    assert status.bake_until is not None
    bake_until = status.bake_until
    assert bake_until - world.now >= timedelta(seconds=43)

    while world.now < bake_until:
        world.step()
        assert world.status.ring_index == 0
        assert world.flag_on_rings == frozenset({"canary"})

    status = world.run_until(lambda status: status.ring_index == 1)
    assert status.history[0].promoted_at == bake_until


def test_a_promote_request_skips_the_rest_of_a_rings_bake() -> None:
    world = World(rollout_spec(bake="1h"), replicas=10)
    world.run_until(baking(0))
    for _ in range(10):
        world.step()
    assert world.status.ring_index == 0

    world.request("promote")
    promoted_at = world.now
    world.step()

    status = world.status
    assert (status.ring_index, status.current_ring) == (1, "early-adopter")
    assert status.history[0].promoted_at == promoted_at
    assert world.pending_request is None
    assert [event.type for event in world.events_named("Promoted")] == ["Normal"]


# Failures: readyTimeout, failurePolicy, abort, retry


def assert_rolled_back_make_before_break(world: World, new: str, since: int) -> None:
    """From timeline entry `since` on: the flag went off for every ring before the new StatefulSet lost a replica,
    and it went to 0 only once the old one was ready at the whole target again."""
    timeline = world.timeline[since:]
    flag_off = next(index for index, snapshot in enumerate(timeline) if not snapshot.flag_on)
    first_shrink = next(index for index, (before, after) in enumerate(pairwise(timeline), 1)
                        if after.replicas.get(new, 0) < before.replicas.get(new, 0))
    assert flag_off < first_shrink
    new_gone = next(snapshot for snapshot in timeline[first_shrink:] if snapshot.replicas[new] == 0)
    assert new_gone.ready[STATEFULSET] == world.target_replicas


@pytest.mark.parametrize(("never_ready_from", "flag_was_on"), [(0, False), (1, True)],
                         ids=["in the canary ring", "after the canary ring"])
def test_a_never_ready_new_version_is_rolled_back_after_ready_timeout(never_ready_from: int,
                                                                        flag_was_on: bool) -> None:
    spec = rollout_spec()
    world = World(spec, replicas=10)
    world.never_ready_from[NEW_IMAGE] = never_ready_from
    new = world.new_name(revision_of(spec))

    status = world.run_until_phase("RolledBack", "Failed")

    assert status.phase == "RolledBack", status.message
    assert status.rollback_reason is not None and "readyTimeout 30s" in status.rollback_reason
    assert (world.replicas(STATEFULSET), world.ready(STATEFULSET), world.replicas(new)) == (10, 10, 0)
    assert world.flag_on_rings == frozenset()
    assert any(snapshot.flag_on for snapshot in world.timeline) == flag_was_on
    assert status.history[-1].outcome == "rolled back"
    assert_rolled_back_make_before_break(world, new, since=0)


def test_with_failure_policy_pause_a_ready_timeout_pauses_until_resumed() -> None:
    spec = rollout_spec(failurePolicy="pause")
    world = World(spec, replicas=10)
    world.never_ready_from[NEW_IMAGE] = 0

    status = world.run_until_phase("Paused")

    assert status.paused_reason is not None and "after readyTimeout 30s" in status.paused_reason
    paused = status.condition("Paused")
    assert paused is not None and paused.status == "True" and status.paused_reason in paused.message
    assert [event.type for event in world.events_named("ReadyTimeout")] == ["Warning"]
    frozen_at = len(world.timeline)
    for _ in range(60):
        assert not writes(world.step())
    assert world.status.phase == "Paused"
    assert all(snapshot.cause.startswith("a tick") for snapshot in world.timeline[frozen_at:])

    del world.never_ready_from[NEW_IMAGE]
    world.request("resume")
    status = world.run_until_phase("Succeeded", "RolledBack", "Failed")

    assert status.phase == "Succeeded", status.message
    assert world.replicas(world.new_name(revision_of(spec))) == 10
    assert world.flag_on_rings == frozenset(RINGS)


def test_retry_of_a_rollout_paused_by_its_failure_policy_keeps_the_pinned_target() -> None:
    spec = rollout_spec(failurePolicy="pause")
    world = World(spec, replicas=10)
    world.never_ready_from[NEW_IMAGE] = 1  # the canary's one replica comes up; the second never does
    world.run_until_phase("Paused")
    assert world.replicas(STATEFULSET) == 9

    del world.never_ready_from[NEW_IMAGE]
    world.request("retry")
    status = world.run_until_phase("Succeeded", "RolledBack", "Failed")

    assert status.phase == "Succeeded", status.message
    assert status.pin is not None and status.pin.target_replicas == 10
    assert world.replicas(world.new_name(revision_of(spec))) == 10


def test_an_abort_request_mid_rollout_rolls_back_make_before_break() -> None:
    spec = rollout_spec()
    world = World(spec, replicas=10)
    new = world.new_name(revision_of(spec))
    world.run_until(lambda status: status.ring_index == 2 and world.replicas(new) > 2)
    aborted_at = len(world.timeline)

    world.request("abort")
    status = world.run_until_phase("RolledBack", "Failed")

    assert status.phase == "RolledBack", status.message
    assert status.rollback_reason == "aborted by request"
    assert world.pending_request is None
    assert (world.replicas(STATEFULSET), world.ready(STATEFULSET), world.replicas(new)) == (10, 10, 0)
    assert world.flag_on_rings == frozenset()
    assert_rolled_back_make_before_break(world, new, since=aborted_at)
    assert world.promises.in_force["flag off before rollback"] > 0


def test_a_retry_after_a_rollback_starts_again_from_the_first_ring() -> None:
    spec = rollout_spec()
    world = World(spec, replicas=10)
    world.run_until(lambda status: status.ring_index == 1)
    world.request("abort")
    world.run_until_phase("RolledBack")

    world.request("retry")
    retried_at = world.now
    world.step()

    status = world.status
    assert (status.phase, status.ring_index, status.current_ring, status.promoted_rings) == (
        "Progressing", 0, "canary", [])
    assert (status.history[-1].ring, status.history[-1].started_at) == ("canary", retried_at)
    status = world.run_until_phase("Succeeded", "RolledBack", "Failed")
    assert status.phase == "Succeeded", status.message
    assert world.replicas(world.new_name(revision_of(spec))) == 10
    assert [record.ring for record in status.history] == ["canary", "early-adopter", *RINGS]


# Frozen: spec.paused and the andon cord


def test_a_paused_rollout_does_not_start() -> None:
    world = World(rollout_spec(paused=True), replicas=10)

    plans = [world.step() for _ in range(20)]

    assert world.status.phase == "Paused"
    assert world.status.message == "paused: spec.paused is true"
    assert all(not writes(decided) for decided in plans)
    assert all(decided.actions == () for decided in plans[1:])
    assert set(world.statefulsets) == {STATEFULSET} and world.flag is None


def test_spec_paused_freezes_the_rollout_and_its_bake_which_resumes_with_what_was_left() -> None:
    world = World(rollout_spec(bake="60s"), replicas=10)
    status = world.run_until(baking(0))
    for _ in range(19):
        world.step()
    assert status.bake_until is not None
    left_s = (status.bake_until - world.now).total_seconds()

    world.update_spec({"paused": True})
    frozen_at = len(world.timeline)
    plans = [world.step() for _ in range(300)]

    status = world.status
    assert status.phase == "Paused" and status.bake_remaining_seconds == left_s == 40
    assert (status.ring_index, world.flag_on_rings) == (0, frozenset({"canary"}))
    assert all(not writes(decided) for decided in plans)
    assert all(decided.actions == () for decided in plans[1:])
    assert world.timeline[frozen_at:] == []

    world.update_spec({"paused": False})
    resumed_at = world.now
    status = world.run_until(lambda status: status.ring_index == 1)
    assert status.history[0].promoted_at == resumed_at + timedelta(seconds=left_s)
    assert world.run_until_phase("Succeeded").phase == "Succeeded"


def test_the_andon_cord_halts_the_rollout_and_freezes_its_bake_until_released() -> None:
    world = World(rollout_spec(bake="60s"), replicas=10)
    status = world.run_until(baking(1))
    for _ in range(9):
        world.step()
    assert status.bake_until is not None
    left_s = (status.bake_until - world.now).total_seconds()

    world.pull_andon("checkout errors are up in eu-west")
    frozen_at = len(world.timeline)
    plans = [world.step() for _ in range(300)]

    status = world.status
    assert status.phase == "Halted"
    assert status.message == "halted by the andon cord: checkout errors are up in eu-west"
    halted = status.condition("Halted")
    assert halted is not None
    assert (halted.status, halted.reason) == ("True", "AndonPulled")
    assert halted.message == "checkout errors are up in eu-west"
    assert status.bake_remaining_seconds == left_s == 50
    assert all(not writes(decided) for decided in plans)
    assert world.timeline[frozen_at:] == []

    world.release_andon()
    released_at = world.now
    status = world.run_until(lambda status: status.ring_index == 2)
    assert status.history[1].promoted_at == released_at + timedelta(seconds=left_s)
    assert world.run_until_phase("Succeeded").phase == "Succeeded"


# A new version mid-rollout, or none at all


def test_a_new_image_mid_rollout_rolls_back_the_in_flight_revision_then_rolls_out_the_new_one() -> None:
    spec = rollout_spec()
    world = World(spec, replicas=10)
    superseded = world.new_name(revision_of(spec))
    world.run_until(lambda status: status.ring_index == 2 and world.replicas(superseded) > 2)

    world.update_spec({"image": NEWER_IMAGE})
    newer = rollout_spec(image=NEWER_IMAGE)
    status = world.run_until(lambda status: status.phase in ("Succeeded", "Failed"), max_steps=1000)

    assert status.phase == "Succeeded", status.message
    assert (status.revision, status.stable_stateful_set) == (revision_of(newer), world.new_name(revision_of(newer)))
    assert world.replicas(world.new_name(revision_of(newer))) == 10
    assert (world.replicas(superseded), world.replicas(STATEFULSET)) == (0, 0)
    assert world.flag_on_rings == frozenset(RINGS)
    assert [len(world.events_named(reason)) for reason in ("Superseded", "RolledBack", "RolloutSucceeded")] == [1, 1, 1]
    assert world.promises.in_force["flag off before rollback"] > 0


def test_a_statefulset_already_running_the_image_succeeds_without_creating_anything() -> None:
    world = World(rollout_spec(), replicas=10, image=NEW_IMAGE)

    plans = [world.step() for _ in range(5)]

    assert world.status.phase == "Succeeded"
    assert all(not writes(decided) for decided in plans)
    assert [event.reason for _, event in world.events] == ["AlreadyRunning"]
    assert set(world.statefulsets) == {STATEFULSET} and world.replicas(STATEFULSET) == 10
    assert world.flag is None


# Specs that cannot be acted on, and a StatefulSet that is not there


def _rings_with(index: int, **changes: Any) -> list[dict[str, Any]]:
    rings: list[dict[str, Any]] = [{"name": ring, "bake": "10s"} for ring in RINGS]
    rings[index].update(changes)
    return rings


INVALID_SPECS = [
    pytest.param({key: value for key, value in rollout_spec().items() if key != "flag"},
                 "spec.flag: is required", id="flag missing"),
    pytest.param({key: value for key, value in rollout_spec(template=NEW_TEMPLATE).items() if key != "container"},
                 "spec: give the new version as `image` (an image change) or `template`", id="image and template"),
    pytest.param(rollout_spec(rings=_rings_with(1, bake="3x")),
                 "spec.rings[1].bake: '3x' is not a duration", id="bad bake"),
    pytest.param(rollout_spec(rings=_rings_with(2, name="beta")),
                 "spec.rings[2].name: 'beta' is not a ring of cohort set 'default'", id="ring not in the cohort set"),
    pytest.param(rollout_spec(rings=[{"name": ring} for ring in ("early-adopter", "canary", "stable", "laggard")]),
                 "spec.rings: list every ring of cohort set 'default' in its order", id="rings out of order"),
    pytest.param(rollout_spec(container="sidecar"),
                 "spec.container: StatefulSet web has no container 'sidecar'", id="no such container"),
]


@pytest.mark.parametrize(("spec", "names_the_field"), INVALID_SPECS)
def test_an_invalid_spec_changes_nothing_and_says_which_field_is_wrong(spec: dict[str, Any],
                                                                       names_the_field: str) -> None:
    world = World(spec, replicas=10)

    plans = [world.step() for _ in range(5)]

    status = world.status
    invalid = status.condition("InvalidSpec")
    assert invalid is not None and invalid.status == "True"
    assert names_the_field in invalid.message
    assert status.message == f"invalid spec: {invalid.message}"
    assert status.phase == "Pending"
    assert all(not writes(decided) for decided in plans)
    assert set(world.statefulsets) == {STATEFULSET} and world.flag is None
    assert [event.type for event in world.events_named("InvalidSpec")] == ["Warning"]


def test_fixing_an_invalid_spec_lets_the_rollout_continue() -> None:
    world = World(rollout_spec(rings=_rings_with(1, bake="3x")), replicas=3)
    for _ in range(3):
        world.step()

    world.update_spec({"rings": _rings_with(1, bake="3s")})
    status = world.run_until_phase("Succeeded")

    invalid = status.condition("InvalidSpec")
    assert invalid is not None and (invalid.status, invalid.reason) == ("False", "Valid")


def test_a_bake_too_long_for_the_calendar_is_refused_as_an_invalid_spec() -> None:
    world = World(rollout_spec(rings=_rings_with(0, bake="4000000d")), replicas=3)

    for _ in range(15):
        world.step()

    invalid = world.status.condition("InvalidSpec")
    assert invalid is not None and invalid.status == "True"
    assert invalid.message.startswith("spec.rings[0].bake")


def test_a_template_whose_metadata_is_not_an_object_is_refused_as_an_invalid_spec() -> None:
    spec = rollout_spec(template={**NEW_TEMPLATE, "metadata": "frontend"})
    del spec["image"], spec["container"]
    world = World(spec, replicas=3)

    for _ in range(5):
        world.step()

    invalid = world.status.condition("InvalidSpec")
    assert invalid is not None and invalid.status == "True"
    assert invalid.message.startswith("spec.template") and "metadata" in invalid.message
    assert set(world.statefulsets) == {STATEFULSET}


def test_a_rollback_window_too_long_for_the_calendar_does_not_stop_the_next_rollout() -> None:
    world = World(rollout_spec(bake="3s"), replicas=3)
    world.run_until_phase("Succeeded")

    world.update_spec({"image": NEWER_IMAGE, "flag": {"key": "web-v3"},
                       "scaling": {"maxSurge": "25%", "readyTimeout": "30s", "rollbackWindow": "4000000d"}})
    for _ in range(60):
        world.step()

    status = world.status
    invalid = status.condition("InvalidSpec")
    assert invalid is not None
    refused = invalid.status == "True" and invalid.message.startswith("spec.scaling.rollbackWindow")
    assert refused or (status.phase, status.revision) == ("Succeeded", revision_of(rollout_spec(image=NEWER_IMAGE)))


def test_a_missing_statefulset_keeps_the_rollout_pending_without_actions() -> None:
    world = World(rollout_spec(), statefulset_exists=False)

    plans = [world.step() for _ in range(3)]

    assert all(decided.actions == () for decided in plans)
    assert world.status.phase == "Pending"
    assert world.status.message == "waiting for StatefulSet web to exist in namespace prod"
    assert plans[-1].requeue_after_s == 30

    world.add_original_statefulset(3, "registry.example.com/web:1.0.0")
    assert world.run_until_phase("Succeeded").phase == "Succeeded"


# Crash safety


@dataclass(frozen=True)
class EndState:
    phase: str
    revision: str | None
    stable_stateful_set: str | None
    stable_revision: str | None
    replicas: dict[str, int]
    ready: dict[str, int]
    flag_on: frozenset[str]
    history: list[tuple[str, str | None]]


def end_state(world: World) -> EndState:
    status = world.status
    return EndState(
        phase=status.phase, revision=status.revision, stable_stateful_set=status.stable_stateful_set,
        stable_revision=status.stable_revision,
        replicas={name: sset.replicas for name, sset in world.statefulsets.items()},
        ready={name: sset.ready_replicas for name, sset in world.statefulsets.items()},
        flag_on=world.flag_on_rings, history=[(record.ring, record.outcome) for record in status.history],
    )


@functools.cache
def uninterrupted_end_state(replicas: int) -> EndState:
    world = World(rollout_spec(bake="3s"), replicas=replicas)
    world.run_until_phase("Succeeded")
    return end_state(world)


@pytest.mark.parametrize("replicas", [3, 10])
def test_a_controller_killed_at_any_point_of_any_reconcile_resumes_to_the_same_end(replicas: int) -> None:
    uninterrupted = World(rollout_spec(bake="3s"), replicas=replicas)
    uninterrupted.run_until_phase("Succeeded")
    crash_points = [
        (step, Crash(status_written, actions_done))
        for step, decided in enumerate(uninterrupted.plans)
        for status_written in (True, False)
        for actions_done in range(len(decided.actions) + (0 if status_written else 1))
    ]
    assert len(crash_points) > 2 * len(uninterrupted.plans)

    for step, crash in crash_points:
        world = World(rollout_spec(bake="3s"), replicas=replicas)
        world.run_until_phase("Succeeded", crashes={step: crash})
        assert end_state(world) == end_state(uninterrupted), (step, crash)


@settings(max_examples=50, derandomize=True, deadline=None)
@given(
    replicas=st.sampled_from([1, 3, 10]),
    crashes=st.dictionaries(
        st.integers(min_value=0, max_value=40),
        st.builds(Crash, status_written=st.booleans(), actions_done=st.integers(min_value=0, max_value=4)),
        min_size=1, max_size=12,
    ),
)
def test_a_controller_that_dies_again_and_again_resumes_to_the_same_end(replicas: int,
                                                                       crashes: dict[int, Crash]) -> None:
    world = World(rollout_spec(bake="3s"), replicas=replicas)

    world.run_until_phase("Succeeded", crashes=crashes)

    assert end_state(world) == uninterrupted_end_state(replicas)


# No spec makes plan() raise


SPEC_FIELDS = ["statefulSetName", "image", "container", "template", "cohortSet", "rings", "flag", "sizing", "scaling",
               "failurePolicy", "paused"]
DELETE = object()
json_scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**40), max_value=2**40)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=10))
plausible_strings = st.sampled_from(
    ["web", "canary", "early-adopter", "0s", "90s", "3x", "1h30m", "25%", "0%", "150%", "on", "off", "rollback",
     "pause", "estimate", "configured", "default", "", NEW_IMAGE]
) | st.from_regex(r"\A[0-9]{1,14}[smhdw]\Z", fullmatch=True)
json_values = st.recursive(
    json_scalars | plausible_strings,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["name", "bake", "share", "key", "image", "labels", "spec"]) | st.text(max_size=8),
        inner, max_size=4,
    ),
    max_leaves=12,
)
IMAGE_PATHS: list[tuple[str | int, ...]] = [
    ("statefulSetName",), ("image",), ("container",), ("cohortSet",), ("rings",), ("rings", 0), ("rings", 0, "bake"),
    ("rings", 1, "share"), ("rings", 2, "name"), ("rings", 3), ("flag",), ("flag", "key"), ("flag", "onVariant"),
    ("flag", "offVariant"), ("scaling",), ("scaling", "maxSurge"), ("scaling", "readyTimeout"),
    ("scaling", "rollbackWindow"), ("failurePolicy",), ("paused",), ("sizing",), ("rollbackWindow",),
]
TEMPLATE_PATHS: list[tuple[str | int, ...]] = [
    ("template",), ("template", "metadata"), ("template", "metadata", "labels"),
    ("template", "metadata", "labels", "tier"), ("template", "spec"), ("template", "spec", "containers"),
    ("template", "spec", "containers", 0), ("template", "spec", "containers", 0, "image"), ("rings", 0, "bake"),
    ("flag", "key"), ("scaling", "maxSurge"),
]


def template_spec() -> dict[str, Any]:
    spec = rollout_spec(bake="0s", template=copy.deepcopy(NEW_TEMPLATE))
    del spec["image"], spec["container"]
    return spec


def _child(parent: Any, part: str | int) -> Any:
    if isinstance(parent, dict):
        return parent.get(part)
    if isinstance(parent, list) and isinstance(part, int) and part < len(parent):
        return parent[part]
    return None


def mutated(spec: dict[str, Any], mutations: list[tuple[tuple[str | int, ...], object]]) -> dict[str, Any]:
    """`spec` with each (path, value) set, or deleted for DELETE; a path through a missing parent is skipped."""
    spec = copy.deepcopy(spec)
    for path, value in mutations:
        parent: Any = spec
        for part in path[:-1]:
            parent = _child(parent, part)
        last = path[-1]
        if isinstance(parent, dict):
            if value is DELETE:
                parent.pop(last, None)
            else:
                parent[last] = value
        elif isinstance(parent, list) and isinstance(last, int) and last < len(parent):
            if value is DELETE:
                del parent[last]
            else:
                parent[last] = value
    return spec


def assert_plans_are_valid_or_name_a_spec_field(spec: Any, steps: int = 12) -> None:
    world = World(spec, replicas=3)
    for _ in range(steps):
        decided = world.step()
        invalid = decided.status.condition("InvalidSpec")
        assert invalid is not None
        if invalid.status == "True":
            assert re.match(r"spec[.\[:]", invalid.message), invalid.message
            assert decided.status.message == f"invalid spec: {invalid.message}"
            assert not writes(decided)


@settings(max_examples=150, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=st.dictionaries(st.sampled_from(SPEC_FIELDS) | st.text(max_size=12), json_values, max_size=8)
       | json_values)
def test_no_spec_of_random_fields_makes_plan_raise(spec: Any) -> None:
    assert_plans_are_valid_or_name_a_spec_field(spec)


@settings(max_examples=300, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_no_mutation_of_a_valid_spec_makes_plan_raise(data: st.DataObject) -> None:
    from_template = data.draw(st.booleans(), label="template")
    base = template_spec() if from_template else rollout_spec(bake="0s")
    paths = TEMPLATE_PATHS if from_template else IMAGE_PATHS
    mutations = data.draw(st.lists(st.tuples(st.sampled_from(paths), st.just(DELETE) | json_values),
                                   min_size=1, max_size=3), label="mutations")

    assert_plans_are_valid_or_name_a_spec_field(mutated(base, mutations))


def test_a_succeeded_rollout_that_lost_its_status_keeps_the_version_that_serves() -> None:
    world = World(rollout_spec(), replicas=3)
    world.run_until_phase("Succeeded")
    serving = world.status.stable_stateful_set
    assert serving is not None
    del world.rollout["status"]  # e.g. restored from a backup that does not keep status
    for _ in range(5):
        world.step()
    assert world.status.phase == "Succeeded" and world.status.stable_stateful_set == serving
    assert (world.replicas(serving), world.replicas(STATEFULSET)) == (3, 0)
    assert world.events_named("Recovered")
