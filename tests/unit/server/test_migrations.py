"""The schema comes from migrations, and the fast "already migrated" check knows the newest one."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from dstack.server.db.engine import Database
from dstack.server.db.migrate import HEAD_REVISION, MIGRATIONS_DIR, alembic_config, current_revision, migrate
from dstack.server.db.models import Base


def test_head_revision_constant_matches_the_migrations() -> None:
    assert ScriptDirectory.from_config(alembic_config()).get_current_head() == HEAD_REVISION
    assert MIGRATIONS_DIR.is_dir()


def test_migrations_create_the_models_tables(tmp_path: Path) -> None:
    async def scenario() -> tuple[str | None, set[str], dict[str, set[str]]]:
        db = Database(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
        await migrate(db.writer)
        await migrate(db.writer)  # idempotent: the second start finds the head and does nothing
        revision = await current_revision(db.writer)
        async with db.read() as session:
            # The scheduling pass locks this row; without it, replicas would not be kept apart.
            locks = (await session.execute(text("SELECT name FROM locks"))).scalars().all()
        assert list(locks) == ["scheduler"]
        async with db.writer.connect() as conn:
            tables, columns = await conn.run_sync(
                lambda sync: (
                    set(inspect(sync).get_table_names()),
                    {t: {c["name"] for c in inspect(sync).get_columns(t)} for t in Base.metadata.tables},
                )
            )
        await db.close()
        return revision, tables, columns

    revision, tables, columns = asyncio.run(scenario())
    assert revision == HEAD_REVISION
    assert set(Base.metadata.tables) <= tables
    for name, table in Base.metadata.tables.items():
        assert {c.name for c in table.columns} == columns[name], name
