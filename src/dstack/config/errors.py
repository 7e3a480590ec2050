"""User-facing configuration errors.

Kept free of pydantic and yaml so that the cheap modules (interpolation, durations, names) can raise
them without pulling in the heavy dependencies.
"""

from __future__ import annotations

from typing import NamedTuple

from dstack.core.numbers import number_text
from dstack.core.text import clip


class Location(NamedTuple):
    """Where something is in a user's file; line and column are 1-based."""

    file: str | None
    line: int | None = None
    column: int | None = None


class ConfigError(Exception):
    """One user-facing sentence, prefixed with `file:line:column:` when the location is known."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.file = file
        self.line = line
        self.column = column

    @classmethod
    def at(cls, message: str, location: Location | None) -> ConfigError:
        if location is None:
            return cls(message)
        return cls(message, file=location.file, line=location.line, column=location.column)

    def __str__(self) -> str:
        if self.file is None:
            return self.message
        position = self.file
        if self.line is not None:
            position += f":{self.line}"
            if self.column is not None:
                position += f":{self.column}"
        return f"{position}: {self.message}"

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only arguments are not restored by the default pickling of exceptions.
        return (_rebuild_error, (type(self), self.message, self.file, self.line, self.column))


def _rebuild_error(
    cls: type[ConfigError], message: str, file: str | None, line: int | None, column: int | None
) -> ConfigError:
    return cls(message, file=file, line=line, column=column)


class InterpolationError(ConfigError):
    """A `${{ ... }}` reference that cannot be resolved."""


class InvalidValue(ValueError):
    """A value that does not follow its grammar, raised inside validators.

    `reason` is a phrase without the value, so the CLI can say "Invalid --gpu value 'x': <reason>".
    """

    def __init__(self, what: str, value: object, reason: str) -> None:
        super().__init__(f"Invalid {what} {show_value(value)}: {reason}")
        self.what = what
        self.value = value
        self.reason = reason


def show_value(value: object) -> str:
    """A value as a YAML user would recognise it in a message: 'text', 8, true, null."""
    if isinstance(value, str):
        return f"'{clip(value)}'"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return clip(number_text(value))
