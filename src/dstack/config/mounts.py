"""What a task brings beside its code: `volumes` (host folders), `files` (local files and folders) and
`repos` (a Git repository), with dstack's syntax.

Paths end up as data for the agent (JSON fields, argv items), never in a shell script; control characters
are refused so that no path can break a line-based list either.
"""

from __future__ import annotations

import posixpath
import re
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, GetJsonSchemaHandler, StrictBool, field_validator, model_validator
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

from dstack.config.base import ConfigModel, InvalidValue, describe_type, located_error
from dstack.config.errors import InterpolationError
from dstack.config.interpolation import interpolate

# The variables a volume path may use (dstack's); a single-node task is job 0, node rank 0.
MOUNT_VARIABLES = ("dstack.job_num", "dstack.node_rank")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SCP_URL = re.compile(r"^[A-Za-z0-9_.+-]+@[A-Za-z0-9_.-]+:(?!//)")
_URL_SCHEMES = ("https", "http", "ssh", "git", "file")
_BRANCH = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./+-]*$")
_HASH = re.compile(r"^[0-9a-fA-F]{4,64}$")
_VOLUME_HINT = "mount a folder of the host with /host/path:/path"


def mount_variables(job_num: int = 0, node_rank: int = 0) -> dict[str, str]:
    return {"dstack.job_num": str(job_num), "dstack.node_rank": str(node_rank)}


def _no_control(what: str, value: str) -> None:
    if _CONTROL.search(value):
        raise InvalidValue(what, value, "it contains a control character (a newline or a tab)")


def _checked_interpolation(what: str, value: str) -> None:
    try:
        interpolate(value, mount_variables())
    except InterpolationError as error:
        reason = error.message[:1].lower() + error.message[1:]
        raise InvalidValue(what, value, reason.replace("; known:", "; a volume may use")) from None


def is_home_path(path: str) -> bool:
    return path == "~" or path.startswith("~/")


def check_target(what: str, value: str) -> str:
    """A path in the task: relative (to its working directory), absolute, or `~/...` (its user's home)."""
    text = value.strip()
    if not text:
        raise InvalidValue(what, value, "it is empty")
    _no_control(what, text)
    if text.startswith("~") and not is_home_path(text):
        raise InvalidValue(what, value, "~user is not supported; use ~/path or an absolute path")
    if text.startswith("/") or is_home_path(text):
        return posixpath.normpath(text) if text.startswith("/") else text.rstrip("/") or "~"
    normalised = posixpath.normpath(text)
    if normalised == ".." or normalised.startswith("../"):
        raise InvalidValue(what, value, "a relative path must stay inside the working directory")
    return normalised


def is_outside(target: str) -> bool:
    """Whether a checked target lies outside the working directory (an absolute or home path)."""
    return target.startswith("/") or is_home_path(target)


# -- volumes ---------------------------------------------------------------------------------------------


class InstanceMount(ConfigModel):
    """A folder of the host (`instance_path`) mounted at `path` in the task."""

    block_name = "volume"

    instance_path: str
    path: str
    optional: StrictBool = False

    @model_validator(mode="before")
    @classmethod
    def _parse_shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            host, sep, path = value.partition(":")
            if not sep or not host.strip() or not path.strip():
                raise InvalidValue("volume", value, _VOLUME_HINT)
            if not host.strip().startswith("/"):
                raise InvalidValue("volume", value, _network_volume_reason(host.strip()))
            return {"instance_path": host.strip(), "path": path.strip()}
        if isinstance(value, dict) and "name" in value and "instance_path" not in value:
            shown = value["name"] if isinstance(value["name"], str) else describe_type(value["name"])
            raise located_error(f"Invalid volume: {_network_volume_reason(str(shown))}", "name", on_key=True)
        if not isinstance(value, (dict, InstanceMount)):
            raise InvalidValue("volume", value, _VOLUME_HINT)
        return value

    @field_validator("instance_path", "path")
    @classmethod
    def _absolute(cls, value: str, info: Any) -> str:
        what = "volume instance_path" if info.field_name == "instance_path" else "volume path"
        text = value.strip()
        _no_control(what, text)
        _checked_interpolation(what, text)
        if not text.startswith("/"):
            raise InvalidValue(what, value, "it must be an absolute path, e.g. /data")
        if posixpath.normpath(text) == "/":
            raise InvalidValue(what, value, "it cannot be the root folder")
        return posixpath.normpath(text)

    def __str__(self) -> str:
        return f"{self.instance_path}:{self.path}"

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {"anyOf": [{"type": "string", "pattern": r"^/[^:]*:/.*$"}, handler(schema)]}


def _network_volume_reason(name: str) -> str:
    return (
        f"'{name}' names a network volume, and no backend of this product offers network volumes; "
        f"{_VOLUME_HINT}"
    )


# -- files -----------------------------------------------------------------------------------------------


