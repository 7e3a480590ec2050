"""SQLite through aiosqlite: one thread hop per statement, and none for the writer.

aiosqlite runs each call on its connection's thread, and SQLAlchemy's adapter makes four such calls per
statement: make a cursor, execute, fetch the rows, close the cursor. Each one is a queue put, a wake-up of
that thread and a wake-up of the event loop: a burst of tiny runs spent more of the server's loop on these
hand-overs than on any statement. This driver (the URL's `sqlite+aiosqlite` is mapped to it) does the same
four steps as one call on that thread, with a plain sqlite3 cursor that never leaves it.

The one writer connection (`sqlite+dstack_direct`, see db/engine.py) goes further: its statements, COMMIT
and ROLLBACK run on the event loop's own thread. A hop costs the statement a wait for the loop's next
iteration to resume it, and under load that is the long part: a batch of twenty status writes took 100-200
ms, most of it waiting, with SQLite's write lock held all along. Run in place, a write transaction goes
from BEGIN to COMMIT without yielding, so the lock is never held across iterations. The statements are
short (the server's writes touch a few rows by key) and sqlite3 releases the GIL while they run. The one
wait that could be long, for another process's write lock, never happens on the loop: the writer does not
wait for a busy database (busy_timeout 0), and a statement refused as busy is run again on aiosqlite's
thread, where it waits as every connection does.

Everything else is SQLAlchemy's aiosqlite dialect as it is. `usable()` checks the few parts of aiosqlite
and of the adapter this relies on; where one is missing (another version), the stock driver is used.
"""

from __future__ import annotations

import collections
import sqlite3
from collections.abc import Callable
from typing import Any

from sqlalchemy.dialects import registry
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
    SQLiteDialect_aiosqlite,
)

try:
    from sqlalchemy.util.concurrency import await_
except ImportError:  # SQLAlchemy 2.0 spells it so
    from sqlalchemy.util.concurrency import await_only as await_  # type: ignore[no-redef,unused-ignore]

DRIVER = "dstack_aiosqlite"
DIRECT_DRIVER = "dstack_direct"
_STOCK = "aiosqlite"
BUSY_TIMEOUT_MS = 30_000  # how long a statement waits for another connection's lock (off the loop)
_SQLITE_BUSY = 5


class _OneHopCursor(AsyncAdapt_aiosqlite_cursor):
    """A DBAPI cursor whose statement runs whole in the connection's thread; it holds only the result."""

    __slots__ = ("_arraysize", "_result_description", "_result_lastrowid", "_result_rowcount")

    def __init__(self, adapt_connection: Any) -> None:
        # No aiosqlite cursor (making one is a hop of its own): each statement makes and closes its own.
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._cursor = None  # type: ignore[assignment]
        self._soft_closed_memoized = {}  # type: ignore[assignment]
        self._rows = collections.deque()
        self._result_description: Any = None
        self._result_rowcount = -1
        self._result_lastrowid: Any = None
        self._arraysize = 1  # the DBAPI default, for a fetchmany() without a size

    @property
    def arraysize(self) -> int:
        return self._arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._arraysize = value

    @property
    def description(self) -> Any:
        return self._result_description

    @property
    def rowcount(self) -> int:
        return self._result_rowcount

    @property
    def lastrowid(self) -> Any:
        return self._result_lastrowid

    def close(self) -> None:
        self._rows.clear()

    async def _async_soft_close(self) -> None:
        return None  # nothing is open between statements

    async def _execute_async(self, operation: Any, parameters: Any) -> Any:
        return await self._one_hop(operation, parameters, many=False)

    async def _executemany_async(self, operation: Any, seq_of_parameters: Any) -> Any:
        return await self._one_hop(operation, seq_of_parameters, many=True)

    async def _one_hop(self, operation: Any, parameters: Any, *, many: bool) -> Any:
        connection = self._connection
        async with self._adapt_connection._execute_mutex:
            result = await connection._execute(_run, connection._conn, operation, parameters, many)
        self._result_description, rows, self._result_rowcount, self._result_lastrowid = result
        self._rows = collections.deque(rows or ())
        return self


def _run(connection: Any, operation: Any, parameters: Any, many: bool) -> tuple[Any, Any, int, Any]:
    """On the connection's thread: the statement, its rows, and what the cursor says of it."""
    cursor = connection.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        elif parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        rows = cursor.fetchall() if cursor.description else None
        return cursor.description, rows, cursor.rowcount, cursor.lastrowid
    finally:
        cursor.close()


class _Connection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ()
    _cursor_cls = _OneHopCursor


class _DirectCursor(_OneHopCursor):
    """A DBAPI cursor whose statement runs on the calling thread (the event loop's)."""

    __slots__ = ()

    async def _execute_async(self, operation: Any, parameters: Any) -> Any:
        return await self._in_place(operation, parameters, many=False)

    async def _executemany_async(self, operation: Any, seq_of_parameters: Any) -> Any:
        return await self._in_place(operation, seq_of_parameters, many=True)

    async def _in_place(self, operation: Any, parameters: Any, *, many: bool) -> Any:
        # A coroutine that finishes without suspending: SQLAlchemy's async layer sees the await it
        # expects of an async driver, and the event loop is not involved.
        result = await _in_place_or_waiting(self._adapt_connection, _run, operation, parameters, many)
        self._result_description, rows, self._result_rowcount, self._result_lastrowid = result
        self._rows = collections.deque(rows or ())
        return self


