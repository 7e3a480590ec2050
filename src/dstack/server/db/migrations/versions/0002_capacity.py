"""runs.configuration_path, so that listing runs never reads their specs

Revision ID: 0002_capacity
Revises: 0001
Create Date: 2026-11-27 09:00:00
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0002_capacity"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("configuration_path", sa.String(length=256), nullable=True))
    runs = sa.table(
        "runs",
        sa.column("id", sa.String),
        sa.column("spec", sa.Text),
        sa.column("configuration_path", sa.String),
    )
    connection = op.get_bind()
    for run_id, spec in connection.execute(sa.select(runs.c.id, runs.c.spec)).all():
        try:
            path = json.loads(spec).get("configuration_path")
        except (ValueError, AttributeError):
            path = None
        if path:
            connection.execute(
                runs.update().where(runs.c.id == run_id).values(configuration_path=str(path)[:256])
            )


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("configuration_path")
