"""What a Rollout declares (`spec` of a `rollouts.ringmaster.dev` object), as pydantic models.

The API server's structural schema (deploy/crd/rollouts.yaml) refuses malformed objects; this
module checks everything again, because the controller must never trust what it reads, and checks
what a schema cannot (durations, a template or an image but not both, ring order). Every problem is
reported with its field, e.g. `spec.rings[1].bake: '3x' is not a duration; use e.g. '30m' or '2h'`.
docs/rollout-spec.md documents every field.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from cohorts.errors import SpecProblem
from cohorts.nesting import shallow
from cohorts.spec import NAME_PATTERN, parse_duration_s
from rollout.flags.spec import FLAG_KEY_PATTERN, VARIANT_PATTERN
from rollout.gates.spec import GateUse

GROUP = "ringmaster.dev"
VERSION = "v1alpha1"
PLURAL = "rollouts"
KIND = "Rollout"

# A new revision's StatefulSet is `<name>-<10 hex digits>`, and its pods `<that>-<ordinal>`; pod
# names are DNS labels (63), so the base name leaves room for both suffixes.
REVISION_HEX_DIGITS = 10
MAX_BASE_NAME = 63 - 1 - REVISION_HEX_DIGITS - 1 - 5
DEFAULT_BAKE = "1m"
# Far beyond any sensible bake or window, and far inside what datetime arithmetic can hold.
MAX_DURATION = "365d"
MAX_DURATION_S = 365 * 86400
_PERCENT = re.compile(r"^(\d{1,3})%$")


class InvalidRolloutSpec(ValueError):
    """A Rollout spec that cannot be acted on; `problems` names each field and its fix."""

    def __init__(self, problems: Sequence[SpecProblem]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(str(problem) for problem in self.problems))


class _Model(BaseModel):
    # camelCase on the wire, like every Kubernetes resource.
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, alias_generator=to_camel)


def _duration(value: str, *, allow_zero: bool) -> str:
    try:
        seconds = parse_duration_s(value, allow_zero=allow_zero)
    except ValueError as error:
        raise ValueError(str(error).replace("'7d' or '1w'", "'90s' or '2h'")) from None
    if seconds > MAX_DURATION_S:
        raise ValueError(f"{value!r} is longer than {MAX_DURATION}; use at most {MAX_DURATION}")
    return value


def _template(value: dict[str, Any]) -> dict[str, Any]:
    """A pod template as the StatefulSet will need it; the API server keeps whatever the schema lets through."""
    shallow(value)  # the revision hashes its JSON, which recurses
    metadata = value.get("metadata", {})
    if not isinstance(metadata, dict):
        raise ValueError("metadata must be an object with labels and annotations")
    for part in ("labels", "annotations"):
        entries = metadata.get(part, {})
        if not isinstance(entries, dict) or not all(
                isinstance(key, str) and isinstance(item, str) for key, item in entries.items()):
            raise ValueError(f"metadata.{part} must map strings to strings")
    pod = value.get("spec")
    containers = pod.get("containers") if isinstance(pod, dict) else None
    if not isinstance(containers, list) or not containers:
        raise ValueError("spec.containers must list at least one container")
    for index, container in enumerate(containers):
        if not isinstance(container, dict) or not isinstance(container.get("name"), str) \
                or not isinstance(container.get("image"), str):
            raise ValueError(f"spec.containers[{index}] needs a name and an image, both strings")
    return value


class RingStep(_Model):
    """One ring of the rollout: how long it bakes once its capacity is up and its users have the flag."""

    name: str = Field(pattern=NAME_PATTERN, description="a ring of the cohort set")
    bake: str = Field(default=DEFAULT_BAKE, description="e.g. '0s', '90s', '30m', '2h'")
    share: float | None = Field(
        default=None, gt=0, le=100,
        description="percent of the replicas the new version has once this ring is up (cumulative); "
                    "default: the ring's cumulative share of users",
    )
    gates: list[GateUse] = Field(default_factory=list, description="gates judged while this ring bakes, "
                                                                 "besides the Rollout's own `gates`")

    @field_validator("bake")
    @classmethod
    def _is_bake(cls, value: str) -> str:
        return _duration(value, allow_zero=True)

    @property
    def bake_s(self) -> int:
        return parse_duration_s(self.bake, allow_zero=True)


class FlagBinding(_Model):
    """The flag a rollout turns on ring by ring; created (boolean, on/off) when it does not exist."""

    key: str = Field(pattern=FLAG_KEY_PATTERN)
    on_variant: str = Field(default="on", pattern=VARIANT_PATTERN)
    off_variant: str = Field(default="off", pattern=VARIANT_PATTERN)

    @model_validator(mode="after")
    def _distinct(self) -> FlagBinding:
        if self.on_variant == self.off_variant:
            raise ValueError("onVariant and offVariant must differ; e.g. 'on' and 'off'")
        return self


class Scaling(_Model):
    max_surge: int | str = Field(
        default="25%", description="replicas above the target while moving, a count ≥ 1 or a percent such as '25%'"
    )
    ready_timeout: str = Field(default="5m", description="how long new capacity may take to become ready")
    rollback_window: str = Field(
        default="10m", description="how long a replaced StatefulSet that Ringmaster created is kept at 0 replicas"
    )

    @field_validator("max_surge")
    @classmethod
    def _is_surge(cls, value: int | str) -> int | str:
        if isinstance(value, bool):
            raise ValueError("is a count such as 1 or a percent such as '25%'")
        if isinstance(value, int):
            if value < 1:
                raise ValueError("must be at least 1: make-before-break needs room for one new replica")
            return value
        match = _PERCENT.match(value)
        if match is None or not 0 < int(match.group(1)) <= 100:
            raise ValueError(f"{value!r} is not a surge; use a count such as 1 or a percent from '1%' to '100%'")
        return value

    @field_validator("ready_timeout", "rollback_window")
    @classmethod
    def _is_duration(cls, value: str) -> str:
        return _duration(value, allow_zero=False)

    @property
    def ready_timeout_s(self) -> int:
        return parse_duration_s(self.ready_timeout)

    @property
    def rollback_window_s(self) -> int:
        return parse_duration_s(self.rollback_window)

    def surge_replicas(self, target_replicas: int) -> int:
        """maxSurge in replicas for a target of `target_replicas`; at least 1."""
        if isinstance(self.max_surge, int):
            return self.max_surge
        percent = int(self.max_surge.rstrip("%"))
        return max(1, math.ceil(target_replicas * percent / 100))


class RolloutSpec(_Model):
    stateful_set_name: str = Field(pattern=NAME_PATTERN, max_length=MAX_BASE_NAME,
                                   description="the StatefulSet running the current version")
    image: str | None = Field(default=None, min_length=1, description="the new version as an image change")
    container: str | None = Field(default=None, pattern=NAME_PATTERN,
                                  description="the container whose image changes; default the first")
    template: dict[str, Any] | None = Field(default=None, description="the new version as a full pod template")
    cohort_set: str = Field(default="default", pattern=NAME_PATTERN)
    rings: list[RingStep] = Field(
        default_factory=list, description="every ring of the cohort set, in order; empty: all with the default bake"
    )
    flag: FlagBinding
    sizing: Literal["estimate", "configured"] = "estimate"
    scaling: Scaling = Field(default_factory=Scaling)
    gates: list[GateUse] = Field(default_factory=list, description="gates judged in every ring")
    failure_policy: Literal["rollback", "pause"] = "rollback"
    paused: bool = False

    @field_validator("template")
    @classmethod
    def _is_template(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if value is None else _template(value)

    @model_validator(mode="after")
    def _one_version(self) -> RolloutSpec:
        if (self.image is None) == (self.template is None):
            raise ValueError("give the new version as `image` (an image change) or `template` (a pod template), "
                             "exactly one of them")
        if self.container is not None and self.image is None:
            raise ValueError("`container` names the container whose `image` changes; with `template` leave it out")
        names = [ring.name for ring in self.rings]
        if len(set(names)) != len(names):
            raise ValueError(f"rings name a ring twice: {names}")
        for ring in self.rings or [RingStep(name="ring")]:
            gate_names = [use.gate_name for use in [*self.gates, *ring.gates]]
            if len(set(gate_names)) != len(gate_names):
                raise ValueError(f"gates of ring {ring.name} name a gate twice: {gate_names}; give each a "
                                 "`name` of its own")
        return self

    def revision(self) -> str:
        """The new version's revision: a hash of what the spec says the new pods run."""
        source: Any = self.template if self.template is not None else {"image": self.image, "container": self.container}
        text = json.dumps(source, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:REVISION_HEX_DIGITS]

    def gates_of(self, ring: RingStep) -> list[GateUse]:
        """The gates judged while `ring` bakes: the Rollout's own, then the ring's."""
        return [*self.gates, *ring.gates]

    def ring_steps(self, cohort_rings: Sequence[str]) -> list[RingStep]:
        """The rings in release order, with default bakes when the spec lists none."""
        return list(self.rings) or [RingStep(name=ring) for ring in cohort_rings]


