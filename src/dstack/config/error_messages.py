"""Turn pydantic's validation errors into one readable sentence at a file:line:column."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from dstack.config.base import LOCATED_ERROR, InvalidValue, describe_type
from dstack.config.errors import ConfigError, Location, show_value
from dstack.config.yaml_source import SourceMap, SourcePath

_NUMBER_BOUNDS = {
    "greater_than": "greater than {gt}",
    "greater_than_equal": "at least {ge}",
    "less_than": "less than {lt}",
    "less_than_equal": "at most {le}",
}


def translate(error: ValidationError, source: SourceMap | None, *, what: str) -> ConfigError:
    """The earliest (in file order) problem of `error`, as a located ConfigError.

    `what` names the whole document in messages about its top level, e.g. "task".
    """
    problems = [_Problem(details, source, what) for details in error.errors()]
    problems.sort(key=lambda problem: problem.sort_key())
    first = problems[0]
    return ConfigError.at(first.message, first.location)


def plain_message(error: ValidationError, *, what: str = "value") -> str:
    """The first problem's sentence, without a location (for values that come from code or flags)."""
    return _Problem(error.errors()[0], None, what).message


def flag_error(flag: str, value: object, error: ValidationError) -> ConfigError:
    """`Invalid --gpu value 'x': <reason>` for a command-line flag."""
    details = error.errors()[0]
    cause = details.get("ctx", {}).get("error")
    if isinstance(cause, InvalidValue):
        reason = cause.reason
    else:
        message = plain_message(error)
        reason = message[:1].lower() + message[1:]
    return ConfigError(f"Invalid {flag} value {show_value(value)}: {reason}")


class _Problem:
    def __init__(self, details: Any, source: SourceMap | None, what: str) -> None:
        self._details = details
        self._what = what
        loc: tuple[Any, ...] = tuple(details["loc"])
        ctx = details.get("ctx") or {}
        on_key = False
        if details["type"] == LOCATED_ERROR:
            loc += tuple(ctx.get("at", ()))
            on_key = bool(ctx.get("on_key"))
        if details["type"] == "missing" and loc:
            # The missing key is not in the document, but the message must name it.
            self.path = (*_user_path(loc[:-1], source), loc[-1])
        else:
            self.path = _user_path(loc, source)
        if details["type"] == "missing":
            # A missing key has no position of its own: point at the block that lacks it.
            self.location = _locate(source, self.path[:-1], prefer_key=True, top_level_has_location=False)
        else:
            self.location = _locate(source, self.path, prefer_key=on_key, top_level_has_location=True)
        self.message = self._sentence()

    def sort_key(self) -> tuple[float, float]:
        line = self.location.line if self.location and self.location.line else float("inf")
        column = self.location.column if self.location and self.location.column else float("inf")
        return line, column

    def _sentence(self) -> str:
        details = self._details
        kind: str = details["type"]
        ctx = details.get("ctx") or {}
        value = details.get("input")
        name = _display(self.path) or self._what
        if kind == LOCATED_ERROR:
            return str(ctx["message"])
        if kind in ("value_error", "assertion_error") and "error" in ctx:
            return str(ctx["error"])
        if kind == "missing":
            parent = _display(self.path[:-1])
            return f"Missing required key '{self.path[-1]}'" + (f" in '{parent}'" if parent else "")
        if kind == "extra_forbidden":
            return f"Unknown key '{self.path[-1]}'"
        if kind == "string_type":
            return f"Expected a string for '{name}', got {_show(value)}"
        if kind == "list_type":
            if isinstance(value, str):
                return (
                    f"Expected a list for '{name}', got a string; use a YAML list with one '- item' per line"
                )
            return f"Expected a list for '{name}', got {_show(value)}"
        if kind in ("dict_type", "model_type", "model_attributes_type"):
            return f"Expected a mapping for '{name}', got {_show(value)}"
        if kind in ("int_type", "int_parsing", "int_from_float"):
            return f"Expected a whole number for '{name}', got {_show(value)}"
        if kind in ("float_type", "float_parsing", "finite_number"):
            return f"Expected a finite number for '{name}', got {_show(value)}"
        if kind in ("bool_type", "bool_parsing"):
            return f"Expected true or false for '{name}', got {_show(value)}"
        if kind in _NUMBER_BOUNDS:
            bound = _NUMBER_BOUNDS[kind].format(**ctx)
            return f"The value of '{name}' must be {bound}, got {_show(value)}"
        if kind in ("literal_error", "enum"):
            return f"Invalid value {_show(value)} for '{name}'; allowed: {_allowed(ctx)}"
        if kind == "string_too_short":
            return f"The value of '{name}' must not be empty"
        if kind == "too_short":
            return f"The list '{name}' must not be empty"
        return f"Invalid value for '{name}': {details['msg']}"


def _user_path(loc: Sequence[Any], source: SourceMap | None) -> SourcePath:
    """Keep the parts of pydantic's `loc` that exist in the user's document.

    pydantic adds union tags and names of reshaped data to `loc`; those are not where the user looks.
    """
    path: SourcePath = ()
    for part in loc:
        if not isinstance(part, (str, int)) or isinstance(part, bool):
            continue
        candidate = (*path, part)
        if source is None:
            if isinstance(part, int) or part.replace("_", "").isalnum():
                path = candidate
        elif source.has(candidate):
            path = candidate
    return path


def _locate(
    source: SourceMap | None, path: SourcePath, *, prefer_key: bool, top_level_has_location: bool
) -> Location | None:
    if source is None:
        return None
    if not path and not top_level_has_location:
        return Location(source.file)
    return source.locate(path, prefer_key=prefer_key)


def _display(path: SourcePath) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _show(value: object) -> str:
    if value is None or isinstance(value, (str, int, float)):
        return show_value(value)
    return describe_type(value)


def _allowed(ctx: dict[str, Any]) -> str:
    # pydantic writes "'a', 'b' or 'c'"; users read lists as "a, b, c".
    expected = str(ctx.get("expected", ""))
    return expected.replace("'", "").replace(" or ", ", ")
