"""Fleets of the user's own hosts, and what the server keeps about each fleet host.

Revision ID: 0004_fleets
Revises: 0004_slurm
Create Date: 2026-12-01 22:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_fleets"
down_revision = "0004_slurm"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fleets",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("project_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("configuration", sa.Text(), nullable=False),
        sa.Column("placement", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("project_id", "name"),
    )
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("fleet_id", sa.String(length=36), nullable=True))
        batch_op.add_column(sa.Column("ssh", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("agent_token", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("status_message", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("address", sa.String(length=256), nullable=True))
        batch_op.create_foreign_key("fk_hosts_fleet_id", "fleets", ["fleet_id"], ["id"])


def downgrade() -> None:
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.drop_constraint("fk_hosts_fleet_id", type_="foreignkey")
        batch_op.drop_column("address")
        batch_op.drop_column("status_message")
        batch_op.drop_column("agent_token")
        batch_op.drop_column("ssh")
        batch_op.drop_column("fleet_id")
    op.drop_table("fleets")
