"""Quoting what a user gave in a message without echoing all of it: a 10,000-character name or a
5,000-digit number is cut, so an error stays one readable line."""

from __future__ import annotations

import re

QUOTE_LIMIT = 60
_QUOTED = re.compile(rf"'([^'\n]{{{QUOTE_LIMIT + 1},}})'")


def clip(text: str, limit: int = QUOTE_LIMIT) -> str:
    """`text` if it is short, else its start with '...' (and without line breaks either way)."""
    text = " ".join(text.splitlines()) if "\n" in text or "\r" in text else text
    return text if len(text) <= limit else text[: limit - 3] + "..."


def one_line(text: str, limit: int) -> str:
    """`text` as one line (line breaks and tabs become spaces, control characters go), cut at `limit`."""
    flat = " ".join("".join(c if c.isprintable() or c in "\t\n\r" else " " for c in text).split())
    return clip(flat, limit)


def clip_words(message: str, limit: int = 160) -> str:
    """Cut every over-long word of a message: the safety net for a message that echoes input unquoted."""
    if len(message) <= limit:
        return message
    return " ".join(clip(word, limit) for word in message.split(" "))


def clip_quoted(message: str) -> str:
    """Cut every over-long '...'-quoted value in a message (argparse quotes the values it rejects)."""
    return _QUOTED.sub(lambda match: f"'{clip(match.group(1))}'", message)
