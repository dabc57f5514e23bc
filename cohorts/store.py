"""The SQL store of cohorts: versioned cohort sets, opt choices, usage history and the audit log.

This is the imperative shell around the pure core in `cohorts.spec` and `cohorts.assign`: it
reads and writes the tables in `cohorts.tables` and compiles stored sets with what the database
knows. Every change is written together with its audit record in one transaction, so the audit
log never misses a change and never records one that did not happen.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import TypeAdapter
from sqlalchemy import (
    JSON,
    ColumnElement,
    Connection,
    Engine,
    bindparam,
    column,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cohorts.assign import (
    DEFAULT_MAX_MATERIALIZED_KEYS,
    CompiledCohortSet,
    UsageQuery,
    compile_cohort_set,
)
from cohorts.db import Base, lock_current_version, read_session, transaction
from cohorts.errors import CohortSetExists, CohortSetNotFound, OptNotOffered, VersionConflict
from cohorts.spec import (
    AllOf,
    AnyOf,
    CohortSetSpec,
    Condition,
    SeenCondition,
    UsageCondition,
    check_cohort_set,
)
from cohorts.tables import (
    AuditRow,
    CohortSetRow,
    CohortSetVersionRow,
    OptChoiceRow,
    UsageMetricRow,
    UsageUserRow,
)
from cohorts.usage import TargetingKey, UsageBatch, UsageRecord

OptChoice = Literal["in", "out"]

# Rows per statement: few round trips, yet one statement's parameters stay a few hundred kB.
DEFAULT_INGEST_CHUNK_ROWS = 1_000

_targeting_key = TypeAdapter[str](TargetingKey)

_COMPARISONS: dict[str, Callable[[Any, float], ColumnElement[bool]]] = {
    "equals": operator.eq,
    "lt": operator.lt,
    "lte": operator.le,
    "gt": operator.gt,
    "gte": operator.ge,
}


@dataclass(frozen=True)
class StoredCohortSet:
    name: str
    version: int
    spec: CohortSetSpec
    created_at: datetime
    created_by: str
    comment: str | None


@dataclass(frozen=True)
class AuditRecord:
    id: int
    at: datetime
    actor: str
    action: str
    subject: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _subject(name: str) -> str:
    return f"cohort-set/{name}"


def _require_aware(now: datetime) -> None:
    if now.tzinfo is None:
        raise ValueError(
            f"now={now.isoformat()} has no time zone; pass an aware time, e.g. datetime.now(UTC)"
        )


class CohortStore:
    """Cohort sets, opt choices, usage and audit records in a SQLite or PostgreSQL database.

    The database must be migrated to head (`cohorts.db.upgrade`). `clock` gives the time written
    into records; every time read back is timezone-aware UTC.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        clock: Callable[[], datetime] = _utc_now,
        ingest_chunk_rows: int = DEFAULT_INGEST_CHUNK_ROWS,
    ) -> None:
        if engine.dialect.name not in ("sqlite", "postgresql"):
            raise ValueError(
                f"the store runs on SQLite or PostgreSQL, not {engine.dialect.name}; "
                "set RINGMASTER_DATABASE_URL to a sqlite:/// or postgresql:// URL"
            )
        self.engine = engine
        self._clock = clock
        self._ingest_chunk_rows = ingest_chunk_rows

    # Cohort sets

    def create_set(
        self, spec: CohortSetSpec, actor: str, comment: str | None = None
    ) -> StoredCohortSet:
        """Store a new cohort set as version 1; raises CohortSetExists, or InvalidCohortSet."""
        check_cohort_set(spec)
        now = self._now()
        document = spec.to_document()
        with transaction(self.engine) as session:
            try:
                session.execute(
                    insert(CohortSetRow).values(
                        name=spec.name, current_version=1, created_at=now, updated_at=now
                    )
                )
            except IntegrityError as error:
                raise CohortSetExists(spec.name) from error
            self._insert_version(session, spec.name, 1, document, now, actor, comment)
            session.add(AuditRow.record(now, actor, "cohort-set.create", _subject(spec.name), None, document))
        return StoredCohortSet(spec.name, 1, spec, now, actor, comment)

    def update_set(
        self,
        spec: CohortSetSpec,
        actor: str,
        comment: str | None = None,
        expected_version: int | None = None,
    ) -> StoredCohortSet:
        """Store `spec` as the next version of the set it names, which becomes the current one.

        Every call makes a version, even when the spec equals the current one: a version records
        that someone deliberately (re)applied it. With `expected_version`, the update goes through
        only if that is still the current version (else VersionConflict), so two editors cannot
        overwrite each other. Raises CohortSetNotFound, or InvalidCohortSet.
        """
        check_cohort_set(spec)
        now = self._now()
        document = spec.to_document()
        with transaction(self.engine) as session:
            current = self._lock_set(session, spec.name)
            if expected_version is not None and expected_version != current:
                raise VersionConflict(spec.name, expected_version, current)
            before = session.scalars(
                select(CohortSetVersionRow.spec).where(
                    CohortSetVersionRow.cohort_set == spec.name,
                    CohortSetVersionRow.version == current,
                )
            ).one()
            version = current + 1
            self._insert_version(session, spec.name, version, document, now, actor, comment)
            session.execute(
                update(CohortSetRow)
                .where(CohortSetRow.name == spec.name)
                .values(current_version=version, updated_at=now)
            )
            session.add(AuditRow.record(now, actor, "cohort-set.update", _subject(spec.name), before, document))
        return StoredCohortSet(spec.name, version, spec, now, actor, comment)

    def get_set(self, name: str, version: int | None = None) -> StoredCohortSet:
        """The current version of a set, or the given one; raises CohortSetNotFound."""
        with read_session(self.engine) as session:
            return self._read_set(session, name, version)

    def list_sets(self) -> list[StoredCohortSet]:
        """The current version of every cohort set, by name."""
        query = (
            select(CohortSetVersionRow)
            .join(
                CohortSetRow,
                (CohortSetRow.name == CohortSetVersionRow.cohort_set)
                & (CohortSetRow.current_version == CohortSetVersionRow.version),
            )
            .order_by(CohortSetRow.name)
        )
        with read_session(self.engine) as session:
            return [_stored(row) for row in session.scalars(query)]

    def list_versions(self, name: str) -> list[StoredCohortSet]:
        """Every version of a set, oldest first; raises CohortSetNotFound."""
        query = (
            select(CohortSetVersionRow)
            .where(CohortSetVersionRow.cohort_set == name)
            .order_by(CohortSetVersionRow.version)
        )
        with read_session(self.engine) as session:
            versions = [_stored(row) for row in session.scalars(query)]
        if not versions:
            raise CohortSetNotFound(name)
        return versions

    # Opt-in and opt-out

    def set_opt(self, name: str, targeting_key: str, choice: OptChoice, actor: str) -> None:
        """Record that a user opted in or out of a set's rollouts, replacing an earlier choice.

        Setting the choice a user already has is still recorded and audited: it says who
        confirmed it and when. Raises CohortSetNotFound, OptNotOffered when the set has no ring for
        the choice, or pydantic's ValidationError for a targeting key that cannot be stored.
        """
        _targeting_key.validate_python(targeting_key)
        now = self._now()
        with transaction(self.engine) as session:
            self._lock_set(session, name)
            spec = self._read_set(session, name, None).spec
            if (spec.opt_in_ring if choice == "in" else spec.opt_out_ring) is None:
                raise OptNotOffered(name, choice)
            before = self._opt_choice(session, name, targeting_key)
            written = {"choice": choice, "updated_at": now, "updated_by": actor}
            if before is None:
                session.execute(
                    insert(OptChoiceRow).values(
                        cohort_set=name, targeting_key=targeting_key, **written
                    )
                )
            else:
                session.execute(
                    update(OptChoiceRow)
                    .where(
                        OptChoiceRow.cohort_set == name, OptChoiceRow.targeting_key == targeting_key
                    )
                    .values(**written)
                )
            after = {"targetingKey": targeting_key, "choice": choice}
            session.add(AuditRow.record(now, actor, "cohort-set.set-opt", _subject(name), before, after))

    def clear_opt(self, name: str, targeting_key: str, actor: str) -> bool:
        """Forget a user's opt choice; False (and nothing audited) if they had none."""
        now = self._now()
        with transaction(self.engine) as session:
            self._lock_set(session, name)
            before = self._opt_choice(session, name, targeting_key)
            if before is None:
                return False
            session.execute(
                delete(OptChoiceRow).where(
                    OptChoiceRow.cohort_set == name, OptChoiceRow.targeting_key == targeting_key
                )
            )
            session.add(AuditRow.record(now, actor, "cohort-set.clear-opt", _subject(name), before, None))
        return True

    def opt_choices(self, name: str) -> dict[str, str]:
        """targeting key -> 'in' or 'out' for a set; raises CohortSetNotFound."""
        with read_session(self.engine) as session:
            return self._read_opt_choices(session, name)

    # Usage

    def ingest_usage(self, batch: UsageBatch, actor: str) -> int:
        """Upsert a batch of usage records, all or none; returns the number of rows stored.

        A row's metrics overwrite those metrics; the user's other stored metrics stay. Its
        last-seen time and attributes replace the stored ones when given and are kept otherwise.
        """
        now = self._now()
        rows = batch.rows
        with transaction(self.engine) as session:
            connection = session.connection()
            for start in range(0, len(rows), self._ingest_chunk_rows):
                chunk = rows[start : start + self._ingest_chunk_rows]
                for replaced, users in _usage_users_by_fields_given(chunk, now):
                    self._upsert_rows(connection, UsageUserRow, users, replaced)
                metric_values = [
                    {"targeting_key": row.targeting_key, "metric": metric, "value": value}
                    for row in chunk
                    for metric, value in row.metrics.items()
                ]
                if metric_values:
                    self._upsert_rows(connection, UsageMetricRow, metric_values, ["value"])
            metrics = sorted({metric for row in rows for metric in row.metrics})
            session.add(AuditRow.record(
                now,
                actor,
                "usage.ingest",
                "usage",
                None,
                {"rows": len(rows), "metrics": metrics},
            ))
        return len(rows)

    def usage_keys(self, query: UsageQuery, now: datetime) -> frozenset[str]:
        """The targeting keys whose usage satisfies `query`; `seen_within` counts from `now`."""
        _require_aware(now)
        with read_session(self.engine) as session:
            return frozenset(self._matching_keys(session, query, now))

    def usage_population(self, batch_size: int = 5000) -> Iterator[dict[str, Any]]:
        """Every usage user as an evaluation context, `{"targetingKey": key, **attributes}`, by key.

        Read a page at a time, each in its own short transaction, so a slow consumer holds no
        connection open (on SQLite an open reader would also stop WAL checkpoints).
        """
        after: str | None = None
        while True:
            query = select(UsageUserRow.targeting_key, UsageUserRow.attributes).order_by(
                UsageUserRow.targeting_key
            )
            if after is not None:
                query = query.where(UsageUserRow.targeting_key > after)
            with read_session(self.engine) as session:
                page = session.execute(query.limit(batch_size)).all()
            for targeting_key, attributes in page:
                yield {**attributes, "targetingKey": targeting_key}
            if len(page) < batch_size:
                return
            after = page[-1].targeting_key

    # Compilation

    def compile(
        self,
        name: str,
        *,
        now: datetime,
        version: int | None = None,
        max_keys: int = DEFAULT_MAX_MATERIALIZED_KEYS,
    ) -> CompiledCohortSet:
        """Compile a stored set (current version by default) with today's opt choices and usage.

        Usage rules are materialized as of `now`. Raises CohortSetNotFound, or
        MaterializationLimitExceeded past `max_keys` keys.
        """
        _require_aware(now)
        with read_session(self.engine) as session:
            stored = self._read_set(session, name, version)
            choices = self._read_opt_choices(session, name)
            return compile_cohort_set(
                stored.spec,
                version=stored.version,
                compiled_at=now,
                opted_in=[key for key, choice in choices.items() if choice == "in"],
                opted_out=[key for key, choice in choices.items() if choice == "out"],
                usage_keys=lambda query: frozenset(self._matching_keys(session, query, now)),
                max_keys=max_keys,
            )

    # Audit

    def change_marker(self) -> int:
        """A number that grows with every change to cohorts: the newest audit record's id.

        Every change is audited in its own transaction, so an unchanged marker means nothing that
        compiles into a set (spec, opt choices, usage) has changed since it was read.
        """
        with read_session(self.engine) as session:
            return session.scalar(select(func.coalesce(func.max(AuditRow.id), 0))) or 0

    def audit_log(self, subject: str | None = None, limit: int = 100) -> list[AuditRecord]:
        """The latest audit records, newest first; of one subject (e.g. 'cohort-set/default')."""
        query = select(AuditRow).order_by(AuditRow.id.desc()).limit(limit)
        if subject is not None:
            query = query.where(AuditRow.subject == subject)
        with read_session(self.engine) as session:
            return [
                AuditRecord(
                    row.id, row.at, row.actor, row.action, row.subject, row.before, row.after
                )
                for row in session.scalars(query)
            ]

    # Internals

    def _now(self) -> datetime:
        now = self._clock()
        _require_aware(now)
        return now.astimezone(UTC)

    def _lock_set(self, session: Session, name: str) -> int:
        """Lock a set for the rest of the transaction and return its current version."""
        current = lock_current_version(session, CohortSetRow.name, CohortSetRow.current_version, name)
        if current is None:
            raise CohortSetNotFound(name)
        return current

    def _read_set(self, session: Session, name: str, version: int | None) -> StoredCohortSet:
        query = select(CohortSetVersionRow).where(CohortSetVersionRow.cohort_set == name)
        if version is None:
            query = query.join(
                CohortSetRow,
                (CohortSetRow.name == CohortSetVersionRow.cohort_set)
                & (CohortSetRow.current_version == CohortSetVersionRow.version),
            )
        else:
            query = query.where(CohortSetVersionRow.version == version)
        row = session.scalars(query).one_or_none()
        if row is None:
            raise CohortSetNotFound(name, version)
        return _stored(row)

    def _insert_version(
        self,
        session: Session,
        name: str,
        version: int,
        document: dict[str, Any],
        now: datetime,
        actor: str,
        comment: str | None,
    ) -> None:
        session.execute(
            insert(CohortSetVersionRow).values(
                cohort_set=name,
                version=version,
                spec=document,
                created_at=now,
                created_by=actor,
                comment=comment,
            )
        )

    def _opt_choice(self, session: Session, name: str, targeting_key: str) -> dict[str, Any] | None:
        choice = session.scalars(
            select(OptChoiceRow.choice).where(
                OptChoiceRow.cohort_set == name, OptChoiceRow.targeting_key == targeting_key
            )
        ).one_or_none()
        return None if choice is None else {"targetingKey": targeting_key, "choice": choice}

    def _read_opt_choices(self, session: Session, name: str) -> dict[str, str]:
        if session.get(CohortSetRow, name) is None:
            raise CohortSetNotFound(name)
        rows = session.execute(
            select(OptChoiceRow.targeting_key, OptChoiceRow.choice).where(
                OptChoiceRow.cohort_set == name
            )
        )
        return {targeting_key: choice for targeting_key, choice in rows}

    def _upsert_rows(
        self,
        connection: Connection,
        model: type[Base],
        rows: list[dict[str, Any]],
        replaced: Sequence[str],
    ) -> None:
        """Insert rows; where the primary key exists already, overwrite the `replaced` columns."""
        table = Base.metadata.tables[model.__tablename__]
        conflict = [column.name for column in table.primary_key]
        if self.engine.dialect.name == "sqlite":
            sqlite_insert = sqlite.insert(table)
            connection.execute(
                sqlite_insert.on_conflict_do_update(
                    index_elements=conflict,
                    set_={name: sqlite_insert.excluded[name] for name in replaced},
                ),
                rows,
            )
            return
        # psycopg runs an executemany row by row. Sent as one JSON document that
        # json_to_recordset unpacks, the chunk is one statement, serialised by the json module.
        names = list(rows[0])
        document = [{name: _json_ready(row[name]) for name in names} for row in rows]
        source = (
            func.json_to_recordset(bindparam("rows", document, type_=JSON))
            .table_valued(*(column(name, table.c[name].type) for name in names))
            .render_derived(name="source", with_types=True)
        )
        postgresql_insert = postgresql.insert(table).from_select(names, select(*source.c))
        connection.execute(
            postgresql_insert.on_conflict_do_update(
                index_elements=conflict,
                set_={name: postgresql_insert.excluded[name] for name in replaced},
            )
        )

    def _matching_keys(self, session: Session, query: Condition, now: datetime) -> set[str]:
        """One SQL query per usage condition; `all` and `any` combine their results as sets."""
        if isinstance(query, UsageCondition):
            compare = _COMPARISONS[query.op]
            return set(
                session.scalars(
                    select(UsageMetricRow.targeting_key).where(
                        UsageMetricRow.metric == query.metric,
                        compare(UsageMetricRow.value, query.value),
                    )
                )
            )
        if isinstance(query, SeenCondition):
            cutoff = now - timedelta(seconds=query.seconds)
            return set(
                session.scalars(
                    select(UsageUserRow.targeting_key).where(UsageUserRow.last_seen_at >= cutoff)
                )
            )
        if isinstance(query, AllOf):
            keys = self._matching_keys(session, query.all[0], now)
            for child in query.all[1:]:
                if not keys:
                    break
                keys &= self._matching_keys(session, child, now)
            return keys
        if isinstance(query, AnyOf):
            return set().union(*(self._matching_keys(session, child, now) for child in query.any))
        raise TypeError(
            f"usage_keys answers conditions over usage only (metric, seen_within, all, any), "
            f"not {type(query).__name__}; those are evaluated against the user's context"
        )


