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

A Slurm cluster is reached through its login node over SSH (see backends/slurm/):

    backends:
      - type: slurm
        clusters:
          - name: hpc                 # shown as the REGION
            hostname: 10.251.0.1      # the login node
            port: 22
            user: alice
            identity_file: ~/.ssh/id_ed25519
            cpu_partitions: [cpu]     # optional; default: every partition not listed under gpu_partitions
            gpu_partitions:           # optional: what the GPUs of these partitions' GRES are
              - gpu: A100:80GB
                partitions: [gpu]
            container_runtime: docker # optional: image tasks run there (with the agent's Docker driver)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from dstack.config.ranges import Memory

DEFAULT_CONFIG = """\
# dstack server settings. Backends say where tasks run.
# Your own hosts come as fleets (dstack apply -f fleet.dstack.yml); to run only there, remove `local`.
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


class SSHBackendConfig(BaseModel):
    """Fleets of the user's own hosts: always on (hosts come from `dstack apply`); listing it is allowed."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["ssh"] = "ssh"


_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
_NAME_HINT = "letters, digits, '-', '_' and '.'"


class SlurmGpuPartitions(BaseModel):
    """The GPUs of some partitions' nodes, as Slurm's GRES does not name them (count from GRES)."""

    model_config = ConfigDict(extra="forbid")

    gpu: str
    partitions: list[str] = Field(min_length=1)

    @field_validator("gpu")
    @classmethod
    def _gpu(cls, value: str) -> str:
        parts = [p for p in "".join(value.split()).split(":") if p]
        if len(parts) != 2 or not parts[0][:1].isalpha():
            raise ValueError(
                f"{value!r} is not NAME:MEMORY such as A100:80GB (the count comes from the nodes' GRES)"
            )
        _memory_gb(parts[1])
        return ":".join(parts)

    @property
    def gpu_name(self) -> str:
        return self.gpu.split(":")[0]

    @property
    def gpu_memory_gb(self) -> float:
        return _memory_gb(self.gpu.split(":")[1])


class SlurmClusterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=_NAME, max_length=32)
    hostname: str = Field(min_length=1, max_length=255)
    port: int = Field(default=22, ge=1, le=65535)
    user: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
    identity_file: str = Field(min_length=1)
    cpu_partitions: list[str] | None = None
    gpu_partitions: list[SlurmGpuPartitions] = Field(default_factory=list)
    container_runtime: Literal["docker"] | None = None

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, value: Any) -> Any:
        if isinstance(value, str) and value and not re.fullmatch(_NAME, value):
            raise ValueError(f"{value!r} is not a cluster name; use {_NAME_HINT}")
        return value

    @model_validator(mode="after")
    def _partitions_once(self) -> SlurmClusterConfig:
        seen: set[str] = set()
        for entry in self.gpu_partitions:
            for partition in entry.partitions:
                if partition in seen:
                    raise ValueError(f"partition {partition} is listed under gpu_partitions twice")
                seen.add(partition)
        return self

    def gpu_of(self, partition: str) -> SlurmGpuPartitions | None:
        return next((g for g in self.gpu_partitions if partition in g.partitions), None)


class SlurmBackendConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["slurm"] = "slurm"
    clusters: list[SlurmClusterConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _names_once(self) -> SlurmBackendConfig:
        names = [c.name for c in self.clusters]
        for name in set(names):
            if names.count(name) > 1:
                raise ValueError(
                    f"cluster {name} is listed {names.count(name)} times; give each a name of its own"
                )
        return self


def _backend_type(value: Any) -> str:
    kind = value.get("type", "local") if isinstance(value, dict) else getattr(value, "type", "local")
    return kind if isinstance(kind, str) else ""


BackendConfig = Annotated[
    Annotated[LocalBackendConfig, Tag("local")]
    | Annotated[SSHBackendConfig, Tag("ssh")]
    | Annotated[SlurmBackendConfig, Tag("slurm")],
    Discriminator(_backend_type),
]
_BACKEND_TYPES = ("local", "ssh", "slurm")


def _default_backend() -> LocalBackendConfig | SSHBackendConfig | SlurmBackendConfig:
    return LocalBackendConfig()


class ServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Without `local` in the list, this machine runs no task (only fleets and clusters do).
    backends: list[BackendConfig] = Field(default_factory=lambda: [_default_backend()])
    retention: RetentionConfig = Field(default_factory=RetentionConfig)

    @property
    def local(self) -> LocalBackendConfig | None:
        return next((b for b in self.backends if isinstance(b, LocalBackendConfig)), None)

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
        data = yaml.safe_load(path.read_text())
        data = {} if data is None else data
        return ServerConfig.model_validate(data)
    except yaml.YAMLError as e:
        raise ServerConfigError(f"{path} is not valid YAML: {e}") from e
    except ValidationError as e:
        first = e.errors()[0]
        loc = _without_tags(first["loc"])
        where = ".".join(str(p) for p in loc)
        message = str(first["msg"]).removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            message = f"unknown key; allowed: {', '.join(_allowed_keys(first['loc']))}"
        elif first["type"] == "union_tag_invalid":
            kind = first["input"].get("type")
            message = f"unknown backend type {kind!r}; use one of: {', '.join(_BACKEND_TYPES)}"
        raise ServerConfigError(f"{path}: {where}: {message}" if where else f"{path}: {message}") from e


def _without_tags(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    # pydantic puts the backend's type in the path ("backends.0.slurm.clusters"); users wrote no such key.
    return tuple(
        p for i, p in enumerate(loc) if not (i == 2 and loc[0] == "backends" and p in _BACKEND_TYPES)
    )


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    names = [p for p in loc if isinstance(p, str)][:-1]
    model: type[BaseModel] = ServerConfig
    if names[-1:] == ["ssh"]:
        model = SSHBackendConfig
    elif names[-1:] in (["backends"], ["local"]):
        model = LocalBackendConfig
    elif names[-1:] == ["slurm"]:
        model = SlurmBackendConfig
    elif names[-1:] == ["clusters"]:
        model = SlurmClusterConfig
    elif names[-1:] == ["gpu_partitions"]:
        model = SlurmGpuPartitions
    elif names[-1:] == ["resources"]:
        model = DeclaredResources
    elif names[-1:] == ["gpus"]:
        model = DeclaredGpu
    elif names[-1:] == ["retention"]:
        model = RetentionConfig
    fields = (
        [name for name in model.model_fields if name not in ("name", "memory")]
        if model is SlurmGpuPartitions
        else list(model.model_fields)
    )
    return fields
