"""Files written past the page cache hold exactly the bytes written, whatever their sizes and pieces."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from dstack.server.services.direct_write import BUFFER_BYTES, DirectFile

SIZES = [0, 1, 4095, 4096, 4097, BUFFER_BYTES - 1, BUFFER_BYTES, 3 * BUFFER_BYTES + 12345]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("piece", [1000, 65536, 4 * BUFFER_BYTES])
def test_a_file_holds_exactly_what_was_written(tmp_path: Path, size: int, piece: int) -> None:
    data = os.urandom(size)
    target = tmp_path / "content"
    writer = DirectFile()
    try:
        writer.open(str(target))
        for start in range(0, size, piece):
            writer.write(memoryview(data)[start : start + piece])
        writer.close()
    finally:
        writer.release()
    assert target.read_bytes() == data
    assert target.stat().st_mode & 0o777 == 0o600


def test_one_writer_writes_file_after_file_and_never_overwrites_one(tmp_path: Path) -> None:
    writer = DirectFile()
    contents = [os.urandom(n) for n in (5000, BUFFER_BYTES + 1, 7)]
    try:
        for i, data in enumerate(contents):
            writer.open(str(tmp_path / f"f{i}"))
            writer.write(data)
            writer.close()
        with pytest.raises(FileExistsError):
            writer.open(str(tmp_path / "f0"))
    finally:
        writer.release()
    assert [(tmp_path / f"f{i}").read_bytes() for i in range(3)] == contents


def test_an_abandoned_file_keeps_nothing_that_was_buffered(tmp_path: Path) -> None:
    writer = DirectFile()
    try:
        writer.open(str(tmp_path / "cut"))
        writer.write(b"x" * 100)
        writer.abandon()
        writer.open(str(tmp_path / "next"))  # the buffer starts empty for the next file
        writer.write(b"y" * 10)
        writer.close()
    finally:
        writer.release()
    assert (tmp_path / "cut").read_bytes() == b""
    assert (tmp_path / "next").read_bytes() == b"y" * 10


def test_a_file_system_refusing_direct_writes_gets_the_same_bytes_through_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def refusing_open(path: str, flags: int, mode: int = 0o777) -> int:
        if flags & os.O_DIRECT:  # as tmpfs on older kernels and some FUSE mounts answer
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", refusing_open)
    data = os.urandom(BUFFER_BYTES + 99)
    writer = DirectFile()
    try:
        writer.open(str(tmp_path / "content"))
        writer.write(data)
        writer.close()
    finally:
        writer.release()
    assert (tmp_path / "content").read_bytes() == data
