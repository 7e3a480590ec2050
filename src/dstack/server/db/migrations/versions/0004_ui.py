"""Run status history (run_transitions) and web UI sign-ins (ui_sessions).

Revision ID: 0004_ui
Revises: 0003_locks
Create Date: 2026-11-28 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_ui"
down_revision = "0003_locks"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "run_transitions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("status_message", sa.Text(), nullable=True),
        sa.Column("termination_reason", sa.String(length=32), nullable=True),
        sa.Column("termination_message", sa.Text(), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_run_transitions_run", "run_transitions", ["run_id", "id"])
    # Runs submitted before this revision get their submission as the first entry of their history.
    op.execute(
        "INSERT INTO run_transitions (run_id, at, status) "
        "SELECT id, submitted_at, 'submitted' FROM runs ORDER BY submitted_at"
    )
    op.create_table(
        "ui_sessions",
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("csrf_token", sa.String(length=64), nullable=True),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("project", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("secret_hash"),
    )


def downgrade() -> None:
    op.drop_table("ui_sessions")
    op.drop_index("ix_run_transitions_run", table_name="run_transitions")
    op.drop_table("run_transitions")
