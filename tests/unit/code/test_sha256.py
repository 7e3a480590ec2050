"""core/sha256.py: the same digests as hashlib, and a tree whose files are all known is snapshotted without
loading OpenSSL (hashlib's import is ~4 ms of every `dstack run`)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from dstack.core.sha256 import BIG, sha256


@pytest.mark.parametrize("size", [0, 1, 4096, BIG - 1, BIG, BIG + 1])
def test_the_digest_is_sha256(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    assert sha256(data).hexdigest() == hashlib.sha256(data).hexdigest()
    incremental = sha256()
    incremental.update(data[: size // 2])
    incremental.update(data[size // 2 :])
    assert incremental.hexdigest() == hashlib.sha256(data).hexdigest()


def test_a_known_tree_is_snapshotted_without_loading_openssl(tmp_path: Path) -> None:
    root = tmp_path / "code"
    root.mkdir()
    for i in range(3):
        (root / f"f{i}.py").write_text(f"print({i})\n")
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from dstack.code import snapshot_code\n"
        f"snapshot = snapshot_code(Path({str(root)!r}), cache_dir=Path({str(tmp_path / 'cache')!r}))\n"
        "print(snapshot.code_hash, 'hashlib' in sys.modules)\n"
    )

    def run() -> list[str]:
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        return result.stdout.split()

    first_hash, first_loaded = run()  # reads and hashes every file: OpenSSL's job
    again_hash, again_loaded = run()  # every file known by size and mtime: nothing to read
    assert first_loaded == "True"
    assert (again_hash, again_loaded) == (first_hash, "False")
