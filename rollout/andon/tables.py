"""The andon cord's record: one append-only table of pulls and releases (the database refuses
UPDATE and DELETE on it). Which pulls are active is derived: a pull with no release."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from cohorts.db import Base
from cohorts.tables import ACTOR_LENGTH, UtcDateTime


class AndonEventRow(Base):
    __tablename__ = "andon_events"
    __table_args__ = (Index("ix_andon_events_kind", "kind", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime)
    kind: Mapped[str] = mapped_column(String(16))  # pull or release
    # A release names the pull it ends; unique, so a pull is released once however many try at once.
    pull_id: Mapped[int | None] = mapped_column(Integer, ForeignKey("andon_events.id"), unique=True)
    scope_kind: Mapped[str] = mapped_column(String(16))
    scope_namespace: Mapped[str | None] = mapped_column(String(63))
    scope_rollout: Mapped[str | None] = mapped_column(String(253))
    reason: Mapped[str] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(String(ACTOR_LENGTH))
    via: Mapped[str] = mapped_column(String(16))  # api, cli, slack
