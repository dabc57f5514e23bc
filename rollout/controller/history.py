"""Rollout history in the database: one row per transition, kept after the Rollout object is gone.

Kubernetes Events expire after an hour; this table is the lasting record (`ringmaster rollout get`
and the API read it). Rows are keyed on (rollout uid, transition number, reason), so a controller
that records a transition twice, having died in between, keeps one row.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, Index, Integer, String, Text, UniqueConstraint, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from cohorts.db import Base, read_session, transaction
from cohorts.tables import UtcDateTime


class RolloutHistoryRow(Base):
    __tablename__ = "rollout_history"
    __table_args__ = (
        UniqueConstraint("rollout_uid", "sequence", "reason", name="uq_rollout_history_transition"),
        Index("ix_rollout_history_rollout", "namespace", "name", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime)
    namespace: Mapped[str] = mapped_column(String(63))
    name: Mapped[str] = mapped_column(String(253))
    rollout_uid: Mapped[str] = mapped_column(String(64))
    sequence: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(16))
    revision: Mapped[str | None] = mapped_column(String(32))
    ring: Mapped[str | None] = mapped_column(String(63))
    message: Mapped[str] = mapped_column(Text)


@dataclass(frozen=True)
class HistoryEntry:
    at: datetime
    namespace: str
    name: str
    rollout_uid: str
    sequence: int
    reason: str
    type: str
    revision: str | None
    ring: str | None
    message: str


class RolloutHistory:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def record(self, entry: HistoryEntry) -> bool:
        """Store one transition; False when it was stored before."""
        try:
            with transaction(self.engine) as session:
                session.add(RolloutHistoryRow(
                    at=entry.at, namespace=entry.namespace, name=entry.name, rollout_uid=entry.rollout_uid,
                    sequence=entry.sequence, reason=entry.reason[:64], type=entry.type, revision=entry.revision,
                    ring=entry.ring, message=entry.message,
                ))
        except IntegrityError:
            return False
        return True

    def entries(self, namespace: str, name: str, limit: int = 200) -> list[HistoryEntry]:
        """The latest transitions of a Rollout (of every object that had that name), oldest first."""
        query = (select(RolloutHistoryRow).where(RolloutHistoryRow.namespace == namespace,
                                                 RolloutHistoryRow.name == name)
                 .order_by(RolloutHistoryRow.id.desc()).limit(limit))
        with read_session(self.engine) as session:
            rows = list(session.scalars(query))
        return [
            HistoryEntry(row.at, row.namespace, row.name, row.rollout_uid, row.sequence, row.reason, row.type,
                         row.revision, row.ring, row.message)
            for row in reversed(rows)
        ]
