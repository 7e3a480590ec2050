"""The server's own settings file, ~/.dstack/server/config.yml: which backends it offers, and how long it
keeps runs' output.

Created with the local backend on first start, so a new user never has to write it. A backend may declare
resources its agent cannot detect (GPUs on a machine without drivers, or a smaller share of a big host);
declared values replace detected ones and are real to the scheduler:

    backends:
      - type: local
        price: 0.5            # USD per hour shown in plans
        resources:
          cpus: 8
          memory: 64GB
          disk: 500GB         # free disk
          gpus: H100:80GB:2   # NAME:MEMORY:COUNT, or a list of {name, memory, vendor}
    retention:                # finished runs and their output (see RetentionConfig)
      max_age: 30d
      max_size: 20GB
      run_output_limit: 4GB
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dstack.config.ranges import Memory

DEFAULT_CONFIG = """\
# dstack server settings. Backends say where tasks run.
backends:
  - type: local      # this machine
    price: 0         # USD per hour shown in plans
    # resources:     # declare what the agent cannot detect; declared values replace detected ones
    #   gpus: H100:80GB:2
# retention:         # finished runs and their output (these are the defaults)
#   max_age: 30d     # deleted once finished this long ago ("off": never)
#   max_size: 20GB   # all finished runs' output together; the oldest go first ("off": no cap)
#   run_output_limit: 4GB  # a run printing more ends with "log quota exceeded" ("off": no limit)
"""
GIB = 1024**3
_GPU_SHORTHAND_HINT = "use NAME:MEMORY:COUNT such as H100:80GB:2, or a list of {name, memory}"


class ServerConfigError(Exception):
    pass


class DeclaredGpu(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    memory: float = Field(gt=0, description="GB")
    vendor: Literal["nvidia", "amd"] = "nvidia"

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, value: Any) -> Any:
        return _memory_gb(value)

    @field_validator("vendor", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


class DeclaredResources(BaseModel):
    """What a host has, as an admin declares it. Unset fields keep what the agent detects."""

    model_config = ConfigDict(extra="forbid")

    cpus: int | None = Field(default=None, ge=1)
    memory: float | None = Field(default=None, gt=0, description="GB")
    disk: float | None = Field(default=None, ge=0, description="GB of free disk")
    arch: Literal["x86_64", "aarch64"] | None = None
    gpus: list[DeclaredGpu] | None = None

    @field_validator("memory", "disk", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        return None if value is None else _memory_gb(value)

    @field_validator("gpus", mode="before")
    @classmethod
    def _gpu_shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            return _parse_gpu_shorthand(value)
        if isinstance(value, dict) and "count" in value:
            count = value["count"]
            if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= 64:
                raise ValueError("count must be a whole number from 0 to 64")
            return [{k: v for k, v in value.items() if k != "count"}] * count
        return value

    def fingerprint(self) -> dict[str, Any]:
        """The declared values in the agent's fingerprint keys (see dstack.agent.host)."""
        facts: dict[str, Any] = {}
        if self.cpus is not None:
            facts["cpus"] = self.cpus
        if self.memory is not None:
            facts["memory_bytes"] = int(self.memory * GIB)
        if self.disk is not None:
            facts["disk_free_bytes"] = int(self.disk * GIB)
        if self.arch is not None:
            facts["arch"] = self.arch
        if self.gpus is not None:
            facts["gpus"] = [
                {"index": i, "name": g.name, "memory_bytes": int(g.memory * GIB), "vendor": g.vendor}
                for i, g in enumerate(self.gpus)
            ]
            facts["gpus_declared"] = True
        return facts


def _memory_gb(value: Any) -> float:
    try:
        return float(Memory.parse(value))
    except ValueError as e:
        raise ValueError(f"{value!r} is not a size; use e.g. 80GB, 512MB or 1TB") from e


