"""Small file-system helpers shared by the agent's modules."""

from __future__ import annotations

import array
import fcntl
import json
import os
import stat
import threading
from pathlib import Path
from typing import Any


def write_json_atomic(path: Path, data: Any) -> None:
    """Write `data` as JSON so that a reader (or a crash of the agent) never sees a half-written file.

    No fsync: the rename is atomic for readers and for a crash of this process. A power loss may bring back
    an older state, which recovery handles like any interrupted job (its processes died with the power);
    an fsync per status change, three or more per job, was the agent's largest cost for short jobs.
    """
    # One line, from json.dumps: json.dump and any indent take the pure-Python encoder, four times slower
    # than the C one, and a job's spec and state are written five times per job.
    text = json.dumps(data, sort_keys=True) + "\n"
    # Unique temp name per thread: two threads may rewrite the same state file at once.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ext2/3/4 inode flags (linux/fs.h): the ioctls read and set them on an open file or folder, as a C int
# (the kernel's put_user/get_user on an int, whatever the request number's encoded size says).
_FS_IOC_GETFLAGS = 0x80086601
_FS_IOC_SETFLAGS = 0x40086602
_FS_TOPDIR_FL = 0x00020000


def spread_subfolders(path: Path) -> None:
    """Ask ext4 to place each new subfolder of `path` (and so the files in it) in a block group of its
    own choosing, as it does for folders at the top of the file system, instead of next to `path`.

    Why: without a journal, ext4 skips inodes freed in the last minutes when it allocates one, scanning
    them one by one from the start of the group. Folders made and removed by the thousand (a burst of
    short jobs) pile those up in one group, and each new file then costs a scan of them all: the largest
    single cost of a tiny job on such a disk. Spread over the groups, each scan is short. Elsewhere (other
    file systems, no permission) nothing happens."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return
    try:
        flags = array.array("i", [0])
        fcntl.ioctl(fd, _FS_IOC_GETFLAGS, flags)
        if not flags[0] & _FS_TOPDIR_FL:
            flags[0] |= _FS_TOPDIR_FL
            fcntl.ioctl(fd, _FS_IOC_SETFLAGS, flags)
    except OSError:
        pass
    finally:
        os.close(fd)


def make_private_dir(path: Path) -> None:
    """Create `path` (and parents) readable by this user only: job specs may hold secrets in their env."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


PRIVATE_MARKER = ".private"


def make_tree_private(root: Path) -> None:
    """`root` 0700 and, the first time (no marker yet), every folder 0700 and file 0600 below it, as the
    agent's umask makes new ones; a job's copy of the code keeps its files' modes (a container's non-root
    user must read them), private through the folders above it. (dstack.core.private does the same for
    the CLI and the server; the agent imports nothing outside dstack.agent.)"""
    mode = stat.S_IMODE(os.lstat(root).st_mode)
    if mode & 0o077 or mode & 0o700 != 0o700:
        os.chmod(root, mode & 0o700 | 0o700)
    marker = root / PRIVATE_MARKER
    if marker.exists():
        return
    strip_other_modes(root)
    marker.write_text("0700 folders, 0600 files\n", encoding="ascii")


def strip_other_modes(root: Path) -> None:
    """Take the group's and others' bits off everything below `root` (a job's code copies excepted).

    For trees the umask did not make: an older agent's, or what tools write with modes of their own
    (uv makes its lock file 0666 and scripts 0711)."""
    for folder, folders, files in os.walk(root):
        folders[:] = [name for name in folders if not _is_job_code(folder, name)]
        for name in folders + files:
            path = os.path.join(folder, name)
            try:
                status = os.lstat(path)
                mode = stat.S_IMODE(status.st_mode)
                if stat.S_ISLNK(status.st_mode) or not mode & 0o077:
                    continue
                os.chmod(path, mode & 0o700 | (0o700 if stat.S_ISDIR(status.st_mode) else 0o600))
            except OSError:
                continue  # gone meanwhile: nothing to protect


def _is_job_code(folder: str, name: str) -> bool:
    return name == "code" and os.path.basename(os.path.dirname(folder)) == "jobs"


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def is_inside(path: Path, folder: Path) -> bool:
    """True if `path` (after resolving symlinks) is `folder` or lies under it."""
    real_path = os.path.realpath(path)
    real_folder = os.path.realpath(folder)
    return real_path == real_folder or real_path.startswith(real_folder.rstrip(os.sep) + os.sep)
