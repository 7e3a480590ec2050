"""The task's env, run names, the JSON schema and the package's public names."""

from __future__ import annotations

import json
import re

import pytest
from config_testkit import FILENAME, parse, task

import dstack.config
from dstack.config import (
    ConfigError,
    TaskConfiguration,
    configuration_json_schema,
    random_run_name,
    resolve_env,
    validate_run_name,
)


def test_env_pass_through_takes_the_cli_environment() -> None:
    configuration = parse(task("env:\n  - HF_TOKEN\n  - MODE=fast\n"))
    assert resolve_env(configuration, {"HF_TOKEN": "hf_123", "OTHER": "x"}, []) == {
        "HF_TOKEN": "hf_123",
        "MODE": "fast",
    }


def test_missing_pass_through_names_the_key_and_its_line() -> None:
    configuration = parse(task("env:\n  - MODE=fast\n  - HF_TOKEN\n"))
    with pytest.raises(ConfigError) as caught:
        resolve_env(configuration, {}, [])
    assert str(caught.value) == (
        f"{FILENAME}:4:5: Environment variable HF_TOKEN is not set; "
        "export it or give a value in env (HF_TOKEN=...)"
    )


def test_mapping_null_is_a_pass_through() -> None:
    configuration = parse(task("env:\n  HF_TOKEN:\n"))
    assert resolve_env(configuration, {"HF_TOKEN": "t"}, []) == {"HF_TOKEN": "t"}


def test_cli_env_overrides_the_configuration() -> None:
    configuration = parse(task("env:\n  - MODE=fast\n  - KEEP=1\n"))
    env = resolve_env(configuration, {"FROM_SHELL": "s"}, ["MODE=slow", "NEW=a=b", "FROM_SHELL", "EMPTY="])
    assert env == {"MODE": "slow", "KEEP": "1", "NEW": "a=b", "FROM_SHELL": "s", "EMPTY": ""}


def test_cli_env_pass_through_does_not_need_the_configuration_value() -> None:
    configuration = parse(task("env:\n  - HF_TOKEN\n"))
    assert resolve_env(configuration, {}, ["HF_TOKEN=given"]) == {"HF_TOKEN": "given"}


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            "1A=b",
            "Invalid -e value '1A=b'; use -e KEY=VALUE or -e KEY, where names use letters, digits and '_'",
        ),
        ("=b", "Invalid -e value '=b'; use -e KEY=VALUE or -e KEY"),
        ("A B=c", "Invalid -e value 'A B=c'"),
        (
            "MISSING",
            "Environment variable MISSING given with -e is not set; export it or use -e MISSING=VALUE",
        ),
    ],
)
def test_bad_cli_env(entry: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve_env(parse(task()), {}, [entry])
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize("name", ["train-llama", "ab", "a1", "wet-mangust-7", "a" + "b" * 40])
def test_valid_run_names(name: str) -> None:
    assert validate_run_name(name) == name


@pytest.mark.parametrize("name", ["a", "Train", "1abc", "-abc", "ab_c", "a" + "b" * 41, "", "ab c"])
def test_invalid_run_names(name: str) -> None:
    with pytest.raises(ConfigError) as caught:
        validate_run_name(name)
    assert str(caught.value).startswith(f"Invalid run name {name!r}; use 2 to 41 lowercase letters")


def test_random_run_names_are_valid_and_readable() -> None:
    names = {random_run_name() for _ in range(200)}
    for name in names:
        assert re.fullmatch(r"[a-z]+-[a-z]+-([1-9]|[1-9][0-9])", name), name
        assert validate_run_name(name) == name
    assert len(names) > 100  # random enough that two runs rarely collide


def test_json_schema_describes_the_input_forms() -> None:
    whole = configuration_json_schema()
    json.dumps(whole)
    # One of the registered types, chosen by `type`.
    by_type = {option["properties"]["type"]["const"]: option for option in whole["oneOf"]}
    assert set(by_type) == {"task", "fleet"}
    assert set(by_type["fleet"]["properties"]) == {"type", "name", "placement", "ssh_config"}
    schema = by_type["task"]
    properties = schema["properties"]
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["type"]
    # Every key a task file may have, and nothing else: the schema is made from the same models.
    assert set(properties) == set(TaskConfiguration.allowed_keys())
    assert {"type", "commands", "volumes", "files", "repos", "schedule", "priority", "groups"} <= set(
        properties
    )
    assert {"type": "number"} in properties["python"]["anyOf"]
    assert {option["type"] for option in properties["env"]["anyOf"]} == {"array", "object"}
    port_forms = whole["$defs"]["PortMapping"]["anyOf"]
    assert [form["type"] for form in port_forms] == ["integer", "string", "object"]
    assert re.fullmatch(port_forms[1]["pattern"], "3000:7860") and re.fullmatch(
        port_forms[1]["pattern"], "*:80"
    )
    assert {"type": "boolean", "description": "true: retry on every event for 1h"} in properties["retry"][
        "anyOf"
    ]
    assert whole["$defs"]["SpotPolicy"]["enum"] == ["spot", "on-demand", "auto"]


def test_public_names_are_all_importable_and_listed() -> None:
    assert sorted(dstack.config.__all__) == sorted(dstack.config._MODULE_OF)
    for name in dstack.config.__all__:
        assert getattr(dstack.config, name) is not None
    with pytest.raises(AttributeError):
        dstack.config.no_such_name  # noqa: B018
