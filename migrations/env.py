"""Alembic's entry point: runs the revisions against the database `cohorts.db` was given.

The URL comes from the Alembic config's attributes (set by `cohorts.db.alembic_config`), else
from `cohorts.db.database_url()`. Only online mode is supported: the revisions branch on the
connected dialect.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

import cohorts.tables  # noqa: F401  (registers the tables on Base.metadata for autogenerate)
import rollout.andon.tables  # (and andon_events)
import rollout.auth.tables  # (and api_tokens)
import rollout.controller.history  # (and rollout_history, gate_results)
import rollout.flags.tables  # noqa: F401  (and the flag tables)
from cohorts.db import Base, database_url, make_engine

target_metadata = Base.metadata


def run_migrations(connection: Connection) -> None:
    is_sqlite = connection.dialect.name == "sqlite"
    if is_sqlite:
        # Batch mode rebuilds a table by dropping it, which with foreign keys on would cascade
        # into the rows referring to it. The pragma is a no-op inside a transaction: commit first.
        connection.exec_driver_sql("PRAGMA foreign_keys = OFF")
        connection.commit()
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=is_sqlite,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
        if is_sqlite:
            dangling = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if dangling:
                raise RuntimeError(
                    f"the migrations left rows whose foreign keys point nowhere: {dangling}"
                )


def run_migrations_online() -> None:
    url = context.config.attributes.get("database_url") or database_url()
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            run_migrations(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit(
        "Ringmaster's migrations run against a database only; drop --sql and give a URL"
    )
run_migrations_online()
