"""Terminal output. rich is imported only when a terminal will show its colours: it costs ~100 ms to import,
and piped output (scripts, benchmarks, CI) reads better plain anyway.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import IO, Any


def is_tty(stream: IO[Any]) -> bool:
    try:
        return stream.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):
        return False


def error(message: str) -> None:
    from dstack.core.text import clip_words

    message = clip_words(message)  # whatever a layer below echoed, the line stays readable
    if is_tty(sys.stderr) and "NO_COLOR" not in os.environ:
        sys.stderr.write(f"\x1b[31m{message}\x1b[0m\n")
    else:
        sys.stderr.write(message + "\n")
    sys.stderr.flush()


def note(message: str, *, dim: bool = False) -> None:
    """A line of the CLI's own (not the task's): it goes to stderr, so stdout carries only task output."""
    if dim and is_tty(sys.stderr) and "NO_COLOR" not in os.environ:
        sys.stderr.write(f"\x1b[2m{message}\x1b[0m\n")
    else:
        sys.stderr.write(message + "\n")
    sys.stderr.flush()


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    stream: IO[str] | None = None,
    title: str | None = None,
    dim_after_first: bool = False,
) -> None:
    stream = stream or sys.stdout
    if is_tty(stream) and "NO_COLOR" not in os.environ:
        _rich_table(headers, rows, stream, title, dim_after_first)
    else:
        _plain_table(headers, rows, stream, title)


def _plain_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], stream: IO[str], title: str | None
) -> None:
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    if title:
        stream.write(title + "\n")
    lines = [headers, *rows]
    for line in lines:
        stream.write(" " + "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip() + "\n")
    stream.flush()


def _rich_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    stream: IO[str],
    title: str | None,
    dim_after_first: bool,
) -> None:
    from rich.console import Console
    from rich.table import Table

    grid = Table(box=None, header_style="bold", title=title, title_justify="left", pad_edge=True)
    for header in headers:
        grid.add_column(header, overflow="fold")
    for i, row in enumerate(rows):
        grid.add_row(*row, style="grey58" if dim_after_first and i > 0 else None)
    Console(file=stream, highlight=False, soft_wrap=False).print(grid)


def confirm(question: str, *, default: bool | None = None) -> bool:
    """Ask a yes/no question; a piped answer (`yes | dstack run`) counts, no answer at all is an error."""
    from dstack.cli.errors import CLIError

    suffix = " [y/n]: "
    while True:
        sys.stderr.write(question + suffix)
        sys.stderr.flush()
        answer = sys.stdin.readline()
        if not answer:
            raise CLIError("No answer (end of input); pass -y to skip the question")
        answer = answer.strip().lower()
        if answer in ("y", "yes"):
            return True
        if answer in ("n", "no"):
            return False
        if answer == "" and default is not None:
            return default


def human_size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    return f"{size:.1f}GB"
