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
    data: bytes = b""  # for log frames
    info: dict[str, Any] | None = None  # for status and end frames


class LinkLost(ServerUnreachable):
    """The stream stopped mid-way (server restarted, network lost, or 10 s of silence)."""


class AttachStream:
    def __init__(self, conn: Connection, response: Response) -> None:
        self._conn = conn
        self._response = response

    def __iter__(self) -> Iterator[Frame]:
        while True:
            header = self._read(frames.HEADER.size, allow_eof=True)
            if not header:
                return
            kind, length = frames.HEADER.unpack(header)
            if kind == frames.LOG:
                # Offset and data are read apart, so megabytes of output are never sliced (copied) again.
                (offset,) = frames.OFFSET.unpack(self._read(frames.OFFSET.size))
                yield Frame(kind, offset=offset, data=self._read(length - frames.OFFSET.size))
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

    def close(self) -> None:
        self._conn.close()