def _usage_users_by_fields_given(
    chunk: Sequence[UsageRecord], now: datetime
) -> Iterator[tuple[list[str], list[dict[str, Any]]]]:
    """The chunk's users grouped by which columns they replace: a statement replaces fixed ones."""
    groups: dict[tuple[bool, bool], list[dict[str, Any]]] = {}
    for row in chunk:
        given = (row.last_seen_at is not None, row.attributes is not None)
        groups.setdefault(given, []).append(
            {
                "targeting_key": row.targeting_key,
                "last_seen_at": row.last_seen_at,
                "attributes": row.attributes if row.attributes is not None else {},
                "updated_at": now,
            }
        )
    for (seen_given, attributes_given), users in groups.items():
        replaced = ["updated_at"]
        if seen_given:
            replaced.append("last_seen_at")
        if attributes_given:
            replaced.append("attributes")
        yield replaced, users


def _json_ready(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _stored(row: CohortSetVersionRow) -> StoredCohortSet:
    # Stored versions were checked when written; validating the shape alone keeps old versions
    # readable should a later release tighten the cross-field checks.
    return StoredCohortSet(
        name=row.cohort_set,
        version=row.version,
        spec=CohortSetSpec.model_validate(row.spec),
        created_at=row.created_at,
        created_by=row.created_by,
        comment=row.comment,
    )
