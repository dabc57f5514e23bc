"""A cohort set is checked field by field, and every problem names its field and the fix."""

from __future__ import annotations

from typing import Any

import pytest

from cohorts.errors import InvalidCohortSet
from cohorts.spec import default_cohort_set, parse_cohort_set, parse_duration_s


def problems_of(document: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(InvalidCohortSet) as raised:
        parse_cohort_set(document)
    return {problem.field: problem.message for problem in raised.value.problems}


def test_default_set_has_four_rings_a_staff_rule_and_a_weekly_rotating_canary() -> None:
    spec = default_cohort_set()
    assert spec.rings == ["canary", "early-adopter", "stable", "laggard"]
    assert spec.split is not None and spec.split.rotation is not None
    assert spec.split.shares == {"canary": 5, "early-adopter": 15, "stable": 70, "laggard": 10}
    assert spec.split.rotation.rings == ["canary"]
    assert spec.split.rotation.period_s == 7 * 86400
    assert spec.rules[0].ring == "canary"
    assert spec.rules[0].when.model_dump() == {"attribute": "team", "op": "equals", "value": "staff"}


def test_document_round_trips_to_an_equal_spec() -> None:
    spec = default_cohort_set()
    assert parse_cohort_set(spec.to_document()) == spec


def test_unknown_rings_are_named_with_their_field() -> None:
    problems = problems_of(
        {
            "name": "web",
            "rings": ["canary", "stable"],
            "defaultRing": "laggard",
            "optInRing": "beta",
            "pins": {"gold": ["acme"]},
            "rules": [{"name": "eu", "ring": "europe", "when": {"attribute": "region", "op": "equals", "value": "eu"}}],
            "split": {"shares": {"canary": 10, "stable": 80, "insiders": 10}},
        }
    )
    assert set(problems) == {"defaultRing", "optInRing", "pins.gold", "rules[0].ring", "split.shares.insiders"}
    assert "add it to rings" in problems["rules[0].ring"]


def test_a_key_pinned_to_two_rings_is_refused() -> None:
    problems = problems_of({"name": "web", "pins": {"canary": ["alice"], "laggard": ["bob", "alice"]}})
    assert problems == {"pins.laggard[1]": "'alice' is already pinned to 'canary'; pin a key to one ring only"}


def test_shares_must_add_up_to_100_with_at_most_two_decimals() -> None:
    problems = problems_of({"name": "web", "split": {"shares": {"canary": 5.125, "stable": 90}}})
    assert "more than two decimals" in problems["split.shares.canary"]
    assert problems["split.shares"] == "the shares add up to 95.12, not 100; adjust them"


def test_sub_percent_shares_are_allowed() -> None:
    spec = parse_cohort_set({"name": "web", "split": {"shares": {"canary": 0.05, "stable": 99.95}}})
    assert spec.split is not None
    assert spec.split.weight("canary") == 5
    assert spec.split.weight("stable") == 9995


def test_a_rotating_ring_needs_a_share() -> None:
    problems = problems_of(
        {"name": "web", "split": {"shares": {"stable": 100}, "rotation": {"period": "1d", "rings": ["canary"]}}}
    )
    assert problems == {"split.rotation.rings[0]": "'canary' has no share in split.shares, so nothing rotates"}


def test_duplicate_rings_and_rule_names_are_refused() -> None:
    when = {"attribute": "team", "op": "equals", "value": "x"}
    problems = problems_of(
        {
            "name": "web",
            "rings": ["canary", "stable", "canary"],
            "rules": [{"name": "a", "ring": "canary", "when": when}, {"name": "a", "ring": "stable", "when": when}],
        }
    )
    assert set(problems) == {"rings[2]", "rules[1].name"}


@pytest.mark.parametrize(
    ("condition", "fragment"),
    [
        ({"attribute": "age", "op": "gt", "value": "old"}, "compares numbers"),
        ({"attribute": "region", "op": "in", "value": "eu"}, "non-empty list"),
        ({"attribute": "region", "op": "equals", "value": ["eu"]}, "use 'in' for a list"),
        ({"attribute": "version", "op": "sem_ver", "value": ">=two"}, "not a semantic version"),
        ({"attribute": "email", "op": "ends_with", "value": ""}, "non-empty string"),
        ({"attribute": "bad name", "op": "equals", "value": "x"}, "should match pattern"),
        ({"seenWithin": "a week"}, "not a duration"),
        ({"metric": "active_days_30d", "op": "gte", "value": True}, "not true/false"),
        ({"team": "staff"}, "a condition is one of"),
    ],
)
def test_bad_conditions_are_refused_with_the_fix(condition: dict[str, Any], fragment: str) -> None:
    problems = problems_of({"name": "web", "rules": [{"name": "r", "ring": "canary", "when": condition}]})
    assert any(field.startswith("rules[0].when") and fragment in message for field, message in problems.items()), \
        problems


def test_nested_conditions_parse() -> None:
    spec = parse_cohort_set(
        {
            "name": "web",
            "rules": [
                {
                    "name": "eu-power-users",
                    "ring": "early-adopter",
                    "when": {
                        "all": [
                            {"attribute": "region", "op": "in", "value": ["eu-west", "eu-north"]},
                            {"not": {"attribute": "plan", "op": "equals", "value": "free"}},
                            {"any": [{"metric": "active_days_30d", "op": "gte", "value": 20}, {"seenWithin": "7d"}]},
                        ]
                    },
                }
            ],
        }
    )
    assert parse_cohort_set(spec.to_document()) == spec


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("15m", 900), ("1h30m", 5400), ("7d", 604800), ("2w", 1209600)]
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration_s(text) == seconds


@pytest.mark.parametrize("text", ["", "7", "d", "1h 30m", "0s", "-1d", "1y"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration_s(text)
