"""Alembic environment: migrations run on the server's own (async) engine connection."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from dstack.server.db.models import Base

target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite needs batch mode to alter tables
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("dstack migrations run only through dstack.server.db.migrate")
_run(connection)
