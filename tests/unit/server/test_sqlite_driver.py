"""The server's SQLite driver: SQLAlchemy's aiosqlite dialect, each statement one call on the
connection's thread, and the writer's on the event loop's own."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import create_async_engine

from dstack.server.db import sqlite_driver
from dstack.server.db.engine import Database

METADATA = MetaData()
ITEMS = Table("items", METADATA, Column("id", Integer, primary_key=True), Column("name", String, unique=True))


def test_the_stock_url_gets_this_driver_and_others_are_left_alone() -> None:
    assert sqlite_driver.usable()
    assert sqlite_driver.driver_url("sqlite+aiosqlite:////x/db") == "sqlite+dstack_aiosqlite:////x/db"
    writer = sqlite_driver.driver_url("sqlite+aiosqlite:////x/db", writer=True)
    assert writer == "sqlite+dstack_direct:////x/db"
    for url in ("postgresql+asyncpg://h/db", "sqlite+pysqlite:///x"):
        assert sqlite_driver.driver_url(url) == url
        assert sqlite_driver.driver_url(url, writer=True) == url


@pytest.mark.parametrize("writer", [False, True], ids=["one hop", "in place"])
def test_statements_behave_as_with_the_stock_driver(tmp_path: Path, writer: bool) -> None:
    async def scenario() -> None:
        url = sqlite_driver.driver_url(f"sqlite+aiosqlite:///{tmp_path / 'db'}", writer=writer)
        engine = create_async_engine(url)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(METADATA.create_all)
                first = await conn.execute(insert(ITEMS).values(name="a"))
                assert first.inserted_primary_key == (1,)
                await conn.execute(insert(ITEMS), [{"name": "b"}, {"name": "c"}])  # executemany
                renamed = update(ITEMS).where(ITEMS.c.name != "a").values(name=ITEMS.c.name + "!")
                changed = await conn.execute(renamed)
                assert changed.rowcount == 2
                none = await conn.execute(update(ITEMS).where(ITEMS.c.id == 99).values(name="z"))
                assert none.rowcount == 0
            with pytest.raises(IntegrityError):
                async with engine.begin() as conn:
                    await conn.execute(insert(ITEMS).values(name="x"))
                    await conn.execute(insert(ITEMS).values(name="a"))  # rolls the whole transaction back
            async with engine.connect() as conn:
                rows = (await conn.execute(select(ITEMS.c.name).order_by(ITEMS.c.id))).scalars().all()
                assert rows == ["a", "b!", "c!"]
                assert len((await conn.execute(select(ITEMS))).fetchmany()) == 1  # the DBAPI's arraysize
                streamed = [row.name async for row in await conn.stream(select(ITEMS).order_by(ITEMS.c.id))]
                assert streamed == rows
                assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() in ("wal", "delete")
        finally:
            await engine.dispose()

    asyncio.run(scenario())


def test_a_read_is_one_call_on_the_connections_thread_and_a_write_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Any] = []
    original = aiosqlite.Connection._execute

    async def counted(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(fn)
        return await original(self, fn, *args, **kwargs)

    async def scenario() -> None:
        db = Database(f"sqlite+aiosqlite:///{tmp_path / 'db'}")
        try:
            async with db.write() as session:
                await session.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"))
            monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
            async with db.read() as session:
                await session.execute(text("SELECT 1"))  # the connection opened, its transaction begun
                calls.clear()
                assert (await session.execute(text("SELECT count(*) FROM t"))).scalar() == 0
                assert len(calls) == 1
            calls.clear()
            async with db.write() as session:  # BEGIN IMMEDIATE, the INSERT, COMMIT: all in place
                await session.execute(text("INSERT INTO t (v) VALUES ('x')"))
            assert calls == []
            async with db.read() as session:
                assert (await session.execute(text("SELECT v FROM t"))).scalars().all() == ["x"]
        finally:
            await db.close()

    asyncio.run(scenario())


def test_a_write_waits_for_another_processs_lock_without_holding_up_the_loop(tmp_path: Path) -> None:
    path = tmp_path / "db"
    locked, release = threading.Event(), threading.Event()

    def other_process() -> None:
        # Another connection (as another process would) holds the write lock until told.
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO t (v) VALUES ('theirs')")
        locked.set()
        release.wait(10)
        other.execute("COMMIT")
        other.close()

    async def scenario() -> None:
        db = Database(f"sqlite+aiosqlite:///{path}")
        try:
            async with db.write() as session:
                await session.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"))
            holder = threading.Thread(target=other_process)
            holder.start()
            assert await asyncio.to_thread(locked.wait, 10)
            ticks: list[float] = []

            async def tick() -> None:
                while True:
                    ticks.append(time.monotonic())
                    await asyncio.sleep(0.01)

            ticker = asyncio.create_task(tick())
            asyncio.get_running_loop().call_later(0.5, release.set)
            started = time.monotonic()
            async with db.write() as session:
                await session.execute(text("INSERT INTO t (v) VALUES ('ours')"))
            waited = time.monotonic() - started
            ticker.cancel()
            holder.join(10)
            assert waited >= 0.4  # it did wait for the lock...
            during = [t for t in ticks if started <= t <= started + waited]
            assert len(during) >= 10  # ...while the loop went on serving
            async with db.read() as session:
                rows = (await session.execute(text("SELECT v FROM t ORDER BY id"))).scalars().all()
            assert rows == ["theirs", "ours"]
        finally:
            release.set()
            await db.close()

    asyncio.run(scenario())
