"""Safe extraction of an uploaded code archive into a job's private code folder.

Every member is checked before anything is written (so a refused archive writes nothing), and files,
folders and symlinks are then created by hand: Python 3.9's tarfile may lack extraction filters, and even
where it has them we want one set of rules we can read in one place.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

_MAX_SYMLINK_HOPS = 40  # as the Linux kernel's limit on nested symlinks
_COPY_CHUNK = 1024 * 1024
_DROPPED_MODE_BITS = stat.S_ISUID | stat.S_ISGID


class UnpackError(Exception):
    """Why an archive was refused or could not be extracted (completes "Could not unpack the code: ...")."""


def unpack_code(archive: Path, destination: Path, cancelled: Optional[Callable[[], bool]] = None) -> None:
    """Extract `archive` into the existing empty folder `destination`, refusing anything unsafe."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            plan = check_members(tar.getmembers())
            _extract(tar, plan, destination, cancelled)
    except tarfile.TarError as e:
        raise UnpackError(f"the archive is not a valid tar file ({e})") from e
    except OSError as e:
        raise UnpackError(f"extracting failed: {e.strerror or e}") from e


def check_members(members: List[tarfile.TarInfo]) -> List[Tuple[str, tarfile.TarInfo]]:
    """Return (relative path, member) for every member to extract, or raise UnpackError."""
    plan: List[Tuple[str, tarfile.TarInfo]] = []
    seen = set()
    symlinks: Dict[str, str] = {}
    for member in members:
        rel = _relative_path(member)
        if rel is None:
            continue
        if rel in seen:
            raise UnpackError(f"the archive holds {_quote(member.name)} twice")
        seen.add(rel)
        _check_type(member)
        if member.issym():
            symlinks[rel] = member.linkname
        plan.append((rel, member))
    for rel, member in plan:
        parts = rel.split("/")
        for depth in range(1, len(parts)):
            if "/".join(parts[:depth]) in symlinks:
                raise UnpackError(f"the archive member {_quote(member.name)} goes through a symlink")
        if member.issym() and not _symlink_stays_inside(rel, symlinks):
            raise UnpackError(f"the symlink {_quote(member.name)} points outside the code folder")
    return plan


def _relative_path(member: tarfile.TarInfo) -> Optional[str]:
    """The member's normalised relative path; None for the archive's root folder entry."""
    if member.name.startswith("/"):
        raise UnpackError(f"the archive member {_quote(member.name)} has an absolute path")
    parts = [part for part in member.name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise UnpackError(f"the archive member {_quote(member.name)} leads outside the code folder")
    if not parts:
        if member.isdir():
            return None
        raise UnpackError(f"the archive member {_quote(member.name)} has no name")
    return "/".join(parts)


def _check_type(member: tarfile.TarInfo) -> None:
    if member.isfile() or member.isdir():
        return
    if member.issym():
        if not member.linkname or member.linkname.startswith("/"):
            raise UnpackError(f"the symlink {_quote(member.name)} must have a relative target")
        return
    if member.islnk():
        raise UnpackError(f"the archive member {_quote(member.name)} is a hard link, which is not allowed")
    raise UnpackError(f"the archive member {_quote(member.name)} is a device, fifo or other special file")


def _symlink_stays_inside(link: str, symlinks: Dict[str, str]) -> bool:
    """Resolve `link` the way the kernel would, following the archive's own symlinks, within the root.

    Lexical normalisation is not enough: with `a -> d/..`, the target `a/..` looks harmless but leaves the
    folder. Folders on the way are real (no member path goes through a symlink), so only links can bend
    the walk.
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


def _extract(
    tar: tarfile.TarFile,
    plan: List[Tuple[str, tarfile.TarInfo]],
    destination: Path,
    cancelled: Optional[Callable[[], bool]],
) -> None:
    root = os.path.realpath(destination)
    folders: List[Tuple[str, tarfile.TarInfo]] = []
    for rel, member in plan:
        if cancelled is not None and cancelled():
            raise UnpackError("the job was stopped")
        path = os.path.join(root, rel)
        parent = os.path.dirname(path)
        os.makedirs(parent, mode=0o755, exist_ok=True)
        # The checks above make this impossible; it is the last line of defence if they ever miss a case.
        if os.path.realpath(parent) != root and not os.path.realpath(parent).startswith(root + os.sep):
            raise UnpackError(f"the archive member {_quote(member.name)} leads outside the code folder")
        if member.isdir():
            os.makedirs(path, mode=0o755, exist_ok=True)
            folders.append((path, member))
        elif member.issym():
            os.symlink(member.linkname, path)
            os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)
        else:
            _write_file(tar, member, path)
    # Folder modes last and deepest first, so that a read-only folder does not block its own content.
    for path, member in sorted(folders, key=lambda item: item[0], reverse=True):
        os.chmod(path, _safe_mode(member))
        os.utime(path, (member.mtime, member.mtime))


def _write_file(tar: tarfile.TarFile, member: tarfile.TarInfo, path: str) -> None:
    source = tar.extractfile(member)
    if source is None:
        raise UnpackError(f"the archive member {_quote(member.name)} cannot be read")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)
    with source, os.fdopen(fd, "wb") as target:
        shutil.copyfileobj(source, target, _COPY_CHUNK)
        os.fchmod(target.fileno(), _safe_mode(member))
    os.utime(path, (member.mtime, member.mtime))


def _safe_mode(member: tarfile.TarInfo) -> int:
    return member.mode & 0o7777 & ~_DROPPED_MODE_BITS


def _quote(name: str) -> str:
    shown = name if len(name) <= 200 else name[:200] + "..."
    return "'" + shown.replace("\n", "\\n") + "'"
