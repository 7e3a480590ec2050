"""Loading `*.dstack.yml`: the tasks guide's examples, YAML rules, positions and file handling."""

from __future__ import annotations

from pathlib import Path

import pytest
from config_testkit import FILENAME, error_of, parse, task

from dstack.config import ConfigError, PortMapping, load_configuration, parse_configuration

# The configuration examples of reference/tasks-guide.md, verbatim (nested ones de-indented).
GUIDE_TRAIN = """\
type: task

python: "3.11" # (Optional) If not specified, your local version is used.

commands:
  - pip install -r requirements.txt
  - python train.py
"""
GUIDE_SERVE = """\
type: task

ports:
  - 7860

python: "3.11" # (Optional) If not specified, your local version is used.

commands:
  - pip install -r requirements.txt
  - gradio app.py
"""
GUIDE_SERVE_MAPPED = """\
type: task

ports:
  - 3000:7860

commands:
  - pip install -r requirements.txt
  - gradio app.py
"""
GUIDE_IMAGE = """\
type: task

image: nvcr.io/nvidia/pytorch:22.12-py3

commands:
  - pip install -r requirements.txt 
  - python train.py
"""  # noqa: W291 - the guide has that trailing space
GUIDE_BUILD = """\
type: task

python: "3.11" # (Optional) If not specified, your local version is used.

build:
  - pip install -r requirements.txt

commands:
  - python train.py
"""
GUIDE_ARGS = """\
type: task

commands:
  - python train.py ${{ run.args }}
"""


def test_guide_train_example() -> None:
    configuration = parse(GUIDE_TRAIN)
    assert configuration.type == "task"
    assert configuration.python == "3.11"
    assert configuration.commands == ["pip install -r requirements.txt", "python train.py"]
    assert configuration.image is None and configuration.ports == [] and configuration.build == []


def test_guide_serve_example_forwards_port_7860() -> None:
    configuration = parse(GUIDE_SERVE)
    assert configuration.ports == [PortMapping(local_port=7860, container_port=7860)]
    assert configuration.commands[-1] == "gradio app.py"


def test_guide_unquoted_port_mapping_is_not_a_base_60_integer() -> None:
    configuration = parse(GUIDE_SERVE_MAPPED)
    assert configuration.ports == [PortMapping(local_port=3000, container_port=7860)]


def test_guide_image_example() -> None:
    configuration = parse(GUIDE_IMAGE)
    assert configuration.image == "nvcr.io/nvidia/pytorch:22.12-py3"
    assert configuration.python is None
    assert configuration.commands == ["pip install -r requirements.txt", "python train.py"]


def test_guide_build_example() -> None:
    configuration = parse(GUIDE_BUILD)
    assert configuration.build == ["pip install -r requirements.txt"]
    assert configuration.commands == ["python train.py"]


def test_guide_args_example_keeps_the_reference_for_later() -> None:
    assert parse(GUIDE_ARGS).commands == ["python train.py ${{ run.args }}"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("on", "on"),
        ("off", "off"),
        ("yes", "yes"),
        ("no", "no"),
        ("3000:7860", "3000:7860"),
        ("2023-01-01", "2023-01-01"),
        ("'3.10'", "3.10"),
        ("007", "007"),
    ],
)
def test_yaml_1_1_surprises_stay_strings(value: str, expected: str) -> None:
    configuration = parse(task(f"env:\n  X: {value}\n"))
    assert configuration.env == {"X": expected}


def test_yaml_scalars_follow_yaml_1_2_core_rules() -> None:
    configuration = parse(task("env:\n  A: true\n  B: 12\n  C: 1.50\n  D: null\n"))
    assert configuration.env == {"A": "true", "B": "12", "C": "1.50", "D": None}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("type: task\ncommands: [a\n", f"{FILENAME}:3:1: Invalid YAML: did not find expected ',' or ']'"),
        (
            "type: task\ncommands:\n  - a\n  b: c\n",
            f"{FILENAME}:4:3: Invalid YAML: did not find expected '-' indicator",
        ),
        ("type: task\n\tcommands: [a]\n", f"{FILENAME}:2:1: Invalid YAML: found"),
        ("type: task\n---\ntype: task\n", f"{FILENAME}:2:1: Invalid YAML: but found another document"),
    ],
)
def test_yaml_syntax_errors_name_line_and_column(text: str, expected: str) -> None:
    assert error_of(text).startswith(expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", f"{FILENAME}: The configuration is empty; it needs at least 'type: task' and commands"),
        (
            "# only a comment\n",
            f"{FILENAME}: The configuration is empty; it needs at least 'type: task' and commands",
        ),
        (
            "- type: task\n",
            f"{FILENAME}:1:1: The top level of a configuration must be a mapping of keys such as "
            "type, commands, got a list",
        ),
        (
            "task\n",
            f"{FILENAME}:1:1: The top level of a configuration must be a mapping of keys such as "
            "type, commands, got a string",
        ),
    ],
)
def test_empty_or_non_mapping_documents(text: str, expected: str) -> None:
    assert error_of(text) == expected


