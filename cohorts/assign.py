"""Ring assignment: a cohort set compiled against stored opt-ins and usage, and `assign()` over it.

Compiling turns a spec plus what the database knows (who opted in or out, who matches each usage
rule) into a `CompiledCohortSet`: immutable, with every key list materialized. `assign` is a pure
function of that, a context and a rotation epoch. The first of these that matches decides:
pins, opt-in/opt-out, rules in the order written, the percentage split, the default ring.
The flagd compiler (`cohorts.flagd`) renders the same compiled set, so both always agree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, NamedTuple

from cohorts.bucketing import hash_position, pick
from cohorts.errors import MaterializationLimitExceeded
from cohorts.matchers import (
    Match,
    MatchAll,
    MatchAny,
    MatchAttribute,
    MatchKeys,
    MatchNot,
    Predicate,
    lookup,
    materialized_key_count,
    predicate_of,
)
from cohorts.spec import (
    TOTAL_WEIGHT,
    AllOf,
    AnyOf,
    AttributeCondition,
    CohortSetSpec,
    Condition,
    NotOf,
    Rotation,
    SeenCondition,
    UsageCondition,
)

DEFAULT_MAX_MATERIALIZED_KEYS = 50_000

UsageQuery = AllOf | AnyOf | UsageCondition | SeenCondition
UsageKeys = Callable[[UsageQuery], frozenset[str]]
"""Answers which stored targeting keys satisfy a condition over usage history only."""

RuleKind = Literal["pin", "opt-in", "opt-out", "rule", "split", "default"]


class SplitPlacement(NamedTuple):
    """Where the split put a user: the stage, the hash position and the range it fell in."""

    rotating: bool
    epoch: int
    position: int
    start: int
    end: int
    total: int


class Assignment(NamedTuple):
    """A user's ring and why. `reason` is rendered on demand, keeping `assign` itself cheap."""

    ring: str
    kind: RuleKind
    rule: str | None = None
    subject: str | None = None
    placement: SplitPlacement | None = None

    @property
    def reason(self) -> str:
        if self.kind == "pin":
            return f"pin: targeting key {self.subject!r} is pinned to {self.ring}"
        if self.kind == "opt-in":
            return f"opt-in: {self.subject!r} opted into {self.ring}"
        if self.kind == "opt-out":
            return f"opt-out: {self.subject!r} opted out to {self.ring}"
        if self.kind == "rule":
            return f"rule {self.rule!r} matched"
        if self.kind == "split":
            return _split_reason(self.ring, self.placement)
        if self.subject is not None:
            return f"default: {self.subject!r} is missing or not a non-empty string, so the split cannot place the user"
        return "default: no rule matched and the set has no split"


def _split_reason(ring: str, placed: SplitPlacement | None) -> str:
    if placed is None:
        return f"split: every user not in a rotating ring is in {ring}"
    low, high = placed.start * 100 / placed.total, placed.end * 100 / placed.total
    where = f"hash position {placed.position / 2**32:.4f} falls in {ring} ({low:.4g} to {high:.4g} %"
    if placed.rotating:
        return f"rotating split, epoch {placed.epoch}: {where})"
    if placed.total < TOTAL_WEIGHT:
        return f"split: {where} of the users outside the rotating rings)"
    return f"split: {where})"


@dataclass(frozen=True)
class CompiledRule:
    name: str
    ring: str
    match: Match
    matches: Predicate = field(compare=False, repr=False)


@dataclass(frozen=True)
class CompiledSplit:
    """The split in two stages: the rotating rings drawn with an epoch-salted hash, then the rest."""

    bucket_by: str
    salt: str
    rotating: tuple[tuple[str, int], ...]
    static: tuple[tuple[str, int], ...]
    rotation: Rotation | None
    static_total: int = field(init=False)
    static_prefix: str = field(init=False)

    def __post_init__(self) -> None:
        # Derived once here: assign() reads them for every user.
        object.__setattr__(self, "static_total", TOTAL_WEIGHT - sum(weight for _, weight in self.rotating))
        object.__setattr__(self, "static_prefix", f"{self.salt}/")

    def rotating_prefix(self, epoch: int) -> str:
        return f"{self.salt}/epoch-{epoch}/"


@dataclass(frozen=True)
class CompiledCohortSet:
    name: str
    version: int
    rings: tuple[str, ...]
    fallback_ring: str
    pins: Mapping[str, str]
    opt_in_ring: str | None
    opted_in: frozenset[str]
    opt_out_ring: str | None
    opted_out: frozenset[str]
    rules: tuple[CompiledRule, ...]
    split: CompiledSplit | None
    compiled_at: datetime

    @property
    def materialized_key_count(self) -> int:
        return (
            len(self.pins)
            + len(self.opted_in)
            + len(self.opted_out)
            + sum(materialized_key_count(rule.match) for rule in self.rules)
        )


def _uses_only_usage(condition: Condition) -> bool:
    if isinstance(condition, UsageCondition | SeenCondition):
        return True
    if isinstance(condition, AllOf):
        return all(_uses_only_usage(child) for child in condition.all)
    if isinstance(condition, AnyOf):
        return all(_uses_only_usage(child) for child in condition.any)
    return False


def _describe(condition: Condition) -> str:
    if isinstance(condition, UsageCondition):
        return f"{condition.metric} {condition.op} {condition.value:g}"
    if isinstance(condition, SeenCondition):
        return f"seen within {condition.seen_within}"
    if isinstance(condition, AllOf):
        return " and ".join(_describe(child) for child in condition.all)
    if isinstance(condition, AnyOf):
        return " or ".join(_describe(child) for child in condition.any)
    if isinstance(condition, NotOf):
        return f"not ({_describe(condition.not_)})"
    return f"{condition.attribute} {condition.op} {condition.value!r}"