class FileMapping(ConfigModel):
    """A local file or folder (`local_path`), uploaded with the run and placed at `path` in the task."""

    block_name = "file mapping"

    local_path: str
    path: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _parse_shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            local, _, remote = value.partition(":")
            if not local.strip():
                raise InvalidValue("file mapping", value, "use LOCAL or LOCAL:PATH, e.g. data:/data")
            return {"local_path": local.strip(), "path": remote.strip() or None}
        if not isinstance(value, (dict, FileMapping)):
            raise InvalidValue("file mapping", value, "use LOCAL or LOCAL:PATH, e.g. data:/data")
        return value

    @field_validator("local_path")
    @classmethod
    def _local(cls, value: str) -> str:
        text = value.strip()
        if not text:
            raise InvalidValue("files local_path", value, "it is empty")
        _no_control("files local_path", text)
        if text.startswith("~") and not is_home_path(text):
            raise InvalidValue("files local_path", value, "~user is not supported; use ~/path")
        return text

    @field_validator("path")
    @classmethod
    def _remote(cls, value: str | None) -> str | None:
        return None if value is None else check_target("files path", value)

    @property
    def target(self) -> str:
        """Where the file goes: `path`, else the local path as written (relative ones without `../`)."""
        if self.path is not None:
            return self.path
        local = self.local_path
        if local.startswith("/") or is_home_path(local):
            return posixpath.normpath(local) if local.startswith("/") else local
        parts = [part for part in posixpath.normpath(local).split("/") if part != ".."]
        return "/".join(parts) or "."

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {
            "anyOf": [
                {"type": "string", "examples": ["data", "data:/data", "~/.ssh/id_rsa:~/.ssh/id_rsa"]},
                handler(schema),
            ]
        }


# -- repos -----------------------------------------------------------------------------------------------


class RepoSpec(ConfigModel):
    """A Git repository for the task: a local one (`local_path`) or one cloned on the host (`url`)."""

    block_name = "repo"

    local_path: str | None = None
    url: str | None = None
    branch: str | None = None
    hash: str | None = None
    path: str = "."
    if_exists: Literal["error", "skip"] = "error"

    @model_validator(mode="before")
    @classmethod
    def _parse_shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            return _split_repo(value)
        if not isinstance(value, (dict, RepoSpec)):
            raise InvalidValue("repo", value, "use a local path or a Git URL, optionally with :PATH")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> RepoSpec:
        if self.local_path is not None and self.url is not None:
            raise located_error(
                "The keys local_path and url of a repo are mutually exclusive", "url", on_key=True
            )
        if self.local_path is None and self.url is None:
            raise located_error("A repo needs local_path or url")
        return self

    @field_validator("local_path")
    @classmethod
    def _local(cls, value: str | None) -> str | None:
        if value is None:
            return None
        text = value.strip()
        if not text:
            raise InvalidValue("repo local_path", value, "it is empty")
        _no_control("repo local_path", text)
        return text

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        text = value.strip()
        _no_control("repo url", text)
        scheme = text.partition("://")[0].lower() if "://" in text else None
        if text.startswith("-") or not (scheme in _URL_SCHEMES or (scheme is None and _SCP_URL.match(text))):
            raise InvalidValue(
                "repo url", value, "use an https://, ssh://, git:// or file:// URL, or user@host:path"
            )
        return text

    @field_validator("branch")
    @classmethod
    def _branch(cls, value: str | None) -> str | None:
        if value is not None and (not _BRANCH.match(value) or ".." in value or value.endswith((".", "/"))):
            raise InvalidValue("repo branch", value, "give a branch name such as main or release/1.2")
        return value

    @field_validator("hash")
    @classmethod
    def _hash(cls, value: str | None) -> str | None:
        if value is not None and not _HASH.match(value):
            raise InvalidValue("repo hash", value, "give a commit hash (4 to 64 hex digits)")
        return value.lower() if value is not None else None

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        return check_target("repo path", value)

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {"anyOf": [{"type": "string"}, handler(schema)]}


def _split_repo(text: str) -> dict[str, Any]:
    """`PATH`, `PATH:TARGET`, `URL` or `URL:TARGET`, where a URL is scheme://... or user@host:path."""
    value = text.strip()
    if not value:
        raise InvalidValue("repo", text, "it is empty")
    if "://" in value:
        scheme, _, rest = value.partition("://")
        slash = rest.find("/")
        colon = rest.rfind(":")
        # A colon after the host part starts the target; one before it is the host's port.
        if colon > slash >= 0:
            return {"url": f"{scheme}://{rest[:colon]}", "path": rest[colon + 1 :] or "."}
        return {"url": value}
    if _SCP_URL.match(value):
        host, _, rest = value.partition(":")
        url_path, sep, target = rest.partition(":")
        return {"url": f"{host}:{url_path}", **({"path": target or "."} if sep else {})}
    local, sep, target = value.partition(":")
    return {"local_path": local, **({"path": target or "."} if sep else {})}


RepoList = Annotated[list[RepoSpec], BeforeValidator(lambda value: [] if value is None else value)]
