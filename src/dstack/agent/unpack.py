"""Building a job's private code folder from a manifest, refusing anything unsafe.

Every entry is checked before anything is written (so a refused manifest writes nothing): relative paths
that stay inside, no entry through a symlink, symlinks with relative targets that resolve inside (following
the code's own links, as the kernel would), only folders, files and symlinks. The same rules check the
changes --reload puts in a running job's folder (dstack.agent.filesync).

Files are copies of the store's contents, never hard links: a job that writes to its files (or chmods
them) must not change what later jobs get. Where the file system can share blocks copy-on-write
(FICLONE: btrfs, XFS), a copy costs no bytes; elsewhere the kernel copies (sendfile), never Python.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional, Set

_MAX_SYMLINK_HOPS = 40  # as the Linux kernel's limit on nested symlinks
_DROPPED_MODE_BITS = stat.S_ISUID | stat.S_ISGID
_FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)
_COPY_CHUNK = 64 * 1024 * 1024
_NO_CLONE = (
    errno.EOPNOTSUPP,
    errno.EXDEV,
    errno.EINVAL,
    errno.ENOTTY,
    errno.EBADF,
    errno.ENOSYS,
    errno.EPERM,
)
_clone_works = [True]  # cleared the first time the file system says it cannot clone
_PARALLEL_FROM = 256  # entries; below, one thread
_THREADS = 4
_CHUNK_ITEMS = 64

DIR, FILE, SYMLINK = "d", "f", "l"


class UnpackError(Exception):
    """Why code was refused or could not be put in place (completes "Could not unpack the code: ...")."""


class Item(NamedTuple):
    """One entry of a manifest, as the checks and the builder see it."""

    path: str  # "/"-separated, relative, already normalised
    kind: str  # DIR, FILE or SYMLINK
    mode: int
    size: int
    ref: str  # a file's content hash, a symlink's target


def check_items(items: List[Item]) -> None:
    """Raise UnpackError unless every item is safe to create under an empty folder."""
    seen = set()
    symlinks: Dict[str, str] = {}
    for item in items:
        if item.path in seen:
            raise UnpackError(f"the code holds {_quote(item.path)} twice")
        seen.add(item.path)
        if item.kind == SYMLINK:
            if not item.ref or item.ref.startswith("/"):
                raise UnpackError(f"the symlink {_quote(item.path)} must have a relative target")
            symlinks[item.path] = item.ref
        elif item.kind not in (DIR, FILE):
            raise UnpackError(f"the entry {_quote(item.path)} is a device, fifo or other special file")
    for item in items:
        parts = item.path.split("/")
        for depth in range(1, len(parts)):
            if "/".join(parts[:depth]) in symlinks:
                raise UnpackError(f"the entry {_quote(item.path)} goes through a symlink")
        if item.kind == SYMLINK and not _symlink_stays_inside(item.path, symlinks):
            raise UnpackError(f"the symlink {_quote(item.path)} points outside the code folder")


def normalise_path(name: str) -> Optional[str]:
    """A relative path with its "" and "." parts dropped; None for the root itself. Refuses escapes."""
    if name.startswith("/"):
        raise UnpackError(f"the entry {_quote(name)} has an absolute path")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise UnpackError(f"the entry {_quote(name)} leads outside the code folder")
    if "\0" in name:
        raise UnpackError(f"the entry {_quote(name)} has a NUL byte in its name")
    return "/".join(parts) or None


def _symlink_stays_inside(link: str, symlinks: Dict[str, str]) -> bool:
    """Resolve `link` the way the kernel would, following the code's own symlinks, within the root.

    Lexical normalisation is not enough: with `a -> d/..`, the target `a/..` looks harmless but leaves the
    folder. Folders on the way are real (no entry goes through a symlink), so only links can bend the walk.
    """
    resolved = link.split("/")[:-1]
    pending = list(reversed(symlinks[link].split("/")))
    hops = 0
    while pending:
        part = pending.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if not resolved:
                return False
            resolved.pop()
            continue
        resolved.append(part)
        target = symlinks.get("/".join(resolved))
        if target is not None:
            hops += 1
            if hops > _MAX_SYMLINK_HOPS or target.startswith("/"):
                return False
            resolved.pop()
            pending.extend(reversed(target.split("/")))
    return True


def build_tree(
    items: List[Item],
    content: Callable[[str], Path],
    destination: Path,
    cancelled: Optional[Callable[[], bool]] = None,
) -> None:
    """Create the checked items under the existing empty folder `destination`; `content(hash)` is where
    a file's bytes are."""
    root = os.path.realpath(destination)
    made = {root}
    try:
        # Folders first, in order; then files and symlinks by several threads: creating a file costs the
        # file system far more than our code, and a big tree has thousands.
        for item in items:
            if item.kind == DIR:
                create_item(root, item, content, made)
        others = [item for item in items if item.kind != DIR]
        if len(others) < _PARALLEL_FROM:
            for item in others:
                if cancelled is not None and cancelled():
                    raise UnpackError("the job was stopped")
                create_item(root, item, content, made)
        else:
            _create_in_parallel(root, others, content, made, cancelled)
        set_folder_modes(root, items)
    except OSError as e:
        raise UnpackError(f"building the folder failed: {e.strerror or e}") from e


