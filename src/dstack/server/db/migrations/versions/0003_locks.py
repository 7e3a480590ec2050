"""Named transaction locks (the scheduling pass), and columns nothing used.

Revision ID: 0003_locks
Revises: 0002_capacity
Create Date: 2026-11-27 10:08:42
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_locks"
down_revision = "0002_capacity"
branch_labels = None
depends_on = None


def upgrade() -> None:
    locks = op.create_table(
        "locks", sa.Column("name", sa.String(length=64), nullable=False), sa.PrimaryKeyConstraint("name")
    )
    op.bulk_insert(locks, [{"name": "scheduler"}])
    op.drop_table("leases")
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.drop_column("agent_url")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("log_size")


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("log_size", sa.INTEGER(), nullable=False, server_default="0"))
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("agent_url", sa.VARCHAR(length=256), nullable=True))
    op.create_table(
        "leases",
        sa.Column("name", sa.VARCHAR(length=64), nullable=False),
        sa.Column("token", sa.VARCHAR(length=36), nullable=True),
        sa.Column("expires_at", sa.FLOAT(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.drop_table("locks")
