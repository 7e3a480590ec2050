"""Durations such as `90`, `30m`, `72h` or `1h30m`, as whole seconds."""

from __future__ import annotations

import math
import re
from typing import TypeVar

from dstack.config.errors import ConfigError, InvalidValue
from dstack.core.numbers import MAX_DIGITS

_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
# ASCII: `\d` alone would read an hour in fullwidth digits as an hour.
_COMPONENT = re.compile(r"(\d+)\s*([smhdw])", re.IGNORECASE | re.ASCII)
_COMBINED = re.compile(r"(?:\d+\s*[smhdw]\s*)+", re.IGNORECASE | re.ASCII)
_Number = TypeVar("_Number", int, float)
_HINT = "use seconds or a number with a unit s, m, h, d or w, e.g. 90, 30m, 72h or 1h30m"
_NEGATIVE = "a duration cannot be negative"


def duration_seconds(value: object) -> int:
    """Parse a duration; raise InvalidValue (a ValueError) with a readable reason (for validators)."""
    if isinstance(value, bool):
        raise InvalidValue("duration", value, _HINT)
    if isinstance(value, int):
        if abs(value) >= 10**MAX_DIGITS:
            raise InvalidValue("duration", value, f"it has more than {MAX_DIGITS} digits")
        return _non_negative(value, value)
    if isinstance(value, float):
        if not math.isfinite(value) or abs(value) >= 10**MAX_DIGITS:
            raise InvalidValue("duration", value, _HINT)
        return int(_non_negative(value, value))
    if not isinstance(value, str):
        raise InvalidValue("duration", value, _HINT)
    text = value.strip()
    if any(len(amount) > MAX_DIGITS for amount in re.findall(r"\d+", text, re.ASCII)):
        raise InvalidValue("duration", value, f"a number in it has more than {MAX_DIGITS} digits")
    if re.fullmatch(r"[+-]?\d+", text, re.ASCII):
        return _non_negative(int(text), value)
    if text.startswith("-"):
        raise InvalidValue("duration", value, _NEGATIVE)
    if not text or not _COMBINED.fullmatch(text):
        raise InvalidValue("duration", value, _HINT)
    return sum(int(amount) * _UNIT_SECONDS[unit.lower()] for amount, unit in _COMPONENT.findall(text))


def _non_negative(seconds: _Number, original: object) -> _Number:
    if seconds < 0:
        raise InvalidValue("duration", original, _NEGATIVE)
    return seconds


def parse_duration(value: str | int | float) -> int:
    """Seconds in a duration; a bad value raises ConfigError."""
    try:
        return duration_seconds(value)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def format_duration(seconds: int) -> str:
    """The shortest exact spelling, e.g. 5400 -> '1h30m'."""
    if seconds == 0:
        return "0s"
    parts = []
    for unit in ("w", "d", "h", "m", "s"):
        amount, seconds = divmod(seconds, _UNIT_SECONDS[unit])
        if amount:
            parts.append(f"{amount}{unit}")
    return "".join(parts)
