"""The flag tables as SQLAlchemy models: a flag by key, and every version of its spec.

They live on `cohorts.db.Base`, so one Alembic history (`migrations/versions`) covers the whole
schema; revision 0002_flags creates them. Changes to flags are audited in the shared `audit_log`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from cohorts.db import Base
from cohorts.tables import ACTOR_LENGTH, UtcDateTime

KEY_LENGTH = 128


class FlagRow(Base):
    """A flag by key, with the number of its current version."""

    __tablename__ = "flags"

    key: Mapped[str] = mapped_column(String(KEY_LENGTH), primary_key=True)
    current_version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class FlagVersionRow(Base):
    """One version of a flag's spec; versions are never changed once written."""

    __tablename__ = "flag_versions"

    flag: Mapped[str] = mapped_column(String(KEY_LENGTH), ForeignKey("flags.key"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    created_by: Mapped[str] = mapped_column(String(ACTOR_LENGTH))
    comment: Mapped[str | None] = mapped_column(Text)
