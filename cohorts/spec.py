"""What a cohort set declares: ordered rings, pins, opt-in/out rings, rules, the split and its rotation.

A spec is plain data (pydantic models). `check_cohort_set` finds what pydantic cannot see field by
field (a rule pointing at a ring that does not exist, shares that do not add up to 100) and raises
`InvalidCohortSet` naming every field at fault.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from cohorts.errors import InvalidCohortSet, SpecProblem, spec_problems
from cohorts.nesting import shallow
from cohorts.semantic_versions import SEMVER_OPERATORS, parse_version

NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
ATTRIBUTE_PATTERN = r"^[A-Za-z_$][A-Za-z0-9_$-]*(\.[A-Za-z0-9_$-]+)*$"
METRIC_PATTERN = r"^[a-z][a-z0-9_]{0,62}$"
DEFAULT_RINGS = ("canary", "early-adopter", "stable", "laggard")
MAX_RINGS = 16
# Shares are percentages with at most two decimals; flagd's fractional gets them as integer
# weights out of 10,000 (basis points), so 0.01 % is the finest split.
SHARE_SCALE = 100
TOTAL_WEIGHT = 100 * SHARE_SCALE

_DURATION_PART = re.compile(r"(\d+)([smhdw])")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

Scalar = str | int | float | bool


def parse_duration_s(text: str, *, allow_zero: bool = False) -> int:
    """'7d' -> 604800. Accepts sequences such as '1h30m' (and '0s' with allow_zero); raises ValueError with the fix."""
    position = 0
    total = 0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            break
        total += int(match.group(1)) * _DURATION_UNITS[match.group(2)]
        position = match.end()
    if position != len(text) or not text or total < 0 or (total == 0 and not allow_zero):
        raise ValueError(f"{text!r} is not a duration; use e.g. '30m', '12h', '7d' or '1w'")
    return total


class _Model(BaseModel):
    # camelCase on the wire, like Kubernetes, flagd and OpenFeature; snake_case in Python.
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, alias_generator=to_camel)


class AttributeCondition(_Model):
    """Compares one evaluation-context attribute with a value. A missing attribute never matches."""

    attribute: str = Field(pattern=ATTRIBUTE_PATTERN, description="context attribute, dotted for nesting")
    op: Literal[
        "equals", "not_equals", "in", "not_in", "lt", "lte", "gt", "gte",
        "starts_with", "ends_with", "sem_ver",
    ]
    value: Scalar | list[Scalar]

    @field_validator("value")
    @classmethod
    def _value_fits_op(cls, value: Scalar | list[Scalar], info: Any) -> Scalar | list[Scalar]:
        op = info.data.get("op")
        if op in ("in", "not_in"):
            if not isinstance(value, list) or not value:
                raise ValueError(f"'{op}' needs a non-empty list of values, e.g. [\"eu-west\", \"eu-north\"]")
        elif isinstance(value, list):
            raise ValueError(f"'{op}' compares with one value, not a list; use 'in' for a list")
        elif op in ("lt", "lte", "gt", "gte"):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"'{op}' compares numbers; give a number such as 20")
        elif op in ("starts_with", "ends_with"):
            if not isinstance(value, str) or not value:
                raise ValueError(f"'{op}' needs a non-empty string")
        elif op == "sem_ver":
            if not isinstance(value, str):
                raise ValueError("'sem_ver' needs a string such as '>=2.1.0', '^2' or '~1.4'")
            parse_version(split_semver_value(value)[1])
        return value


def split_semver_value(value: str) -> tuple[str, str]:
    """'>=2.1.0' -> ('>=', '2.1.0'); a bare version means '='."""
    for semver_operator in sorted(SEMVER_OPERATORS, key=len, reverse=True):
        if value.startswith(semver_operator):
            return semver_operator, value[len(semver_operator):].strip()
    return "=", value.strip()


class UsageCondition(_Model):
    """Compares one stored per-user aggregate (e.g. active_days_30d) with a number."""

    metric: str = Field(pattern=METRIC_PATTERN)
    op: Literal["equals", "lt", "lte", "gt", "gte"]
    value: float

    @field_validator("value", mode="before")
    @classmethod
    def _number_not_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("give a number such as 20, not true/false")
        return value


class SeenCondition(_Model):
    """True for users whose usage record says they were seen within the duration."""

    seen_within: str

    @field_validator("seen_within")
    @classmethod
    def _is_duration(cls, value: str) -> str:
        parse_duration_s(value)
        return value

    @property
    def seconds(self) -> int:
        return parse_duration_s(self.seen_within)


class AllOf(_Model):
    all: list[Condition] = Field(min_length=1)


class AnyOf(_Model):
    any: list[Condition] = Field(min_length=1)


class NotOf(_Model):
    not_: Condition = Field(alias="not")


def _condition_kind(value: Any) -> str | None:
    if isinstance(value, BaseModel):
        return type(value).__name__
    if not isinstance(value, dict):
        return None
    for key, kind in (
        ("attribute", "AttributeCondition"),
        ("metric", "UsageCondition"),
        ("seenWithin", "SeenCondition"),
        ("seen_within", "SeenCondition"),
        ("all", "AllOf"),
        ("any", "AnyOf"),
        ("not", "NotOf"),
    ):
        if key in value:
            return kind
    return None


Condition = Annotated[
    Annotated[AttributeCondition, Tag("AttributeCondition")]
    | Annotated[UsageCondition, Tag("UsageCondition")]
    | Annotated[SeenCondition, Tag("SeenCondition")]
    | Annotated[AllOf, Tag("AllOf")]
    | Annotated[AnyOf, Tag("AnyOf")]
    | Annotated[NotOf, Tag("NotOf")],
    Discriminator(
        _condition_kind,
        custom_error_type="unknown_condition",
        custom_error_message=(
            "a condition is one of {attribute, op, value}, {metric, op, value}, "
            "{seenWithin}, {all: [...]}, {any: [...]} or {not: ...}"
        ),
    ),
]


class Rule(_Model):
    """Users matching `when` go to `ring`. Rules are tried in the order written."""

    name: str = Field(pattern=NAME_PATTERN)
    ring: str
    when: Condition
    description: str = ""

    # Compiling and evaluating conditions recurse; refuse absurd nesting before it is even validated.
    _not_too_deep = field_validator("when", mode="before")(lambda cls, value: shallow(value))


class Rotation(_Model):
    """The rotating rings are drawn again every period, so a different slice of users is in them."""

    period: str = "7d"
    rings: list[str] = Field(min_length=1)
    anchor: datetime = Field(
        default=datetime(2024, 1, 1, tzinfo=UTC),
        description="start of epoch 0; the default is a Monday, so weekly epochs start on Mondays",
    )

    @field_validator("period")
    @classmethod
    def _is_duration(cls, value: str) -> str:
        parse_duration_s(value)
        return value

    @field_validator("anchor")
    @classmethod
    def _is_aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("give a time zone, e.g. '2024-01-01T00:00:00Z'")
        return value

    @property
    def period_s(self) -> int:
        return parse_duration_s(self.period)


class Split(_Model):
    """Everyone not decided by a pin, opt-in/out or rule is placed by a hash of `bucket_by`."""

    shares: dict[str, float] = Field(description="percent of users per ring; they add up to 100")
    rotation: Rotation | None = None
    bucket_by: str = Field(default="targetingKey", pattern=ATTRIBUTE_PATTERN)
    salt: str | None = Field(
        default=None,
        min_length=1,
        description="hash salt; defaults to the cohort set's name. Changing it reshuffles everyone.",
    )

    def weight(self, ring: str) -> int:
        """The ring's share in basis points (1/100 of a percent)."""
        return round(self.shares.get(ring, 0.0) * SHARE_SCALE)


