"""Where the database is and how to reach it: URL, engine, declarative base, Alembic migrations.

Everything that opens a database goes through `make_engine`, so SQLite always runs with foreign
keys, a busy timeout and WAL, and PostgreSQL always through psycopg 3. The schema is Alembic's:
`upgrade` and `downgrade` drive the revisions in the `migrations` package, with no alembic.ini.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Engine, MetaData, create_engine, event, update
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, InstrumentedAttribute, Session

import migrations

DATA_DIR_ENV = "RINGMASTER_DATA_DIR"
DATABASE_URL_ENV = "RINGMASTER_DATABASE_URL"
DEFAULT_DATA_DIR = Path(".ringmaster")
SQLITE_BUSY_TIMEOUT_MS = 5_000
# The largest value an Integer column (versions, ids) holds on PostgreSQL; SQLite's hold 64 bits. A number
# past it in a request can name nothing stored, and sent to the database it would fail, not find nothing.
MAX_INTEGER = 2**31 - 1

# Every constraint gets a predictable name, so later migrations can drop or alter it by name
# on both databases (SQLite batch mode cannot alter an unnamed constraint).
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def data_dir() -> Path:
    """The folder Ringmaster keeps local state in ($RINGMASTER_DATA_DIR, else ./.ringmaster)."""
    path = Path(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def database_url() -> str:
    """$RINGMASTER_DATABASE_URL, else a SQLite file in the data folder."""
    configured = os.environ.get(DATABASE_URL_ENV)
    if configured:
        return configured
    return f"sqlite:///{data_dir() / 'ringmaster.db'}"


def normalise_url(url: str) -> str:
    """Point `postgresql://` and `postgres://` URLs at the psycopg 3 driver; leave others alone."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def make_engine(url: str) -> Engine:
    """An engine for a SQLite or PostgreSQL URL, with the connection settings Ringmaster needs."""
    url = normalise_url(url)
    engine = create_engine(url)
    if make_url(url).get_backend_name() == "sqlite":
        event.listen(engine, "connect", _configure_sqlite_connection)
    return engine


def _configure_sqlite_connection(dbapi_connection: Any, connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        # SQLite leaves foreign keys unenforced unless each connection asks for them.
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        # WAL lets the API read while the controller or an ingest writes.
        cursor.execute("PRAGMA journal_mode = WAL")
    finally:
        cursor.close()


def alembic_config(url: str | None = None) -> Config:
    """An Alembic configuration for the `migrations` package; None means `database_url()`."""
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    config.set_main_option("path_separator", "os")
    if url is not None:
        config.attributes["database_url"] = url
    return config


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at; None for a database Alembic has never touched."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def is_known_revision(revision: str) -> bool:
    """Whether this build's migrations include `revision`; a newer build's revision is unknown here."""
    try:
        return ScriptDirectory.from_config(alembic_config()).get_revision(revision) is not None
    except CommandError:
        return False


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "the migrations package has no revisions"
    return head


@contextmanager
def read_session(engine: Engine) -> Iterator[Session]:
    """A session for reads; nothing it does is committed."""
    with Session(engine) as session:
        yield session


@contextmanager
def transaction(engine: Engine) -> Iterator[Session]:
    """A session whose work commits when the block ends and is rolled back if it raises."""
    with Session(engine) as session, session.begin():
        yield session


def lock_current_version(
    session: Session, key: InstrumentedAttribute[str], current_version: InstrumentedAttribute[int], value: str
) -> int | None:
    """Lock a versioned row for the rest of the transaction and return its current version (None if absent).

    A no-op UPDATE is the one lock both databases take the same way: a row lock in PostgreSQL,
    the write lock in SQLite. Read-then-write changes after it cannot interleave.
    """
    version: int | None = session.scalars(
        update(key.class_)
        .where(key == value)
        .values({current_version: current_version})
        .returning(current_version)
        .execution_options(synchronize_session=False)
    ).one_or_none()
    return version
