"""The model of a `*.dstack.yml` file with `type: task`."""

from __future__ import annotations

import posixpath
import re
import unicodedata
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BeforeValidator,
    Field,
    PrivateAttr,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from dstack.config.base import InvalidValue, describe_type, located_error
from dstack.config.env import normalise_env
from dstack.config.errors import ConfigError, Location
from dstack.config.names import validate_run_name
from dstack.config.ports import PortMapping, duplicate_container_port
from dstack.config.profiles import ProfileParams
from dstack.config.yaml_source import SourceMap

# Characters that reorder how text is shown: a folder name with them reads as something it is not.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
PYTHON_VERSIONS = ("3.9", "3.10", "3.11", "3.12", "3.13", "3.14")
_WINDOWS_DRIVE = re.compile(r"[A-Za-z]:[\\/]")
# What an agent accepts as an image: [registry[:port]/]name[:tag][@digest], no spaces or shell syntax.
_IMAGE_REFERENCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}")
# Linux limits (NAME_MAX, PATH_MAX): beyond them the folder cannot exist on the host.
_NAME_MAX_BYTES = 255
_PATH_MAX_BYTES = 4095
_ENV_SCHEMA = {
    "anyOf": [
        {"type": "array", "items": {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_]*(=.*)?$"}},
        {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean", "null"]}},
    ]
}


def _python_version(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, float):
        # YAML reads `python: 3.10` as the float 3.1; the loader keeps the text as written.
        text = getattr(value, "yaml_text", None) or repr(value)
    elif isinstance(value, (int, str)) and not isinstance(value, bool):
        text = str(value).strip()
    else:
        text = describe_type(value)
    if text not in PYTHON_VERSIONS:
        raise InvalidValue(
            "python version", text, f'use one of {", ".join(PYTHON_VERSIONS)}, e.g. python: "3.11"'
        )
    return text


PythonVersion = Annotated[
    Union[str, None],
    BeforeValidator(_python_version),
    WithJsonSchema({"anyOf": [{"type": "string", "enum": list(PYTHON_VERSIONS)}, {"type": "number"}]}),
]
EnvSpec = Annotated[dict[str, Union[str, None]], WithJsonSchema(_ENV_SCHEMA)]


class TaskConfiguration(ProfileParams):
    """A task: commands to run in order, with their environment, ports and resources."""

    block_name = "task"

    type: Literal["task"]
    name: str | None = None
    python: PythonVersion = None
    image: str | None = None
    env: EnvSpec = Field(default_factory=dict)
    build: list[str] = Field(default_factory=list)
    commands: list[str] = Field(default_factory=list)
    ports: list[PortMapping] = Field(default_factory=list)
    working_dir: str | None = None

    _source: SourceMap | None = PrivateAttr(default=None)

    def location_of(self, *path: str | int) -> Location | None:
        """Where `path` (e.g. "commands", 2) is in the file this configuration was loaded from."""
        if self._source is None:
            return None
        return self._source.locate(path)

    def attach_source(self, source: SourceMap) -> None:
        self._source = source

    def __eq__(self, other: object) -> bool:
        # Where the configuration was read from is not part of what it says.
        if not isinstance(other, TaskConfiguration):
            return NotImplemented
        return type(self) is type(other) and self.__dict__ == other.__dict__

    @model_validator(mode="before")
    @classmethod
    def _check_type_and_combinations(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        cls.check_keys(data)  # a misspelt key explains a "missing" one better than the missing message
        kind = data.get("type")
        if kind is None:
            raise located_error("Missing 'type'; add 'type: task' at the top of the file")
        if not isinstance(kind, str):
            raise located_error(f"Invalid configuration type ({describe_type(kind)}); use type: task", "type")
        if kind != "task":
            raise located_error(f"Configuration type '{kind}' is not supported yet; use type: task", "type")
        given = [key for key in data if key in ("image", "python") and data[key] is not None]
        if len(given) == 2:
            raise located_error(
                "The keys image and python are mutually exclusive; "
                "remove python to use the image's Python, or image to use the default environment",
                given[1],
                on_key=True,
            )
        commands = data.get("commands")
        if data.get("image") is None:
            if commands is None:
                raise located_error("Missing 'commands'; add a list of commands to run (or set image)")
            if commands == []:
                raise located_error(
                    "The commands list is empty; add at least one command to run (or set image)", "commands"
                )
        return data

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return validate_run_name(value)
        except ConfigError as error:
            raise ValueError(error.message) from None

    @field_validator("image")
    @classmethod
    def _image_reference(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("The image name is blank; name a Docker image such as ubuntu:22.04")
        if value is not None and not _IMAGE_REFERENCE.fullmatch(value):
            raise InvalidValue(
                "image",
                value,
                "use a Docker image reference such as ubuntu:22.04 or nvcr.io/nvidia/pytorch:22.12-py3",
            )
        return value

    @field_validator("env", mode="before")
    @classmethod
    def _normalise_env(cls, value: Any) -> Any:
        return normalise_env(value)

    @field_validator("build", "commands", mode="before")
    @classmethod
    def _commands_are_strings(cls, value: Any, info: ValidationInfo) -> Any:
        field = info.field_name
        if value is None:
            return []
        if isinstance(value, str):
            raise ValueError(
                f"Expected a list of strings for '{field}', got a string; "
                "use a YAML list with one '- command' per line"
            )
        if not isinstance(value, list):
            return value
        for index, command in enumerate(value):
            if isinstance(command, dict):
                raise located_error(
                    f"Command {index + 1} in '{field}' was read as a mapping because it contains ': '; "
                    'quote the whole command, e.g. - "echo a: b"',
                    index,
                )
            if not isinstance(command, str):
                raise located_error(
                    f"Command {index + 1} in '{field}' is {describe_type(command)}, not a string; quote it",
                    index,
                )
            if not command.strip():
                raise located_error(f"Command {index + 1} in '{field}' is empty; remove it", index)
        return value

    @field_validator("ports", mode="before")
    @classmethod
    def _null_ports(cls, value: Any) -> Any:
        return [] if value is None else value

    @field_validator("ports")
    @classmethod
    def _unique_container_ports(cls, value: list[PortMapping]) -> list[PortMapping]:
        duplicate = duplicate_container_port(value)
        if duplicate is not None:
            index, mapping = duplicate
            raise located_error(
                f"Port {mapping.container_port} is mapped twice in ports; map each task port once", index
            )
        return value

    @field_validator("working_dir")
    @classmethod
    def _relative_working_dir(cls, value: str | None) -> str | None:
        if value is None:
            return None
        text = value.strip()
        if not text:
            raise InvalidValue("working_dir", value, "it is blank; give a folder relative to the code root")
        if any(unicodedata.category(char) == "Cc" or char in _BIDI_CONTROLS for char in text):
            raise InvalidValue("working_dir", value, "it has a line break or another control character")
        if len(text.encode()) > _PATH_MAX_BYTES or any(
            len(part.encode()) > _NAME_MAX_BYTES for part in re.split(r"[\\/]", text)
        ):
            raise InvalidValue(
                "working_dir", value, "File name too long: a folder name is at most 255 bytes, a path 4095"
            )
        if text.startswith(("/", "\\")) or _WINDOWS_DRIVE.match(text):
            raise InvalidValue("working_dir", value, "it must be relative to the code root, e.g. src")
        normalised = posixpath.normpath(text.replace("\\", "/"))
        if normalised == ".." or normalised.startswith("../"):
            raise InvalidValue("working_dir", value, "it must stay inside the code root")
        return normalised
