"""The SQL store of flags: every version of every flag, each change audited in the shared audit log.

This is the only code that reads or writes the flag tables. Each change is written together with
its record in `audit_log` in one transaction, exactly as `cohorts.store.CohortStore` does for
cohorts, so the audit log never misses a change and `CohortStore.change_marker()` (the newest audit
id) moves with flag changes too: the publisher and every replica watch that one number.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cohorts.db import lock_current_version, read_session, transaction
from cohorts.errors import CohortSetNotFound
from cohorts.store import CohortStore
from cohorts.tables import AuditRow
from rollout.flags.errors import FlagExists, FlagNotFound, FlagVersionConflict
from rollout.flags.spec import FlagSpec, FlagState, check_flag
from rollout.flags.tables import FlagRow, FlagVersionRow


@dataclass(frozen=True)
class StoredFlag:
    key: str
    version: int
    spec: FlagSpec
    created_at: datetime
    created_by: str
    comment: str | None


def _utc_now() -> datetime:
    return datetime.now(UTC)


def subject(key: str) -> str:
    """The audit log's name for a flag."""
    return f"flag/{key}"


class FlagStore:
    """Flags and their versions in the database `cohorts` uses (migrated to head).

    Ring mappings are checked against the cohort sets `cohorts` holds when a flag is written.
    """

    def __init__(
        self, engine: Engine, cohorts: CohortStore | None = None, *, clock: Callable[[], datetime] = _utc_now
    ) -> None:
        self.engine = engine
        self._cohorts = cohorts or CohortStore(engine, clock=clock)
        self._clock = clock

    def create_flag(self, spec: FlagSpec, actor: str, comment: str | None = None) -> StoredFlag:
        """Store a new flag as version 1; raises FlagExists, or InvalidFlag."""
        spec = self._check(spec)
        now = self._now()
        document = spec.to_document()
        with transaction(self.engine) as session:
            try:
                session.execute(insert(FlagRow).values(key=spec.key, current_version=1, created_at=now,
                                                       updated_at=now))
            except IntegrityError as error:
                raise FlagExists(spec.key) from error
            self._insert_version(session, spec.key, 1, document, now, actor, comment)
            session.add(AuditRow.record(now, actor, "flag.create", subject(spec.key), None, document))
        return StoredFlag(spec.key, 1, spec, now, actor, comment)

    def update_flag(
        self, spec: FlagSpec, actor: str, comment: str | None = None, expected_version: int | None = None
    ) -> StoredFlag:
        """Store `spec` as the next version of the flag it names, which becomes the current one.

        Every call makes a version, even when the spec equals the current one: a version records
        that someone deliberately (re)applied it. With `expected_version` the update goes through
        only if that is still the current version (else FlagVersionConflict). Raises FlagNotFound,
        or InvalidFlag.
        """
        spec = self._check(spec)
        return self._write_version(spec.key, lambda _: spec, "flag.update", actor, comment, expected_version)

    def set_state(
        self,
        key: str,
        state: FlagState,
        actor: str,
        comment: str | None = None,
        expected_version: int | None = None,
    ) -> StoredFlag:
        """Enable or disable a flag as a new version; a flag already in that state is left as it is.

        Turning a flag off is the first move of every rollback, so it must work whatever else is
        wrong: the rest of the spec is not checked again (the cohort set it maps may have changed).
        """
        action = "flag.enable" if state == "ENABLED" else "flag.disable"

        def with_state(current: FlagSpec) -> FlagSpec | None:
            return None if current.state == state else current.model_copy(update={"state": state})

        return self._write_version(key, with_state, action, actor, comment, expected_version)

    def get_flag(self, key: str, version: int | None = None) -> StoredFlag:
        """The current version of a flag, or the given one; raises FlagNotFound."""
        query = select(FlagVersionRow).where(FlagVersionRow.flag == key)
        if version is None:
            query = query.join(FlagRow, (FlagRow.key == FlagVersionRow.flag)
                               & (FlagRow.current_version == FlagVersionRow.version))
        else:
            query = query.where(FlagVersionRow.version == version)
        with read_session(self.engine) as session:
            row = session.scalars(query).one_or_none()
            if row is None:
                raise FlagNotFound(key, version)
            return _stored(row)

    def list_flags(self) -> list[StoredFlag]:
        """The current version of every flag, by key."""
        query = (
            select(FlagVersionRow)
            .join(FlagRow, (FlagRow.key == FlagVersionRow.flag) & (FlagRow.current_version == FlagVersionRow.version))
            .order_by(FlagRow.key)
        )
        with read_session(self.engine) as session:
            return [_stored(row) for row in session.scalars(query)]

    def list_versions(self, key: str) -> list[StoredFlag]:
        """Every version of a flag, oldest first; raises FlagNotFound."""
        query = select(FlagVersionRow).where(FlagVersionRow.flag == key).order_by(FlagVersionRow.version)
        with read_session(self.engine) as session:
            versions = [_stored(row) for row in session.scalars(query)]
        if not versions:
            raise FlagNotFound(key)
        return versions

    # Internals

    def _check(self, spec: FlagSpec) -> FlagSpec:
        rings: dict[str, Sequence[str]] = {}
        version_rings: dict[tuple[str, int], Sequence[str]] = {}
        for source in spec.ring_sources():
            # check_flag names the field that refers to a set or version that does not exist.
            try:
                rings[source.cohort_set] = self._cohorts.get_set(source.cohort_set).spec.rings
                if source.version is not None:
                    pinned = self._cohorts.get_set(source.cohort_set, source.version)
                    version_rings[source.cohort_set, source.version] = pinned.spec.rings
            except CohortSetNotFound:
                continue
        return check_flag(spec, rings, version_rings)

    def _write_version(
        self,
        key: str,
        change: Callable[[FlagSpec], FlagSpec | None],
        action: str,
        actor: str,
        comment: str | None,
        expected_version: int | None,
    ) -> StoredFlag:
        """Lock the flag, derive the next spec from the current one, store it as the next version.

        When `change` returns None nothing is written and the current version is returned.
        """
        now = self._now()
        with transaction(self.engine) as session:
            current_version = self._lock_flag(session, key)
            if expected_version is not None and expected_version != current_version:
                raise FlagVersionConflict(key, expected_version, current_version)
            current = _stored(session.scalars(select(FlagVersionRow).where(
                FlagVersionRow.flag == key, FlagVersionRow.version == current_version)).one())
            spec = change(current.spec)
            if spec is None:
                return current
            document = spec.to_document()
            version = current_version + 1
            self._insert_version(session, key, version, document, now, actor, comment)
            session.execute(update(FlagRow).where(FlagRow.key == key).values(current_version=version, updated_at=now))
            session.add(AuditRow.record(now, actor, action, subject(key), current.spec.to_document(), document))
        return StoredFlag(key, version, spec, now, actor, comment)

    def _lock_flag(self, session: Session, key: str) -> int:
        """Lock a flag for the rest of the transaction and return its current version."""
        current = lock_current_version(session, FlagRow.key, FlagRow.current_version, key)
        if current is None:
            raise FlagNotFound(key)
        return current

    def _insert_version(
        self,
        session: Session,
        key: str,
        version: int,
        document: dict[str, Any],
        now: datetime,
        actor: str,
        comment: str | None,
    ) -> None:
        session.execute(insert(FlagVersionRow).values(flag=key, version=version, spec=document, created_at=now,
                                                      created_by=actor, comment=comment))

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError(f"now={now.isoformat()} has no time zone; pass an aware time, e.g. datetime.now(UTC)")
        return now.astimezone(UTC)


def _stored(row: FlagVersionRow) -> StoredFlag:
    # Stored versions were checked when written; validating the shape alone keeps old versions
    # readable after the cohort set they map has changed.
    return StoredFlag(
        key=row.flag,
        version=row.version,
        spec=FlagSpec.model_validate(row.spec),
        created_at=row.created_at,
        created_by=row.created_by,
        comment=row.comment,
    )
