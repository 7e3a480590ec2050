"""A run's own copy of a venv (a version's template or a cached build), made in milliseconds.

Every file is a hard link to the original, but those that name the original's path — the scripts in
bin/ (their first line is the interpreter), `activate*`, `pyvenv.cfg`, `.pth` files — which are copied
with the path changed, and symlinks, made again. So the copy is a venv of its own: `pip install` in it
writes there (uv and pip replace files by unlinking or renaming, never by writing into them), and what a
run installs, upgrades or removes is never seen by another run, nor by the cache it came from. The
originals are made read-only (`seal`), so a task writing into an installed file in place fails instead
of changing them (except as root, which ignores file modes).

A template's copy can share its packages instead (`shared_packages`): the folders in its site-packages
(pip's) are not copied, a .pth file puts the template's site-packages on `sys.path` after the copy's own.
A folder costs far more to make than a link on some file systems (ext4 spends up to a millisecond on each
new inode), so such a copy is made in a few milliseconds instead of a hundred. It behaves the same: what
a run installs goes into its own site-packages and comes first on `sys.path`, and pip never removes a
package outside the environment (`pip install -U pip` installs the new pip in the copy and leaves the
template's).
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from pathlib import Path
from typing import List

_HEAD = 4096  # a script's first line is in here; a binary that big is not looked through for a path
_TEXT_SUFFIXES = (".pth", ".cfg", ".sh", ".csh", ".fish", ".nu", ".ps1", ".bat", ".xsh")
# Sorted before any other .pth file of the copy (site.py reads them in order): a package's .pth may import
# from a shared folder (setuptools' distutils-precedence.pth imports _distutils_hack).
SHARED_PTH = "00-dstack-shared.pth"


def clone(source: Path, target: Path, shared_packages: bool = False) -> List[str]:
    """Make `target` a copy of the venv at `source` (see the module's docstring); `target` must not exist.

    Returns the paths of the copy's own entries, its folders and rewritten files (the rest are links):
    what a run can change in the copy without changing the original shows in their status.
    """
    old, new = os.fsencode(str(source)), os.fsencode(str(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    os.mkdir(target, stat.S_IMODE(os.lstat(source).st_mode) | stat.S_IRWXU)
    own = [str(target)]
    for top, folders, files in os.walk(source):
        relative = os.path.relpath(top, source)
        into = target if relative == "." else target / relative
        if shared_packages and _is_site_packages(relative):
            real = [name for name in folders if not os.path.islink(os.path.join(top, name))]
            folders[:] = [name for name in folders if name not in real]  # not walked: shared
            if real:
                _write_new(into / SHARED_PTH, os.fsencode(top) + b"\n", 0o600)
                own.append(str(into / SHARED_PTH))
        for name in folders:
            path = os.path.join(top, name)
            if os.path.islink(path):
                _relink(path, into / name, old, new)
            else:
                # Writable for the run, whatever the original's mode: it installs into its own folders.
                os.mkdir(into / name, stat.S_IMODE(os.lstat(path).st_mode) | stat.S_IRWXU)
                own.append(str(into / name))
        for name in files:
            path = os.path.join(top, name)
            if os.path.islink(path):
                _relink(path, into / name, old, new)
            elif _names(path, old, relative, name):
                _copy_rewritten(path, into / name, old, new)
                own.append(str(into / name))
            elif not _link(path, into / name):
                own.append(str(into / name))
    return own


def _is_site_packages(relative: str) -> bool:
    parts = relative.split(os.sep)
    return (
        len(parts) == 3
        and parts[0] == "lib"
        and parts[1].startswith("python")
        and parts[2] == "site-packages"
    )


def seal(root: Path) -> None:
    """Make the files of a venv read-only (its folders stay writable for whoever owns them)."""
    for top, _folders, files in os.walk(root):
        for name in files:
            path = os.path.join(top, name)
            try:
                status = os.lstat(path)
                if stat.S_ISREG(status.st_mode) and status.st_mode & 0o222:
                    os.chmod(path, stat.S_IMODE(status.st_mode) & ~0o222)
            except OSError:
                continue


def _names(path: str, old: bytes, relative: str, name: str) -> bool:
    """Whether the file holds the venv's own path (and so must be a rewritten copy, not a link)."""
    if not (relative == "bin" or name == "pyvenv.cfg" or name.endswith(_TEXT_SUFFIXES)):
        return False
    with open(path, "rb") as f:
        return old in f.read(_HEAD)


def _copy_rewritten(path: str, target: Path, old: bytes, new: bytes) -> None:
    with open(path, "rb") as f:
        data = f.read()
    _write_new(target, data.replace(old, new), stat.S_IMODE(os.lstat(path).st_mode) | 0o600)


def _write_new(target: Path, data: bytes, mode: int) -> None:
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _relink(path: str, target: Path, old: bytes, new: bytes) -> None:
    link = os.fsencode(os.readlink(path))
    os.symlink(os.fsdecode(new + link[len(old) :] if link.startswith(old) else link), target)


def _link(path: str, target: Path) -> bool:
    """Link `target` to `path`; False if it had to be a copy."""
    try:
        os.link(path, target)
        return True
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
        shutil.copy2(path, target)  # another file system, or links not allowed: a real copy
        return False