class _DirectConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ()
    _cursor_cls = _DirectCursor

    def commit(self) -> None:
        self._end(sqlite3.Connection.commit)

    def rollback(self) -> None:
        self._end(sqlite3.Connection.rollback)

    def _end(self, call: Callable[[sqlite3.Connection], None]) -> None:
        if self._connection._connection:
            try:
                await_(_in_place_or_waiting(self, call))
            except Exception as error:
                self._handle_exception(error)


async def _in_place_or_waiting(adapted: Any, call: Callable[..., Any], *args: Any) -> Any:
    """`call(sqlite3_connection, *args)` on this thread; if the database is busy (another process
    writes), again on aiosqlite's thread with a busy timeout, where waiting holds up nothing else. A
    statement refused as busy did nothing, so running it again is safe."""
    connection = adapted._connection
    try:
        return call(connection._conn, *args)
    except sqlite3.OperationalError as error:
        if not _is_busy(error):
            raise
    return await connection._execute(_waiting, connection._conn, call, args)


def _waiting(connection: sqlite3.Connection, call: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    try:
        return call(connection, *args)
    finally:
        connection.execute("PRAGMA busy_timeout=0")


def _is_busy(error: sqlite3.OperationalError) -> bool:
    code = getattr(error, "sqlite_errorcode", None)  # Python 3.11+: an extended code (SQLITE_BUSY_*)
    return code & 0xFF == _SQLITE_BUSY if code is not None else "database is locked" in str(error)


def is_direct(dbapi_connection: Any) -> bool:
    """Whether a connection of these dialects runs its statements on the calling thread."""
    return isinstance(dbapi_connection, _DirectConnection)


def busy_timeout_ms(dbapi_connection: Any) -> int:
    """The busy timeout to give the connection: none for the writer (see the module's docstring)."""
    return 0 if is_direct(dbapi_connection) else BUSY_TIMEOUT_MS


class _DBAPI(AsyncAdapt_aiosqlite_dbapi):
    def __init__(self, aiosqlite: Any, sqlite: Any, *, direct: bool) -> None:
        super().__init__(aiosqlite, sqlite)
        self.direct = direct

    def connect(self, *arg: Any, **kw: Any) -> AsyncAdapt_aiosqlite_connection:
        if self.direct:
            # Opened on aiosqlite's thread, used on the loop's: sqlite3 must allow that. And no waiting
            # for a busy database there (see _in_place_or_waiting).
            kw["check_same_thread"] = False
            kw["timeout"] = 0
        connection = super().connect(*arg, **kw)
        # The same object, its statements one hop each, or none.
        connection.__class__ = _DirectConnection if self.direct else _Connection
        return connection


class Dialect(SQLiteDialect_aiosqlite):
    driver = DRIVER
    supports_statement_cache = True
    _direct = False

    @classmethod
    def import_dbapi(cls) -> AsyncAdapt_aiosqlite_dbapi:
        return _DBAPI(__import__("aiosqlite"), __import__("sqlite3"), direct=cls._direct)


class DirectDialect(Dialect):
    driver = DIRECT_DRIVER
    supports_statement_cache = True
    _direct = True


def usable() -> bool:
    """Whether the installed aiosqlite and adapter have what this driver relies on."""
    import aiosqlite

    return (
        callable(getattr(aiosqlite.Connection, "_execute", None))
        and isinstance(getattr(aiosqlite.Connection, "_conn", None), property)
        and hasattr(AsyncAdapt_aiosqlite_cursor, "_execute_async")
        and hasattr(AsyncAdapt_aiosqlite_cursor, "_executemany_async")
        and hasattr(AsyncAdapt_aiosqlite_connection, "_cursor_cls")
        and "_execute_mutex" in _all_slots(AsyncAdapt_aiosqlite_connection)
    )


def _all_slots(cls: type) -> tuple[str, ...]:
    found: tuple[str, ...] = ()
    for klass in cls.__mro__:
        slots = klass.__dict__.get("__slots__", ())
        found += (slots,) if isinstance(slots, str) else tuple(slots)
    return found


def driver_url(url: str, *, writer: bool = False) -> str:
    """`url` with the one-hop driver (the `writer`: the in-place one) where it names the stock aiosqlite
    one and these are usable."""
    prefix = f"sqlite+{_STOCK}:"
    if url.startswith(prefix) and usable():
        return f"sqlite+{DIRECT_DRIVER if writer else DRIVER}:" + url[len(prefix) :]
    return url


registry.register(f"sqlite.{DRIVER}", __name__, "Dialect")
registry.register(f"sqlite.{DIRECT_DRIVER}", __name__, "DirectDialect")
