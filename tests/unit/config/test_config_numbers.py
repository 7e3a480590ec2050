"""Numbers users write (issue 13, items 10-12 and 14): ASCII digits only, bounded, never zero CPUs or
memory, and never echoed in full."""

# ruff: noqa: RUF001 - digits and letters of other scripts are what these tests are about
from __future__ import annotations

import pytest
from config_testkit import FILENAME, error_of, parse, task

from dstack.config import ConfigError, parse_overrides
from dstack.core.limits import JOB_SPEC_LIMIT_BYTES

HUGE = "9" * 5000


@pytest.mark.parametrize(
    "line",
    [
        f"max_price: {HUGE}",
        f"max_duration: {HUGE}",
        f"python: {HUGE}",
        f"resources:\n  cpu: {HUGE}",
        f"resources:\n  memory: {HUGE}",
        f"resources:\n  gpu: {HUGE}",
        f"ports:\n  - {HUGE}",
        f"resources:\n  cpu:\n    min: {'9' * 4000}",  # readable by Python, but no count
    ],
)
def test_integers_too_long_for_python_are_one_located_sentence(line: str) -> None:
    message = error_of(task(line + "\n"))
    assert message.startswith(f"{FILENAME}:"), message
    assert len(message) < 400 and "\n" not in message, message


@pytest.mark.parametrize(
    ("line", "what"),
    [
        ('ports:\n  - "٨٠"', "port mapping"),
        ('ports:\n  - "８０"', "port mapping"),
        ('ports:\n  - "٨٠:٨٠"', "port mapping"),
        ("resources:\n  cpu: ２", "CPU spec"),
        ('resources:\n  cpu: "²"', "CPU spec"),
        ("max_duration: １h", "duration"),
        ('resources:\n  memory: "１６GB"', "memory"),
        ('resources:\n  gpu: "A100:２"', "GPU spec"),
        ('resources:\n  gpu: "Ａ100"', "GPU name"),
    ],
)
def test_digits_of_other_scripts_are_not_numbers(line: str, what: str) -> None:
    assert f"Invalid {what}" in error_of(task(line + "\n"))


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("resources:\n  cpu: 0", "a task needs at least one CPU"),
        ('resources:\n  cpu: "0..0"', "a task needs at least one CPU"),
        ("resources:\n  memory: 0", "a task needs some memory"),
        ("resources:\n  memory: 0GB", "a task needs some memory"),
    ],
)
def test_zero_cpus_or_memory_are_refused(line: str, expected: str) -> None:
    assert expected in error_of(task(line + "\n"))


def test_zero_cpus_or_memory_on_the_command_line_are_refused() -> None:
    for flags, expected in (({"cpu": "0"}, "--cpu"), ({"memory": "0"}, "--memory")):
        with pytest.raises(ConfigError) as caught:
            parse_overrides(**flags)  # type: ignore[arg-type]
        assert str(caught.value).startswith(f"Invalid {expected} value '0'"), caught.value


def test_a_space_inside_a_number_is_no_digit_of_it() -> None:
    assert "a number has a space" in error_of(task('resources:\n  cpu: "1\\n2"\n'))
    assert "a number has a space" in error_of(task('resources:\n  memory: "1 6GB"\n'))


def test_sizes_with_a_space_before_the_unit_still_work() -> None:
    resources = parse(task('resources:\n  memory: "16 GB.."\n')).resources
    assert resources is not None and str(resources.memory) == "16GB.."


def test_errors_cut_what_they_quote() -> None:
    message = error_of(task("name: " + "a" * 10_000 + "\n"))
    assert len(message) < 300 and "..." in message
    with pytest.raises(ConfigError) as caught:
        parse_overrides(gpu=HUGE)
    assert len(str(caught.value)) < 300


def test_the_cli_and_the_agent_agree_on_the_job_spec_limit() -> None:
    from dstack.agent.httpserver import MAX_JSON_BYTES

    assert JOB_SPEC_LIMIT_BYTES == MAX_JSON_BYTES
