"""`${{ namespace.name }}` in commands: values reach the shell as references, never as text.

A value a user passes (`-e X='$(touch /tmp/p)'`, `dstack run . -- '$(reboot)'`) must never be read as
shell syntax, wherever in a command it is written: unquoted, in double or single quotes, in a comment or
a here-document. So interpolation does not paste values; it writes a reference to a variable the agent
sets for the job, spelled for the place it lands in (see dstack.config.shell_context):

| written                | its value is            | unquoted   | in "..."  | in '...'      |
|------------------------|-------------------------|------------|-----------|---------------|
| `${{ env.NAME }}`      | the variable NAME       | `"${NAME}"`| `${NAME}` | `'"${NAME}"'` |
| `${{ run.name }}`      | DSTACK_RUN_NAME         | likewise   |           |               |
| `${{ run.args }}`      | the script's arguments  | `"$@"`     | `$*`      | `'"$*"'`      |

Unquoted, `"$@"` keeps every run argument a separate word, as the shell-quoted arguments did before; in
double quotes `$*` is all of them joined by spaces. `run_references` builds the table of what each name
means for a run (`interpolate_command` writes them); a new namespace adds its entry there. `$$` is a
literal `$`; `$HOME` and `${HOME}` pass through to the shell untouched. Text that no shell reads (a
volume's path, registry credentials) takes `interpolate`, which pastes values.

This module must stay importable without pydantic or yaml: the CLI's fast path uses it without loading
the configuration models.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from dstack.config import shell_context as sh
from dstack.config.errors import InterpolationError, Location
from dstack.core.text import clip

if TYPE_CHECKING:
    from dstack.config.task import TaskConfiguration

_OPEN = "${{"
_CLOSE = "}}"
# Exactly `namespace.key`; anything else is refused so that a typo cannot silently pass to the shell.
_LEGAL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*")
RUN_NAME_VARIABLE = "DSTACK_RUN_NAME"  # the agent sets it for every job
# Variables the shell sets or reads itself: a reference to one would not be the task's value.
SHELL_OWNED = frozenset(
    (
        "PWD", "OLDPWD", "RANDOM", "SRANDOM", "SECONDS", "LINENO", "SHLVL", "PPID", "UID", "EUID",
        "BASHPID", "GROUPS", "IFS", "OPTIND", "OPTARG", "HISTCMD", "EPOCHSECONDS", "EPOCHREALTIME",
        "FUNCNAME", "PIPESTATUS", "REPLY", "COLUMNS", "LINES", "_",
    )
)  # fmt: skip


class Reference(NamedTuple):
    """How a `${{ name }}` reaches the shell: `variable` holds a single value; None means the run's
    arguments, which are the job script's positional parameters."""

    variable: str | None


RUN_ARGS = Reference(None)
_T = TypeVar("_T")


def run_references(*, env: Mapping[str, str]) -> dict[str, Reference]:
    """What a task's commands may reference: run.args, run.name and env.NAME for each NAME of its env."""
    references = {"run.args": RUN_ARGS, "run.name": Reference(RUN_NAME_VARIABLE)}
    references.update({f"env.{name}": Reference(name) for name in env})
    return references


def interpolate_command(text: str, references: Mapping[str, Reference]) -> str:
    """A shell command's `${{ name }}`s as references to their variables, spelled for where they stand."""
    context = sh.ShellContext()
    return _substitute(
        text, references, lambda name, reference: _spell(name, reference, context), context.feed
    )


def interpolate(text: str, variables: Mapping[str, str]) -> str:
    """Text that no shell reads (a volume's path, registry credentials): the values themselves, pasted.
    Never for commands: those take `interpolate_command`."""
    return _substitute(text, variables, lambda _name, value: value, None)


