"""Where a job runs as its backend names it: a Slurm job id (recovery) and the run's label for `ps -v`.

Revision ID: 0004_slurm
Revises: 0004_schema
Create Date: 2026-12-01 21:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_slurm"
down_revision = "0004_schema"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("instance_id", sa.String(length=64), nullable=True))
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("instance", sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("instance")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("instance_id")
