"""Ring share estimates: users counted in the ring they are assigned, else the split's configured shares."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cohorts.assign import assign, compile_cohort_set
from cohorts.estimate import RingShare, ShareEstimate, estimate_shares
from cohorts.spec import default_cohort_set, parse_cohort_set

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
EPOCH = 151
DEFAULT_SET = compile_cohort_set(default_cohort_set(), version=3, compiled_at=NOW)
# A set with no split: pinned insiders, everyone else in the default ring.
NO_SPLIT = compile_cohort_set(
    parse_cohort_set({"name": "web", "rings": ["insiders", "everyone"], "pins": {"insiders": ["ana", "bob"]}}),
    version=1, compiled_at=NOW,
)


def test_each_user_is_counted_in_the_ring_assign_gives() -> None:
    contexts: list[dict[str, Any]] = [{"targetingKey": f"user-{number}", "team": "staff" if number < 50 else "sales"}
                                      for number in range(1000)]
    estimate = estimate_shares(DEFAULT_SET, contexts, EPOCH, source="usage")
    expected = Counter(assign(DEFAULT_SET, context, EPOCH).ring for context in contexts)
    assert (estimate.cohort_set, estimate.version, estimate.epoch, estimate.source, estimate.population) == (
        "default", 3, EPOCH, "usage", 1000)
    assert [share.ring for share in estimate.rings] == list(DEFAULT_SET.rings)
    assert {share.ring: share.count for share in estimate.rings} == {ring: expected[ring] for ring in DEFAULT_SET.rings}
    assert all(share.share == share.count / 1000 for share in estimate.rings)


def test_pinned_users_and_the_default_ring_are_counted_in_a_set_without_a_split() -> None:
    contexts = [{"targetingKey": key} for key in ("ana", "bob", "carol", "dave")]
    assert estimate_shares(NO_SPLIT, contexts, 0, source="keys") == ShareEstimate(
        cohort_set="web", version=1, epoch=0, source="keys", population=4,
        rings=(RingShare("insiders", 2, 0.5, 0.5), RingShare("everyone", 2, 0.5, 1.0)),
    )


@settings(max_examples=200, deadline=None)
@given(keys=st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=60), epoch=st.integers(0, 10_000),
       staff=st.booleans())
def test_cumulative_shares_rise_in_release_order_and_reach_everyone(keys: list[str], epoch: int, staff: bool) -> None:
    contexts = [{"targetingKey": key, **({"team": "staff"} if staff else {})} for key in keys]
    estimate = estimate_shares(DEFAULT_SET, contexts, epoch, source="keys")
    cumulative = [share.cumulative_share for share in estimate.rings]
    assert cumulative == sorted(cumulative)
    assert cumulative[-1] == pytest.approx(1.0)
    assert sum(share.count for share in estimate.rings) == estimate.population == len(keys)


def test_with_no_one_to_count_the_splits_configured_shares_are_the_estimate() -> None:
    estimate = estimate_shares(DEFAULT_SET, [], EPOCH, source="usage")
    assert (estimate.source, estimate.population) == ("configured", 0)
    assert [(share.ring, share.count, share.share) for share in estimate.rings] == [
        ("canary", 0, 0.05), ("early-adopter", 0, 0.15), ("stable", 0, 0.7), ("laggard", 0, 0.1)]
    assert [share.cumulative_share for share in estimate.rings] == [0.05, 0.2, 0.9, 1.0]


def test_with_no_one_to_count_and_no_split_every_share_is_zero() -> None:
    estimate = estimate_shares(NO_SPLIT, iter([]), 0, source="usage")
    assert (estimate.source, estimate.population) == ("usage", 0)
    assert estimate.rings == (RingShare("insiders", 0, 0.0, 0.0), RingShare("everyone", 0, 0.0, 0.0))
