"""Finding the code root: the git top-level holding the working directory, else that directory."""

from __future__ import annotations

import stat
from pathlib import Path

from dstack.code.errors import CodeError


def find_code_root(workdir: Path) -> Path:
    """The nearest directory at or above `workdir` (symlinks resolved) that holds a `.git` directory
    or file (worktrees and submodules use a file); `workdir` itself when there is none."""
    try:
        start = workdir.resolve(strict=True)
    except (OSError, RuntimeError):
        raise CodeError(f"The directory {workdir} does not exist") from None
    if not start.is_dir():
        raise CodeError(f"{workdir} is not a directory; give the folder that holds your code")
    for candidate in (start, *start.parents):
        if _has_git_marker(candidate):
            return candidate
    return start


def _has_git_marker(directory: Path) -> bool:
    try:
        mode = (directory / ".git").stat().st_mode
    except OSError:
        return False
    return stat.S_ISDIR(mode) or stat.S_ISREG(mode)