def _create_in_parallel(
    root: str,
    items: List[Item],
    content: Callable[[str], Path],
    made: Set[str],
    cancelled: Optional[Callable[[], bool]],
) -> None:
    with ThreadPoolExecutor(max_workers=_THREADS, thread_name_prefix="unpack") as pool:
        chunks = [items[start : start + _CHUNK_ITEMS] for start in range(0, len(items), _CHUNK_ITEMS)]

        def create(chunk: List[Item]) -> None:
            for item in chunk:
                if cancelled is not None and cancelled():
                    raise UnpackError("the job was stopped")
                create_item(root, item, content, set(made))

        for future in [pool.submit(create, chunk) for chunk in chunks]:
            future.result()


def create_item(root: str, item: Item, content: Callable[[str], Path], made: Set[str]) -> None:
    """Create one checked item under the real folder `root` (`made`: folders known to exist there)."""
    path = os.path.join(root, item.path)
    parent = os.path.dirname(path)
    if parent not in made:
        os.makedirs(parent, mode=0o755, exist_ok=True)
        # The checks make this impossible; it is the last line of defence if they ever miss a case.
        real = os.path.realpath(parent)
        if real != root and not real.startswith(root + os.sep):
            raise UnpackError(f"the entry {_quote(item.path)} leads outside the code folder")
        made.add(parent)
    if item.kind == DIR:
        os.makedirs(path, mode=0o755, exist_ok=True)
        made.add(path)
    elif item.kind == SYMLINK:
        os.symlink(item.ref, path)
    else:
        copy_file(content(item.ref), path, item)


def set_folder_modes(root: str, items: List[Item]) -> None:
    """Folder modes last and deepest first, so that a read-only folder does not block its own content."""
    folders = [item for item in items if item.kind == DIR]
    for item in sorted(folders, key=lambda folder: folder.path, reverse=True):
        os.chmod(os.path.join(root, item.path), _safe_mode(item.mode))


def copy_file(source: Path, path: str, item: Item) -> None:
    """A new file at `path` (which must not exist) with the content stored at `source`, and its mode."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        src = open(source, "rb")  # noqa: SIM115 (closed below)
    except FileNotFoundError:
        raise UnpackError(f"the content of {_quote(item.path)} is missing from the agent's store") from None
    with src:
        if os.fstat(src.fileno()).st_size != item.size:
            raise UnpackError(f"the stored content of {_quote(item.path)} is damaged; upload the code again")
        fd = os.open(path, flags, 0o600)
        try:
            if item.size and not _clone(src.fileno(), fd):
                offset = 0
                while offset < item.size:
                    sent = os.sendfile(fd, src.fileno(), offset, min(_COPY_CHUNK, item.size - offset))
                    if sent == 0:
                        raise UnpackError(f"the stored content of {_quote(item.path)} ended early")
                    offset += sent
            os.fchmod(fd, _safe_mode(item.mode))
        finally:
            os.close(fd)


def _clone(source_fd: int, target_fd: int) -> bool:
    """Share the blocks copy-on-write where the file system can; False to copy instead."""
    if not _clone_works[0]:
        return False
    try:
        fcntl.ioctl(target_fd, _FICLONE, source_fd)
        return True
    except OSError as e:
        if e.errno in _NO_CLONE:
            _clone_works[0] = False
            return False
        raise


def remove_path(path: str) -> None:
    """Remove whatever is at path, without following a symlink; nothing there is fine."""
    try:
        status = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(status.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _safe_mode(mode: int) -> int:
    return mode & 0o7777 & ~_DROPPED_MODE_BITS


def _quote(name: str) -> str:
    shown = name if len(name) <= 200 else name[:200] + "..."
    return "'" + shown.replace("\n", "\\n") + "'"
