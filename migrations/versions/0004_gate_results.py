"""Gate results: every measurement of every gate, as the controller recorded it.

Revision ID: 0004_gate_results
Revises: 0003_rollout_history
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_gate_results"
down_revision: str | Sequence[str] | None = "0003_rollout_history"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "gate_results",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("namespace", sa.String(63), nullable=False),
        sa.Column("name", sa.String(253), nullable=False),
        sa.Column("rollout_uid", sa.String(64), nullable=False),
        sa.Column("revision", sa.String(32), nullable=False),
        sa.Column("ring", sa.String(63), nullable=False),
        sa.Column("gate", sa.String(253), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("verdict", sa.String(32), nullable=False),
        sa.Column("values", sa.JSON(), nullable=False),
        sa.Column("threshold", sa.Text(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("queries", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_gate_results"),
        # A controller that dies after recording a measurement records it again on restart: once is kept.
        sa.UniqueConstraint("rollout_uid", "revision", "ring", "gate", "sequence", name="uq_gate_results_measurement"),
    )
    op.create_index("ix_gate_results_rollout", "gate_results", ["namespace", "name", "id"])


def downgrade() -> None:
    op.drop_index("ix_gate_results_rollout", table_name="gate_results")
    op.drop_table("gate_results")
