"""Writing the code as a deterministic tar: the same tree always gives the same bytes.

Only what matters to the code goes in: paths, kinds, permission bits, file contents, file and
symlink mtimes (whole seconds) and link targets. Owners are blanked and directory mtimes are zero,
since they change whenever an ignored file comes or goes next to the code.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import IO, TYPE_CHECKING, cast

from dstack.code.errors import CodeError
from dstack.code.walk import ScannedEntry

if TYPE_CHECKING:
    import tarfile

_NANOSECONDS = 1_000_000_000
_READ_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_BINARY", 0)
    | getattr(os, "O_NOFOLLOW", 0)  # a file swapped for a symlink must not be followed
    | getattr(os, "O_NONBLOCK", 0)  # ... nor hang us if swapped for a fifo
)


class HashingWriter:
    """A write-only file object that hashes and counts what passes through it."""

    def __init__(self, target: IO[bytes], target_name: str) -> None:
        self._target = target
        self._target_name = target_name
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        try:
            self._target.write(data)
        except OSError as exc:
            raise CodeError(f"Cannot write the code archive {self._target_name} ({exc.strerror})") from None
        self._hash.update(data)
        self.size += len(data)
        return len(data)

    def tell(self) -> int:
        return self.size

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def write_archive(root: Path, scanned: Iterable[ScannedEntry], sink: HashingWriter) -> None:
    """Write the entries (already in their final order) as an uncompressed PAX tar into sink."""
    import tarfile

    # PAX stores long and non-UTF-8 names in extended headers; they are deterministic too.
    archive = tarfile.TarFile(fileobj=cast(IO[bytes], sink), mode="w", format=tarfile.PAX_FORMAT)
    root_dir = os.fspath(root)
    with archive:
        for item in scanned:
            _add_entry(archive, root_dir, item)


def _add_entry(archive: tarfile.TarFile, root_dir: str, item: ScannedEntry) -> None:
    import tarfile

    entry = item.entry
    info = tarfile.TarInfo(entry.rel_path)
    info.mode = entry.mode
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if entry.kind == "dir":
        info.type = tarfile.DIRTYPE
        info.mtime = 0
        archive.addfile(info)
        return
    info.mtime = entry.mtime_ns // _NANOSECONDS
    if entry.kind == "symlink":
        info.type = tarfile.SYMTYPE
        info.linkname = entry.link_target or ""
        archive.addfile(info)
        return
    info.size = entry.size
    path = f"{root_dir}{os.sep}{entry.rel_path}"  # a str: Path objects cost more than reading small files
    try:
        descriptor = os.open(path, _READ_FLAGS)
    except FileNotFoundError:
        raise _changed(entry.rel_path) from None
    except OSError as exc:
        if os.path.islink(path):  # noqa: PTH114 (str path, see above)
            raise _changed(entry.rel_path) from None
        raise CodeError(
            f"Cannot read {path} ({exc.strerror}); fix its permissions or add it to .dstackignore"
        ) from None
    with os.fdopen(descriptor, "rb") as file:
        _ensure_unchanged(entry.rel_path, os.fstat(descriptor), item.status)
        try:
            archive.addfile(info, file)
            grew = file.read(1)
        except OSError as exc:
            # The sink reports its own failures as CodeError. tarfile's "unexpected end of data"
            # (no errno) means the file shrank; an errno means reading itself failed.
            if exc.errno is None:
                raise _changed(entry.rel_path) from None
            raise CodeError(f"Cannot read {path} ({exc.strerror})") from None
        if grew:
            raise _changed(entry.rel_path)
        _ensure_unchanged(entry.rel_path, os.fstat(descriptor), item.status)


def _ensure_unchanged(rel_path: str, now: os.stat_result, listed: os.stat_result) -> None:
    same = (
        stat.S_ISREG(now.st_mode)
        and now.st_size == listed.st_size
        and now.st_mtime_ns == listed.st_mtime_ns
        and now.st_ctime_ns == listed.st_ctime_ns
        # Windows' directory listing reports inode 0; compare only when both are known.
        and (not now.st_ino or not listed.st_ino or now.st_ino == listed.st_ino)
    )
    if not same:
        raise _changed(rel_path)


def _changed(rel_path: str) -> CodeError:
    return CodeError(
        f"The file {rel_path} changed while the code was being packed; run again, "
        "or add it to .dstackignore if it keeps changing"
    )