def _field_path(location: tuple[int | str, ...]) -> str:
    path = "spec"
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.startswith("function-after") or part in {"int", "str", "gate"}:
            continue
        else:
            path += f".{to_camel(part) if '_' in part else part}"
    return path


def parse_rollout_spec(raw: Any) -> RolloutSpec:
    """The spec of a Rollout object, or InvalidRolloutSpec naming every field at fault."""
    if not isinstance(raw, dict):
        raise InvalidRolloutSpec([SpecProblem("spec", "must be an object with statefulSetName, image or template, "
                                                      "and flag")])
    try:
        return RolloutSpec.model_validate(raw)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            message = item["msg"].removeprefix("Value error, ")
            if item["type"] == "extra_forbidden":
                message = "is not a field of a Rollout spec; see docs/rollout-spec.md"
            elif item["type"] == "missing":
                message = "is required"
            problems.append(SpecProblem(_field_path(item["loc"]), message))
        raise InvalidRolloutSpec(_deduplicated(problems)) from None


def _deduplicated(problems: list[SpecProblem]) -> list[SpecProblem]:
    # `maxSurge: "x"` fails as int and as str; say it once.
    seen: dict[str, SpecProblem] = {}
    for problem in problems:
        seen.setdefault(problem.field, problem)
    return list(seen.values())


def check_rings(spec: RolloutSpec, cohort_set_rings: Sequence[str]) -> list[SpecProblem]:
    """Problems with the rings against the cohort set's: every ring, in the set's order."""
    if not spec.rings:
        return []
    listed = [ring.name for ring in spec.rings]
    problems = []
    for index, name in enumerate(listed):
        if name not in cohort_set_rings:
            problems.append(SpecProblem(f"spec.rings[{index}].name", f"{name!r} is not a ring of cohort set "
                                                                     f"{spec.cohort_set!r}, whose rings are "
                                                                     f"{list(cohort_set_rings)}"))
    if not problems and listed != list(cohort_set_rings):
        problems.append(SpecProblem("spec.rings", f"list every ring of cohort set {spec.cohort_set!r} in its order, "
                                                  f"{list(cohort_set_rings)}, or leave rings out; a ring left out "
                                                  "would never get the new version"))
    shares = [ring.share for ring in spec.rings if ring.share is not None]
    if shares != sorted(shares):
        problems.append(SpecProblem("spec.rings", "share is cumulative: each ring's share must be at least the one "
                                                  "before it"))
    return problems
