"""Numbers as users write them: ASCII digits only, and never more of them than a quantity can need.

Python reads "٨٠" (Arabic-Indic), fullwidth digits and "²" as digits (`str.isdigit`, `\\d`, `int()`), and
refuses to read an integer of more than 4,300 digits with a ValueError; neither may reach a setting. Every
parser of user input reads whole numbers through `parse_whole`, and its regular expressions use `re.ASCII`.
"""

from __future__ import annotations

MAX_DIGITS = 18  # more than any count, port, size or duration needs; far below Python's 4,300


def parse_whole(text: str) -> int | None:
    """The whole number `text` spells in ASCII digits (surrounding spaces allowed), else None."""
    stripped = text.strip()
    if not stripped or len(stripped) > MAX_DIGITS or not (stripped.isascii() and stripped.isdigit()):
        return None
    return int(stripped)


def is_ascii_number(text: str) -> bool:
    """Whether `text` is a decimal number (digits, one optional '.', sign) written in ASCII."""
    stripped = text.strip().lstrip("+-")
    return bool(stripped) and stripped.isascii() and stripped.replace(".", "", 1).isdigit()


def number_text(value: object) -> str:
    """repr() of a number for a message, even of an integer too long for Python to print."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"a number of about {int(value.bit_length() * 0.30103)} digits"
    return repr(value)
