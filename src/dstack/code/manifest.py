"""The code's manifest: what a tree holds, with each file named by the sha256 of its content.

A manifest is canonical JSON, so the same tree always gives the same bytes, and the code's hash is the
sha256 of those bytes:

    {"format": "dstack-code/1", "entries": [[path, kind, mode, size, ref], ...]}

kind is "d" (folder), "f" (file) or "l" (symlink); mode the permission bits; size a file's bytes (0
otherwise); ref a file's content hash, a symlink's target, "" for a folder. Paths are "/"-separated and
relative, sorted by their bytes. Mtimes are left out on purpose: a `touch`, or a branch switched back and
forth, changes no byte of the code and must not change its hash (nor send anything).

The contents travel apart, as blobs (see `dstack.code.blobs`), and only those the receiver lacks.
`parse_manifest` is the server's check of the format; the agent checks every entry again before it
builds a job's folder from one (dstack.agent.codestore).
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from dstack.core.sha256 import sha256

FORMAT = "dstack-code/1"
DIR, FILE, SYMLINK = "d", "f", "l"
MAX_ENTRIES = 500_000
MAX_MANIFEST_BYTES = 128 * 1024**2
MAX_PATH_BYTES = 4096
_HEX = frozenset("0123456789abcdef")

Entry = tuple[str, str, int, int, str]  # path, kind, mode, size, ref


class ManifestError(ValueError):
    """The manifest is malformed; the message is one sentence."""


def encode_manifest(entries: list[Entry]) -> bytes:
    """The canonical bytes of a manifest; entries must already be in path order."""
    # ensure_ascii: non-UTF-8 names (surrogate escapes) survive as \\udcXX and decode back the same.
    return json.dumps({"format": FORMAT, "entries": entries}, separators=(",", ":")).encode("ascii")


def code_hash(manifest: bytes) -> str:
    return sha256(manifest).hexdigest()


def is_sha256(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and _HEX.issuperset(value)


class ParsedManifest(NamedTuple):
    blobs: dict[str, int]  # content hash -> size, each once
    total_bytes: int  # of all files (a content present twice counts twice, as on disk)
    files: int  # files and symlinks


def parse_manifest(data: bytes) -> ParsedManifest:
    """Check the manifest's shape (not yet its paths' safety: the agent does that where it writes)."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"The manifest is over {MAX_MANIFEST_BYTES // 1024**2} MB")
    try:
        document: Any = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise ManifestError("The manifest is not valid JSON") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ManifestError(f"The manifest is not in the {FORMAT} format")
    entries = document.get("entries")
    if not isinstance(entries, list):
        raise ManifestError("The manifest has no list of entries")
    return parse_entries(entries)


def parse_entries(entries: list[Any]) -> ParsedManifest:
    """Check entries of the manifest's form (a manifest's, or the changes --reload puts in place)."""
    if len(entries) > MAX_ENTRIES:
        raise ManifestError(f"The manifest lists {len(entries)} entries, over the limit of {MAX_ENTRIES}")
    blobs: dict[str, int] = {}
    total = files = 0
    for entry in entries:
        if not (isinstance(entry, list) and len(entry) == 5):
            raise ManifestError("Each manifest entry must be [path, kind, mode, size, ref]")
        path, kind, mode, size, ref = entry
        if not isinstance(path, str) or not path or len(path) > MAX_PATH_BYTES:
            raise ManifestError("A manifest entry has no usable path")
        if not (isinstance(mode, int) and isinstance(size, int) and isinstance(ref, str)):
            raise ManifestError(f"The manifest entry {path[:200]!r} has a malformed mode, size or ref")
        if not 0 <= mode <= 0o7777 or size < 0:
            raise ManifestError(f"The manifest entry {path[:200]!r} has an impossible mode or size")
        if kind == FILE:
            if not is_sha256(ref):
                raise ManifestError(f"The file {path[:200]!r} is not named by a sha256 in the manifest")
            if blobs.setdefault(ref, size) != size:
                raise ManifestError(f"The content {ref[:12]} is listed with two different sizes")
            total += size
            files += 1
        elif kind == SYMLINK:
            files += 1
        elif kind != DIR:
            raise ManifestError(f"The manifest entry {path[:200]!r} has an unknown kind {str(kind)[:10]!r}")
    return ParsedManifest(blobs, total, files)
