"""Each ring's share of a population, the numbers the controller sizes a ring's StatefulSet from.

`estimate_shares` is a pure function of a compiled set, the users to count and a rotation epoch:
each user is counted in the ring `assign` gives. With no one to count, a set with a split reports
the shares its split is configured to give instead. Rings are listed in release order, so a ring's
`cumulative_share` is the share of users a release has reached once that ring is promoted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from cohorts.assign import CompiledCohortSet, assign
from cohorts.spec import TOTAL_WEIGHT

ShareSource = Literal["usage", "keys", "configured"]


@dataclass(frozen=True)
class RingShare:
    ring: str
    count: int
    share: float
    cumulative_share: float


@dataclass(frozen=True)
class ShareEstimate:
    """`source` says what was counted: the usage population, the keys given, or else the split's weights."""

    cohort_set: str
    version: int
    epoch: int
    source: ShareSource
    population: int
    rings: tuple[RingShare, ...]


def estimate_shares(
    compiled: CompiledCohortSet,
    contexts: Iterable[Mapping[str, Any]],
    epoch: int,
    *,
    source: Literal["usage", "keys"],
) -> ShareEstimate:
    """Count each context in its ring; with no contexts and a split, the split's configured shares.

    `source` names what `contexts` are (e.g. `CohortStore.usage_population()` is "usage").
    """
    counts = Counter(assign(compiled, context, epoch).ring for context in contexts)
    population = sum(counts.values())
    if population == 0 and compiled.split is not None:
        # No one to count yet: what the split is configured to give is the best estimate there is.
        weights = dict(compiled.split.rotating + compiled.split.static)
        rings = _shares(compiled.rings, counts, weights, TOTAL_WEIGHT)
        return ShareEstimate(compiled.name, compiled.version, epoch, "configured", 0, rings)
    rings = _shares(compiled.rings, counts, counts, population)
    return ShareEstimate(compiled.name, compiled.version, epoch, source, population, rings)


def _shares(
    rings: Iterable[str], counts: Mapping[str, int], weights: Mapping[str, int], total: int
) -> tuple[RingShare, ...]:
    """Each ring's users counted, and its share (and the running share) of `total` by `weights`."""
    shares = []
    cumulative = 0
    for ring in rings:
        weight = weights.get(ring, 0)
        cumulative += weight
        shares.append(RingShare(
            ring=ring,
            count=counts.get(ring, 0),
            share=weight / total if total else 0.0,
            cumulative_share=cumulative / total if total else 0.0,
        ))
    return tuple(shares)
