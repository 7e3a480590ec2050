"""Uploaded code archives, stored by content: DIR/code/<sha256>.tar."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import IO

from dstack.agent.fsutil import make_private_dir

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1024 * 1024
_TEMP_PREFIX = ".upload-"


class CodeUploadError(Exception):
    """The upload was refused; the message is one sentence for the client."""


def is_code_hash(value: str) -> bool:
    return bool(_SHA256_RE.match(value))


class CodeStore:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        make_private_dir(folder)
        # Uploads cut short by an earlier crash leave temp files behind.
        for leftover in folder.glob(_TEMP_PREFIX + "*"):
            leftover.unlink(missing_ok=True)

    def path(self, code_hash: str) -> Path:
        if not is_code_hash(code_hash):
            raise ValueError(f"Not a sha256 hex digest: {code_hash!r}")
        return self.folder / f"{code_hash}.tar"

    def has(self, code_hash: str) -> bool:
        return is_code_hash(code_hash) and self.path(code_hash).is_file()

    def store(self, code_hash: str, source: IO[bytes], length: int) -> None:
        """Stream `length` bytes from `source` into the store, keeping them only if their sha256 matches.

        Always reads the whole body (so the connection stays usable), even when the archive is already
        stored: re-uploading is harmless and proves the bytes again.
        """
        target = self.path(code_hash)
        digest = hashlib.sha256()
        fd, tmp_name = tempfile.mkstemp(prefix=_TEMP_PREFIX, dir=self.folder)
        try:
            with os.fdopen(fd, "wb") as tmp:
                remaining = length
                while remaining > 0:
                    chunk = source.read(min(_CHUNK, remaining))
                    if not chunk:
                        raise CodeUploadError(
                            f"The upload ended after {length - remaining} of {length} bytes; send it again"
                        )
                    digest.update(chunk)
                    tmp.write(chunk)
                    remaining -= len(chunk)
                tmp.flush()
                os.fsync(tmp.fileno())
            actual = digest.hexdigest()
            if actual != code_hash:
                raise CodeUploadError(
                    f"The uploaded code has sha256 {actual}, not {code_hash}; the upload was corrupted or "
                    "the hash is wrong"
                )
            os.chmod(tmp_name, 0o644)
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