def _to_match(condition: Condition, usage_keys: UsageKeys) -> Match:
    # A subtree over usage history alone becomes one materialized key list; `not` stays a
    # negation, so users with no usage record at all do match `not (active_days_30d >= 20)`.
    if _uses_only_usage(condition):
        assert isinstance(condition, AllOf | AnyOf | UsageCondition | SeenCondition)
        return MatchKeys(frozenset(usage_keys(condition)), _describe(condition))
    if isinstance(condition, AttributeCondition):
        return MatchAttribute(condition)
    if isinstance(condition, AllOf):
        return MatchAll(tuple(_to_match(child, usage_keys) for child in condition.all))
    if isinstance(condition, AnyOf):
        return MatchAny(tuple(_to_match(child, usage_keys) for child in condition.any))
    assert isinstance(condition, NotOf)
    return MatchNot(_to_match(condition.not_, usage_keys))


def _no_usage(query: UsageQuery) -> frozenset[str]:
    return frozenset()


def compile_cohort_set(
    spec: CohortSetSpec,
    *,
    version: int,
    compiled_at: datetime,
    opted_in: Iterable[str] = (),
    opted_out: Iterable[str] = (),
    usage_keys: UsageKeys = _no_usage,
    max_keys: int = DEFAULT_MAX_MATERIALIZED_KEYS,
) -> CompiledCohortSet:
    """Materialize a checked spec; raises MaterializationLimitExceeded past `max_keys` keys."""
    pins = {key: ring for ring in spec.rings for key in spec.pins.get(ring, [])}
    rules = []
    for rule in spec.rules:
        match = _to_match(rule.when, usage_keys)
        rules.append(CompiledRule(rule.name, rule.ring, match, predicate_of(match)))

    split = None
    if spec.split is not None:
        rotating_names = set(spec.split.rotation.rings) if spec.split.rotation else set()
        weighted = [(ring, spec.split.weight(ring)) for ring in spec.rings if spec.split.weight(ring) > 0]
        split = CompiledSplit(
            bucket_by=spec.split.bucket_by,
            salt=spec.split.salt or spec.name,
            rotating=tuple(entry for entry in weighted if entry[0] in rotating_names),
            static=tuple(entry for entry in weighted if entry[0] not in rotating_names),
            rotation=spec.split.rotation,
        )

    compiled = CompiledCohortSet(
        name=spec.name,
        version=version,
        rings=tuple(spec.rings),
        fallback_ring=spec.fallback_ring,
        pins=pins,
        opt_in_ring=spec.opt_in_ring,
        opted_in=frozenset(opted_in) if spec.opt_in_ring else frozenset(),
        opt_out_ring=spec.opt_out_ring,
        opted_out=frozenset(opted_out) if spec.opt_out_ring else frozenset(),
        rules=tuple(rules),
        split=split,
        compiled_at=compiled_at,
    )
    total = compiled.materialized_key_count
    if total > max_keys:
        sizes = {"pins": len(pins), "opted in": len(compiled.opted_in), "opted out": len(compiled.opted_out)}
        sizes.update({f"rule {rule.name!r}": materialized_key_count(rule.match) for rule in rules})
        largest = max(sizes, key=lambda name: sizes[name])
        raise MaterializationLimitExceeded(spec.name, total, max_keys, f"{largest}, {sizes[largest]:,} keys")
    return compiled


def _split_assignment(split: CompiledSplit, bucketing_value: str, epoch: int) -> Assignment:
    if split.rotating:
        position = hash_position(split.rotating_prefix(epoch) + bucketing_value)
        placed = pick(position, split.rotating, TOTAL_WEIGHT)
        if placed is not None:
            ring, start, end = placed
            return Assignment(ring, "split", placement=SplitPlacement(True, epoch, position, start, end, TOTAL_WEIGHT))
    if len(split.static) == 1:
        return Assignment(split.static[0][0], "split")
    position = hash_position(split.static_prefix + bucketing_value)
    placed = pick(position, split.static, split.static_total)
    assert placed is not None, "positions below 2**32 always land in a range"
    ring, start, end = placed
    return Assignment(ring, "split", placement=SplitPlacement(False, epoch, position, start, end, split.static_total))


def assign(compiled: CompiledCohortSet, context: Mapping[str, Any], epoch: int) -> Assignment:
    """The ring of the user described by a flagd-style context (`targetingKey` plus attributes)."""
    key = context.get("targetingKey")
    if isinstance(key, str):
        ring = compiled.pins.get(key)
        if ring is not None:
            return Assignment(ring, "pin", subject=key)
        if key in compiled.opted_in:
            assert compiled.opt_in_ring is not None
            return Assignment(compiled.opt_in_ring, "opt-in", subject=key)
        if key in compiled.opted_out:
            assert compiled.opt_out_ring is not None
            return Assignment(compiled.opt_out_ring, "opt-out", subject=key)
    for rule in compiled.rules:
        if rule.matches(context):
            return Assignment(rule.ring, "rule", rule=rule.name)
    split = compiled.split
    if split is not None:
        bucketing_value = lookup(context, split.bucket_by)
        if isinstance(bucketing_value, str) and bucketing_value:
            return _split_assignment(split, bucketing_value, epoch)
        return Assignment(compiled.fallback_ring, "default", subject=split.bucket_by)
    return Assignment(compiled.fallback_ring, "default")
