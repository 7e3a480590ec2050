"""Reading the attach stream's frames (dstack.core.frames) from an HTTP response."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, NamedTuple

from dstack.api.errors import ServerUnreachable
from dstack.api.http import Connection, Response
from dstack.core import frames


class Frame(NamedTuple):
    kind: bytes
    offset: int = 0  # for log frames
    data: bytes | memoryview = b""  # for log frames (a memoryview when read with frames(reuse=True))
    info: dict[str, Any] | None = None  # for status and end frames


class LinkLost(ServerUnreachable):
    """The stream stopped mid-way (server restarted, network lost, or 10 s of silence)."""


class AttachStream:
    def __init__(self, conn: Connection, response: Response) -> None:
        self._conn = conn
        self._response = response
        self._buffer: bytearray | None = None

    def __iter__(self) -> Iterator[Frame]:
        return self.frames()

    def frames(self, *, reuse: bool = False) -> Iterator[Frame]:
        """The frames, in order. With `reuse`, a log frame's data is a view into one buffer that the next
        frame overwrites: for a reader that writes each out at once (no copy of a byte of output)."""
        while True:
            header = self._read(frames.HEADER.size, allow_eof=True)
            if not header:
                return
            kind, length = frames.HEADER.unpack(header)
            if kind == frames.LOG:
                # Offset and data are read apart, so megabytes of output are never sliced (copied) again.
                (offset,) = frames.OFFSET.unpack(self._read(frames.OFFSET.size))
                size = length - frames.OFFSET.size
                data = self._read_into(size) if reuse else self._read(size)
                yield Frame(kind, offset=offset, data=data)
                continue
            payload = self._read(length) if length else b""
            if kind == frames.HEARTBEAT:
                yield Frame(kind)
            else:
                yield Frame(kind, info=json.loads(payload))
                if kind == frames.END:
                    return

    def _read(self, size: int, *, allow_eof: bool = False) -> bytes:
        try:
            data = self._response.read(size)
        except TimeoutError as e:
            raise LinkLost("The server sent nothing for 10 s; the link to it is lost") from e
        except OSError as e:
            raise LinkLost(f"The link to the server broke: {e or type(e).__name__}") from e
        if len(data) < size and not (allow_eof and not data):
            raise LinkLost("The server closed the stream before the run ended")
        return data

    def _read_into(self, size: int) -> Any:
        if self._buffer is None or len(self._buffer) < size:
            self._buffer = bytearray(max(size, 1 << 20))
        view = memoryview(self._buffer)[:size]
        got = 0
        while got < size:
            try:
                count = self._response.readinto(view[got:])
            except TimeoutError as e:
                raise LinkLost("The server sent nothing for 10 s; the link to it is lost") from e
            except OSError as e:
                raise LinkLost(f"The link to the server broke: {e or type(e).__name__}") from e
            if not count:
                raise LinkLost("The server closed the stream before the run ended")
            got += count
        return view

    def close(self) -> None:
        self._conn.close()
