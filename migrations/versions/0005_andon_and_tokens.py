"""The andon cord's append-only record of pulls and releases, and API tokens (hashed) with roles.

Revision ID: 0005_andon_and_tokens
Revises: 0004_gate_results
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_andon_and_tokens"
down_revision: str | Sequence[str] | None = "0004_gate_results"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APPEND_ONLY_MESSAGE = "andon_events is append-only"
POSTGRESQL_APPEND_ONLY = [
    f"""
    CREATE FUNCTION andon_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION '{APPEND_ONLY_MESSAGE}';
    END
    $$
    """,
    """
    CREATE TRIGGER andon_events_append_only BEFORE UPDATE OR DELETE ON andon_events
    FOR EACH ROW EXECUTE FUNCTION andon_events_append_only()
    """,
    # TRUNCATE skips row triggers; refuse it too.
    """
    CREATE TRIGGER andon_events_no_truncate BEFORE TRUNCATE ON andon_events
    FOR EACH STATEMENT EXECUTE FUNCTION andon_events_append_only()
    """,
]
POSTGRESQL_DROP_APPEND_ONLY = [
    "DROP TRIGGER andon_events_no_truncate ON andon_events",
    "DROP TRIGGER andon_events_append_only ON andon_events",
    "DROP FUNCTION andon_events_append_only()",
]
SQLITE_APPEND_ONLY = [
    f"""
    CREATE TRIGGER andon_events_no_update BEFORE UPDATE ON andon_events
    BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY_MESSAGE}'); END
    """,
    f"""
    CREATE TRIGGER andon_events_no_delete BEFORE DELETE ON andon_events
    BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY_MESSAGE}'); END
    """,
]
SQLITE_DROP_APPEND_ONLY = ["DROP TRIGGER andon_events_no_update", "DROP TRIGGER andon_events_no_delete"]


def _postgresql() -> bool:
    return op.get_context().dialect.name == "postgresql"


def upgrade() -> None:
    op.create_table(
        "andon_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("pull_id", sa.Integer(), nullable=True),
        sa.Column("scope_kind", sa.String(16), nullable=False),
        sa.Column("scope_namespace", sa.String(63), nullable=True),
        sa.Column("scope_rollout", sa.String(253), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("via", sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_andon_events"),
        sa.ForeignKeyConstraint(["pull_id"], ["andon_events.id"], name="fk_andon_events_pull_id_andon_events"),
        sa.UniqueConstraint("pull_id", name="uq_andon_events_pull_id"),
    )
    op.create_index("ix_andon_events_kind", "andon_events", ["kind", "id"])
    for statement in POSTGRESQL_APPEND_ONLY if _postgresql() else SQLITE_APPEND_ONLY:
        op.execute(statement)
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("token_sha256", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(256), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_tokens"),
        sa.UniqueConstraint("name", name="uq_api_tokens_name"),
        sa.UniqueConstraint("token_sha256", name="uq_api_tokens_token_sha256"),
    )


def downgrade() -> None:
    op.drop_table("api_tokens")
    for statement in POSTGRESQL_DROP_APPEND_ONLY if _postgresql() else SQLITE_DROP_APPEND_ONLY:
        op.execute(statement)
    op.drop_index("ix_andon_events_kind", table_name="andon_events")
    op.drop_table("andon_events")
