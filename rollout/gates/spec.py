"""What a gate declares: an `SLOGate`'s spec, or a gate written inline in a Rollout.

A gate is one of three kinds (threshold, burnRate, comparison), a minimum sample below which it
does not judge, and how it is evaluated over a ring's bake (interval, count, limits). Its queries
are templates: `{{ newStatefulSet }}` and the like are filled in for each measurement
(`VARIABLES` lists them). docs/gates.md documents every field with an example.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from cohorts.spec import NAME_PATTERN, parse_duration_s

GROUP = "ringmaster.dev"
VERSION = "v1alpha1"
PLURAL = "slogates"
KIND = "SLOGate"

MAX_DURATION_S = 365 * 86400

# What a query template may name, and what each becomes (docs/gates.md):
VARIABLES: dict[str, str] = {
    "namespace": "the Rollout's namespace",
    "rollout": "the Rollout's name",
    "ring": "the ring being baked",
    "promotedRings": "the rings that have the new version, as a regex alternation: 'canary|early-adopter'",
    "stableStatefulSet": "the StatefulSet of the old version (the baseline)",
    "newStatefulSet": "the StatefulSet of the new version",
    "stableRevision": "the old pods' controller-revision-hash",
    "newRevision": "the new pods' controller-revision-hash",
    "statefulSet": "the side being measured: the new StatefulSet, or for a comparison each side in turn",
    "revision": "the controller-revision-hash of the side being measured",
    "window": "the window to look back over, as a PromQL duration such as '90s'",
    "interval": "the gate's interval, as a PromQL duration",
}
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_BRACES = re.compile(r"\{\{|\}\}")


def placeholders(template: str) -> list[str]:
    return _PLACEHOLDER.findall(template)


def render(template: str, values: dict[str, str]) -> str:
    """The query with every `{{ variable }}` replaced; templates are checked when parsed, so all are known."""
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], template)


def _query(value: str) -> str:
    if not value.strip():
        raise ValueError("must be a PromQL query")
    unknown = sorted(set(placeholders(value)) - set(VARIABLES))
    if unknown:
        raise ValueError(f"names unknown template variables {unknown}; use {sorted(VARIABLES)}")
    if _BRACES.search(_PLACEHOLDER.sub("", value)):
        raise ValueError("has an unclosed or malformed '{{ }}'; write variables as '{{ newStatefulSet }}'")
    return value


def _duration(value: str, *, allow_zero: bool = False) -> str:
    try:
        seconds = parse_duration_s(value, allow_zero=allow_zero)
    except ValueError:
        raise ValueError(f"{value!r} is not a duration; use e.g. '30s', '5m' or '1h'") from None
    if seconds > MAX_DURATION_S:
        raise ValueError(f"{value!r} is longer than 365d; use at most '365d'")
    return value


def seconds(duration: str) -> int:
    return parse_duration_s(duration, allow_zero=True)


def promql_duration(seconds_: float) -> str:
    """A whole number of seconds as PromQL writes a duration: 90 -> '90s'."""
    return f"{max(1, round(seconds_))}s"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, alias_generator=to_camel)


class Threshold(_Model):
    """A query yielding one value. Within [min, max] passes; beyond failBelow / failAbove (which default
    to min / max) fails; between the two bounds is inconclusive, for a human to judge."""

    query: str
    min: float | None = None
    max: float | None = None
    fail_below: float | None = None
    fail_above: float | None = None

    _is_query = field_validator("query")(lambda cls, value: _query(value))

    @model_validator(mode="after")
    def _bounded(self) -> Threshold:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both; a threshold without bounds judges nothing")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        if self.fail_above is not None and (self.max is None or self.fail_above < self.max):
            raise ValueError("failAbove widens max: give max too, and failAbove at least max")
        if self.fail_below is not None and (self.min is None or self.fail_below > self.min):
            raise ValueError("failBelow widens min: give min too, and failBelow at most min")
        return self


class BurnWindow(_Model):
    """A pair of windows: harm when the burn rate exceeds `factor` over both the long and the short one."""

    long: str
    short: str
    factor: float = Field(gt=0)

    _is_duration = field_validator("long", "short")(lambda cls, value: _duration(value))

    @model_validator(mode="after")
    def _ordered(self) -> BurnWindow:
        if seconds(self.short) > seconds(self.long):
            raise ValueError(f"short window {self.short} is longer than long window {self.long}")
        return self


# The SRE workbook's page-worthy pairs for a 30-day SLO: 2 % of the budget in 1 h, 5 % in 6 h.
DEFAULT_BURN_WINDOWS = (
    BurnWindow(long="1h", short="5m", factor=14.4),
    BurnWindow(long="6h", short="30m", factor=6),
)


class BurnRate(_Model):
    """Error-budget burn: (errors / total) / (1 - objective), over pairs of windows."""

    objective: float = Field(gt=0, lt=100, description="the SLO target in percent, e.g. 99.9")
    errors: str = Field(description="bad events over {{ window }}, e.g. sum(increase(...{code=~'5..'}[{{ window }}]))")
    total: str = Field(description="all events over {{ window }}")
    windows: list[BurnWindow] = Field(default_factory=lambda: list(DEFAULT_BURN_WINDOWS), min_length=1)

    _is_query = field_validator("errors", "total")(lambda cls, value: _query(value))

    @property
    def budget(self) -> float:
        return 1 - self.objective / 100


class Comparison(_Model):
    """The new version against the baseline (the old one), on the same metric, with a statistical test.

    twoProportion: `errors` and `total` are counted on each side; the new version fails when its
    error ratio is significantly higher and beyond maxRatio / maxDifference.
    mannWhitney: `query` is a range query (one value per `step`) on each side, e.g. a p95 latency;
    the new version fails when its values are significantly higher (or lower, with direction
    decrease) and their medians differ beyond maxRatio / maxDifference.
    """

    test: Literal["twoProportion", "mannWhitney"]
    errors: str | None = None
    total: str | None = None
    query: str | None = None
    step: str = "10s"
    min_points: int = Field(default=10, ge=3, description="mannWhitney: values needed on each side")
    direction: Literal["increase", "decrease"] = Field(default="increase", description="which change is harm")
    max_ratio: float | None = Field(default=None, ge=1, description="new / baseline allowed, e.g. 1.5")
    max_difference: float | None = Field(default=None, ge=0, description="new - baseline allowed, e.g. 0.01")
    confidence: float = Field(default=0.99, gt=0.5, lt=1, description="1 - the test's significance level")

    @field_validator("errors", "total", "query")
    @classmethod
    def _is_query(cls, value: str | None) -> str | None:
        return None if value is None else _query(value)

    _is_step = field_validator("step")(lambda cls, value: _duration(value))

    @model_validator(mode="after")
    def _complete(self) -> Comparison:
        if self.test == "twoProportion" and (self.errors is None or self.total is None or self.query is not None):
            raise ValueError("twoProportion counts `errors` and `total` on each side; give both, and no `query`")
        if self.test == "mannWhitney" and (self.query is None or self.errors is not None):
            raise ValueError("mannWhitney compares the values of a range `query` on each side; give `query` "
                             "(and `total` to count samples), not `errors`")
        if self.max_ratio is None and self.max_difference is None:
            raise ValueError("give maxRatio, maxDifference or both: how much worse the new version may be")
        return self

    @property
    def significance(self) -> float:
        return 1 - self.confidence


class GateSpec(_Model):
    """A gate: exactly one of threshold, burnRate, comparison; a minimum sample; an evaluation schedule."""

    threshold: Threshold | None = None
    burn_rate: BurnRate | None = None
    comparison: Comparison | None = None
    samples: str | None = Field(default=None, description="threshold: a query counting the samples behind the value")
    min_samples: float = Field(default=0, ge=0, description="samples (e.g. requests) needed before judging")
    window: str | None = Field(default=None, description="how far back queries look; default the bake so far")
    min_window: str = Field(default="30s", description="the shortest window a query looks back over")
    interval: str = "30s"
    count: int | None = Field(default=None, ge=1, description="measurements to take; default until the bake ends")
    failure_limit: int = Field(default=0, ge=0, description="failed measurements tolerated; one more fails the gate")
    inconclusive_limit: int = Field(default=0, ge=0, description="inconclusive measurements tolerated")
    consecutive_error_limit: int | None = Field(
        default=None, ge=1, description="query errors in a row after which the rollout pauses for a human; "
                                        "default: hold and retry for as long as it takes")
    timeout: str = Field(default="5s", description="how long one query may take")

    _is_samples = field_validator("samples")(lambda cls, value: None if value is None else _query(value))
    _is_optional_window = field_validator("window")(lambda cls, value: None if value is None else _duration(value))
    _is_durations = field_validator("min_window", "interval", "timeout")(lambda cls, value: _duration(value))

    @model_validator(mode="after")
    def _one_kind(self) -> GateSpec:
        kinds = [name for name in ("threshold", "burnRate", "comparison") if getattr(self, to_snake(name))]
        if len(kinds) != 1:
            raise ValueError(f"give exactly one of threshold, burnRate or comparison (found {kinds or 'none'})")
        if self.threshold is not None and self.min_samples > 0 and self.samples is None:
            raise ValueError("minSamples on a threshold gate needs `samples`, a query counting them")
        if self.comparison is not None and self.comparison.test == "mannWhitney" and self.min_samples > 0 \
                and self.comparison.total is None:
            raise ValueError("minSamples on a mannWhitney comparison needs comparison.total, a query counting them")
        return self

    @property
    def kind(self) -> Literal["threshold", "burnRate", "comparison"]:
        if self.threshold is not None:
            return "threshold"
        return "burnRate" if self.burn_rate is not None else "comparison"

    @property
    def interval_s(self) -> int:
        return seconds(self.interval)

    @property
    def timeout_s(self) -> int:
        return seconds(self.timeout)


def to_snake(name: str) -> str:
    return re.sub(r"([A-Z])", lambda match: "_" + match.group(1).lower(), name)


_GATE_FIELDS = {to_camel(name) for name in GateSpec.model_fields} | set(GateSpec.model_fields)


class GateUse(_Model):
    """An entry of a Rollout's `gates` (every ring) or `rings[i].gates`: a reference or an inline gate.

    `{ref: error-budget}` uses the SLOGate of that name in the Rollout's namespace (`name` renames it);
    `{name: p95-latency, threshold: {...}, ...}` is a gate written in place.
    """

    name: str | None = Field(default=None, pattern=NAME_PATTERN)
    ref: str | None = Field(default=None, pattern=NAME_PATTERN)
    gate: GateSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _split(cls, raw: Any) -> Any:
        if not isinstance(raw, dict) or "gate" in raw:
            return raw
        inline = {key: value for key, value in raw.items() if key in _GATE_FIELDS}
        rest = {key: value for key, value in raw.items() if key not in _GATE_FIELDS}
        return {**rest, "gate": inline} if inline else rest

    @model_validator(mode="after")
    def _one_source(self) -> GateUse:
        if (self.ref is None) == (self.gate is None):
            raise ValueError("a gate is `ref: <SLOGate name>` or an inline gate with `name` and one of threshold, "
                             "burnRate or comparison; not both, not neither")
        if self.gate is not None and self.name is None:
            raise ValueError("an inline gate needs a `name`")
        return self

    @property
    def gate_name(self) -> str:
        name = self.name or self.ref
        assert name is not None
        return name
