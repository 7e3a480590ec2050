"""Errors the CLI reports as one sentence (no traceback) with a non-zero exit code."""

from __future__ import annotations


class CLIError(Exception):
    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
