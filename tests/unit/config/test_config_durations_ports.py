"""Durations, port mappings and merging `-p` flags into the configuration's ports."""

from __future__ import annotations

import pytest

from dstack.config import ConfigError, PortMapping, merge_ports, parse_duration, parse_port_mapping
from dstack.config.durations import format_duration


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (90, 90),
        ("90", 90),
        (1.9, 1),
        ("2 h", 7200),
        ("30m", 1800),
        ("72h", 259200),
        ("1d", 86400),
        ("2w", 1209600),
        ("45s", 45),
        ("1h30m", 5400),
        ("1h 30m 15s", 5415),
        ("3H", 10800),
        (0, 0),
    ],
)
def test_durations(value: str | int | float, seconds: int) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "2y",
            "Invalid duration '2y': use seconds or a number with a unit s, m, h, d or w, "
            "e.g. 90, 30m, 72h or 1h30m",
        ),
        ("h2", "Invalid duration 'h2': use seconds or a number with a unit"),
        ("", "Invalid duration '': use seconds or a number with a unit"),
        ("1.5h", "Invalid duration '1.5h': use seconds or a number with a unit"),
        (-1, "Invalid duration -1: a duration cannot be negative"),
        ("-5m", "Invalid duration '-5m': a duration cannot be negative"),
        (-0.5, "Invalid duration -0.5: a duration cannot be negative"),
        (True, "Invalid duration true: use seconds"),
    ],
)
def test_bad_durations(value: str | int | float, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_duration(value)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0s"), (45, "45s"), (5400, "1h30m"), (259200, "3d"), (90061, "1d1h1m1s")]
)
def test_format_duration_round_trips(seconds: int, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("value", "local", "container"),
    [
        (8000, 8000, 8000),
        ("8000", 8000, 8000),
        ("3000:8000", 3000, 8000),
        ("*:8000", None, 8000),
        (" 80 ", 80, 80),
    ],
)
def test_port_mappings(value: str | int, local: int | None, container: int) -> None:
    assert parse_port_mapping(value) == PortMapping(local_port=local, container_port=container)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("a:80", "Invalid port mapping 'a:80': use N, L:N or *:N with ports from 1 to 65535"),
        ("0", "Invalid port mapping '0': port 0 is out of range"),
        ("70000:80", "Invalid port mapping '70000:80': port 70000 is out of range"),
        ("80:80:80", "Invalid port mapping '80:80:80': use N, L:N or *:N"),
        ("", "Invalid port mapping '': use N, L:N or *:N"),
    ],
)
def test_bad_port_mappings(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_port_mapping(value)
    assert str(caught.value).startswith(message)


def _ports(*values: str | int) -> list[PortMapping]:
    return [parse_port_mapping(value) for value in values]


def test_cli_mapping_replaces_the_config_mapping_of_its_container_port() -> None:
    merged = merge_ports(_ports(7860, 8000), ["3000:7860", "9000"])
    assert merged == _ports("3000:7860", 8000, 9000)


def test_cli_any_port_gives_no_local_port() -> None:
    assert merge_ports([], ["*:8000"]) == [PortMapping(local_port=None, container_port=8000)]


@pytest.mark.parametrize(
    ("config", "cli", "message"),
    [
        ([], ["8000:80", "8001:80"], "Port 80 is mapped twice in --port; map each task port once"),
        (
            _ports("3000"),
            ["3000:4000"],
            "Local port 3000 is used by two mappings (3000:3000 and 3000:4000); pick another local port with "
            "-p LOCAL:PORT",
        ),
        (_ports(80, "8080:80"), [], "Port 80 is mapped twice in the configuration; map each task port once"),
        ([], ["x"], "Invalid --port value 'x': use N, L:N or *:N with ports from 1 to 65535"),
    ],
)
def test_port_merge_conflicts(config: list[PortMapping], cli: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        merge_ports(config, cli)
    assert str(caught.value).startswith(message)


def test_two_any_ports_do_not_conflict() -> None:
    assert len(merge_ports(_ports("*:80"), ["*:81"])) == 2
