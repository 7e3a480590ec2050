"""Database engines and sessions.

SQLite: one writer connection (every write transaction starts with BEGIN IMMEDIATE, so writers queue in
this process instead of failing with "database is locked") and a pool of readers that WAL lets run beside
the writer. PostgreSQL: one ordinary pool for both.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar, cast

from sqlalchemy import MetaData, Table, event, insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from dstack.server.db import sqlite_driver

T = TypeVar("T")
_MAX_BATCH = 500
_PENDING = "dstack_inserts"


def insert_at_commit(session: AsyncSession, table: Table, rows: list[dict[str, Any]]) -> None:
    """INSERT `rows` into `table` at the end of the write transaction, in one statement with the rows
    that the other writes of its batch (Database.write_batched) insert there: a burst of submissions then
    pays for one INSERT per table instead of one per submission. Tables are written parents first (by
    their foreign keys). A write must not read back what it inserts this way."""
    pending: dict[tuple[Table, tuple[str, ...]], list[dict[str, Any]]] = session.info.setdefault(_PENDING, {})
    for row in rows:
        pending.setdefault((table, tuple(row)), []).append(row)


@functools.lru_cache(maxsize=4)
def _parents_first(metadata: MetaData) -> dict[Table, int]:
    """Each table's place in the foreign-key order: `sorted_tables` sorts them anew on every call."""
    return {table: i for i, table in enumerate(metadata.sorted_tables)}


async def _insert_pending(session: AsyncSession) -> None:
    pending = session.info.pop(_PENDING, None)
    if not pending:
        return
    order = _parents_first(next(iter(pending))[0].metadata)
    for (table, _columns), rows in sorted(pending.items(), key=lambda item: order.get(item[0][0], 0)):
        await session.execute(insert(table), rows)


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            # The writer runs its statements on the loop's thread, the readers one hop each on their own
            # (db/sqlite_driver.py).
            self.writer = create_async_engine(
                sqlite_driver.driver_url(url, writer=True), pool_size=1, max_overflow=0, pool_timeout=60
            )
            self.reader = create_async_engine(sqlite_driver.driver_url(url), pool_size=4, max_overflow=4)
            _configure_sqlite(self.writer, immediate=True)
            _configure_sqlite(self.reader, immediate=False)
        else:
            self.writer = create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)
            self.reader = self.writer
        self._write_sessions = async_sessionmaker(self.writer, expire_on_commit=False)
        self._batch: list[tuple[Callable[[AsyncSession], Awaitable[Any]], asyncio.Future[Any]]] = []
        self._batch_task: asyncio.Task[None] | None = None
        self._read_sessions = async_sessionmaker(self.reader, expire_on_commit=False)

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """A transaction that commits on success and rolls back on error."""
        async with self._write_sessions() as session, session.begin():
            yield session
            await _insert_pending(session)

    async def write_batched(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """`work` in a write transaction shared with the other calls waiting at the time (group commit).

        A burst of small writes (a thousand submissions, their jobs' ends) then pays for one BEGIN and one
        COMMIT per batch instead of per write. Each call's work runs alone in the transaction (one after
        another, never interleaved) and returns after the commit. If one of them fails, the batch is rolled
        back and each is run again in a transaction of its own, so a failure is only ever its own: `work`
        must do nothing but database work (it may run twice).
        """
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._batch.append((work, future))
        if self._batch_task is None or self._batch_task.done():
            self._batch_task = asyncio.create_task(self._write_batches())
        return cast(T, await future)

    async def _write_batches(self) -> None:
        await asyncio.sleep(0)  # the writes queued in this loop iteration go together
        while self._batch:
            batch, self._batch = self._batch[:_MAX_BATCH], self._batch[_MAX_BATCH:]
            try:
                async with self.write() as session:
                    results = [await work(session) for work, _ in batch]
            except Exception:
                for work, future in batch:
                    try:
                        async with self.write() as session:
                            result = await work(session)
                    except Exception as e:
                        if not future.done():
                            future.set_exception(e)
                    else:
                        if not future.done():
                            future.set_result(result)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        async with self._read_sessions() as session:
            yield session

    async def close(self) -> None:
        await self.writer.dispose()
        if self.reader is not self.writer:
            await self.reader.dispose()


def _configure_sqlite(engine: AsyncEngine, *, immediate: bool) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from the driver so we can choose how BEGIN is spelled.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={sqlite_driver.busy_timeout_ms(dbapi_connection)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
