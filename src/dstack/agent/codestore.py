"""The agent's store of code, content-addressed: WORK/code/blobs/ab/<sha256> and WORK/code/manifests/<hash>.

A manifest (the server's dstack.code.manifest format) lists a tree and names each file by the sha256 of
its content; the contents are stored once, whatever job or project brought them. The server asks which
contents the store lacks, sends them in one blob stream (40-byte header: raw sha256 and size, then the
bytes), then the manifest. Every content is hashed on arrival and kept only if it matches its name; a
manifest is kept only once it passed the safety checks (dstack.agent.unpack) and every content it names
is here. A job's folder is then built from the store (copies, never links into it).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import time
from pathlib import Path
from typing import IO, Any, Callable, List, Optional, Tuple

from dstack.agent.fsutil import make_private_dir
from dstack.agent.spares import SpareTrees
from dstack.agent.unpack import DIR, FILE, SYMLINK, Item, UnpackError, build_tree, check_items, normalise_path

FORMAT = "dstack-code/1"
HEADER = struct.Struct(">32sQ")
MAX_ENTRIES = 500_000
MAX_MANIFEST_BYTES = 128 * 1024 * 1024
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1024 * 1024
_TEMP_PREFIX = ".upload-"


class CodeUploadError(Exception):
    """The upload was refused; the message is one sentence for the client."""


class CodeTooLarge(CodeUploadError):
    pass


def is_code_hash(value: str) -> bool:
    return bool(_SHA256_RE.match(value))


class CodeStore:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._blobs = folder / "blobs"
        self._manifests = folder / "manifests"
        for path in (folder, self._blobs, self._manifests):
            make_private_dir(path)
        for leftover in folder.glob("*.tar"):  # archives of the store's former format
            leftover.unlink(missing_ok=True)
        # Uploads cut short by an earlier crash leave temp files behind.
        for leftover in [
            *self._manifests.glob(_TEMP_PREFIX + "*"),
            *self._blobs.glob("*/" + _TEMP_PREFIX + "*"),
        ]:
            leftover.unlink(missing_ok=True)
        self.spares = SpareTrees(folder / "trees", self.blob_path)

    def blob_path(self, sha256: str) -> Path:
        return self._blobs / sha256[:2] / sha256

    def has(self, code_hash: str) -> bool:
        return is_code_hash(code_hash) and (self._manifests / code_hash).is_file()

    def missing(self, wanted: bytes) -> List[str]:
        """Of the (sha256, size) pairs in `wanted` (40-byte headers, no content), those not stored."""
        if len(wanted) % HEADER.size:
            raise CodeUploadError("The list of contents must be 40-byte entries (sha256, size)")
        lacking = []
        for raw, size in HEADER.iter_unpack(wanted):
            sha256 = raw.hex()
            try:
                # The size check catches a content cut short by a crash before it reached the disk.
                present = self.blob_path(sha256).stat().st_size == size
            except OSError:
                present = False
            if not present:
                lacking.append(sha256)
        return lacking

    def receive(self, source: IO[bytes], length: int, max_bytes: int) -> int:
        """Store the blobs of a stream of `length` bytes; returns how many it held."""
        remaining = length
        count = content_bytes = 0

        def read(size: int) -> bytes:
            nonlocal remaining
            data = source.read(size)
            if len(data) != size:
                raise CodeUploadError(
                    f"The upload ended after {length - remaining + len(data)} of {length} bytes"
                )
            remaining -= size
            return data

        while remaining > 0:
            if remaining < HEADER.size:
                raise CodeUploadError("The upload ends in the middle of a content's header")
            raw, size = HEADER.unpack(read(HEADER.size))
            content_bytes += size
            if content_bytes > max_bytes:
                raise CodeTooLarge(f"The upload is over the limit of {max_bytes} bytes for code")
            if size > remaining:
                raise CodeUploadError(f"The upload ends in the middle of the content {raw.hex()[:12]}")
            self._store_blob(raw.hex(), size, read)
            count += 1
        return count

    def _store_blob(self, sha256: str, size: int, read: Callable[[int], bytes]) -> None:
        target = self.blob_path(sha256)
        target.parent.mkdir(mode=0o700, exist_ok=True)
        temp = target.parent / f"{_TEMP_PREFIX}{os.getpid()}-{time.monotonic_ns()}"
        digest = hashlib.sha256()
        try:
            with open(temp, "xb") as f:
                left = size
                while left > 0:
                    chunk = read(min(_CHUNK, left))
                    digest.update(chunk)
                    f.write(chunk)
                    left -= len(chunk)
            if digest.hexdigest() != sha256:
                raise CodeUploadError(
                    f"The content {sha256[:12]} does not match its hash; the upload was corrupted"
                )
            os.chmod(temp, 0o400)
            os.replace(temp, target)
        finally:
            temp.unlink(missing_ok=True)

    def store_manifest(self, code_hash: str, manifest: bytes, max_bytes: int) -> None:
        """Keep the manifest once it is safe and every content it names is here."""
        if hashlib.sha256(manifest).hexdigest() != code_hash:
            raise CodeUploadError(f"The manifest does not match its hash {code_hash}")
        try:
            items = parse_manifest(manifest)
            check_items(items)
        except UnpackError as e:
            raise CodeUploadError(f"The code was refused: {e}") from e
        total = sum(item.size for item in items if item.kind == FILE)
        if total > max_bytes:
            raise CodeTooLarge(f"The code is {total} bytes, over the limit of {max_bytes}")
        wanted = {item.ref: item.size for item in items if item.kind == FILE}
        lacking = self.missing(pairs(list(wanted.items())))
        if lacking:
            raise CodeUploadError(
                f"The code names {len(lacking)} contents not uploaded yet, e.g. {lacking[0]}"
            )
        temp = self._manifests / f"{_TEMP_PREFIX}{os.getpid()}-{time.monotonic_ns()}"
        try:
            temp.write_bytes(manifest)
            os.replace(temp, self._manifests / code_hash)
        finally:
            temp.unlink(missing_ok=True)

    def assemble(
        self,
        code_hash: str,
        destination: Path,
        cancelled: Optional[Callable[[], bool]] = None,
        spare: bool = True,
    ) -> None:
        """Put the code's tree at `destination` (an empty folder, replaced, or none yet): with `spare`, a
        spare copy of it moved there if one is ready (see dstack.agent.spares), else built from the store;
        a spare of it is then made for the next job. Raises UnpackError."""
        items = self.items(code_hash)
        if not (spare and self.spares.take(code_hash, items, destination)):
            try:
                destination.mkdir(exist_ok=True)
            except OSError as e:
                raise UnpackError(f"the code's folder could not be made: {e.strerror or e}") from e
            build_tree(items, self.blob_path, destination, cancelled)
        if spare:
            self.spares.offer(code_hash, items)  # the next job of this code gets its folder at once

    def items(self, code_hash: str) -> List[Item]:
        """The code's checked entries (raises UnpackError)."""
        try:
            manifest = (self._manifests / code_hash).read_bytes()
        except FileNotFoundError:
            raise UnpackError(f"code {code_hash} has not been uploaded") from None
        items = parse_manifest(manifest)
        check_items(items)  # checked when stored too; this file is what counts now
        return items


