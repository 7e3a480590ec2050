"""Today's dstack task fields: run priority and schedule, project secrets, run-scoped tokens

Revision ID: 0004_schema
Revises: 0004_ui
Create Date: 2026-12-02 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_schema"
down_revision = "0004_ui"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("priority", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("schedule", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("next_start_at", sa.Float(), nullable=True))
    op.create_table(
        "secrets",
        sa.Column("project_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"]),
        sa.PrimaryKeyConstraint("project_id", "name"),
    )
    op.create_table(
        "run_tokens",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("project_id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"]),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("token_hash"),
    )
    op.create_index("ix_run_tokens_run", "run_tokens", ["run_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_run_tokens_run", table_name="run_tokens")
    op.drop_table("run_tokens")
    op.drop_table("secrets")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("next_start_at")
        batch_op.drop_column("schedule")
        batch_op.drop_column("priority")
