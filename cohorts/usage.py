"""What a usage upload may hold: per-user metrics, when each user was last seen, their attributes.

Usage rules in cohort sets ("active_days_30d gte 20", "seen within 7d") are answered from these
records once stored. The models check everything the store relies on, so a batch that validates
can be stored on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    field_validator,
    model_validator,
)

from cohorts.errors import InvalidUsage, SpecProblem
from cohorts.nesting import shallow
from cohorts.spec import METRIC_PATTERN

MAX_BATCH_ROWS = 10_000
MAX_TARGETING_KEY_LENGTH = 256
# A batch with thousands of repeats needs a short error, not one line per repeat.
MAX_LISTED_DUPLICATES = 10
# Clocks of the systems that upload usage drift; beyond this a timestamp is a bug, not drift.
MAX_CLOCK_SKEW = timedelta(minutes=5)

_METRIC_NAME = re.compile(METRIC_PATTERN)


def _storable_key(value: str) -> str:
    if not value.strip():
        raise ValueError(
            "the targeting key is blank; give the user's targetingKey as the app sends it"
        )
    if "\x00" in value:
        raise ValueError(
            "the targeting key contains a NUL character, which PostgreSQL cannot store; remove it"
        )
    return value


TargetingKey = Annotated[
    str, Field(min_length=1, max_length=MAX_TARGETING_KEY_LENGTH), AfterValidator(_storable_key)
]
"""A user's OpenFeature targetingKey as the store keeps it: 1 to 256 characters, not blank."""


class UsageRecord(BaseModel):
    """One user's usage: metrics to set, optionally when they were last seen, their attributes."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    targeting_key: TargetingKey = Field(alias="targetingKey")
    metrics: dict[str, float] = Field(default_factory=dict)
    last_seen_at: datetime | None = Field(default=None, alias="lastSeenAt")
    attributes: dict[str, JsonValue] | None = None

    @field_validator("metrics", mode="before")
    @classmethod
    def _metrics_are_named_numbers(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        problems = []
        for name, number in value.items():
            if not isinstance(name, str) or not _METRIC_NAME.match(name):
                problems.append(
                    f"{name!r} is not a metric name; use lowercase letters, digits and '_', "
                    "starting with a letter, at most 63 characters, e.g. 'active_days_30d'"
                )
            elif isinstance(number, bool) or not isinstance(number, int | float):
                problems.append(f"{name}: {number!r} is not a number; give e.g. 20 or 0.5")
            elif not math.isfinite(number):
                problems.append(f"{name}: {number!r} is not a finite number; give e.g. 20 or 0.5")
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @field_validator("last_seen_at")
    @classmethod
    def _seen_at_is_aware_and_past(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("give a time zone, e.g. '2024-05-01T12:00:00Z'")
        if value - datetime.now(UTC) > MAX_CLOCK_SKEW:
            raise ValueError(
                f"{value.isoformat()} is in the future; send the time the user was last seen, "
                "and check the sending system's clock"
            )
        return value.astimezone(UTC)

    # Checked before pydantic walks them: it would report each of a thousand levels in the field's path.
    _attributes_not_too_deep = field_validator("attributes", mode="before")(lambda cls, value: shallow(value))

    @field_validator("attributes")
    @classmethod
    def _attributes_leave_the_key_alone(
        cls, value: dict[str, JsonValue] | None
    ) -> dict[str, JsonValue] | None:
        if value is not None and "targetingKey" in value:
            raise ValueError(
                "'targetingKey' is not an attribute; give it once, as the record's targetingKey"
            )
        return value


class UsageBatch(BaseModel):
    """Up to 10,000 usage records, at most one per user, stored all together or not at all.

    Validation raises pydantic's ValidationError for a malformed row, and InvalidUsage naming each
    repeated row (e.g. `rows[17].targetingKey`) when the rows are well formed but a user repeats.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    rows: list[UsageRecord]

    @field_validator("rows", mode="before")
    @classmethod
    def _batch_size(cls, value: Any) -> Any:
        # Checked before the rows are validated, so an oversized upload is refused cheaply.
        if isinstance(value, list) and not 1 <= len(value) <= MAX_BATCH_ROWS:
            raise ValueError(
                f"a batch holds 1 to {MAX_BATCH_ROWS:,} rows, not {len(value):,}; "
                f"split the upload into batches of at most {MAX_BATCH_ROWS:,}"
            )
        return value

    @model_validator(mode="after")
    def _one_row_per_user(self) -> UsageBatch:
        # Raised as InvalidUsage rather than a ValueError so the problem names its row and field
        # (pydantic would place an error from here on the batch as a whole).
        first_row: dict[str, int] = {}
        problems = []
        for index, row in enumerate(self.rows):
            earlier = first_row.setdefault(row.targeting_key, index)
            if earlier != index:
                problems.append(
                    SpecProblem(
                        f"rows[{index}].targetingKey",
                        f"{row.targeting_key!r} is already in rows[{earlier}]; "
                        "send each user once per batch, with all their metrics in one row",
                    )
                )
        if len(problems) > MAX_LISTED_DUPLICATES:
            hidden = len(problems) - MAX_LISTED_DUPLICATES
            problems = [
                *problems[:MAX_LISTED_DUPLICATES],
                SpecProblem("rows", f"and {hidden:,} more repeated targeting keys"),
            ]
        if problems:
            raise InvalidUsage(problems)
        return self
