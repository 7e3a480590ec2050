"""`${{ ... }}` interpolation: values reach the shell as references to variables, never as text, wherever
a reference is written (issue 13, item 8); and the cheap import of the module."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from config_testkit import FILENAME, parse

from dstack.config import InterpolationError, interpolate, interpolate_commands
from dstack.config.interpolation import interpolate_command, run_references

REFERENCES = run_references(env={"A": "1", "X": "x"})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("python train.py ${{ run.args }}", 'python train.py "$@"'),
        ("echo ${{run.name}}", 'echo "${DSTACK_RUN_NAME}"'),
        ("echo ${{   env.A\t}}", 'echo "${A}"'),
        ('echo "${{ env.A }} and ${{ run.args }}"', 'echo "${A} and $*"'),
        ("echo '${{ env.A }}'", "echo ''\"${A}\"''"),
        ("echo $'a${{ env.A }}b'", "echo $'a'\"${A}\"$'b'"),
        ("echo $$", "echo $"),
        ("echo $${{ run.args }}", "echo ${{ run.args }}"),
        ("echo $$$$${{ env.A }}", 'echo $$"${A}"'),
        ("echo $HOME ${HOME} $1 $", "echo $HOME ${HOME} $1 $"),
        ("echo ${ { run.args }}", "echo ${ { run.args }}"),
        ("no references", "no references"),
        ("${{ env.A }}${{ env.A }}", '"${A}""${A}"'),
        ('echo "$(cat ${{ env.A }})"', 'echo "$(cat "${A}")"'),
        ("echo `cat ${{ env.A }}`", 'echo `cat "${A}"`'),
        ("echo hi # ${{ env.A }}", "echo hi # ${A}"),
        (
            "cat <<EOF\n${{ env.A }} '${{ env.X }}'\nEOF\necho ${{ env.A }}",
            "cat <<EOF\n${A} '${X}'\nEOF\necho \"${A}\"",
        ),
        ("echo \\'${{ env.A }}", 'echo \\\'"${A}"'),
    ],
)
def test_references_are_spelled_for_where_they_stand(text: str, expected: str) -> None:
    assert interpolate_command(text, REFERENCES) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "echo ${{ run.argz }} ${{ env.FOO }} ${{ run.argz }}",
            "Unknown variable(s) ${{ run.argz }}, ${{ env.FOO }}; known: run.args, run.name, env.A, env.X",
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
        ("cat <<'EOF'\n${{ env.A }}\nEOF", "${{ env.A }} is in a quoted here-document"),
        ("echo \\${{ env.A }}", "${{ env.A }} follows a backslash"),
    ],
)
def test_interpolation_errors(text: str, message: str) -> None:
    with pytest.raises(InterpolationError) as caught:
        interpolate_command(text, REFERENCES)
    assert str(caught.value).startswith(message)


def test_text_no_shell_reads_gets_the_values_themselves() -> None:
    assert interpolate("/data/${{ dstack.job_num }}", {"dstack.job_num": "3"}) == "/data/3"
    assert interpolate("$${{ x.y }} $HOME", {}) == "${{ x.y }} $HOME"


def test_a_variable_the_shell_owns_cannot_be_referenced() -> None:
    with pytest.raises(InterpolationError) as caught:
        interpolate_command("cd ${{ env.PWD }}", run_references(env={"PWD": "/data"}))
    assert "the shell sets PWD itself" in str(caught.value)


# -- through a real shell --------------------------------------------------------------------------------


def _bash(command: str, env: dict[str, str], args: list[str]) -> str:
    """Run an interpolated command as the agent does: env in the environment, run args as "$@"."""
    result = subprocess.run(
        ["bash", "--noprofile", "--norc", "-c", command, "script.sh", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", **env},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def trap(tmp_path: Path) -> Path:
    """A file that must never come to exist: every hostile value tries to create it."""
    return tmp_path / f"pwned-{uuid.uuid4().hex[:8]}"


def _hostile(trap: Path) -> list[str]:
    return [
        f"$(touch {trap})",
        f"`touch {trap}`",
        f"'; touch {trap}; '",
        f'"; touch {trap}; "',
        f"\\'$(touch {trap})",
        f"a b\n$(touch {trap})",
        f"EOF\ntouch {trap}\nEOF",
        "*",
        "",
        "it's",
        "${{ run.name }}",
    ]


@pytest.mark.parametrize(
    "template",
    [
        "printf '<%s>\\n' {ref}",
        "printf '<%s>\\n' \"{ref}\"",
        "printf '<%s>\\n' '{ref}'",
        "printf '<%s>\\n' $'{ref}'",
        "printf '<%s>\\n' \"$(printf %s {ref})\"",
        "printf '<%s>\\n' \"x{ref}y\"",
        "cat <<EOF\n<{ref}>\nEOF",
        "cat <<-EOF\n\t<{ref}>\n\tEOF",
        "echo 'start'  # {ref}",
    ],
)
def test_an_env_value_is_never_shell_syntax_wherever_it_is_written(trap: Path, template: str) -> None:
    for value in _hostile(trap):
        configuration = parse(
            "type: task\ncommands:\n  - |-\n"
            + "".join(f"    {line}\n" for line in template.format(ref="${{ env.X }}").split("\n"))
        )
        commands, _ = interpolate_commands(configuration, env={"X": value})
        output = _bash(commands[0], {"X": value}, [])
        assert not trap.exists(), (template, value)
        if "#" in template:
            assert output == "start\n"
        elif template.startswith("printf '<%s>\\n' \"x"):
            assert output == f"<x{value}y>\n"
        else:
            assert output == f"<{value}>\n", (template, value, commands[0])


def test_run_args_are_separate_words_unquoted_and_one_in_double_quotes(trap: Path) -> None:
    hostile = _hostile(trap)
    configuration = parse(
        "type: task\ncommands:\n"
        "  - printf '<%s>\\n' ${{ run.args }}\n"
        '  - \'printf "[%s]\\n" "${{ run.args }}"\'\n'
        "  - echo --flag=${{ run.args }}\n"
    )
    commands, build = interpolate_commands(configuration, env={})
    assert build == []
    assert _bash(commands[0], {}, hostile) == "".join(f"<{arg}>\n" for arg in hostile)
    assert _bash(commands[1], {}, hostile) == f"[{' '.join(hostile)}]\n"
    assert _bash(commands[2], {}, ["a", "b c"]) == "--flag=a b c\n"
    assert _bash(commands[2], {}, []) == "--flag=\n"
    assert not trap.exists()


def test_commands_and_build_see_run_name_and_env() -> None:
    configuration = parse(
        "type: task\nbuild:\n  - echo ${{ env.MODE }}\ncommands:\n  - echo ${{ run.name }} $$HOME\n"
    )
    commands, build = interpolate_commands(configuration, env={"MODE": "fast"})
    assert commands == ['echo "${DSTACK_RUN_NAME}" $HOME']
    assert build == ['echo "${MODE}"']
    assert _bash(commands[0], {"DSTACK_RUN_NAME": "wet-mangust-7", "HOME": "/h"}, []) == "wet-mangust-7 /h\n"


def test_interpolation_error_names_the_command_position() -> None:
    configuration = parse("type: task\ncommands:\n  - echo ok\n  - echo ${{ env.TOKEN }}\n")
    with pytest.raises(InterpolationError) as caught:
        interpolate_commands(configuration, env={"A": "1"})
    assert str(caught.value) == (
        f"{FILENAME}:4:5: Unknown variable(s) ${{{{ env.TOKEN }}}}; known: run.args, run.name, env.A"
    )


def test_importing_interpolation_loads_neither_pydantic_nor_yaml() -> None:
    code = (
        "import sys\n"
        "import dstack.config.interpolation as interpolation\n"
        "refs = interpolation.run_references(env={})\n"
        "assert interpolation.interpolate_command('${{ run.name }}', refs) == '\"${DSTACK_RUN_NAME}\"'\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pydantic', 'pydantic_core', 'yaml')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"
