"""`${{ ... }}` interpolation, shell quoting of run arguments, and the cheap import of the module."""

from __future__ import annotations

import shlex
import subprocess
import sys

import pytest
from config_testkit import FILENAME, parse

from dstack.config import InterpolationError, interpolate, interpolate_commands

VARIABLES = {"run.args": "--epochs=3", "run.name": "wet-mangust-7", "env.A": "1"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("python train.py ${{ run.args }}", "python train.py --epochs=3"),
        ("echo ${{run.name}}", "echo wet-mangust-7"),
        ("echo ${{   env.A\t}}", "echo 1"),
        ("echo $$", "echo $"),
        ("echo $${{ run.args }}", "echo ${{ run.args }}"),
        ("echo $$$$${{ env.A }}", "echo $$1"),
        ("echo $$$${{ env.A }}", "echo $${{ env.A }}"),
        ("echo $HOME ${HOME} $1 $", "echo $HOME ${HOME} $1 $"),
        ("echo ${ { run.args }}", "echo ${ { run.args }}"),
        ("no references", "no references"),
        ("${{ env.A }}${{ env.A }}", "11"),
    ],
)
def test_interpolate(text: str, expected: str) -> None:
    assert interpolate(text, VARIABLES) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "echo ${{ run.argz }} ${{ env.FOO }} ${{ run.argz }}",
            "Unknown variable(s) ${{ run.argz }}, ${{ env.FOO }}; known: run.args, run.name, env.A",
        ),
        (
            "echo ${{ run.args",
            "Unclosed '${{' in 'echo ${{ run.args'; close it with '}}', or write '$${{' for a",
        ),
        ("echo ${{ a.b.c }}", "Illegal variable name 'a.b.c' in ${{ a.b.c }}; names look like run.args"),
        ("echo ${{ secrets.pass-word }}", "Illegal variable name 'secrets.pass-word'"),
        ("echo ${{ .x }}", "Illegal variable name '.x'"),
        ("echo ${{ x. }}", "Illegal variable name 'x.'"),
        ("echo ${{ secrets.007 }}", "Illegal variable name 'secrets.007'"),
        ("echo ${{ }}", "Illegal variable name ''"),
    ],
)
def test_interpolation_errors(text: str, message: str) -> None:
    with pytest.raises(InterpolationError) as caught:
        interpolate(text, VARIABLES)
    assert str(caught.value).startswith(message)


HOSTILE_ARGS = ["$(rm -rf /)", "; ls", "a b", "it's", '"quoted"', "`id`", "--flag=x y", "", "${{ run.name }}"]


def test_run_args_are_shell_quoted_so_nothing_injects() -> None:
    configuration = parse("type: task\ncommands:\n  - python train.py ${{ run.args }}\n")
    commands, build = interpolate_commands(configuration, run_name="r", run_args=HOSTILE_ARGS, env={})
    assert build == []
    # The shell splits the command back into exactly the arguments given: nothing was interpreted.
    assert shlex.split(commands[0]) == ["python", "train.py", *HOSTILE_ARGS]


def test_hostile_args_reach_a_real_shell_verbatim() -> None:
    configuration = parse("type: task\ncommands:\n  - printf '%s\\n' ${{ run.args }}\n")
    commands, _ = interpolate_commands(configuration, run_name="r", run_args=HOSTILE_ARGS, env={})
    result = subprocess.run(
        ["bash", "-c", commands[0]], capture_output=True, text=True, check=True, timeout=30
    )
    assert result.stdout.split("\n")[:-1] == HOSTILE_ARGS


def test_commands_and_build_see_run_name_and_env() -> None:
    configuration = parse(
        "type: task\nbuild:\n  - echo ${{ env.MODE }}\ncommands:\n  - echo ${{ run.name }} $$HOME\n"
    )
    commands, build = interpolate_commands(
        configuration, run_name="wet-mangust-7", run_args=[], env={"MODE": "fast"}
    )
    assert commands == ["echo wet-mangust-7 $HOME"]
    assert build == ["echo fast"]


def test_no_args_give_an_empty_string() -> None:
    configuration = parse("type: task\ncommands:\n  - python train.py ${{ run.args }}\n")
    assert interpolate_commands(configuration, run_name="r", run_args=[], env={})[0] == ["python train.py "]


def test_interpolation_error_names_the_command_position() -> None:
    configuration = parse("type: task\ncommands:\n  - echo ok\n  - echo ${{ env.TOKEN }}\n")
    with pytest.raises(InterpolationError) as caught:
        interpolate_commands(configuration, run_name="r", run_args=[], env={"A": "1"})
    assert str(caught.value) == (
        f"{FILENAME}:4:5: Unknown variable(s) ${{{{ env.TOKEN }}}}; known: run.args, run.name, env.A"
    )


def test_importing_interpolation_loads_neither_pydantic_nor_yaml() -> None:
    code = (
        "import sys\n"
        "import dstack.config.interpolation as interpolation\n"
        "assert interpolation.interpolate('${{ run.name }}', {'run.name': 'x'}) == 'x'\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pydantic', 'pydantic_core', 'yaml')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"
