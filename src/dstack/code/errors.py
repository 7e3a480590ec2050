"""Errors raised while finding, filtering or packing the user's code; each reads as one sentence."""

from __future__ import annotations

from pathlib import Path

_UNITS = (("TB", 1024**4), ("GB", 1024**3), ("MB", 1024**2), ("KB", 1024))


class CodeError(Exception):
    """A problem with the user's code folder, worded for the user."""


class FileChangedError(CodeError):
    """A file changed while it was packed or uploaded: packing again gives a consistent snapshot."""

    def __init__(self, rel_path: str, doing: str) -> None:
        self.rel_path = rel_path
        self.doing = doing
        super().__init__(
            f"The file {rel_path} changed while the code was being {doing}; run again, "
            "or add it to .dstackignore if it keeps changing"
        )


class CodeTooLargeError(CodeError):
    """The code to upload is bigger than the allowed limit."""

    def __init__(self, root: Path, total: int, limit: int, biggest: list[tuple[str, int]]) -> None:
        self.root = root
        self.total = total
        self.limit = limit
        self.biggest = biggest
        total_text, limit_text = format_size(total), format_size(limit)
        if total_text == limit_text:
            # Rounding made them look equal; exact bytes keep "over the limit" believable.
            total_text, limit_text = f"{total:,} bytes", f"{limit:,} bytes"
        files = ", ".join(f"{path} ({format_size(size)})" for path, size in biggest)
        super().__init__(
            f"The code in {root} is {total_text}, over the {limit_text} limit; the biggest files are "
            f"{files}: add them to .dstackignore (or .gitignore) or raise DSTACK_CODE_LIMIT_MB"
        )


def format_size(size: int) -> str:
    """A short human size in binary units: 812 MB, 1.5 GB, 340 KB, 12 B."""
    for unit, scale in _UNITS:
        if size >= scale:
            value = size / scale
            if value < 10 and round(value, 1) != round(value):
                return f"{value:.1f} {unit}"
            return f"{round(value)} {unit}"
    return f"{size} B"
