"""How the venvs' `pip` turns a pip command into uv's, and when it leaves it to pip itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from dstack.agent.environments.pip_shim import config_files, plan


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["install", "numpy"], ["install", "numpy"]),
        (
            ["install", "-q", "-r", "req.txt", "-U"],
            ["install", "--quiet", "--requirement", "req.txt", "--upgrade"],
        ),
        (["install", "-rreq.txt"], ["install", "--requirement", "req.txt"]),
        (["install", "--index-url=http://i/simple", "x"], ["install", "--index-url", "http://i/simple", "x"]),
        (
            ["install", "--pre", "--force-reinstall", "x"],
            ["install", "--prerelease=allow", "--reinstall", "x"],
        ),
        (["install", "--disable-pip-version-check", "-e", "."], ["install", "--editable", "."]),
        (["uninstall", "-y", "x"], ["uninstall", "x"]),
    ],
)
def test_commands_uv_can_run_exactly_go_to_uv(argv: list[str], expected: list[str]) -> None:
    assert plan(argv, {}, []) == (expected, {})


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--version"],
        ["list"],
        ["freeze"],
        ["download", "x"],
        ["install", "--user", "x"],
        ["install", "--upgrade-strategy", "eager", "x"],
        ["install", "-qq", "x"],
        ["install", "-r"],
        ["uninstall", "x"],  # pip would ask first
    ],
)
def test_anything_else_is_left_to_pip(argv: list[str]) -> None:
    assert plan(argv, {}, []) is None


def test_pip_settings_are_carried_over_or_leave_it_to_pip(tmp_path: Path) -> None:
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\ncert = /ca.pem\nconstraint = /c.txt\n")
    env = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "/w1 /w2", "PIP_DEFAULT_TIMEOUT": "60"}
    args, extra = plan(["install", "x"], env, [conf]) or ([], {})
    assert args[0] == "install" and args[-1] == "x"
    assert "--no-index" in args and "--constraint" in args and args.count("--find-links") == 2
    assert extra == {"SSL_CERT_FILE": "/ca.pem", "UV_HTTP_TIMEOUT": "60"}
    assert plan(["install", "x"], {"PIP_SOMETHING_NEW": "1"}, []) is None
    conf.write_text("[global]\nunknown-setting = 1\n")
    assert plan(["install", "x"], {}, [conf]) is None
    assert plan(["install", "x"], {"DSTACK_PIP": "pip"}, []) is None


def test_pip_reads_its_config_files_where_pip_does(tmp_path: Path) -> None:
    (tmp_path / "home" / ".config" / "pip").mkdir(parents=True)
    user = tmp_path / "home" / ".config" / "pip" / "pip.conf"
    user.write_text("[global]\n")
    found = config_files(
        {"HOME": str(tmp_path / "home"), "XDG_CONFIG_DIRS": str(tmp_path / "none")}, "/nowhere"
    )
    assert user in found
    named = tmp_path / "named.conf"
    named.write_text("[global]\n")
    assert config_files({"PIP_CONFIG_FILE": str(named)}, "/nowhere") == [named]
