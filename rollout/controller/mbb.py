"""Make-before-break: the next capacity move between the StatefulSet that grows and the one that shrinks.

Moving forward the new version grows and the old one shrinks; rolling back, the other way round.
Either way the growing side is scaled up first, within the surge allowance, and the shrinking side
is scaled down only by what ready capacity on the growing side already covers. Ready replicas of
the two together never drop below the target, and together they never exceed target + surge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rollout.controller.observed import StatefulSetView


@dataclass(frozen=True)
class Wait:
    """Nothing may move until a StatefulSet settles; `on` names it."""

    on: StatefulSetView


@dataclass(frozen=True)
class Scale:
    side: Literal["grow", "shrink"]
    target: StatefulSetView
    replicas: int


@dataclass(frozen=True)
class Covered:
    """The growing side is ready at its target: the shrinking side may now go down to `shrink_to`."""

    shrink_to: int


@dataclass(frozen=True)
class Balanced:
    """Both sides are settled where they should be."""


Move = Wait | Scale | Covered | Balanced


def next_move(
    grow: StatefulSetView, shrink: StatefulSetView, grow_target: int, total_target: int, surge: int
) -> Move:
    """The one move that brings `grow` to `grow_target` and `shrink` to the rest of `total_target`."""
    if not grow.settled:
        return Wait(grow)
    if shrink.deleting or shrink.observed_generation < shrink.generation or shrink.status_replicas != shrink.replicas:
        return Wait(shrink)
    # Unready pods on the shrinking side count for nothing, but may only go once the growing side
    # alone carries the whole target: removing them could otherwise take ready ones with them.
    may_shrink = shrink.settled or grow.ready_replicas >= total_target
    shrink_target = max(0, total_target - grow_target)
    if grow.replicas < grow_target:
        room = total_target + surge - (grow.replicas + shrink.replicas)
        if room > 0:
            return Scale("grow", grow, grow.replicas + min(room, grow_target - grow.replicas))
        if not may_shrink:
            return Wait(shrink)
        # At the surge limit: remove the old capacity that ready new capacity already stands in for.
        return Scale("shrink", shrink, max(shrink_target, total_target - grow.replicas))
    if shrink.replicas > shrink_target:
        return Covered(shrink_target) if may_shrink else Wait(shrink)
    return Balanced()
