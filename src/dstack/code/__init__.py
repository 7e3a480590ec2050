"""The user's code: finding its root, the ignore rules, and its content-addressed snapshot for upload.

Standard library only, and cheap to import: hashlib and json load only when a snapshot is taken.
"""

from typing import TYPE_CHECKING, Any

from dstack.code.errors import CodeError, CodeTooLargeError
from dstack.code.ignore import IgnoreRules
from dstack.code.root import find_code_root
from dstack.code.walk import CodeEntry, walk_files

if TYPE_CHECKING:
    from dstack.code.snapshot import (
        DEFAULT_LIMIT_BYTES,
        CodeSnapshot,
        snapshot_code,
        snapshot_paths,
        snapshotted_before,
    )

_LAZY = {"DEFAULT_LIMIT_BYTES", "CodeSnapshot", "snapshot_code", "snapshot_paths", "snapshotted_before"}


def __getattr__(name: str) -> Any:
    # The snapshot (hashlib, json) loads only when code is uploaded, not for the watcher's ignore checks.
    if name in _LAZY:
        from dstack.code import snapshot

        return getattr(snapshot, name)
    raise AttributeError(f"module 'dstack.code' has no attribute {name!r}")


__all__ = [
    "DEFAULT_LIMIT_BYTES",
    "CodeEntry",
    "CodeError",
    "CodeSnapshot",
    "CodeTooLargeError",
    "IgnoreRules",
    "find_code_root",
    "snapshot_code",
    "snapshot_paths",
    "snapshotted_before",
    "walk_files",
]
