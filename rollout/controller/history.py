"""Rollout history in the database: one row per transition, and one per gate measurement, kept after
the Rollout object is gone.

Kubernetes Events expire after an hour; these tables are the lasting record (`ringmaster rollout get`,
`ringmaster rollout gates` and the API read them). Transitions are keyed on (rollout uid, transition
number, reason), measurements on (rollout uid, revision, ring, gate, measurement number), so a
controller that records one twice, having died in between, keeps one row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Engine, Index, Integer, String, Text, UniqueConstraint, select
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


def _history_entry(row: RolloutHistoryRow) -> HistoryEntry:
    return HistoryEntry(row.at, row.namespace, row.name, row.rollout_uid, row.sequence, row.reason, row.type,
                        row.revision, row.ring, row.message)


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
        return [_history_entry(row) for row in reversed(rows)]

    def recent(self, limit: int = 50) -> list[HistoryEntry]:
        """The latest transitions of every Rollout, newest first (the dashboard's record)."""
        query = select(RolloutHistoryRow).order_by(RolloutHistoryRow.id.desc()).limit(limit)
        with read_session(self.engine) as session:
            rows = list(session.scalars(query))
        return [_history_entry(row) for row in rows]


class GateResultRow(Base):
    __tablename__ = "gate_results"
    __table_args__ = (
        UniqueConstraint("rollout_uid", "revision", "ring", "gate", "sequence", name="uq_gate_results_measurement"),
        Index("ix_gate_results_rollout", "namespace", "name", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime)
    namespace: Mapped[str] = mapped_column(String(63))
    name: Mapped[str] = mapped_column(String(253))
    rollout_uid: Mapped[str] = mapped_column(String(64))
    revision: Mapped[str] = mapped_column(String(32))
    ring: Mapped[str] = mapped_column(String(63))
    gate: Mapped[str] = mapped_column(String(253))
    kind: Mapped[str] = mapped_column(String(32))
    sequence: Mapped[int] = mapped_column(Integer)
    verdict: Mapped[str] = mapped_column(String(32))
    gate_values: Mapped[dict[str, Any]] = mapped_column("values", JSON)
    threshold: Mapped[str] = mapped_column(Text)
    message: Mapped[str] = mapped_column(Text)
    queries: Mapped[list[str]] = mapped_column(JSON)


@dataclass(frozen=True)
class GateResultEntry:
    """One measurement of one gate, as kept: at is the evaluation time the queries were sent with."""

    at: datetime
    namespace: str
    name: str
    rollout_uid: str
    revision: str
    ring: str
    gate: str
    kind: str
    sequence: int
    verdict: str
    values: dict[str, float] = field(default_factory=dict)
    threshold: str = ""
    message: str = ""
    queries: list[str] = field(default_factory=list)


class GateResults:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def record(self, entry: GateResultEntry) -> bool:
        """Store one measurement; False when it was stored before."""
        try:
            with transaction(self.engine) as session:
                session.add(GateResultRow(
                    at=entry.at, namespace=entry.namespace, name=entry.name, rollout_uid=entry.rollout_uid,
                    revision=entry.revision, ring=entry.ring, gate=entry.gate, kind=entry.kind,
                    sequence=entry.sequence, verdict=entry.verdict, gate_values=dict(entry.values),
                    threshold=entry.threshold, message=entry.message, queries=list(entry.queries),
                ))
        except IntegrityError:
            return False
        return True

    def entries(self, namespace: str, name: str, limit: int = 500) -> list[GateResultEntry]:
        """The latest measurements of a Rollout's gates (of every object that had that name), oldest first."""
        query = (select(GateResultRow).where(GateResultRow.namespace == namespace, GateResultRow.name == name)
                 .order_by(GateResultRow.id.desc()).limit(limit))
        with read_session(self.engine) as session:
            rows = list(session.scalars(query))
        return [
            GateResultEntry(row.at, row.namespace, row.name, row.rollout_uid, row.revision, row.ring, row.gate,
                            row.kind, row.sequence, row.verdict, dict(row.gate_values), row.threshold, row.message,
                            list(row.queries))
            for row in reversed(rows)
        ]
