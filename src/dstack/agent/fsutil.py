"""Small file-system helpers shared by the agent's modules."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any


def write_json_atomic(path: Path, data: Any) -> None:
    """Write `data` as JSON so that a reader (or a crash of the agent) never sees a half-written file.

    No fsync: the rename is atomic for readers and for a crash of this process. A power loss may bring back
    an older state, which recovery handles like any interrupted job (its processes died with the power);
    an fsync per status change, three or more per job, was the agent's largest cost for short jobs.
    """
    # Unique temp name per thread: two threads may rewrite the same state file at once.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def make_private_dir(path: Path) -> None:
    """Create `path` (and parents) readable by this user only: job specs may hold secrets in their env."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def is_inside(path: Path, folder: Path) -> bool:
    """True if `path` (after resolving symlinks) is `folder` or lies under it."""
    real_path = os.path.realpath(path)
    real_folder = os.path.realpath(folder)
    return real_path == real_folder or real_path.startswith(real_folder.rstrip(os.sep) + os.sep)
