"""Ring sizing (rings.py) and make-before-break moves (mbb.py): how many new replicas each ring gets, and the
one capacity move that comes next between the StatefulSet that grows and the one that shrinks."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from rollout.controller import mbb
from rollout.controller.observed import StatefulSetView
from rollout.controller.rings import cumulative_shares, ring_replicas
from rollout.controller.spec import RingStep

RINGS = ("canary", "early-adopter", "stable", "laggard")


def steps(**shares: float) -> list[RingStep]:
    """The four default rings; `early_adopter=10` gives that ring a spec share of 10 %."""
    return [RingStep(name=ring, share=shares.get(ring.replace("-", "_"))) for ring in RINGS]


# Ring sizing


def test_ten_replicas_with_shares_of_5_20_and_80_percent_give_rings_1_2_8_and_10() -> None:
    shares = cumulative_shares(steps(), {"canary": 0.05, "early-adopter": 0.2, "stable": 0.8, "laggard": 1.0})

    assert shares == [0.05, 0.2, 0.8, 1.0]
    assert ring_replicas(10, shares) == [1, 2, 8, 10]


def test_three_replicas_with_the_default_split_give_rings_1_1_3_and_3() -> None:
    shares = cumulative_shares(steps(), {"canary": 0.05, "early-adopter": 0.2, "stable": 0.9, "laggard": 1.0})

    assert ring_replicas(3, shares) == [1, 1, 3, 3]


def test_every_ring_gets_at_least_one_replica() -> None:
    assert ring_replicas(100, [0.001, 0.002, 0.5, 1.0]) == [1, 1, 50, 100]


def test_a_share_a_hair_above_a_whole_replica_does_not_add_one() -> None:
    assert ring_replicas(10, [0.1 + 0.2, 1.0]) == [3, 10]


def test_the_last_ring_gets_the_whole_target_whatever_its_share() -> None:
    assert ring_replicas(10, [0.2, 0.5]) == [2, 10]
    assert cumulative_shares(steps(laggard=10), {"canary": 0.05})[-1] == 1.0


def test_an_empty_target_gives_every_ring_nothing() -> None:
    assert ring_replicas(0, [0.05, 0.2, 0.8, 1.0]) == [0, 0, 0, 0]


def test_a_share_in_the_spec_is_a_percent_and_overrides_the_cohort_sets() -> None:
    cohort = {"canary": 0.05, "early-adopter": 0.2, "stable": 0.8}

    assert cumulative_shares(steps(canary=10, stable=50), cohort) == [0.1, 0.2, 0.5, 1.0]


def test_shares_never_decrease_from_one_ring_to_the_next() -> None:
    assert cumulative_shares(steps(), {"canary": 0.3, "early-adopter": 0.1}) == [0.3, 0.3, 0.3, 1.0]


@settings(max_examples=300, derandomize=True)
@given(target=st.integers(min_value=1, max_value=500),
       shares=st.lists(st.floats(min_value=0, max_value=1), min_size=1, max_size=8).map(sorted))
def test_ring_replicas_grow_ring_by_ring_to_the_whole_target(target: int, shares: list[float]) -> None:
    replicas = ring_replicas(target, shares)

    assert replicas[-1] == target
    assert replicas == sorted(replicas)
    assert all(1 <= count <= target for count in replicas)
    for share, count in zip(shares[:-1], replicas[:-1], strict=True):
        assert count == max(1, math.ceil(target * share - 1e-9))


# Make-before-break moves


def statefulset(name: str, replicas: int, *, ready: int | None = None, observed: bool = True) -> StatefulSetView:
    """A StatefulSet the StatefulSet controller has observed (or not), with `ready` of its replicas ready."""
    ready = replicas if ready is None else ready
    return StatefulSetView(
        name=name, uid=f"uid-{name}", resource_version="7", generation=3, observed_generation=3 if observed else 2,
        replicas=replicas, status_replicas=replicas, ready_replicas=ready, current_revision=None,
        update_revision=None, owner_uids=frozenset(), selector={"app": "web"}, template={}, raw_spec={},
    )


def test_the_new_side_grows_first_when_there_is_room() -> None:
    new, old = statefulset("web-new", 0), statefulset("web", 10)

    assert mbb.next_move(new, old, grow_target=1, total_target=10, surge=3) == mbb.Scale("grow", new, 1)


def test_growth_is_limited_by_the_surge() -> None:
    new, old = statefulset("web-new", 2), statefulset("web", 8)

    assert mbb.next_move(new, old, grow_target=8, total_target=10, surge=3) == mbb.Scale("grow", new, 5)


def test_at_the_surge_limit_the_old_side_shrinks_by_what_ready_new_replicas_cover() -> None:
    new, old = statefulset("web-new", 5), statefulset("web", 8)

    assert mbb.next_move(new, old, grow_target=8, total_target=10, surge=3) == mbb.Scale("shrink", old, 5)


def test_once_the_new_side_is_ready_at_its_target_the_old_side_may_go_down_to_the_rest() -> None:
    new, old = statefulset("web-new", 1), statefulset("web", 10)

    assert mbb.next_move(new, old, grow_target=1, total_target=10, surge=3) == mbb.Covered(9)


def test_both_sides_where_they_should_be_is_balanced() -> None:
    new, old = statefulset("web-new", 2), statefulset("web", 8)

    assert mbb.next_move(new, old, grow_target=2, total_target=10, surge=3) == mbb.Balanced()


def test_nothing_moves_while_the_growing_side_has_unready_replicas() -> None:
    new, old = statefulset("web-new", 2, ready=1), statefulset("web", 10)

    assert mbb.next_move(new, old, grow_target=2, total_target=10, surge=3) == mbb.Wait(new)


def test_nothing_moves_while_the_shrinking_side_has_not_observed_its_latest_spec() -> None:
    new, old = statefulset("web-new", 1), statefulset("web", 9, observed=False)

    assert mbb.next_move(new, old, grow_target=2, total_target=10, surge=3) == mbb.Wait(old)


def test_old_replicas_are_not_removed_while_some_are_unready_and_the_new_side_cannot_carry_everyone() -> None:
    new, old = statefulset("web-new", 1), statefulset("web", 10, ready=9)

    assert mbb.next_move(new, old, grow_target=1, total_target=10, surge=3) == mbb.Wait(old)


def test_rolling_back_unready_new_replicas_go_once_the_old_side_carries_the_whole_target() -> None:
    old, new = statefulset("web", 10), statefulset("web-new", 1, ready=0)

    assert mbb.next_move(old, new, grow_target=10, total_target=10, surge=3) == mbb.Covered(0)


def test_rolling_back_the_old_side_grows_although_the_new_side_has_unready_replicas() -> None:
    old, new = statefulset("web", 9), statefulset("web-new", 2, ready=1)

    assert mbb.next_move(old, new, grow_target=10, total_target=10, surge=3) == mbb.Scale("grow", old, 10)


@settings(max_examples=300, derandomize=True)
@given(data=st.data())
def test_moves_reach_balance_without_dropping_ready_capacity_or_passing_the_surge(data: st.DataObject) -> None:
    total = data.draw(st.integers(min_value=1, max_value=40), label="total")
    grow_target = data.draw(st.integers(min_value=0, max_value=total), label="grow target")
    grown = data.draw(st.integers(min_value=0, max_value=grow_target), label="grow replicas")
    surge = data.draw(st.integers(min_value=1, max_value=10), label="surge")
    grow, shrink = statefulset("web-new", grown), statefulset("web", total - grown)

    for _ in range(4 * total + 4):
        move = mbb.next_move(grow, shrink, grow_target, total, surge)
        if isinstance(move, mbb.Balanced):
            break
        assert isinstance(move, mbb.Scale | mbb.Covered), move
        if isinstance(move, mbb.Covered):
            shrink = statefulset("web", move.shrink_to)
        elif move.side == "grow":
            grow = statefulset("web-new", move.replicas)
        else:
            shrink = statefulset("web", move.replicas)
        assert grow.replicas + shrink.replicas <= total + surge
        assert grow.ready_replicas + shrink.ready_replicas >= total
    else:
        raise AssertionError(f"no balance: {grow.replicas} new, {shrink.replicas} old")

    assert (grow.replicas, shrink.replicas) == (grow_target, total - grow_target)
