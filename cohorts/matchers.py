"""Rule conditions made executable twice over: as Python predicates and as flagd JsonLogic.

Both forms come from one `Match` tree, and every predicate decides exactly what flagd's JsonLogic
(json-logic semantics plus flagd's custom operators) decides for the same context, including its
type coercions: `gt 20` matches the string "30", `equals 1` matches 1.0. An attribute that is absent
(or null) never matches, negated operators included, as in LaunchDarkly's clauses.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cohorts.semantic_versions import compare as semver_compare
from cohorts.semantic_versions import parse_version
from cohorts.spec import AttributeCondition, Scalar, split_semver_value

Context = Mapping[str, Any]
Predicate = Callable[[Context], bool]
JsonLogic = dict[str, Any]


@dataclass(frozen=True)
class MatchAttribute:
    condition: AttributeCondition


@dataclass(frozen=True)
class MatchKeys:
    """Targeting keys materialized from stored usage history."""

    keys: frozenset[str]
    label: str


@dataclass(frozen=True)
class MatchAll:
    children: tuple[Match, ...]


@dataclass(frozen=True)
class MatchAny:
    children: tuple[Match, ...]


@dataclass(frozen=True)
class MatchNot:
    child: Match


Match = MatchAttribute | MatchKeys | MatchAll | MatchAny | MatchNot


def lookup(context: Context, path: str) -> Any:
    """The value flagd's `{"var": path}` reads: dotted paths into objects and list indexes."""
    value: Any = context
    for prop in path.split("."):
        if isinstance(value, dict | Mapping):
            value = value.get(prop)
        elif isinstance(value, list | str):
            if prop == "length":
                return len(value)
            if not prop.isdigit() or str(int(prop)) != prop or int(prop) >= len(value):
                return None
            value = value[int(prop)]
        else:
            return None
    return value


def _js_number(value: Any) -> float:
    """JsonLogic's number coercion of a context value (numeric strings count, the rest is NaN)."""
    if isinstance(value, int | float):
        return value
    if isinstance(value, list):
        if not value:
            return 0
        return _js_number(value[0]) if len(value) == 1 else math.nan
    if isinstance(value, str):
        if value.strip().lower() in ("inf", "-inf", "+inf"):
            return math.nan
        try:
            return float(value)
        except ValueError:
            return math.nan
    if value is None:
        return 0
    return math.nan


_NUMERIC_COMPARISONS: dict[str, tuple[str, Callable[[float, float], bool]]] = {
    "lt": ("<", lambda left, right: left < right),
    "lte": ("<=", lambda left, right: left <= right),
    "gt": (">", lambda left, right: left > right),
    "gte": (">=", lambda left, right: left >= right),
}


def _member_of(values: list[Scalar]) -> Callable[[Any], bool]:
    allowed = frozenset(values)

    def is_member(actual: Any) -> bool:
        try:
            return actual in allowed
        except TypeError:  # lists and objects are never equal to a scalar
            return False

    return is_member


def _attribute_predicate(condition: AttributeCondition) -> Predicate:
    path, op, expected = condition.attribute, condition.op, condition.value
    test: Callable[[Any], bool]
    if op == "equals":
        test = lambda actual: actual == expected  # noqa: E731
    elif op == "not_equals":
        test = lambda actual: actual != expected  # noqa: E731
    elif op in ("in", "not_in"):
        assert isinstance(expected, list)
        is_member = _member_of(expected)
        test = is_member if op == "in" else (lambda actual: not is_member(actual))
    elif op in _NUMERIC_COMPARISONS:
        assert isinstance(expected, int | float)
        compare = _NUMERIC_COMPARISONS[op][1]
        limit = expected
        test = lambda actual: compare(_js_number(actual), limit)  # noqa: E731
    elif op in ("starts_with", "ends_with"):
        assert isinstance(expected, str)
        fix = expected
        if op == "starts_with":
            test = lambda actual: isinstance(actual, str) and actual.startswith(fix)  # noqa: E731
        else:
            test = lambda actual: isinstance(actual, str) and actual.endswith(fix)  # noqa: E731
    else:
        assert isinstance(expected, str)
        semver_operator, version = split_semver_value(expected)
        target = parse_version(version)
        test = lambda actual: semver_compare(actual, semver_operator, target)  # noqa: E731

    def predicate(context: Context) -> bool:
        actual = lookup(context, path)
        return actual is not None and test(actual)

    return predicate


def predicate_of(match: Match) -> Predicate:
    if isinstance(match, MatchAttribute):
        return _attribute_predicate(match.condition)
    if isinstance(match, MatchKeys):
        keys = match.keys
        return lambda context: context.get("targetingKey") in keys
    if isinstance(match, MatchAll):
        parts = tuple(predicate_of(child) for child in match.children)
        return lambda context: all(part(context) for part in parts)
    if isinstance(match, MatchAny):
        parts = tuple(predicate_of(child) for child in match.children)
        return lambda context: any(part(context) for part in parts)
    inner = predicate_of(match.child)
    return lambda context: not inner(context)


def _present(path: str) -> JsonLogic:
    return {"!==": [{"var": path}, None]}


def _attribute_logic(condition: AttributeCondition) -> JsonLogic:
    path, op, expected = condition.attribute, condition.op, condition.value
    actual = {"var": path}
    if op == "equals":
        return {"===": [actual, expected]}
    if op == "not_equals":
        return {"and": [_present(path), {"!==": [actual, expected]}]}
    if op == "in":
        return {"in": [actual, expected]}
    if op == "not_in":
        return {"and": [_present(path), {"!": {"in": [actual, expected]}}]}
    if op in _NUMERIC_COMPARISONS:
        return {"and": [_present(path), {_NUMERIC_COMPARISONS[op][0]: [actual, expected]}]}
    if op in ("starts_with", "ends_with"):
        return {op: [actual, expected]}
    assert isinstance(expected, str)
    semver_operator, version = split_semver_value(expected)
    # flagd's schema wants the full form: '2.1' is written '2.1.0', 'v5' is written '5.0.0'.
    return {"sem_ver": [actual, semver_operator, str(parse_version(version))]}


def targeting_key_in(keys: frozenset[str]) -> JsonLogic:
    """`{"in": [targetingKey, [...]]}` with the keys sorted, so documents compare and diff stably."""
    return {"in": [{"var": "targetingKey"}, sorted(keys)]}


def logic_of(match: Match) -> JsonLogic:
    if isinstance(match, MatchAttribute):
        return _attribute_logic(match.condition)
    if isinstance(match, MatchKeys):
        return targeting_key_in(match.keys)
    if isinstance(match, MatchAll):
        return {"and": [logic_of(child) for child in match.children]}
    if isinstance(match, MatchAny):
        return {"or": [logic_of(child) for child in match.children]}
    return {"!": logic_of(match.child)}


def materialized_key_count(match: Match) -> int:
    if isinstance(match, MatchKeys):
        return len(match.keys)
    if isinstance(match, MatchAll | MatchAny):
        return sum(materialized_key_count(child) for child in match.children)
    if isinstance(match, MatchNot):
        return materialized_key_count(match.child)
    return 0
