"""`${{ namespace.name }}` interpolation of commands.

This module must stay importable without pydantic or yaml: the CLI's fast path uses it without loading
the configuration models.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from dstack.config.errors import InterpolationError, Location
from dstack.core.text import clip

if TYPE_CHECKING:
    from dstack.config.task import TaskConfiguration

_OPEN = "${{"
_CLOSE = "}}"
# Exactly `namespace.key`; anything else is refused so that a typo cannot silently pass to the shell.
_LEGAL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*")


def interpolate(text: str, variables: Mapping[str, str]) -> str:
    """Substitute `${{ name }}` references; `$$` is a literal `$`; other `$` pass through untouched."""
    pieces: list[str] = []
    unknown: list[str] = []
    position = 0
    while True:
        dollar = text.find("$", position)
        if dollar < 0:
            pieces.append(text[position:])
            break
        pieces.append(text[position:dollar])
        if text.startswith("$$", dollar):
            pieces.append("$")
            position = dollar + 2
        elif text.startswith(_OPEN, dollar):
            closing = text.find(_CLOSE, dollar + len(_OPEN))
            if closing < 0:
                raise InterpolationError(
                    f"Unclosed '${{{{' in {text!r}; close it with '}}}}', "
                    "or write '$${{' for a literal '${{'"
                )
            name = text[dollar + len(_OPEN) : closing].strip()
            if not _LEGAL_NAME.fullmatch(name):
                raise InterpolationError(
                    f"Illegal variable name '{clip(name)}' in ${{{{ {clip(name)} }}}}; "
                    "names look like run.args, run.name or env.NAME"
                )
            if name in variables:
                pieces.append(variables[name])
            elif name not in unknown:
                unknown.append(name)
            position = closing + len(_CLOSE)
        else:
            pieces.append("$")
            position = dollar + 1
    if unknown:
        listed = ", ".join(f"${{{{ {clip(name)} }}}}" for name in unknown)
        known = ", ".join(variables) or "none"
        raise InterpolationError(f"Unknown variable(s) {listed}; known: {known}")
    return "".join(pieces)


def run_variables(*, run_name: str, run_args: Sequence[str], env: Mapping[str, str]) -> dict[str, str]:
    """The variables a task's commands may reference.

    Each run argument is shell-quoted so that no argument can inject shell syntax into a command.
    """
    variables = {"run.args": shlex.join(run_args), "run.name": run_name}
    variables.update({f"env.{key}": value for key, value in env.items()})
    return variables


def interpolate_lines(
    lines: Sequence[str],
    variables: Mapping[str, str],
    *,
    location_of: Callable[[int], Location | None] | None = None,
) -> list[str]:
    """Interpolate each line; an error carries the location of the offending line when known."""
    result: list[str] = []
    for index, line in enumerate(lines):
        try:
            result.append(interpolate(line, variables))
        except InterpolationError as error:
            location = location_of(index) if location_of is not None else None
            if location is None:
                raise
            raise InterpolationError(
                error.message, file=location.file, line=location.line, column=location.column
            ) from None
    return result


def interpolate_commands(
    configuration: TaskConfiguration,
    *,
    run_name: str,
    run_args: list[str],
    env: Mapping[str, str],
) -> tuple[list[str], list[str]]:
    """Return the task's (commands, build) with `run.args`, `run.name` and `env.X` substituted."""
    variables = run_variables(run_name=run_name, run_args=run_args, env=env)

    def lines_of(field: str) -> list[str]:
        return interpolate_lines(
            getattr(configuration, field),
            variables,
            location_of=lambda index: configuration.location_of(field, index),
        )

    return lines_of("commands"), lines_of("build")