def _substitute(
    text: str,
    table: Mapping[str, _T],
    render: Callable[[str, _T], str],
    seen: Callable[[str], None] | None,
) -> str:
    """Replace every `${{ name }}` by `render(name, table[name])`; `$$` is a literal `$`; `seen` is told
    every piece of the result as it is made (the shell context follows it)."""
    pieces: list[str] = []
    unknown: list[str] = []

    def emit(part: str) -> None:
        if part:
            pieces.append(part)
            if seen is not None:
                seen(part)

    position = 0
    while True:
        dollar = text.find("$", position)
        if dollar < 0:
            emit(text[position:])
            break
        emit(text[position:dollar])
        if text.startswith("$$", dollar):
            emit("$")
            position = dollar + 2
        elif text.startswith(_OPEN, dollar):
            closing = text.find(_CLOSE, dollar + len(_OPEN))
            if closing < 0:
                raise InterpolationError(
                    f"Unclosed '${{{{' in '{clip(text)}'; close it with '}}}}', "
                    "or write '$${{' for a literal '${{'"
                )
            name = text[dollar + len(_OPEN) : closing].strip()
            if not _LEGAL_NAME.fullmatch(name):
                raise InterpolationError(
                    f"Illegal variable name '{clip(name)}' in ${{{{ {clip(name)} }}}}; "
                    "names look like run.args, run.name or env.NAME"
                )
            if name in table:
                emit(render(name, table[name]))
            elif name not in unknown:
                unknown.append(name)
            position = closing + len(_CLOSE)
        else:
            emit("$")
            position = dollar + 1
    if unknown:
        listed = ", ".join(f"${{{{ {clip(name)} }}}}" for name in unknown)
        known = ", ".join(table) or "none"
        raise InterpolationError(f"Unknown variable(s) {listed}; known: {known}")
    return "".join(pieces)


def _spell(name: str, reference: Reference, context: sh.ShellContext) -> str:
    where = context.where
    shown = f"${{{{ {name} }}}}"
    if context.escaped:
        raise InterpolationError(
            f"{shown} follows a backslash, which would take it apart; remove the backslash"
        )
    if where == sh.QUOTED_HEREDOC:
        raise InterpolationError(
            f"{shown} is in a quoted here-document (<<'WORD'), where the shell expands nothing; "
            "unquote its word (<<WORD)"
        )
    if reference.variable is not None and reference.variable in SHELL_OWNED:
        raise InterpolationError(
            f"{shown} cannot be used: the shell sets {reference.variable} itself; give the value another name"
        )
    value = f"${{{reference.variable}}}" if reference.variable is not None else None
    if where == sh.UNQUOTED:
        return f'"{value}"' if value else '"$@"'
    joined = value or "$*"
    if where == sh.SINGLE:
        return f"'\"{joined}\"'"  # close the quote, the reference in double quotes, reopen it
    if where == sh.ANSI:
        return f"'\"{joined}\"$'"
    return joined  # in double quotes, a here-document or a comment


def interpolate_lines(
    lines: Sequence[str],
    table: Mapping[str, Any],
    *,
    location_of: Callable[[int], Location | None] | None = None,
    plain: bool = False,
) -> list[str]:
    """Interpolate each line (as shell commands, or with `plain` as text no shell reads); an error carries
    the location of the offending line when known."""
    result: list[str] = []
    for index, line in enumerate(lines):
        try:
            result.append(interpolate(line, table) if plain else interpolate_command(line, table))
        except InterpolationError as error:
            location = location_of(index) if location_of is not None else None
            if location is None:
                raise
            raise InterpolationError(
                error.message, file=location.file, line=location.line, column=location.column
            ) from None
    return result


def command_table(
    *, env: Mapping[str, str], entrypoint: bool, run_name: str, run_args: Sequence[str]
) -> tuple[dict[str, Any], bool]:
    """(the table, whether it is plain) for a task's commands. With an `entrypoint` the commands are its
    arguments, one argv item each, and no shell reads them: the values themselves go in (run.args joined
    by spaces). Without one they are shell commands and get references."""
    if not entrypoint:
        return dict(run_references(env=env)), False
    values = {"run.args": " ".join(run_args), "run.name": run_name}
    values.update({f"env.{name}": value for name, value in env.items()})
    return values, True


def interpolate_commands(
    configuration: TaskConfiguration,
    *,
    env: Mapping[str, str],
    run_name: str = "",
    run_args: Sequence[str] = (),
) -> tuple[list[str], list[str]]:
    """Return the task's (commands, build), interpolated for how they run (see `command_table`)."""
    commands, plain = command_table(
        env=env, entrypoint=bool(configuration.entrypoint), run_name=run_name, run_args=run_args
    )
    references = run_references(env=env)

    def lines_of(field: str, table: Mapping[str, Any], as_text: bool) -> list[str]:
        return interpolate_lines(
            getattr(configuration, field),
            table,
            location_of=lambda index: configuration.location_of(field, index),
            plain=as_text,
        )

    # `setup` (deprecated) runs before the commands, as in 0.11; `build` always runs in a shell.
    head = lines_of("setup", commands, plain) + lines_of("commands", commands, plain)
    return head, lines_of("build", references, False)
