"""Everything under ~/.dstack is its owner's only (0700 folders, 0600 files): tokens, env values in cached
configurations, code archives, task output.

The mechanism is the umask: each dstack process (CLI, server, agent) sets 077 as it starts, so whatever
it creates is private without every write having to say so. Trees made by older versions (0755/0644)
are made private once, on the first start that finds them without the marker file. The user's own umask
is kept for the user's tasks (their files are theirs to share): the first dstack process records it in
DSTACK_USER_UMASK, which the processes it starts inherit.

The agent (standard library only, and nothing else of dstack) has its own copy in dstack.agent.fsutil.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

PRIVATE_UMASK = 0o077
USER_UMASK_ENV = "DSTACK_USER_UMASK"
MARKER = ".private"  # written once a tree has been made private


def make_process_private() -> int:
    """Set this process's umask to 077; returns the user's umask (as the first dstack process found it)."""
    previous = os.umask(PRIVATE_UMASK)
    recorded = _recorded()
    if recorded is None:
        os.environ[USER_UMASK_ENV] = f"{previous:03o}"
        return previous
    return recorded


def user_umask() -> int:
    """The umask for the user's tasks: the recorded one, else this process's own."""
    recorded = _recorded()
    if recorded is not None:
        return recorded
    current = os.umask(0)
    os.umask(current)
    return current


def _recorded() -> int | None:
    try:
        return int(os.environ.get(USER_UMASK_ENV, ""), 8) & 0o777
    except ValueError:
        return None


def make_tree_private(root: Path) -> None:
    """Make `root` and, the first time, everything below it private to the owner."""
    try:
        mode = stat.S_IMODE(root.lstat().st_mode)
        if mode & 0o077 or mode & 0o700 != 0o700:
            root.chmod(mode & 0o700 | 0o700)
    except FileNotFoundError:
        return
    marker = root / MARKER
    if marker.exists():
        return
    for top, folders, files in os.walk(root):
        folder = Path(top)
        # A job's copy of the code keeps the modes of the user's files (a container's non-root user must
        # read them); the private folders above it keep it from other users.
        folders[:] = [name for name in folders if not (name == "code" and folder.parent.name == "jobs")]
        for name in [*folders, *files]:
            path = folder / name
            try:
                status = path.lstat()
                if stat.S_ISLNK(status.st_mode):
                    continue  # a link's own mode means nothing; what it points to is not ours to change
                mode = stat.S_IMODE(status.st_mode)
                if mode & 0o077:
                    path.chmod(mode & 0o700 | (0o700 if stat.S_ISDIR(status.st_mode) else 0o600))
            except OSError:
                continue  # gone meanwhile, or not ours: the folders above keep it private anyway
    marker.write_text("0700 folders, 0600 files\n")


def write_private(path: Path, data: object) -> None:
    """JSON, replaced atomically, readable by the server's user alone."""
    temp = path.with_suffix(".tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    temp.replace(path)
