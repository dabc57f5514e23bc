"""Flags with versions; their changes go to the audit log 0001_cohorts created.

Revision ID: 0002_flags
Revises: 0001_cohorts
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_flags"
down_revision: str | Sequence[str] | None = "0001_cohorts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "flags",
        sa.Column("key", sa.String(128), nullable=False),
        sa.Column("current_version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_flags"),
    )
    op.create_table(
        "flag_versions",
        sa.Column("flag", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(256), nullable=False),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("flag", "version", name="pk_flag_versions"),
        sa.ForeignKeyConstraint(["flag"], ["flags.key"], name="fk_flag_versions_flag_flags"),
    )


def downgrade() -> None:
    op.drop_table("flag_versions")
    op.drop_table("flags")