def test_duplicate_key_points_at_the_second_one() -> None:
    assert error_of("type: task\ncommands: [a]\nname: abc\ncommands: [b]\n") == (
        f"{FILENAME}:4:1: Duplicate key 'commands' (first given at line 2)"
    )


def test_aliases_are_expanded() -> None:
    configuration = parse("type: task\nbuild: &setup [pip install -r requirements.txt]\ncommands: *setup\n")
    assert configuration.commands == ["pip install -r requirements.txt"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "type: task\ncommands: [a]\nenv: &e {A: 1}\nports:\n  <<: *e\n",
            f"{FILENAME}:5:3: YAML merge keys ('<<') are not supported; write the keys out",
        ),
        (
            "type: task\ncommands: &c [a, *c]\n",
            f"{FILENAME}:2:11: A YAML alias refers to the block that contains it",
        ),
        (
            "type: task\ncommands: !!python/object:os.system [a]\n",
            f"{FILENAME}:2:11: Unsupported YAML tag '!!python/object:os.system'; remove it",
        ),
        (
            "type: task\ncommands: [!custom a]\n",
            f"{FILENAME}:2:12: Unsupported YAML tag '!custom'; remove it",
        ),
    ],
)
def test_unsafe_or_unsupported_yaml_features_are_refused(text: str, expected: str) -> None:
    assert error_of(text) == expected


def test_billion_laughs_is_refused_not_expanded() -> None:
    lines = ["type: task", "commands: [a]", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    assert "The YAML is too large after expanding its aliases" in error_of("\n".join(lines) + "\n")


def test_deeply_nested_yaml_is_an_error_not_a_crash() -> None:
    message = error_of("type: task\ncommands: " + "[" * 3000 + "]" * 3000 + "\n")
    assert message.startswith(f"{FILENAME}")


def test_load_configuration_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "serve.dstack.yml"
    path.write_text(GUIDE_SERVE)
    assert load_configuration(path).ports[0].container_port == 7860


def test_load_configuration_accepts_dstack_yaml_and_utf8_bom(tmp_path: Path) -> None:
    path = tmp_path / ".dstack.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + GUIDE_TRAIN.encode())
    assert load_configuration(path).python == "3.11"


def test_errors_use_the_display_name(tmp_path: Path) -> None:
    path = tmp_path / "train.dstack.yml"
    path.write_text("type: task\ncomands: [a]\n")
    with pytest.raises(ConfigError) as caught:
        load_configuration(path, display_name="train.dstack.yml")
    error = caught.value
    assert (error.file, error.line, error.column) == ("train.dstack.yml", 2, 1)
    assert error.message.startswith(
        "Unknown key 'comands' in task (did you mean commands?); allowed keys: availability_zones,"
    )


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("missing.dstack.yml", None, "Configuration file {path} does not exist"),
        (
            "train.yml",
            "type: task\n",
            "Configuration file {path} must be named *.dstack.yml or *.dstack.yaml "
            "(e.g. train.dstack.yml); rename it",
        ),
        (
            "bad.dstack.yml",
            b"type: task\ncommands: [\xff]\n",
            "Configuration file {path} cannot be read: it is not UTF-8 text",
        ),
    ],
)
def test_file_problems(tmp_path: Path, name: str, content: bytes | str | None, expected: str) -> None:
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        load_configuration(path)
    assert str(caught.value) == expected.format(path=path)


def test_a_folder_is_not_a_configuration(tmp_path: Path) -> None:
    folder = tmp_path / "x.dstack.yml"
    folder.mkdir()
    with pytest.raises(ConfigError) as caught:
        load_configuration(folder)
    assert str(caught.value) == f"Configuration file {folder} cannot be read: it is a folder, not a file"


def test_config_error_formats() -> None:
    assert str(ConfigError("Broken", file="a.dstack.yml", line=4, column=3)) == "a.dstack.yml:4:3: Broken"
    assert str(ConfigError("Broken", file="a.dstack.yml")) == "a.dstack.yml: Broken"
    assert str(ConfigError("Broken")) == "Broken"


# Odd values for every key: whatever a user writes, the answer is a ConfigError or a configuration.
_ODD_VALUES = [
    "",
    "null",
    "true",
    "0",
    "-1",
    "1.5",
    "[]",
    "{}",
    "[1, [2]]",
    "{a: {b: c}}",
    "'..'",
    "x:y:z",
    ".nan",
]
_KEYS = [
    "name", "python", "image", "env", "build", "commands", "ports", "working_dir", "resources",
    "backends", "regions", "spot_policy", "max_price", "max_duration", "retry", "retry_policy",
]  # fmt: skip


@pytest.mark.parametrize("key", _KEYS)
def test_no_value_produces_a_traceback(key: str) -> None:
    for value in _ODD_VALUES:
        for text in (task(f"{key}: {value}\n"), task(f"resources:\n  gpu: {value}\n  cpu: {value}\n")):
            try:
                parse_configuration(text, filename=FILENAME)
            except ConfigError as error:
                assert str(error).startswith(FILENAME)
                assert "\n" not in str(error) and error.message[0].isupper(), str(error)