def parse_manifest(data: bytes) -> List[Item]:
    if len(data) > MAX_MANIFEST_BYTES:
        raise UnpackError(f"the manifest is over {MAX_MANIFEST_BYTES} bytes")
    try:
        document: Any = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise UnpackError("the manifest is not valid JSON") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise UnpackError(f"the manifest is not in the {FORMAT} format")
    entries = document.get("entries")
    if not isinstance(entries, list) or len(entries) > MAX_ENTRIES:
        raise UnpackError(f"the manifest must list at most {MAX_ENTRIES} entries")
    return [parse_entry(entry) for entry in entries]


def parse_entry(entry: Any) -> Item:
    """One manifest entry as an Item, its shape checked (raises UnpackError)."""
    if not (isinstance(entry, list) and len(entry) == 5 and isinstance(entry[0], str)):
        raise UnpackError("a manifest entry is not [path, kind, mode, size, ref]")
    path, kind, mode, size, ref = entry
    if normalise_path(path) != path:
        raise UnpackError(f"the entry {path[:200]!r} is not a normalised relative path")
    if kind not in (DIR, FILE, SYMLINK) or not isinstance(ref, str):
        raise UnpackError(f"the entry {path[:200]!r} is a device, fifo or other special file")
    if not (isinstance(mode, int) and isinstance(size, int) and 0 <= mode <= 0o7777 and size >= 0):
        raise UnpackError(f"the entry {path[:200]!r} has a malformed mode or size")
    if kind == FILE and not is_code_hash(ref):
        raise UnpackError(f"the file {path[:200]!r} is not named by a sha256")
    return Item(path, kind, mode, size if kind == FILE else 0, ref)


def pairs(wanted: List[Tuple[str, int]]) -> bytes:
    """The 40-byte form of (sha256, size) pairs, as `missing` reads them."""
    return b"".join(HEADER.pack(bytes.fromhex(sha256), size) for sha256, size in wanted)
