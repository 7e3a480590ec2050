"""SQLite through aiosqlite, one thread hop per statement.

aiosqlite runs each call on its connection's thread, and SQLAlchemy's adapter makes four such calls per
statement: make a cursor, execute, fetch the rows, close the cursor. Each one is a queue put, a wake-up of
that thread and a wake-up of the event loop: a burst of tiny runs spent more of the server's loop on these
hand-overs than on any statement. This driver (the URL's `sqlite+aiosqlite` is mapped to it) does the same
four steps as one call on that thread, with a plain sqlite3 cursor that never leaves it.

Everything else is SQLAlchemy's aiosqlite dialect as it is. `usable()` checks the few parts of aiosqlite
and of the adapter this relies on; where one is missing (another version), the stock driver is used.
"""

from __future__ import annotations

import collections
from typing import Any

from sqlalchemy.dialects import registry
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
    SQLiteDialect_aiosqlite,
)

DRIVER = "dstack_aiosqlite"
_STOCK = "aiosqlite"


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


class _DBAPI(AsyncAdapt_aiosqlite_dbapi):
    def connect(self, *arg: Any, **kw: Any) -> AsyncAdapt_aiosqlite_connection:
        connection = super().connect(*arg, **kw)
        connection.__class__ = _Connection  # the same object, its cursors one hop each
        return connection


class Dialect(SQLiteDialect_aiosqlite):
    driver = DRIVER
    supports_statement_cache = True

    @classmethod
    def import_dbapi(cls) -> AsyncAdapt_aiosqlite_dbapi:
        return _DBAPI(__import__("aiosqlite"), __import__("sqlite3"))


def usable() -> bool:
    """Whether the installed aiosqlite and adapter have what this driver relies on."""
    import aiosqlite

    return (
        callable(getattr(aiosqlite.Connection, "_execute", None))
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


def driver_url(url: str) -> str:
    """`url` with the one-hop driver where it names the stock aiosqlite one and this one is usable."""
    prefix = f"sqlite+{_STOCK}:"
    if url.startswith(prefix) and usable():
        return f"sqlite+{DRIVER}:" + url[len(prefix) :]
    return url


registry.register(f"sqlite.{DRIVER}", __name__, "Dialect")
