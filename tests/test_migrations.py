"""The schema the migrations build on SQLite and PostgreSQL, and how the database is reached."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.exc import DatabaseError

import cohorts.tables  # noqa: F401  (registers the tables on Base.metadata)
import rollout.andon.tables  # (and andon_events)
import rollout.auth.tables  # (and api_tokens)
import rollout.controller.history  # (and rollout_history, gate_results)
import rollout.flags.tables  # noqa: F401  (and the flag tables)
from cohorts.db import (
    Base,
    current_revision,
    downgrade,
    head_revision,
    make_engine,
    upgrade,
)
from cohorts.spec import default_cohort_set
from cohorts.store import CohortStore

TABLES = {
    "alembic_version",
    "andon_events",
    "api_tokens",
    "audit_log",
    "cohort_opt_choices",
    "cohort_set_versions",
    "cohort_sets",
    "flag_versions",
    "flags",
    "gate_results",
    "rollout_history",
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
        assert current_revision(engine) == head_revision() == "0005_andon_and_tokens"
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
