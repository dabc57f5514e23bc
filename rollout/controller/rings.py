"""Ring sizing: how many replicas the new version has once each ring is up.

A ring's capacity follows its cumulative share of users (ring 0 alone, then rings 0 and 1, ...):
ceil(target * share), at least one replica, never fewer than the ring before, and the whole target
for the last ring. The shares come from the cohort set's estimate over known users, from its
configured split, or from the Rollout's own `share` per ring.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from rollout.controller.spec import RingStep

# Shares are fractions computed from counts; a hair above an integer must not add a replica.
_EPSILON = 1e-9


def cumulative_shares(steps: Sequence[RingStep], cohort_cumulative: Mapping[str, float]) -> list[float]:
    """Each ring's cumulative share of the new version's capacity, as a fraction; the last is 1."""
    shares: list[float] = []
    for index, step in enumerate(steps):
        if index == len(steps) - 1:
            share = 1.0
        elif step.share is not None:
            share = step.share / 100
        else:
            share = cohort_cumulative.get(step.name, 0.0)
        shares.append(min(1.0, max(share, shares[-1] if shares else 0.0)))
    return shares


def ring_replicas(target_replicas: int, shares: Sequence[float]) -> list[int]:
    """The new StatefulSet's replicas once each ring is up."""
    if target_replicas == 0:
        return [0 for _ in shares]
    replicas: list[int] = []
    for share in shares:
        wanted = max(1, math.ceil(target_replicas * share - _EPSILON))
        replicas.append(min(target_replicas, max(wanted, replicas[-1] if replicas else 0)))
    if replicas:
        replicas[-1] = target_replicas
    return replicas
