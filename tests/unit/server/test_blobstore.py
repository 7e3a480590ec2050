"""The server's store of uploaded contents: small ones packed, big ones a file each, all found again."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from dstack.code.blobs import header
from dstack.server.services.blobstore import SMALL, ProjectStore
from dstack.server.services.errors import ServiceError


def _stream(contents: list[bytes]) -> bytes:
    return b"".join(header(hashlib.sha256(c).hexdigest(), len(c)) + c for c in contents)


def _pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_thousand_small_contents_make_a_pack_not_a_thousand_files(tmp_path: Path) -> None:
    small = [f"module {i}\n".encode() * (i % 50 + 1) for i in range(1000)]
    big = os.urandom(SMALL + 1)
    store = ProjectStore(tmp_path)
    receiver = store.receiver(limit=1 << 30)
    # Pieces of 4 KB: many small contents arrive split across two pieces, the big one across many.
    receiver.feed_all(_pieces(_stream([*small, small[0], b"", big]), 4096))
    assert receiver.finish() == 1002  # the repeated content is stored once; the empty one counts
    assert len(_files(tmp_path)) == 3  # one pack, its index, and the big content's own file
    assert store.file(_sha(big)) in {str(p) for p in _files(tmp_path)}
    reopened = ProjectStore(tmp_path)  # as after a server restart: the index is read from disk
    for data in [*small, b""]:
        assert reopened.has(_sha(data), len(data))
        assert reopened.read_small(_sha(data), len(data)) == data
    assert reopened.has(_sha(big), len(big))
    assert not reopened.has(_sha(small[1]), len(small[1]) + 1)  # a wrong size is not the content
    assert reopened.missing([(_sha(small[2]), len(small[2])), (_sha(b"new"), 3)]) == [_sha(b"new")]


def test_a_second_upload_stores_only_what_is_new(tmp_path: Path) -> None:
    store = ProjectStore(tmp_path)
    first = store.receiver(limit=1 << 20)
    first.feed(_stream([b"one", b"two"]))
    assert first.finish() == 2
    second = store.receiver(limit=1 << 20)
    second.feed(_stream([b"two", b"three"]))
    assert second.finish() == 1
    assert store.read_small(_sha(b"three"), 5) == b"three" and store.read_small(_sha(b"one"), 3) == b"one"


def test_a_content_that_does_not_match_its_hash_leaves_nothing(tmp_path: Path) -> None:
    store = ProjectStore(tmp_path)
    receiver = store.receiver(limit=1 << 20)
    good = _stream([b"fine"])
    bad = header(_sha(b"expected"), 8) + b"tampered"
    with pytest.raises(ServiceError, match="does not match its hash"):
        receiver.feed(good + bad)
        receiver.finish()
    receiver.abort()
    assert not ProjectStore(tmp_path).has(_sha(b"fine"), 4)  # the upload failed as a whole
    assert [p for p in _files(tmp_path) if p.suffix == ".pack"] == []


def test_an_upload_cut_short_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    store = ProjectStore(tmp_path)
    receiver = store.receiver(limit=1 << 20)
    data = _stream([b"whole", b"cut short"])
    receiver.feed(data[:-3])
    with pytest.raises(ServiceError, match="ended in the middle of a content"):
        receiver.finish()
    receiver.abort()
    assert _files(tmp_path) == []
    assert not store.has(_sha(b"whole"), 5)


def test_over_the_limit_is_refused(tmp_path: Path) -> None:
    receiver = ProjectStore(tmp_path).receiver(limit=10)
    with pytest.raises(ServiceError, match="over the server's"):
        receiver.feed(_stream([b"123456", b"7890123"]))
    receiver.abort()
    assert _files(tmp_path) == []


def test_small_contents_stored_a_file_each_are_still_found(tmp_path: Path) -> None:
    store = ProjectStore(tmp_path)
    legacy = Path(store.file(_sha(b"old layout")))
    legacy.parent.mkdir(parents=True)
    legacy.write_bytes(b"old layout")
    assert store.has(_sha(b"old layout"), 10)
    assert store.read_small(_sha(b"old layout"), 10) == b"old layout"
