"""What a flag declares: its type and variants, default, state, targeting, metadata and flag set.

Targeting is one of two forms. A ring mapping says which variant each ring of a cohort set gets,
`{"rings": {"cohortSet": "default", "variants": {"canary": "on"}, "otherwise": "off"}}`, and is
what a rollout changes as it promotes rings; it may pin the set's `version` and rotation `epoch`
so no user changes ring mid-rollout. Raw flagd targeting, `{"jsonLogic": {...}}`, is any flagd
rule; it may read a user's ring with `{"$ref": "ring-<cohort set>"}`.

A spec is plain data (pydantic models). `check_flag` finds what pydantic cannot see field by field
(a variant of the wrong type, a ring the cohort set does not have, a default that is no variant) and
raises `InvalidFlag` naming every field at fault.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError
from pydantic.alias_generators import to_camel

from cohorts.db import MAX_INTEGER
from cohorts.errors import SpecProblem, spec_problems
from cohorts.flagd import ring_flag_key
from cohorts.nesting import Shallow
from cohorts.spec import NAME_PATTERN
from rollout.flags.errors import InvalidFlag
from rollout.flags.targeting import references, result_literals, targeting_problems

# flagd accepts any non-empty key; this keeps keys safe in URLs, shells and metric labels.
FLAG_KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
VARIANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
FLAG_SET_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_./-]{0,127}$"
RING_EVALUATOR_PREFIX = ring_flag_key("")
# Metadata keys the document fills in itself; a flag's own metadata may not use them.
RESERVED_METADATA = ("flagSetId", "flagVersion", "cohortSet", "cohortSetVersion", "rotationEpoch")

FlagType = Literal["boolean", "string", "integer", "float", "object"]
FlagState = Literal["ENABLED", "DISABLED"]

_TYPE_WORDS: dict[str, str] = {
    "boolean": "true or false",
    "string": "a string",
    "integer": "a whole number such as 3",
    "float": "a number such as 0.5",
    "object": 'a JSON object such as {"color": "red"}',
}


class RingSource(NamedTuple):
    """The ring logic a flag reads: a cohort set at a version and rotation epoch, None meaning the current one."""

    cohort_set: str
    version: int | None = None
    epoch: int | None = None

    @property
    def pinned(self) -> bool:
        return self.version is not None or self.epoch is not None


class _Model(BaseModel):
    # camelCase on the wire, like Kubernetes, flagd and OpenFeature; snake_case in Python.
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, alias_generator=to_camel)


class RingVariants(_Model):
    """Which variant each ring of a cohort set gets; rings not listed get `otherwise`."""

    cohort_set: str = Field(pattern=NAME_PATTERN, description="the cohort set whose rings are mapped")
    version: int | None = Field(
        default=None, ge=1, le=MAX_INTEGER,
        description="the cohort set version rings are evaluated with; none means the current one",
    )
    epoch: int | None = Field(default=None, ge=0, description="the rotation epoch; none means the current one")
    variants: dict[str, str] = Field(default_factory=dict, description="ring -> variant")
    otherwise: str | None = Field(
        default=None, description="variant of every other ring; none means the flag's defaultVariant"
    )

    @property
    def source(self) -> RingSource:
        return RingSource(self.cohort_set, self.version, self.epoch)


class RingTargeting(_Model):
    rings: RingVariants


class JsonLogicTargeting(_Model):
    json_logic: Annotated[dict[str, Any], Shallow] = Field(description="flagd targeting, as in a flagd flag's "
                                                                       "`targeting`")


def _targeting_kind(value: Any) -> str | None:
    if isinstance(value, BaseModel):
        return type(value).__name__
    if isinstance(value, dict):
        if "rings" in value:
            return "RingTargeting"
        if "jsonLogic" in value or "json_logic" in value:
            return "JsonLogicTargeting"
    return None


Targeting = Annotated[
    Annotated[RingTargeting, Tag("RingTargeting")] | Annotated[JsonLogicTargeting, Tag("JsonLogicTargeting")],
    Discriminator(
        _targeting_kind,
        custom_error_type="unknown_targeting",
        custom_error_message='targeting is {"rings": {"cohortSet": ..., "variants": {...}}} or {"jsonLogic": {...}}',
    ),
]


class FlagSpec(_Model):
    key: str = Field(pattern=FLAG_KEY_PATTERN, description="the flag key apps evaluate, e.g. 'new-checkout'")
    description: str = ""
    type: FlagType
    variants: dict[str, Annotated[Any, Shallow]] = Field(min_length=1, description="variant name -> value, every "
                                                                                    "value of `type`")
    default_variant: str | None = Field(
        default=None, description="served when targeting gives nothing; none means the app's code default"
    )
    state: FlagState = "ENABLED"
    targeting: Targeting | None = None
    metadata: dict[str, Annotated[Any, Shallow]] = Field(default_factory=dict,
                                                         description="strings, numbers and booleans, as flagd allows")
    flag_set: str | None = Field(
        default=None, pattern=FLAG_SET_PATTERN, description="served as metadata flagSetId, which selectors filter on"
    )

    def cohort_sets(self) -> set[str]:
        """The cohort sets whose rings this flag's targeting reads."""
        return {source.cohort_set for source in self.ring_sources()}

    def ring_sources(self) -> set[RingSource]:
        """The ring logic this flag's targeting reads; raw targeting reads each set's current one."""
        if isinstance(self.targeting, RingTargeting):
            return {self.targeting.rings.source}
        if isinstance(self.targeting, JsonLogicTargeting):
            return {
                RingSource(name.removeprefix(RING_EVALUATOR_PREFIX))
                for name in references(self.targeting.json_logic)
                if name.startswith(RING_EVALUATOR_PREFIX)
            }
        return set()

    def to_document(self) -> dict[str, Any]:
        """The spec as JSON-ready data, the form stored and served."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def _type_fits(flag_type: str, value: Any) -> bool:
    if flag_type == "boolean":
        return isinstance(value, bool)
    if flag_type == "string":
        return isinstance(value, str)
    if flag_type == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if flag_type == "float":
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, dict)


def _is_metadata_value(value: Any) -> bool:
    return isinstance(value, str | int) or (isinstance(value, float) and math.isfinite(value))


def check_flag(
    spec: FlagSpec,
    cohort_rings: Mapping[str, Sequence[str]],
    version_rings: Mapping[tuple[str, int], Sequence[str]] | None = None,
) -> FlagSpec:
    """Raise InvalidFlag naming every cross-field problem; return the spec, float variants as floats.

    `cohort_rings` holds the current rings of every cohort set that exists (at least of those the
    flag names); a set missing from it does not exist. `version_rings` holds the rings of each
    (cohort set, version) that exists, at least of the version a ring mapping pins; a pinned
    version missing from it (or every one, when it is not given) does not exist.
    """
    problems: list[SpecProblem] = []
    variants = spec.variants
    for name, value in variants.items():
        if not re.match(VARIANT_PATTERN, name):
            problems.append(SpecProblem(f"variants.{name}", f"{name!r} is not a variant name; use letters, "
                                                            "digits, '-', '_' or '.', e.g. 'on'"))
        if not _type_fits(spec.type, value):
            problems.append(SpecProblem(f"variants.{name}", f"the flag's type is {spec.type}, so each value is "
                                                            f"{_TYPE_WORDS[spec.type]}, not {value!r}"))
    problems += _variant_problems("defaultVariant", spec.default_variant, variants)
    for key, value in spec.metadata.items():
        if not _is_metadata_value(value):
            problems.append(SpecProblem(f"metadata.{key}", f"flagd metadata is a string, number or boolean, not "
                                                           f"{value!r}"))
        if key in RESERVED_METADATA:
            fix = "set flagSet instead" if key == "flagSetId" else "Ringmaster fills it in; choose another name"
            problems.append(SpecProblem(f"metadata.{key}", f"{key!r} is reserved: {fix}"))
    if isinstance(spec.targeting, RingTargeting):
        problems += _ring_problems(spec.targeting.rings, variants, cohort_rings, version_rings or {})
    elif isinstance(spec.targeting, JsonLogicTargeting):
        problems += _json_logic_problems(spec.targeting.json_logic, variants, cohort_rings)

    if problems:
        raise InvalidFlag(problems)
    if spec.type == "float":
        return spec.model_copy(update={"variants": {name: float(value) for name, value in variants.items()}})
    return spec


def _variant_problems(field: str, variant: str | None, variants: Mapping[str, Any]) -> list[SpecProblem]:
    if variant is None or variant in variants:
        return []
    return [SpecProblem(field, f"{variant!r} is not one of the variants {sorted(variants)}")]


def _ring_problems(
    mapping: RingVariants,
    variants: Mapping[str, Any],
    cohort_rings: Mapping[str, Sequence[str]],
    version_rings: Mapping[tuple[str, int], Sequence[str]],
) -> list[SpecProblem]:
    problems: list[SpecProblem] = []
    cohort_set = f"cohort set {mapping.cohort_set!r}"
    rings = cohort_rings.get(mapping.cohort_set)
    if rings is None:
        problems.append(SpecProblem("targeting.rings.cohortSet", f"{cohort_set} does not exist; "
                                                                 "list them with `ringmaster cohort list`"))
    elif mapping.version is not None:
        # The rings mapped are those of the version the mapping is evaluated with, not the current one's.
        rings = version_rings.get((mapping.cohort_set, mapping.version))
        if rings is None:
            problems.append(SpecProblem("targeting.rings.version", f"{cohort_set} has no version {mapping.version}; "
                                        f"list its versions with GET /api/v1/cohort-sets/{mapping.cohort_set}/"
                                        "versions, or leave version out for the current one"))
        cohort_set = f"version {mapping.version} of {cohort_set}"
    for ring, variant in mapping.variants.items():
        field = f"targeting.rings.variants.{ring}"
        if rings is not None and ring not in rings:
            problems.append(SpecProblem(field, f"{ring!r} is not a ring of {cohort_set}, "
                                               f"whose rings are {list(rings)}"))
        problems += _variant_problems(field, variant, variants)
    problems += _variant_problems("targeting.rings.otherwise", mapping.otherwise, variants)
    return problems


def _json_logic_problems(
    logic: dict[str, Any], variants: Mapping[str, Any], cohort_rings: Mapping[str, Sequence[str]]
) -> list[SpecProblem]:
    field = "targeting.jsonLogic"
    problems = targeting_problems(logic, field)
    for name in sorted(references(logic)):
        cohort_set = name.removeprefix(RING_EVALUATOR_PREFIX)
        if not name.startswith(RING_EVALUATOR_PREFIX) or cohort_set not in cohort_rings:
            problems.append(SpecProblem(f"{field}.$ref", f"{name!r} is not an evaluator Ringmaster provides; "
                                                         "use 'ring-<cohort set>', e.g. 'ring-default'"))
    if problems:
        return problems
    for path, value in result_literals(logic, field):
        if value is None:
            continue
        # flagd looks a boolean result up as the variant named "true" or "false".
        name = str(value).lower() if isinstance(value, bool) else value
        if not isinstance(name, str):
            problems.append(SpecProblem(path, f"{value!r} selects no variant; return a variant name"))
        elif name not in variants:
            problems.append(SpecProblem(path, f"{value!r} is not one of the variants {sorted(variants)}"))
    return problems


def parse_flag(
    document: Any,
    cohort_rings: Mapping[str, Sequence[str]],
    version_rings: Mapping[tuple[str, int], Sequence[str]] | None = None,
) -> FlagSpec:
    """Validate a flag given as JSON data; raises InvalidFlag naming every field at fault."""
    try:
        spec = FlagSpec.model_validate(document)
    except ValidationError as error:
        raise InvalidFlag(spec_problems(error, "flag", "docs/flags.md", document)) from None
    return check_flag(spec, cohort_rings, version_rings)
