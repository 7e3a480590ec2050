"""SHA-256 for the CLI's small inputs (a manifest, a cache key) without loading OpenSSL: importing hashlib
costs a command ~4 ms here, a tenth of a warm `dstack run`'s own work, and the interpreter's built-in
SHA-256 hashes a few kilobytes in microseconds. Big inputs (file contents, a huge manifest) go to hashlib,
whose OpenSSL code is ~8x faster. Both give the same digest."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

BIG = 1024 * 1024  # from this size on, OpenSSL's speed pays for its import


def _builtin() -> Callable[..., Any] | None:
    for name in ("_sha2", "_sha256"):  # Python 3.12+, then 3.9-3.11
        try:
            module = __import__(name)
        except ImportError:
            continue
        return getattr(module, "sha256", None)
    return None


_BUILTIN = _builtin()


def sha256(data: bytes = b"") -> Any:
    """A hash object with `update` and `hexdigest`; `data` starts it (and picks the implementation)."""
    if _BUILTIN is None or len(data) >= BIG:
        import hashlib

        return hashlib.sha256(data)
    return _BUILTIN(data)
