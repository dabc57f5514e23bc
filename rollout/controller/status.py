"""What the controller records in a Rollout's `status`: phase, ring, pins, timers, history, conditions.

The status is the controller's memory between reconciles: which revision is moving, from which
StatefulSet to which, the target it pinned, the ring it is in and when that ring's bake ends. Every
other fact (replicas, readiness, the flag's rings) is read again from the world each time.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

Phase = Literal["Pending", "Progressing", "Paused", "Halted", "Succeeded", "RollingBack", "RolledBack", "Failed"]
# The course a rollout is on; Paused and Halted are shown over it while it is frozen.
Track = Literal["Pending", "Progressing", "Succeeded", "RollingBack", "RolledBack", "Failed"]
ACTIVE_TRACKS: frozenset[str] = frozenset({"Pending", "Progressing", "RollingBack", "Failed"})
ConditionType = Literal["Progressing", "Paused", "Halted", "InvalidSpec", "Available"]
CONDITION_TYPES: tuple[ConditionType, ...] = ("Progressing", "Paused", "Halted", "InvalidSpec", "Available")
MAX_HISTORY = 20


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True, alias_generator=to_camel)


class Condition(_Model):
    type: ConditionType
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: datetime


class Pin(_Model):
    """What a rollout fixed when it started, so no user changes ring and no target moves mid-rollout."""

    cohort_set: str
    version: int
    epoch: int
    source: str = Field(description="where the shares came from: usage, configured, or spec")
    cumulative_shares: list[float] = Field(description="per ring of the rollout, the share of replicas once it is up")
    target_replicas: int
    replicas: list[int] = Field(description="per ring, the new StatefulSet's replicas once it is up")


class RingRecord(_Model):
    """One ring's passage: when it started, when its capacity and flag were up, when it was promoted."""

    ring: str
    revision: str
    started_at: datetime
    ready_at: datetime | None = None
    promoted_at: datetime | None = None
    outcome: str | None = None


GatePhase = Literal["Running", "Held", "Passed", "Failed", "Inconclusive", "Skipped"]


class GateResult(_Model):
    """A gate's latest measurement: when, the verdict, the numbers, what was required, the queries sent."""

    at: datetime
    verdict: str
    values: dict[str, float] = Field(default_factory=dict)
    threshold: str = ""
    message: str = ""
    queries: list[str] = Field(default_factory=list)


class GateStatus(_Model):
    """Where one gate of the ring being baked stands: its counters, its next measurement, its last result."""

    name: str
    kind: str
    ring: str
    phase: GatePhase = "Running"
    measurements: int = Field(default=0, description="measurements taken, holds included")
    passed: int = 0
    failed: int = 0
    inconclusive: int = 0
    consecutive_errors: int = 0
    next_at: datetime | None = None
    last: GateResult | None = None


class RolloutStatus(_Model):
    phase: Phase = "Pending"
    track: Track = "Pending"
    message: str = ""
    observed_generation: int | None = None
    revision: str | None = Field(default=None, description="the revision being rolled out (or last rolled out)")
    stable_revision: str | None = None
    new_stateful_set: str | None = None
    stable_stateful_set: str | None = None
    pin: Pin | None = None
    ring_index: int = 0
    current_ring: str | None = None
    step: str | None = Field(default=None, description="what the rollout is doing: CreatingStatefulSet, ScalingUpNew, "
                             "WaitingForReady, SettingFlag, FlagOn, ScalingDownOld, Baking, ScalingUpOld, "
                             "ScalingDownNew, Done")
    promoted_rings: list[str] = Field(default_factory=list)
    waiting_since: datetime | None = Field(default=None, description="since when new capacity has been awaited")
    bake_until: datetime | None = None
    bake_remaining_seconds: float | None = Field(default=None, description="bake left while paused or halted")
    rollback_reason: str | None = None
    paused_reason: str | None = Field(default=None, description="set by the failure policy; cleared by resume")
    handled_request: str | None = None
    retire_stateful_set: str | None = None
    retire_after: datetime | None = None
    old_ready: int = 0
    new_ready: int = 0
    transitions: int = Field(default=0, description="a counter of phase and ring changes, for history records")
    history: list[RingRecord] = Field(default_factory=list)
    gates: list[GateStatus] = Field(default_factory=list, description="the gates of the ring being baked")
    conditions: list[Condition] = Field(default_factory=list)

    def to_wire(self) -> dict[str, Any]:
        # The kubernetes client sends an empty string as null, which the schema refuses: leave them out.
        wire: dict[str, Any] = _without_empty_strings(self.model_dump(mode="json", by_alias=True, exclude_none=True))
        return wire

    def condition(self, kind: ConditionType) -> Condition | None:
        return next((condition for condition in self.conditions if condition.type == kind), None)


def _without_empty_strings(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _without_empty_strings(item) for key, item in value.items() if item != ""}
    if isinstance(value, list):
        return [_without_empty_strings(item) for item in value]
    return value


def parse_status(raw: Any) -> RolloutStatus:
    """The recorded status; an empty one when there is none or it cannot be read (it is re-derived)."""
    if not isinstance(raw, dict):
        return RolloutStatus()
    try:
        return RolloutStatus.model_validate(raw)
    except ValidationError:
        return RolloutStatus()
