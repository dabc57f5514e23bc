"""The andon cord in the database: pull, release, what is pulled now, and the record of both.

Every pull and every release is a row of `andon_events`, which is only ever inserted into (the
database refuses UPDATE and DELETE). A pull is active until a release names it; the release's
`pull_id` is unique, so of two releases racing for one pull exactly one is stored. `marker()` is the
newest event's id: the controller polls it to see a pull within a fraction of a second.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from sqlalchemy import Engine, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import aliased

from cohorts.db import read_session, transaction
from rollout.andon.scope import Scope, check_reason
from rollout.andon.tables import AndonEventRow

Via = Literal["api", "cli", "slack", "dashboard"]


class AndonError(Exception):
    """Base of the andon cord's errors; each message says what to do."""


class PullNotFound(AndonError):
    def __init__(self, pull_id: int) -> None:
        super().__init__(f"there is no pull {pull_id}; GET /api/v1/andon lists the active pulls and their ids")


class AlreadyReleased(AndonError):
    def __init__(self, pull_id: int, by: str) -> None:
        super().__init__(f"pull {pull_id} was already released by {by}; nothing to do")


class SamePerson(AndonError):
    def __init__(self, pull_id: int, actor: str) -> None:
        super().__init__(f"pull {pull_id} was pulled by {actor}, and this deployment requires someone else to "
                         "release it (RINGMASTER_ANDON_RELEASE_BY_OTHER); ask a colleague with the releaser role")


@dataclass(frozen=True)
class Release:
    id: int
    at: datetime
    reason: str
    actor: str
    via: str


@dataclass(frozen=True)
class Pull:
    id: int
    at: datetime
    scope: Scope
    reason: str
    actor: str
    via: str
    release: Release | None = None

    @property
    def active(self) -> bool:
        return self.release is None


@dataclass(frozen=True)
class AndonEvent:
    """One row of the record: a pull, or a release of `pull_id`."""

    id: int
    at: datetime
    kind: Literal["pull", "release"]
    pull_id: int
    scope: Scope
    reason: str
    actor: str
    via: str


def _scope(row: AndonEventRow) -> Scope:
    return Scope.model_validate({"kind": row.scope_kind, "namespace": row.scope_namespace,
                                 "rollout": row.scope_rollout})


def _release(row: AndonEventRow | None) -> Release | None:
    return None if row is None else Release(row.id, row.at, row.reason, row.actor, row.via)


def _pull(row: AndonEventRow, released: AndonEventRow | None) -> Pull:
    return Pull(row.id, row.at, _scope(row), row.reason, row.actor, row.via, _release(released))


class AndonStore:
    def __init__(self, engine: Engine, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.engine = engine
        self.clock = clock

    def pull(self, scope: Scope, reason: str, actor: str, via: Via = "api") -> Pull:
        """Pull the cord over `scope`; the reason is required (3 to 500 characters)."""
        row = AndonEventRow(at=self.clock(), kind="pull", pull_id=None, scope_kind=scope.kind,
                            scope_namespace=scope.namespace, scope_rollout=scope.rollout,
                            reason=check_reason(reason), actor=actor, via=via)
        with transaction(self.engine) as session:
            session.add(row)
            session.flush()
            pulled = _pull(row, None)
        return pulled

    def release(self, pull_id: int, reason: str, actor: str, via: Via = "api", *,
                release_by_other: bool = False) -> Pull:
        """Release pull `pull_id`; with `release_by_other`, not by whoever pulled it."""
        reason = check_reason(reason)
        pulled = self.get(pull_id)
        if pulled.release is not None:
            raise AlreadyReleased(pull_id, pulled.release.actor)
        if release_by_other and pulled.actor == actor:
            raise SamePerson(pull_id, actor)
        row = AndonEventRow(at=self.clock(), kind="release", pull_id=pull_id, scope_kind=pulled.scope.kind,
                            scope_namespace=pulled.scope.namespace, scope_rollout=pulled.scope.rollout,
                            reason=reason, actor=actor, via=via)
        try:
            with transaction(self.engine) as session:
                session.add(row)
                session.flush()
                released = Release(row.id, row.at, row.reason, row.actor, row.via)
        except IntegrityError:
            winner = self.get(pull_id).release  # another release got there first
            raise AlreadyReleased(pull_id, winner.actor if winner else "someone else") from None
        return Pull(pulled.id, pulled.at, pulled.scope, pulled.reason, pulled.actor, pulled.via, released)

    def get(self, pull_id: int) -> Pull:
        released = aliased(AndonEventRow)
        query = (select(AndonEventRow, released)
                 .outerjoin(released, released.pull_id == AndonEventRow.id)
                 .where(AndonEventRow.id == pull_id, AndonEventRow.kind == "pull"))
        with read_session(self.engine) as session:
            found = session.execute(query).first()
        if found is None:
            raise PullNotFound(pull_id)
        return _pull(found[0], found[1])

    def active(self) -> list[Pull]:
        """The pulls not released yet, oldest first."""
        released = aliased(AndonEventRow)
        query = (select(AndonEventRow)
                 .outerjoin(released, released.pull_id == AndonEventRow.id)
                 .where(AndonEventRow.kind == "pull", released.id.is_(None))
                 .order_by(AndonEventRow.id))
        with read_session(self.engine) as session:
            return [_pull(row, None) for row in session.scalars(query)]

    def history(self, limit: int = 200) -> list[AndonEvent]:
        """The latest pulls and releases, newest first."""
        query = select(AndonEventRow).order_by(AndonEventRow.id.desc()).limit(limit)
        with read_session(self.engine) as session:
            rows = list(session.scalars(query))
        return [AndonEvent(row.id, row.at, "pull" if row.kind == "pull" else "release",
                           row.pull_id if row.pull_id is not None else row.id, _scope(row), row.reason, row.actor,
                           row.via) for row in rows]

    def counts(self) -> dict[str, int]:
        """How many pulls and releases the record holds: {"pull": n, "release": m}."""
        query = select(AndonEventRow.kind, func.count()).group_by(AndonEventRow.kind)
        with read_session(self.engine) as session:
            counted = {kind: int(number) for kind, number in session.execute(query)}
        return {"pull": counted.get("pull", 0), "release": counted.get("release", 0)}

    def marker(self) -> int:
        """The newest event's id (0 before the first pull): it moves on every pull and release."""
        with read_session(self.engine) as session:
            newest: int | None = session.execute(select(func.max(AndonEventRow.id))).scalar_one()
        return newest or 0
