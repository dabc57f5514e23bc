"""Cohort sets with versions, opt choices, usage, an append-only audit log, and the `default` set.

Revision ID: 0001_cohorts
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0001_cohorts"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MIGRATION_ACTOR = "ringmaster/migration"

# The default cohort set as it was when this revision was written. Written out rather than
# imported, so that changing `default_cohort_set()` later does not rewrite history.
DEFAULT_SPEC: dict[str, Any] = {
    "name": "default",
    "description": "Staff first, then a rotating 5 % canary, opt-in early adopters, and the rest.",
    "rings": ["canary", "early-adopter", "stable", "laggard"],
    "defaultRing": "stable",
    "pins": {},
    "optInRing": "early-adopter",
    "optOutRing": "laggard",
    "rules": [
        {
            "name": "staff",
            "ring": "canary",
            "when": {"attribute": "team", "op": "equals", "value": "staff"},
            "description": "Our own people see every release first.",
        }
    ],
    "split": {
        "shares": {"canary": 5.0, "early-adopter": 15.0, "stable": 70.0, "laggard": 10.0},
        "rotation": {"period": "7d", "rings": ["canary"], "anchor": "2024-01-01T00:00:00Z"},
        "bucketBy": "targetingKey",
    },
}

APPEND_ONLY_MESSAGE = "audit_log is append-only"

POSTGRESQL_APPEND_ONLY = [
    f"""
    CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION '{APPEND_ONLY_MESSAGE}';
    END
    $$
    """,
    """
    CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()
    """,
]
POSTGRESQL_DROP_APPEND_ONLY = [
    "DROP TRIGGER audit_log_append_only ON audit_log",
    "DROP FUNCTION audit_log_append_only()",
]
SQLITE_APPEND_ONLY = [
    f"""
    CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
    BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY_MESSAGE}'); END
    """,
    f"""
    CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
    BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY_MESSAGE}'); END
    """,
]
SQLITE_DROP_APPEND_ONLY = [
    "DROP TRIGGER audit_log_no_update",
    "DROP TRIGGER audit_log_no_delete",
]


def _dialect() -> str:
    return op.get_context().dialect.name


def upgrade() -> None:
    op.create_table(
        "cohort_sets",
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("current_version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_cohort_sets"),
    )
    op.create_table(
        "cohort_set_versions",
        sa.Column("cohort_set", sa.String(63), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(256), nullable=False),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("cohort_set", "version", name="pk_cohort_set_versions"),
        sa.ForeignKeyConstraint(
            ["cohort_set"],
            ["cohort_sets.name"],
            name="fk_cohort_set_versions_cohort_set_cohort_sets",
        ),
    )
    op.create_table(
        "cohort_opt_choices",
        sa.Column("cohort_set", sa.String(63), nullable=False),
        sa.Column("targeting_key", sa.String(256), nullable=False),
        sa.Column("choice", sa.String(3), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(256), nullable=False),
        sa.PrimaryKeyConstraint("cohort_set", "targeting_key", name="pk_cohort_opt_choices"),
        sa.ForeignKeyConstraint(
            ["cohort_set"],
            ["cohort_sets.name"],
            name="fk_cohort_opt_choices_cohort_set_cohort_sets",
        ),
        sa.CheckConstraint("choice IN ('in', 'out')", name="ck_cohort_opt_choices_choice"),
    )
    op.create_table(
        "usage_users",
        sa.Column("targeting_key", sa.String(256), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attributes", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("targeting_key", name="pk_usage_users"),
    )
    op.create_table(
        "usage_metrics",
        sa.Column("targeting_key", sa.String(256), nullable=False),
        sa.Column("metric", sa.String(63), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("targeting_key", "metric", name="pk_usage_metrics"),
        sa.ForeignKeyConstraint(
            ["targeting_key"],
            ["usage_users.targeting_key"],
            name="fk_usage_metrics_targeting_key_usage_users",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_usage_metrics_metric_value", "usage_metrics", ["metric", "value"])
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("action", sa.String(63), nullable=False),
        sa.Column("subject", sa.String(256), nullable=False),
        sa.Column("before", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("after", sa.JSON(none_as_null=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_audit_log"),
    )
    op.create_index("ix_audit_log_subject_id", "audit_log", ["subject", "id"])
    for statement in POSTGRESQL_APPEND_ONLY if _dialect() == "postgresql" else SQLITE_APPEND_ONLY:
        op.execute(statement)

    _insert_default_cohort_set()


def _insert_default_cohort_set() -> None:
    now = datetime.now(UTC)
    cohort_sets = sa.table(
        "cohort_sets",
        sa.column("name", sa.String()),
        sa.column("current_version", sa.Integer()),
        sa.column("created_at", sa.DateTime(timezone=True)),
        sa.column("updated_at", sa.DateTime(timezone=True)),
    )
    versions = sa.table(
        "cohort_set_versions",
        sa.column("cohort_set", sa.String()),
        sa.column("version", sa.Integer()),
        sa.column("spec", sa.JSON()),
        sa.column("created_at", sa.DateTime(timezone=True)),
        sa.column("created_by", sa.String()),
        sa.column("comment", sa.Text()),
    )
    audit_log = sa.table(
        "audit_log",
        sa.column("at", sa.DateTime(timezone=True)),
        sa.column("actor", sa.String()),
        sa.column("action", sa.String()),
        sa.column("subject", sa.String()),
        sa.column("before", sa.JSON(none_as_null=True)),
        sa.column("after", sa.JSON(none_as_null=True)),
    )
    op.bulk_insert(
        cohort_sets,
        [{"name": "default", "current_version": 1, "created_at": now, "updated_at": now}],
    )
    op.bulk_insert(
        versions,
        [
            {
                "cohort_set": "default",
                "version": 1,
                "spec": DEFAULT_SPEC,
                "created_at": now,
                "created_by": MIGRATION_ACTOR,
                "comment": "created with the database",
            }
        ],
    )
    op.bulk_insert(
        audit_log,
        [
            {
                "at": now,
                "actor": MIGRATION_ACTOR,
                "action": "cohort-set.create",
                "subject": "cohort-set/default",
                "before": None,
                "after": DEFAULT_SPEC,
            }
        ],
    )


def downgrade() -> None:
    for statement in (
        POSTGRESQL_DROP_APPEND_ONLY if _dialect() == "postgresql" else SQLITE_DROP_APPEND_ONLY
    ):
        op.execute(statement)
    op.drop_index("ix_audit_log_subject_id", table_name="audit_log")
    op.drop_table("audit_log")
    op.drop_index("ix_usage_metrics_metric_value", table_name="usage_metrics")
    op.drop_table("usage_metrics")
    op.drop_table("usage_users")
    op.drop_table("cohort_opt_choices")
    op.drop_table("cohort_set_versions")
    op.drop_table("cohort_sets")