def _parse_gpu_shorthand(text: str) -> list[dict[str, Any]]:
    name, memory, count = None, None, 1
    for token in "".join(text.split()).split(":"):
        if not token:
            raise ValueError(f"{text!r} has an empty part; {_GPU_SHORTHAND_HINT}")
        if token.isascii() and token.isdigit() and len(token) <= 3:
            count = int(token)
        elif re.fullmatch(r"\d{1,12}(\.\d{1,6})?(MB|GB|TB)", token, re.IGNORECASE | re.ASCII):
            memory = token
        elif token[0].isalpha():
            name = token
        else:
            raise ValueError(f"{text!r}: '{token}' is not a name, memory or count; {_GPU_SHORTHAND_HINT}")
    if name is None or memory is None:
        raise ValueError(f"{text!r} needs a name and a memory size; {_GPU_SHORTHAND_HINT}")
    if count > 64:
        raise ValueError(f"{text!r} declares {count} GPUs; at most 64 per host")
    vendor = "amd" if name.upper().startswith("MI") else "nvidia"
    return [{"name": name, "memory": memory, "vendor": vendor}] * count


class LocalBackendConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["local"] = "local"
    price: float = Field(default=0.0, ge=0)
    # Resources the agent cannot detect, as fingerprint keys (validated as DeclaredResources); they
    # replace what the agent detects.
    resources: dict[str, Any] = Field(default_factory=dict)

    @field_validator("resources", mode="before")
    @classmethod
    def _declared(cls, value: Any) -> Any:
        if value is None:
            return {}
        return DeclaredResources.model_validate(value).fingerprint()


def _size_or_off(value: Any) -> Any:
    if value is None or value is False or (isinstance(value, str) and value.strip().lower() == "off"):
        return None
    return int(_memory_gb(value) * GIB)


def _duration_or_off(value: Any) -> Any:
    if value is None or value is False or (isinstance(value, str) and value.strip().lower() == "off"):
        return None
    from dstack.config.durations import duration_seconds

    return duration_seconds(value)


class RetentionConfig(BaseModel):
    """How long finished runs (and their output) are kept. Nothing is deleted while a run is active or a
    client reads it; `dstack delete` removes finished runs at once."""

    model_config = ConfigDict(extra="forbid")

    max_age: int | None = Field(default=30 * 86400, description="seconds; None = keep forever")
    max_size: int | None = Field(default=20 * GIB, description="bytes of all finished runs' output")
    run_output_limit: int | None = Field(default=4 * GIB, description="bytes one run may print")

    @field_validator("max_age", mode="before")
    @classmethod
    def _age(cls, value: Any) -> Any:
        return _duration_or_off(value)

    @field_validator("max_size", "run_output_limit", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        return _size_or_off(value)


class ServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backends: list[LocalBackendConfig] = Field(default_factory=lambda: [LocalBackendConfig()])
    retention: RetentionConfig = Field(default_factory=RetentionConfig)

    @model_validator(mode="after")
    def _one_per_type(self) -> ServerConfig:
        types = [b.type for b in self.backends]
        for kind in set(types):
            if types.count(kind) > 1:
                raise ValueError(f"backend {kind} is listed {types.count(kind)} times; list it once")
        return self


def load_server_config(path: Path) -> ServerConfig:
    if not path.exists():
        path.write_text(DEFAULT_CONFIG)
    try:
        data = yaml.safe_load(path.read_text()) or {}
        return ServerConfig.model_validate(data)
    except yaml.YAMLError as e:
        raise ServerConfigError(f"{path} is not valid YAML: {e}") from e
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = str(first["msg"]).removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            message = f"unknown key; allowed: {', '.join(_allowed_keys(first['loc']))}"
        raise ServerConfigError(f"{path}: {where}: {message}" if where else f"{path}: {message}") from e


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    names = [p for p in loc if isinstance(p, str)][:-1]
    model: type[BaseModel] = ServerConfig
    if names[-1:] == ["backends"]:
        model = LocalBackendConfig
    elif names[-1:] == ["resources"]:
        model = DeclaredResources
    elif names[-1:] == ["gpus"]:
        model = DeclaredGpu
    elif names[-1:] == ["retention"]:
        model = RetentionConfig
    return list(model.model_fields)
