"""Rollout history: every transition of every Rollout, as the controller recorded it.

Revision ID: 0003_rollout_history
Revises: 0002_flags
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_rollout_history"
down_revision: str | Sequence[str] | None = "0002_flags"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rollout_history",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("namespace", sa.String(63), nullable=False),
        sa.Column("name", sa.String(253), nullable=False),
        sa.Column("rollout_uid", sa.String(64), nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("revision", sa.String(32), nullable=True),
        sa.Column("ring", sa.String(63), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_rollout_history"),
        # A controller that dies after recording a transition records it again on restart: once is kept.
        sa.UniqueConstraint("rollout_uid", "sequence", "reason", name="uq_rollout_history_transition"),
    )
    op.create_index("ix_rollout_history_rollout", "rollout_history", ["namespace", "name", "id"])


def downgrade() -> None:
    op.drop_index("ix_rollout_history_rollout", table_name="rollout_history")
    op.drop_table("rollout_history")
