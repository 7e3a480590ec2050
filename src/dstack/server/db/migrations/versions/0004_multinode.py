"""Multi-node runs: a run's node count, and each job's node rank and where it runs.

Revision ID: 0004_multinode
Revises: 0004_fleets
Create Date: 2026-12-02 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_multinode"
down_revision = "0004_fleets"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("nodes", sa.Integer(), nullable=False, server_default="1"))
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("job_num", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("hostname", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("address", sa.String(length=256), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("address")
        batch_op.drop_column("hostname")
        batch_op.drop_column("job_num")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("nodes")
