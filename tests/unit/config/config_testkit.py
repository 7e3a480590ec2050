"""Helpers shared by the configuration tests."""

from __future__ import annotations

import textwrap

import pytest

from dstack.config import ConfigError, TaskConfiguration, parse_configuration

FILENAME = "train.dstack.yml"


def parse(text: str) -> TaskConfiguration:
    return parse_configuration(textwrap.dedent(text), filename=FILENAME)


def error_of(text: str) -> str:
    """The full message (with `file:line:column:`) of the ConfigError the text must raise."""
    with pytest.raises(ConfigError) as caught:
        parse(text)
    return str(caught.value)


def task(extra: str = "", commands: str = "commands: [python train.py]\n") -> str:
    """A valid task with `extra` lines after `type: task` (line 2 onwards)."""
    return "type: task\n" + textwrap.dedent(extra) + commands
