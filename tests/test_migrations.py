"""The schema the migrations build on SQLite and PostgreSQL, and how the database is reached."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.exc import DatabaseError

import cohorts.tables  # noqa: F401  (registers the tables on Base.metadata)
from cohorts.db import (
    Base,
    current_revision,
    data_dir,
    database_url,
    downgrade,
    head_revision,
    make_engine,
    upgrade,
)
from cohorts.spec import default_cohort_set
from cohorts.store import CohortStore

TABLES = {
    "alembic_version",
    "audit_log",
    "cohort_opt_choices",
    "cohort_set_versions",
    "cohort_sets",
    "usage_metrics",
    "usage_users",
}


def test_a_fresh_database_holds_the_default_set_as_version_1(store: CohortStore) -> None:
    stored = store.get_set("default")
    assert (stored.version, stored.spec) == (1, default_cohort_set())
    assert stored.created_by == "ringmaster/migration"
    assert [(item.name, item.version) for item in store.list_sets()] == [("default", 1)]
    [created] = store.audit_log()
    assert (created.action, created.subject, created.actor) == (
        "cohort-set.create",
        "cohort-set/default",
        "ringmaster/migration",
    )
    assert created.before is None and created.after == default_cohort_set().to_document()


def test_the_models_and_the_migrations_at_head_describe_the_same_schema(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_upgrade_downgrade_to_base_and_upgrade_again_leaves_a_fresh_database(
    database_url: str,
) -> None:
    engine = make_engine(database_url)
    try:
        assert current_revision(engine) == head_revision() == "0001_cohorts"
        assert set(inspect(engine).get_table_names()) == TABLES

        downgrade(database_url, "base")
        assert current_revision(engine) is None
        assert set(inspect(engine).get_table_names()) == {"alembic_version"}
        if engine.dialect.name == "postgresql":
            with engine.connect() as connection:
                leftover = connection.execute(
                    text("SELECT count(*) FROM pg_proc WHERE proname = 'audit_log_append_only'")
                ).scalar_one()
            assert leftover == 0

        upgrade(database_url)
        assert current_revision(engine) == head_revision()
        assert CohortStore(engine).get_set("default").spec == default_cohort_set()
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    "statement",
    ["UPDATE audit_log SET actor = 'someone-else'", "DELETE FROM audit_log"],
)
def test_the_database_refuses_to_edit_or_delete_audit_records(
    store: CohortStore, statement: str
) -> None:
    before = store.audit_log()
    with (
        pytest.raises(DatabaseError, match="audit_log is append-only"),
        store.engine.begin() as connection,
    ):
        connection.execute(text(statement))
    assert store.audit_log() == before


def test_sqlite_connections_enforce_foreign_keys_and_use_wal(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'ringmaster.db'}")
    try:
        with engine.connect() as connection:
            assert connection.execute(text("PRAGMA foreign_keys")).scalar_one() == 1
            assert connection.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
            assert connection.execute(text("PRAGMA busy_timeout")).scalar_one() > 0
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    "given",
    ["postgresql://ringmaster@db:5432/ringmaster", "postgres://ringmaster@db:5432/ringmaster"],
)
def test_postgresql_urls_are_driven_by_psycopg_3(given: str) -> None:
    engine = make_engine(given)
    assert engine.url.drivername == "postgresql+psycopg"
    assert engine.url.render_as_string() == "postgresql+psycopg://ringmaster@db:5432/ringmaster"


def test_without_configuration_the_database_is_a_sqlite_file_in_the_data_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("RINGMASTER_DATABASE_URL", raising=False)
    monkeypatch.setenv("RINGMASTER_DATA_DIR", str(tmp_path / "state"))
    assert not (tmp_path / "state").exists()
    assert database_url() == f"sqlite:///{tmp_path / 'state' / 'ringmaster.db'}"
    assert data_dir().is_dir()

    monkeypatch.setenv("RINGMASTER_DATABASE_URL", "postgresql://db/ringmaster")
    assert database_url() == "postgresql://db/ringmaster"
