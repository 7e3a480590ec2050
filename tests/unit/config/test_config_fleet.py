"""`type: fleet` files: today's dstack shape, defaults per host, and one located sentence per mistake."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from dstack.config import ConfigError
from dstack.config.filetype import declared_type
from dstack.config.fleet import default_fleet_name, load_fleet_configuration, parse_fleet_configuration

FILE = "fleet.dstack.yml"
GOOD = """\
type: fleet
name: my-boxes
placement: cluster
ssh_config:
  user: root
  identity_file: ~/.ssh/id_ed25519
  proxy_jump:
    hostname: bastion.example
    user: jump
  hosts:
    - 10.250.1.2
    - hostname: 10.250.2.2
      port: 2222
      user: ubuntu
      identity_file: ~/.ssh/other_key
      internal_ip: 10.0.0.2
"""


def _error(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_fleet_configuration(textwrap.dedent(text), filename=FILE)
    return str(caught.value)


def test_each_host_gets_the_defaults_of_ssh_config() -> None:
    fleet = parse_fleet_configuration(GOOD, filename=FILE)
    assert (fleet.name, fleet.placement) == ("my-boxes", "cluster")
    first, second = fleet.hosts()
    assert (first.hostname, first.port, first.user, first.identity_file) == (
        "10.250.1.2", 22, "root", "~/.ssh/id_ed25519",
    )  # fmt: skip
    assert (second.address, second.user, second.identity_file, second.internal_ip) == (
        "10.250.2.2:2222", "ubuntu", "~/.ssh/other_key", "10.0.0.2",
    )  # fmt: skip
    assert first.proxy_jump is not None and first.proxy_jump.hostname == "bastion.example"
    assert (first.proxy_jump.user, first.proxy_jump.identity_file) == ("jump", "~/.ssh/id_ed25519")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "type: fleet\nssh_config:\n  hosts:\n    - -oProxyCommand=x\n",
            "4:7: Invalid hostname '-oProxyCommand=x'",
        ),
        ("type: fleet\nssh_config:\n  user: -x\n  hosts: [a]\n", "3:9: Invalid user '-x'"),
        ("type: fleet\nssh_config:\n  hosts:\n    - {hostname: a, port: 0}\n", "4:27: The port must be"),
        ("type: fleet\nssh_config:\n  hosts: [a, b, a]\n", "3:17: Host a is listed twice"),
        ("type: fleet\nssh_config:\n  hosts: []\n", "3:3: "),
        ("type: fleet\nssh_config:\n  hots: [a]\n", "3:3: Unknown key 'hots' in ssh_config"),
        ("type: fleet\nplacement: near\nssh_config:\n  hosts: [a]\n", "2:12: "),
        ("type: fleet\n", "1:1: Missing 'ssh_config'"),
        ("type: fleet\nname: My_Boxes\nssh_config:\n  hosts: [a]\n", "2:7: Invalid fleet name"),
        (
            "type: fleet\nssh_config:\n  hosts:\n    - {hostname: a, internal_ip: nope}\n",
            "internal_ip 'nope'",
        ),
    ],
)
def test_mistakes_are_one_located_sentence(text: str, expected: str) -> None:
    message = _error(text)
    assert expected in message and message.startswith(f"{FILE}:"), message
    assert "\n" not in message


def test_the_name_defaults_to_the_files(tmp_path: Path) -> None:
    path = tmp_path / "GPU boxes.dstack.yml"
    path.write_text("type: fleet\nssh_config:\n  hosts: [10.250.1.2]\n")
    assert load_fleet_configuration(path).name == "gpu-boxes"
    assert default_fleet_name(Path("2024.dstack.yaml")) == "fleet-2024"
    with pytest.raises(ConfigError, match="must be named"):
        load_fleet_configuration(tmp_path / "fleet.yml")


def test_the_kind_of_a_file_is_read_from_its_type_line_alone() -> None:
    assert declared_type(GOOD) == "fleet"
    assert declared_type("# a task\ntype: 'task'  # yes\ncommands: [x]\n") == "task"
    assert declared_type("nested:\n  type: fleet\n") is None
    assert declared_type("type: {a: 1}\n") is None
