"""Request bodies of the server API. Responses are plain dicts built by the services (see `runs.run_json`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

CODE_HASH_PATTERN = "^[0-9a-f]{64}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PortSpec(_Strict):
    local_port: int | None = Field(default=None, ge=1, le=65535)
    container_port: int = Field(ge=1, le=65535)


class FileUpload(_Strict):
    """One `files` mapping, packed and uploaded like the code: where its archive's content goes."""

    code_hash: str = Field(pattern=CODE_HASH_PATTERN)
    target: str = Field(min_length=1)  # relative to the working directory, absolute, or ~/...
    kind: Literal["file", "dir"]
    name: str | None = None  # a file's name inside its archive
    source: str = ""  # the local path as written, for messages


class RunSpec(_Strict):
    """What the CLI (or any API user) submits: the configuration, resolved as far as the client can."""

    run_name: str | None = None
    configuration_path: str = ""
    configuration: dict[str, Any]  # a TaskConfiguration, re-validated by the server
    profile: dict[str, Any] = Field(default_factory=dict)  # an EffectiveProfile
    commands: list[str] = Field(default_factory=list)  # interpolated (see dstack.config.interpolation)
    build: list[str] = Field(default_factory=list)  # interpolated
    args: list[str] = Field(default_factory=list)  # the run's arguments: ${{ run.args }} in the commands
    env: dict[str, str] = Field(default_factory=dict)  # resolved
    working_dir: str | None = None  # relative to the code root
    code_hash: str | None = Field(default=None, pattern=CODE_HASH_PATTERN)
    build_policy: Literal["use-build", "build", "force-build"] = "use-build"
    ports: list[PortSpec] = Field(default_factory=list)
    python: str | None = None  # the Python version the task gets when no image is set
    image: str | None = None
    # What the build's cache key is made of (dstack.agent.environments.buildkey.build_inputs), as the
    # CLI found it in the user's folder: the plan asks the hosts whether they have that build.
    build_inputs: dict[str, Any] | None = None
    files: list[FileUpload] = Field(default_factory=list)
    # Where the code archive is placed in the job's code folder: "." or a `repos` local_path's path.
    code_path: str = "."


class RunRequest(_Strict):
    spec: RunSpec


class SecretValue(_Strict):
    value: str


class StopRequest(_Strict):
    names: list[str]
    abort: bool = False


class DeleteRequest(_Strict):
    names: list[str] = Field(default_factory=list, max_length=1000)
    finished: bool = False  # every finished run of the project
