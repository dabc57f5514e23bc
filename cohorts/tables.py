"""The cohorts schema as SQLAlchemy models: versioned cohort sets, opt choices, usage, audit log.

These models are what the store queries and what Alembic's autogenerate compares the migrations
with; the migrations in `migrations/versions` create the tables. Times are stored in UTC and always
read back timezone-aware, on SQLite as on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import Mapped, mapped_column

from cohorts.db import Base
from cohorts.usage import MAX_TARGETING_KEY_LENGTH

NAME_LENGTH = 63
ACTOR_LENGTH = 256
SUBJECT_LENGTH = 256


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware datetime, stored in UTC.

    SQLite has no time zones: its DATETIME text drops the offset, so values are converted to UTC
    before they are written and marked as UTC when they are read.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(
                f"{value.isoformat()} has no time zone; give an aware time, e.g. datetime.now(UTC)"
            )
        utc = value.astimezone(UTC)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class CohortSetRow(Base):
    """A cohort set by name, with the number of its current version."""

    __tablename__ = "cohort_sets"

    name: Mapped[str] = mapped_column(String(NAME_LENGTH), primary_key=True)
    current_version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class CohortSetVersionRow(Base):
    """One version of a cohort set's spec; versions are never changed once written."""

    __tablename__ = "cohort_set_versions"

    cohort_set: Mapped[str] = mapped_column(
        String(NAME_LENGTH), ForeignKey("cohort_sets.name"), primary_key=True
    )
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    created_by: Mapped[str] = mapped_column(String(ACTOR_LENGTH))
    comment: Mapped[str | None] = mapped_column(Text)


class OptChoiceRow(Base):
    """A user's own choice to be in a cohort set's opt-in ring ('in') or opt-out ring ('out')."""

    __tablename__ = "cohort_opt_choices"
    __table_args__ = (CheckConstraint("choice IN ('in', 'out')", name="choice"),)

    cohort_set: Mapped[str] = mapped_column(
        String(NAME_LENGTH), ForeignKey("cohort_sets.name"), primary_key=True
    )
    targeting_key: Mapped[str] = mapped_column(String(MAX_TARGETING_KEY_LENGTH), primary_key=True)
    choice: Mapped[str] = mapped_column(String(3))
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_by: Mapped[str] = mapped_column(String(ACTOR_LENGTH))


class UsageUserRow(Base):
    """A user known from usage ingestion: when they were last seen and their context attributes."""

    __tablename__ = "usage_users"

    targeting_key: Mapped[str] = mapped_column(String(MAX_TARGETING_KEY_LENGTH), primary_key=True)
    last_seen_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class UsageMetricRow(Base):
    """One per-user aggregate such as active_days_30d, which usage rules compare with a number."""

    __tablename__ = "usage_metrics"
    # Usage rules ask "who has metric m above v"; this index answers that without a scan.
    __table_args__ = (Index(None, "metric", "value"),)

    targeting_key: Mapped[str] = mapped_column(
        String(MAX_TARGETING_KEY_LENGTH),
        ForeignKey("usage_users.targeting_key", ondelete="CASCADE"),
        primary_key=True,
    )
    metric: Mapped[str] = mapped_column(String(NAME_LENGTH), primary_key=True)
    value: Mapped[float] = mapped_column(Float)


class AuditRow(Base):
    """Who changed what, when, with the before and after; the database refuses edits and deletes."""

    __tablename__ = "audit_log"
    # The audit view filters by subject, newest first.
    __table_args__ = (Index(None, "subject", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime)
    actor: Mapped[str] = mapped_column(String(ACTOR_LENGTH))
    action: Mapped[str] = mapped_column(String(NAME_LENGTH))
    subject: Mapped[str] = mapped_column(String(SUBJECT_LENGTH))
    # none_as_null: "no before" (a creation) is SQL NULL, not the JSON text 'null'.
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))

    @classmethod
    def record(
        cls,
        at: datetime,
        actor: str,
        action: str,
        subject: str,
        before: Mapping[str, Any] | None,
        after: Mapping[str, Any] | None,
    ) -> AuditRow:
        """One entry, to be added in the same transaction as the change it records."""
        return cls(at=at, actor=actor, action=action, subject=subject,
                   before=None if before is None else dict(before), after=None if after is None else dict(after))
