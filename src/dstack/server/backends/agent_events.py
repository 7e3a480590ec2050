"""The server's side of an agent's job events (dstack.agent.events): one stream per agent instead of a
long-poll per job, and batches of job submissions and deletions instead of a request each.

`AgentEvents` keeps, for every job on the agent, the latest status and output size it was told, plus the
output that came inline; a supervisor waiting for a job's next change waits on that view. While the
stream is down (the agent restarting, a link lost) callers fall back to their own long-polls, and the
stream is opened again in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

STALE_AFTER = 15.0  # seconds without a batch (the agent sends one every 5 s at least): the stream is dead
RECONNECT_AFTER = 1.0
YIELD_EVERY = 100  # batches read back to back before the loop gets a turn
MAX_BUFFERED = 4 * 1024 * 1024  # inline output kept per job until its supervisor takes it
_LINE_LIMIT = 64 * 1024 * 1024


class JobView:
    """What the stream said about one job."""

    __slots__ = (
        "buffer",
        "buffer_start",
        "changed",
        "exit_code",
        "gone",
        "message",
        "reason_code",
        "size",
        "status",
    )

    def __init__(self) -> None:
        self.status = "preparing"  # every job starts so; a change from it is news
        self.message: str | None = None
        self.exit_code: int | None = None
        self.reason_code: str | None = None
        self.size = 0
        self.gone = False
        self.buffer = bytearray()  # inline output: the bytes from buffer_start on
        self.buffer_start = 0
        self.changed = asyncio.Event()

    def inline(self, offset: int, limit: int) -> bytes | None:
        """The output from `offset` on as far as it came inline (None if it did not reach `offset`)."""
        if not self.buffer_start <= offset <= self.buffer_start + len(self.buffer):
            return None
        del self.buffer[: offset - self.buffer_start]  # what the supervisor asks past is never asked again
        self.buffer_start = offset
        return bytes(self.buffer[:limit])


class AgentEvents:
    def __init__(self, base_url: str, headers: dict[str, str], *, socket_path: str | None = None) -> None:
        parts = urlsplit(base_url)
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port or 80
        self._socket_path = socket_path  # the agent through a unix socket (an SSH forward), if set
        self._headers = headers
        self._views: dict[str, JobView] = {}
        self._task: asyncio.Task[None] | None = None
        self.healthy = False
        self._closed = False

    def view(self, job_id: str) -> JobView | None:
        """The job's view while the stream is up (starting it on first use); None while it is down."""
        if self._task is None and not self._closed:
            self._task = asyncio.create_task(self._run(), name=f"agent events {self._host}:{self._port}")
        if not self.healthy:
            return None
        view = self._views.get(job_id)
        if view is None:
            view = self._views[job_id] = JobView()
        return view

    def forget(self, job_id: str) -> None:
        self._views.pop(job_id, None)

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _run(self) -> None:
        while not self._closed:
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # any failure: down until the next connection works
                log.debug("agent events at %s:%d: %s", self._host, self._port, e)
            self._down()
            await asyncio.sleep(RECONNECT_AFTER)

    async def _follow(self) -> None:
        opening = (
            asyncio.open_unix_connection(self._socket_path, limit=_LINE_LIMIT)
            if self._socket_path is not None
            else asyncio.open_connection(self._host, self._port, limit=_LINE_LIMIT)
        )
        reader, writer = await asyncio.wait_for(opening, STALE_AFTER)
        try:
            head = ["GET /api/events HTTP/1.1", f"Host: {self._host}:{self._port}", "Connection: close"]
            head += [f"{name}: {value}" for name, value in self._headers.items()]
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
            status = await asyncio.wait_for(reader.readuntil(b"\r\n"), STALE_AFTER)
            if b" 200 " not in status:
                raise ConnectionError(f"the agent answered {status[:40]!r}")
            while await asyncio.wait_for(reader.readuntil(b"\r\n"), STALE_AFTER) != b"\r\n":
                pass
            # No wait_for per batch: it makes a task, so each batch would cost the loop an iteration of its
            # own, and under load the agent's batches queued up in the socket for seconds. Batches already
            # received are read without yielding (but for a turn every YIELD_EVERY, for the loop's other
            # work); a watchdog cuts a stream that goes silent instead.
            watchdog = _Watchdog(writer, STALE_AFTER)
            read = 0
            try:
                while True:
                    read += 1
                    if read % YIELD_EVERY == 0:
                        await asyncio.sleep(0)
                    line = await reader.readuntil(b"\n")
                    entries = json.loads(line)["jobs"]
                    inline = sum(entry.get("length", 0) for entry in entries)
                    data = await reader.readexactly(inline) if inline else b""
                    watchdog.fed()
                    self.healthy = True
                    self._apply(entries, data)
            except (asyncio.IncompleteReadError, ConnectionError) as e:
                if watchdog.fired:
                    raise TimeoutError(f"no batch for {STALE_AFTER:.0f} s") from e
                raise
            finally:
                watchdog.cancel()
        finally:
            writer.close()

    def _apply(self, entries: list[dict[str, Any]], data: bytes) -> None:
        position = 0
        for entry in entries:
            view = self._views.get(entry["id"])
            if view is None:
                view = self._views[entry["id"]] = JobView()
            if entry.get("gone"):
                view.gone = True
                self._views.pop(entry["id"], None)
            else:
                view.status, view.message = entry["status"], entry.get("message")
                view.exit_code, view.reason_code = entry.get("exit_code"), entry.get("reason_code")
                view.size = int(entry["size"])
                length = int(entry.get("length", 0))
                if length:
                    start = int(entry["from"])
                    piece = data[position : position + length]
                    position += length
                    if (
                        start == view.buffer_start + len(view.buffer)
                        and len(view.buffer) + length <= MAX_BUFFERED
                    ):
                        view.buffer += piece
                    else:
                        view.buffer, view.buffer_start = bytearray(piece), start
            view.changed.set()
            view.changed = asyncio.Event()

    def _down(self) -> None:
        """Wake every waiter: they fall back to their own polls until the stream is back."""
        self.healthy = False
        views, self._views = self._views, {}
        for view in views.values():
            view.changed.set()


class _Watchdog:
    """Aborts a connection that has not been fed for `after` seconds; one timer, re-armed only when due."""

    def __init__(self, writer: asyncio.StreamWriter, after: float) -> None:
        self._writer = writer
        self._after = after
        self._loop = asyncio.get_running_loop()
        self._fed_at = self._loop.time()
        self.fired = False
        self._timer = self._loop.call_later(after, self._check)

    def fed(self) -> None:
        self._fed_at = self._loop.time()

    def cancel(self) -> None:
        self._timer.cancel()

    def _check(self) -> None:
        silent = self._loop.time() - self._fed_at
        if silent < self._after:
            self._timer = self._loop.call_later(self._after - silent, self._check)
            return
        self.fired = True
        self._writer.transport.abort()  # the read under way fails at once


class Coalescer(Generic[T, R]):
    """Calls made while a batch is on its way go together in the next one: one request for many."""

    def __init__(self, send: Callable[[list[T]], Awaitable[list[R]]], max_batch: int) -> None:
        self._send = send
        self._max = max_batch
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._sender: asyncio.Task[None] | None = None

    async def call(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        await asyncio.sleep(0)  # the calls of this loop iteration join the first batch
        while self._pending:
            batch, self._pending = self._pending[: self._max], self._pending[self._max :]
            try:
                results = await self._send([item for item, _ in batch])
            except Exception as e:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
