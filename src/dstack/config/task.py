"""The model of a `*.dstack.yml` file with `type: task`: the tasks guide's fields and today's dstack's.

Which fields a backend here cannot honour, and what the plan then says, is in
`dstack.server.services.spec_notes`; this module only says what a file may contain.
"""

from __future__ import annotations

import posixpath
import re
import shlex
import unicodedata
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BeforeValidator,
    Field,
    PrivateAttr,
    StrictBool,
    StrictInt,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from dstack.config.base import ConfigModel, InvalidValue, check_command_list, describe_type, located_error
from dstack.config.env import normalise_env
from dstack.config.errors import ConfigError, InterpolationError, Location
from dstack.config.interpolation import interpolate
from dstack.config.kinds import unsupported_message
from dstack.config.mounts import FileMapping, InstanceMount, RepoList, is_outside
from dstack.config.names import validate_run_name
from dstack.config.nodes import (
    DEFAULT_GROUP_NAME,
    PER_GROUP_KEYS,
    NodeGroup,
    NodeGroupPlan,
    duplicate_name,
    name_groups,
)
from dstack.config.ports import PortMapping, duplicate_container_port
from dstack.config.profiles import ProfileParams
from dstack.config.yaml_source import SourceMap

# Characters that reorder how text is shown: a folder name with them reads as something it is not.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
PYTHON_VERSIONS = ("3.9", "3.10", "3.11", "3.12", "3.13", "3.14")
PRIORITY_MIN, PRIORITY_MAX = 0, 100
_WINDOWS_DRIVE = re.compile(r"[A-Za-z]:[\\/]")
# What an agent accepts as an image: [registry[:port]/]name[:tag][@digest], no spaces or shell syntax.
_IMAGE_REFERENCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}")
# Linux limits (NAME_MAX, PATH_MAX): beyond them the folder cannot exist on the host.
_NAME_MAX_BYTES = 255
_PATH_MAX_BYTES = 4095
_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]*)?")
_ENV_SCHEMA = {
    "anyOf": [
        {"type": "array", "items": {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_]*(=.*)?$"}},
        {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean", "null"]}},
    ]
}
# What registry_auth may reference: the task's env (resolved by the CLI) and the project's secrets.
_AUTH_NAMESPACES = ("env", "secrets")


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


class _References(Mapping[str, str]):
    """Accepts `${{ env.X }}` and `${{ secrets.X }}` (resolved later); any other name is unknown."""

    def __getitem__(self, name: str) -> str:
        if name.partition(".")[0] in _AUTH_NAMESPACES:
            return ""
        raise KeyError(name)

    def __iter__(self) -> Any:
        return iter(("env.NAME", "secrets.NAME"))

    def __len__(self) -> int:
        return 2


class RegistryAuth(ConfigModel):
    """Credentials for pulling a private image; may use `${{ env.X }}` and `${{ secrets.X }}`."""

    block_name = "registry_auth"

    username: str | None = None
    password: str

    @field_validator("username", "password")
    @classmethod
    def _references(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        try:
            interpolate(value, _References())
        except InterpolationError as error:
            reason = error.message[:1].lower() + error.message[1:]
            raise InvalidValue(f"registry_auth.{info.field_name}", value, reason) from None
        return value


class TaskConfiguration(ProfileParams):
    """A task: commands to run in order, with their environment, ports and resources."""

    block_name = "task"

    type: Literal["task"]
    name: str | None = None
    python: PythonVersion = None
    image: str | None = None
    env: EnvSpec = Field(default_factory=dict)
    build: list[str] = Field(default_factory=list)
    setup: list[str] = Field(default_factory=list)  # deprecated: runs before commands
    commands: list[str] = Field(default_factory=list)
    entrypoint: str | None = None
    ports: list[PortMapping] = Field(default_factory=list)
    working_dir: str | None = None
    user: str | None = None
    shell: str | None = None
    privileged: StrictBool | None = None
    docker: StrictBool | None = None
    nvcc: StrictBool | None = None
    registry_auth: RegistryAuth | None = None
    home_dir: str | None = None  # deprecated in dstack, no effect
    single_branch: StrictBool | None = None
    priority: StrictInt | None = Field(default=None, ge=PRIORITY_MIN, le=PRIORITY_MAX)
    dstack: StrictBool | None = None
    volumes: list[InstanceMount] = Field(default_factory=list)
    files: list[FileMapping] = Field(default_factory=list)
    repos: RepoList = Field(default_factory=list)
    nodes: StrictInt | None = Field(default=None, ge=1)
    groups: list[NodeGroup] | None = Field(default=None, min_length=1)

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

    def node_groups(self) -> list[NodeGroupPlan]:
        """The task's nodes as groups: `groups` as given, else one group "0" of `nodes` (default 1)."""
        if self.groups:
            return [
                NodeGroupPlan(g.name or str(i), g.nodes, list(g.commands), g.resources, list(g.ports))
                for i, g in enumerate(self.groups)
            ]
        return [
            NodeGroupPlan(
                DEFAULT_GROUP_NAME, self.nodes or 1, list(self.commands), self.resources, self.ports
            )
        ]

    @property
    def total_nodes(self) -> int:
        return sum(group.nodes for group in self.node_groups())

    @property
    def is_multi_node(self) -> bool:
        return self.groups is not None or self.total_nodes > 1

    @model_validator(mode="before")
    @classmethod
    def _check_type_and_combinations(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        cls.check_keys(data)  # a misspelt key explains a "missing" one better than the missing message
        kind = data.get("type")
        if kind is None:
            raise located_error("Missing 'type'; add 'type: task' at the top of the file")
        if kind != "task":
            raise located_error(unsupported_message(kind, describe_type(kind)), "type")
        _exclusive(data, "image", "python")
        for other in ("image", "python", "nvcc"):
            if data.get("docker") is True and data.get(other) not in (None, False):
                raise located_error(
                    f"The keys docker and {other} are mutually exclusive; docker: true runs the commands "
                    "in dstack's Docker-in-Docker environment",
                    "docker",
                    on_key=True,
                )
        if data.get("nvcc") is True and data.get("image") is not None:
            raise located_error(
                "The keys nvcc and image are mutually exclusive; nvcc: true asks for the default "
                "environment with the CUDA compiler",
                "nvcc",
                on_key=True,
            )
        if data.get("groups") is not None:
            return _check_groups(data)
        commands = data.get("commands")
        if data.get("image") is None and data.get("entrypoint") is None:
            if commands is None:
                raise located_error("Missing 'commands'; add a list of commands to run (or set image)")
            if commands == []:
                raise located_error(
                    "The commands list is empty; add at least one command to run (or set image)", "commands"
                )
        return data

    @model_validator(mode="after")
    def _check_what_a_process_can_do(self) -> TaskConfiguration:
        """A task without image runs as processes of the agent on the host: no container to shape."""
        if self.image is not None:
            return self
        because = "a task without image runs as processes on the host, outside any container"
        if self.user is not None:
            raise located_error(
                f"The key user needs image: {because}, as the agent's user; remove user or set image",
                "user",
                on_key=True,
            )
        if self.working_dir is not None and is_outside(self.working_dir):
            raise located_error(
                f"Invalid working_dir '{self.working_dir}': an absolute working_dir is the container's "
                f"working directory and needs image ({because}); give a folder relative to the code root",
                "working_dir",
            )
        for index, mapping in enumerate(self.files):
            if is_outside(mapping.target):
                raise located_error(
                    f"Invalid files entry '{mapping.local_path}': its target {mapping.target} is outside the "
                    f"working directory, which needs image ({because}); give a relative path, e.g. "
                    f"{mapping.local_path}:{posixpath.basename(mapping.target) or 'data'}",
                    "files",
                    index,
                )
        for index, repo in enumerate(self.repos):
            if is_outside(repo.path):
                raise located_error(
                    f"Invalid repo path {repo.path}: a path outside the working directory needs image "
                    f"({because}); give a relative path",
                    "repos",
                    index,
                )
        return self

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

    @field_validator("build", "setup", "commands", mode="before")
    @classmethod
    def _commands_are_strings(cls, value: Any, info: ValidationInfo) -> Any:
        return check_command_list(value, str(info.field_name))

    @field_validator("entrypoint")
    @classmethod
    def _splittable_entrypoint(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            words = shlex.split(value)
        except ValueError as error:
            raise InvalidValue("entrypoint", value, f"it cannot be split into words ({error})") from None
        if not words:
            raise InvalidValue("entrypoint", value, "it is empty; give the program to run, e.g. python3 -u")
        return value

    @field_validator("user")
    @classmethod
    def _valid_user(cls, value: str | None) -> str | None:
        if value is not None and not _USER.fullmatch(value):
            raise InvalidValue(
                "user", value, "use a user name or id, optionally with a group, e.g. ubuntu or 1000:1000"
            )
        return value

    @field_validator("shell")
    @classmethod
    def _valid_shell(cls, value: str | None) -> str | None:
        if value is None or value in ("sh", "bash"):
            return value
        if not value.startswith("/") or any(c.isspace() for c in value) or "\0" in value:
            raise InvalidValue("shell", value, "use sh, bash or an absolute path such as /usr/bin/zsh")
        return posixpath.normpath(value)

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

    @field_validator("volumes", "files", mode="before")
    @classmethod
    def _null_lists(cls, value: Any) -> Any:
        return [] if value is None else value

    @field_validator("repos")
    @classmethod
    def _one_repo(cls, value: list[Any]) -> list[Any]:
        if len(value) > 1:
            raise located_error("At most one repo is supported (as in dstack); keep one entry in repos", 1)
        return value

    @field_validator("working_dir")
    @classmethod
    def _valid_working_dir(cls, value: str | None) -> str | None:
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
        if text.startswith("~") and text != "~" and not text.startswith("~/"):
            raise InvalidValue("working_dir", value, "~user is not supported; use ~/path or an absolute path")
        if text.startswith("/") or text.startswith("~"):
            return posixpath.normpath(text) if text.startswith("/") else text.rstrip("/") or "~"
        if text.startswith("\\") or _WINDOWS_DRIVE.match(text):
            raise InvalidValue("working_dir", value, "use a POSIX path, relative to the code root, e.g. src")
        normalised = posixpath.normpath(text.replace("\\", "/"))
        if normalised == ".." or normalised.startswith("../"):
            raise InvalidValue("working_dir", value, "it must stay inside the code root")
        return normalised

    @field_validator("groups", mode="before")
    @classmethod
    def _auto_names(cls, value: Any) -> Any:
        return name_groups(value) if isinstance(value, list) else value

    @field_validator("groups")
    @classmethod
    def _unique_group_names(cls, value: list[NodeGroup] | None) -> list[NodeGroup] | None:
        duplicate = duplicate_name(value or [])
        if duplicate is not None:
            index, name = duplicate
            raise located_error(
                f"Node group name '{name}' is used twice; give each group its own name", index
            )
        return value


def _exclusive(data: dict[str, Any], first: str, second: str) -> None:
    given = [key for key in data if key in (first, second) and data[key] is not None]
    if len(given) == 2:
        raise located_error(
            f"The keys {first} and {second} are mutually exclusive; "
            "remove python to use the image's Python, or image to use the default environment",
            given[1],
            on_key=True,
        )


def _check_groups(data: dict[str, Any]) -> dict[str, Any]:
    if data.get("nodes") is not None:
        later = [key for key in data if key in ("nodes", "groups")][-1]
        raise located_error(
            "The keys nodes and groups are mutually exclusive; give the node count of each group in groups",
            later,
            on_key=True,
        )
    for key in PER_GROUP_KEYS:
        if data.get(key) not in (None, []):
            raise located_error(
                f"The key {key} cannot be used with groups; give each group its own {key}", key, on_key=True
            )
    groups = data["groups"]
    if isinstance(groups, list) and data.get("image") is None:
        for index, group in enumerate(groups):
            if isinstance(group, dict) and not group.get("commands"):
                name = group.get("name") or str(index)
                raise located_error(
                    f"Node group '{name}' has no commands; give it commands (or set image for the task)",
                    "groups",
                    index,
                )
    return data