class CohortSetSpec(_Model):
    name: str = Field(pattern=NAME_PATTERN, description="a DNS label, e.g. 'default' or 'checkout'")
    description: str = ""
    rings: list[str] = Field(default=list(DEFAULT_RINGS), min_length=1, max_length=MAX_RINGS)
    default_ring: str | None = Field(
        default=None,
        description="ring of users no rule or split places (e.g. no targeting key); "
        "defaults to the last ring",
    )
    pins: dict[str, list[str]] = Field(default_factory=dict, description="ring -> targeting keys")
    opt_in_ring: str | None = Field(default=None, description="ring of users who opted in")
    opt_out_ring: str | None = Field(default=None, description="ring of users who opted out")
    rules: list[Rule] = Field(default_factory=list)
    split: Split | None = None

    @property
    def fallback_ring(self) -> str:
        return self.default_ring if self.default_ring is not None else self.rings[-1]

    def to_document(self) -> dict[str, Any]:
        """The spec as JSON-ready data, the form stored and served."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def check_cohort_set(spec: CohortSetSpec) -> CohortSetSpec:
    """Raise InvalidCohortSet naming every cross-field problem; return the spec when it holds."""
    problems: list[SpecProblem] = []
    rings = set(spec.rings)

    for index, ring in enumerate(spec.rings):
        if not re.match(NAME_PATTERN, ring):
            problems.append(SpecProblem(f"rings[{index}]", f"{ring!r} is not a DNS label; use e.g. 'canary'"))
        if spec.rings.index(ring) != index:
            problems.append(SpecProblem(f"rings[{index}]", f"{ring!r} is listed twice; list each ring once"))

    def need_ring(field: str, ring: str | None) -> None:
        if ring is not None and ring not in rings:
            problems.append(
                SpecProblem(field, f"{ring!r} is not one of the rings {spec.rings}; add it to rings or fix the name")
            )

    need_ring("defaultRing", spec.default_ring)
    need_ring("optInRing", spec.opt_in_ring)
    need_ring("optOutRing", spec.opt_out_ring)

    pinned_to: dict[str, str] = {}
    for ring, keys in spec.pins.items():
        need_ring(f"pins.{ring}", ring)
        for index, key in enumerate(keys):
            if not key:
                problems.append(SpecProblem(f"pins.{ring}[{index}]", "a targeting key cannot be empty"))
            elif key in pinned_to:
                problems.append(
                    SpecProblem(
                        f"pins.{ring}[{index}]",
                        f"{key!r} is already pinned to {pinned_to[key]!r}; pin a key to one ring only",
                    )
                )
            else:
                pinned_to[key] = ring

    seen_rules: set[str] = set()
    for index, rule in enumerate(spec.rules):
        need_ring(f"rules[{index}].ring", rule.ring)
        if rule.name in seen_rules:
            problems.append(SpecProblem(f"rules[{index}].name", f"{rule.name!r} is used twice; rule names are unique"))
        seen_rules.add(rule.name)

    if spec.split is not None:
        problems.extend(_split_problems(spec.split, rings))

    if problems:
        raise InvalidCohortSet(problems)
    return spec


def _split_problems(split: Split, rings: set[str]) -> list[SpecProblem]:
    problems: list[SpecProblem] = []
    total = 0
    for ring, share in split.shares.items():
        field = f"split.shares.{ring}"
        if ring not in rings:
            problems.append(SpecProblem(field, f"{ring!r} is not one of the rings; add it to rings or fix the name"))
        if not 0 <= share <= 100:
            problems.append(SpecProblem(field, f"{share} is not a percentage between 0 and 100"))
        scaled = share * SHARE_SCALE
        if abs(scaled - round(scaled)) > 1e-6:
            problems.append(SpecProblem(field, f"{share} has more than two decimals; round it to e.g. 0.05"))
        total += round(scaled)
    if total != TOTAL_WEIGHT:
        problems.append(
            SpecProblem("split.shares", f"the shares add up to {total / SHARE_SCALE:g}, not 100; adjust them")
        )
    if split.rotation is not None:
        for index, ring in enumerate(split.rotation.rings):
            field = f"split.rotation.rings[{index}]"
            if ring not in rings:
                problems.append(SpecProblem(field, f"{ring!r} is not one of the rings"))
            elif split.weight(ring) == 0:
                problems.append(SpecProblem(field, f"{ring!r} has no share in split.shares, so nothing rotates"))
            if split.rotation.rings.index(ring) != index:
                problems.append(SpecProblem(field, f"{ring!r} is listed twice"))
    return problems


def parse_cohort_set(document: Any) -> CohortSetSpec:
    """Validate a cohort set given as JSON data; raises InvalidCohortSet naming every field at fault."""
    try:
        spec = CohortSetSpec.model_validate(document)
    except ValidationError as error:
        raise InvalidCohortSet(spec_problems(error, "cohort set", "docs/cohorts.md", document)) from None
    return check_cohort_set(spec)


def default_cohort_set() -> CohortSetSpec:
    """The cohort set a fresh database holds."""
    return parse_cohort_set(
        {
            "name": "default",
            "description": "Staff first, then a rotating 5 % canary, opt-in early adopters, and the rest.",
            "rings": list(DEFAULT_RINGS),
            "defaultRing": "stable",
            "optInRing": "early-adopter",
            "optOutRing": "laggard",
            "rules": [
                {
                    "name": "staff",
                    "ring": "canary",
                    "when": {"attribute": "team", "op": "equals", "value": "staff"},
                    "description": "Our own people see every release first.",
                }
            ],
            "split": {
                "shares": {"canary": 5, "early-adopter": 15, "stable": 70, "laggard": 10},
                "rotation": {"period": "7d", "rings": ["canary"]},
            },
        }
    )
