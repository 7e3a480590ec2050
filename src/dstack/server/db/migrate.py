"""Bring the database schema to the newest Alembic revision at server start.

Alembic takes ~0.5 s to import on a small machine, so a database already at the newest revision (every
start but the first after an upgrade) is recognised with one query and alembic is never imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy.engine import Connection

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# The newest revision in migrations/versions; tests/unit/server/test_migrations.py keeps it in step.
HEAD_REVISION = "0004_multinode"


def alembic_config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def _upgrade(connection: Connection) -> None:
    from alembic import command

    command.upgrade(alembic_config(connection), "head")


async def current_revision(engine: AsyncEngine) -> str | None:
    try:
        async with engine.connect() as conn:
            return (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar_one_or_none()
    except DBAPIError:
        return None  # a new database: no version table yet


async def migrate(engine: AsyncEngine) -> None:
    if await current_revision(engine) == HEAD_REVISION:
        return
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade)
