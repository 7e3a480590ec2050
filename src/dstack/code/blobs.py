"""The blob stream: contents named by their sha256, one after another in one request body.

Each blob is a 40-byte header (the raw 32-byte sha256, then the size as 8 bytes big-endian) followed by
its bytes. The receiver hashes every blob as it arrives and keeps only those whose bytes match their
name; the same format carries code from the CLI to the server and from the server to each agent.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from dstack.code.snapshot import CodeSnapshot

HEADER = struct.Struct(">32sQ")
# Small contents are gathered into one write; big ones go from their file to the socket in the kernel.
_GATHER_BELOW = 256 * 1024
_GATHER_BYTES = 1024 * 1024


class BlobSource(Protocol):
    """Where a sender reads the contents it streams: small ones whole, big ones from their file."""

    def read_small(self, sha256: str, size: int) -> bytes: ...

    def file(self, sha256: str) -> str: ...


def header(sha256: str, size: int) -> bytes:
    return HEADER.pack(bytes.fromhex(sha256), size)


def stream_length(sizes: Sequence[int]) -> int:
    return sum(sizes) + HEADER.size * len(sizes)


def blob_parts(
    blobs: Iterable[tuple[str, int]], read_small: Callable[[str, int], bytes]
) -> Iterator[bytes | str]:
    """The pieces of a blob stream of (sha256, size) contents: bytes to send as they are, or the sha256 of
    a big content whose bytes the sender sends itself (e.g. with sendfile) right after its header.
    Small contents are read with `read_small` and gathered, so that many small files make few writes."""
    gathered: list[bytes] = []
    pending = 0
    for sha256, size in blobs:
        if size < _GATHER_BELOW:
            gathered += (header(sha256, size), read_small(sha256, size))
            pending += size
            if pending >= _GATHER_BYTES:
                yield b"".join(gathered)
                gathered, pending = [], 0
            continue
        gathered.append(header(sha256, size))
        yield b"".join(gathered)
        gathered, pending = [], 0
        yield sha256
    if gathered:
        yield b"".join(gathered)


class BlobBody:
    """A request body (see dstack.api.http) with the snapshot's contents named by `hashes`."""

    def __init__(self, snapshot: CodeSnapshot, hashes: Sequence[str]) -> None:
        self._snapshot = snapshot
        self._blobs = [(sha256, snapshot.blob_size(sha256)) for sha256 in hashes]
        self.length = stream_length([size for _, size in self._blobs])

    def send_to(self, sock: socket.socket, progress: Callable[[int], None] | None) -> None:
        for part in blob_parts(self._blobs, self._read_small):
            if isinstance(part, bytes):
                sock.sendall(part)
                sent = len(part)
            else:
                sent = self._snapshot.blob_size(part)
                with self._snapshot.open_blob(part) as file:
                    if sock.sendfile(file, 0, sent) != sent:
                        raise self._changed(part)
                    self._snapshot.check_unchanged(part, file)
            if progress is not None:
                progress(sent)

    def _read_small(self, sha256: str, size: int) -> bytes:
        with self._snapshot.open_blob(sha256) as file:
            data = file.read(size + 1)
            if len(data) != size:
                raise self._changed(sha256)
            self._snapshot.check_unchanged(sha256, file)
        return data

    def _changed(self, sha256: str) -> Exception:
        from dstack.code.snapshot import changed_error

        return changed_error(self._snapshot.blobs[sha256].rel_path, "uploaded")
