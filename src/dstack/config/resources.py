"""The resources a task asks for: cpu, memory, disk, shm_size and gpu (SPEC §3)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, Field, GetJsonSchemaHandler, ValidationError, field_validator, model_validator
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

from dstack.config.base import AlsoAccepts, ConfigModel, InvalidValue
from dstack.config.error_messages import plain_message
from dstack.config.errors import ConfigError
from dstack.config.ranges import Memory, Range
from dstack.core.text import clip

CPUArch = Literal["x86", "arm"]
GPUVendor = Literal["nvidia", "amd"]

_CPU_ARCHES = ("x86", "arm")
_GPU_VENDORS = ("nvidia", "amd")
_COUNT_TOKEN = re.compile(r"[0-9.]+")  # not `\d`: a fullwidth digit is no count
_Model = TypeVar("_Model", bound=BaseModel)
_GPU_HINT = "e.g. A100:80GB:2, 24GB..:2, A10,A10G or nvidia:H100"
# Catalog names (A100, RTX4090, MI300X, L40S, GH200-480GB): ASCII, and short.
_GPU_NAME = re.compile(r"[A-Za-z][A-Za-z0-9._+-]{0,63}")


def _spec_with_schema(schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
    """Spec models are written as an int, a string or a mapping; say so in the JSON schema."""
    return {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string"}, handler(schema)]}


def _tokens(what: str, text: str) -> list[str]:
    if re.search(r"\d\s+\d", text, re.ASCII):
        raise InvalidValue(what, text, "a number has a space (or a line break) in it")
    compact = "".join(text.split())
    if not compact:
        raise InvalidValue(what, text, "it is empty")
    tokens = compact.split(":")
    if "" in tokens:
        raise InvalidValue(what, text, "it has an empty part; separate the parts with a single ':'")
    return tokens


def _remember(found: dict[str, str], kind: str, token: str, what: str, text: str) -> None:
    if kind in found:
        raise InvalidValue(
            what, text, f"the {kind} is given twice ('{clip(found[kind])}' and '{clip(token)}')"
        )
    found[kind] = token


class CPUSpec(ConfigModel):
    """`cpu: 4..`, `cpu: x86:8`, `cpu: {min: 2, max: 8}` or `cpu: {arch: arm, count: 4..}`."""

    block_name = "cpu"

    arch: CPUArch | None = None
    count: Range[int] = Field(default_factory=lambda: Range[int](min=2))

    @model_validator(mode="before")
    @classmethod
    def _parse_shorthand(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise InvalidValue(
                "CPU spec", value, "use a count such as 4 or 2..8, optionally with x86: or arm:"
            )
        if isinstance(value, (int, float)):
            return {"count": value}
        if isinstance(value, dict) and ("min" in value or "max" in value):
            return {"count": value}
        if isinstance(value, str):
            return cls._parse_text(value)
        return value

    @staticmethod
    def _parse_text(text: str) -> dict[str, str]:
        found: dict[str, str] = {}
        for token in _tokens("CPU spec", text):
            if token.lower() in _CPU_ARCHES:
                _remember(found, "arch", token.lower(), "CPU spec", text)
            elif _COUNT_TOKEN.fullmatch(token):
                _remember(found, "count", token, "CPU spec", text)
            else:
                raise InvalidValue(
                    "CPU spec",
                    text,
                    f"unknown architecture '{clip(token)}'; use x86 or arm with a count, e.g. x86:4..",
                )
        return found

    @field_validator("arch", mode="before")
    @classmethod
    def _lower_arch(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    def __str__(self) -> str:
        return f"{self.arch}:{self.count}" if self.arch else str(self.count)

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return _spec_with_schema(schema, handler)


class GPUSpec(ConfigModel):
    """`gpu: A100:80GB:2`, `gpu: 24GB..`, `gpu: 2`, or `gpu: {name, count, memory, vendor}`.

    Without a count the spec means one GPU or more (`1..`), as in dstack.
    """

    block_name = "gpu"

    vendor: GPUVendor | None = None
    name: Annotated[list[str] | None, AlsoAccepts({"type": "string", "examples": ["A100", "A10,A10G"]})] = (
        None
    )
    memory: Range[Memory] | None = None
    count: Range[int] = Field(default_factory=lambda: Range[int](min=1))

    @model_validator(mode="before")
    @classmethod
    def _parse_shorthand(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise InvalidValue("GPU spec", value, f"use a count or a spec, {_GPU_HINT}")
        if isinstance(value, (int, float)):
            return {"count": value}
        if isinstance(value, str):
            return cls._parse_text(value)
        return value

    @staticmethod
    def _parse_text(text: str) -> dict[str, str]:
        found: dict[str, str] = {}
        for token in _tokens("GPU spec", text):
            if token.lower() in _GPU_VENDORS:
                _remember(found, "vendor", token.lower(), "GPU spec", text)
            elif token[0].isalpha():
                _remember(found, "name", token, "GPU spec", text)
            elif any(char.isalpha() for char in token):
                _remember(found, "memory", token, "GPU spec", text)
            elif _COUNT_TOKEN.fullmatch(token):
                _remember(found, "count", token, "GPU spec", text)
            else:
                raise InvalidValue(
                    "GPU spec", text, f"'{clip(token)}' is not a name, memory or count; {_GPU_HINT}"
                )
        return found

    @field_validator("vendor", mode="before")
    @classmethod
    def _lower_vendor(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("name", mode="before")
    @classmethod
    def _split_names(cls, value: Any) -> Any:
        written = value
        if isinstance(value, str):
            value = value.split(",")
        if not isinstance(value, list):
            return value
        names = []
        for name in value:
            if not isinstance(name, str):
                return value  # let the type check report it
            stripped = name.strip()
            if not _GPU_NAME.fullmatch(stripped):
                shown = written if isinstance(written, str) else name
                raise InvalidValue(
                    "GPU name",
                    shown,
                    "each name starts with a letter and has up to 64 letters, digits, '.', '_', '+' or '-', "
                    "e.g. A100 or A10,A10G",
                )
            names.append(stripped.upper())
        return names

    @field_validator("name")
    @classmethod
    def _at_least_one_name(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise InvalidValue("GPU name", "", "give at least one name, e.g. A100")
        return value

    def __str__(self) -> str:
        parts = [part for part in (self.vendor, ",".join(self.name or [])) if part]
        if self.memory is not None:
            parts.append(str(self.memory))
        parts.append(str(self.count))
        return ":".join(parts)

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return _spec_with_schema(schema, handler)


class ResourcesSpec(ConfigModel):
    """What a task asks for. A field left None was not set (and takes a lower layer's or the default)."""

    block_name = "resources"

    cpu: CPUSpec | None = None
    memory: Range[Memory] | None = None
    disk: Range[Memory] | None = None
    shm_size: Memory | None = None
    gpu: GPUSpec | None = None

    @field_validator("cpu")
    @classmethod
    def _some_cpu(cls, value: CPUSpec | None) -> CPUSpec | None:
        # A cap of 0 CPUs cannot be enforced (and the plan would promise it): refuse it.
        if value is not None and value.count.max == 0:
            raise InvalidValue("cpu", str(value), "a task needs at least one CPU, e.g. cpu: 1 or cpu: 2..")
        return value

    @field_validator("memory")
    @classmethod
    def _some_memory(cls, value: Range[Memory] | None) -> Range[Memory] | None:
        if value is not None and value.max == 0:
            raise InvalidValue("memory", str(value), "a task needs some memory, e.g. memory: 512MB or 8GB..")
        return value

    def __str__(self) -> str:
        parts = [f"{name}={value}" for name, value in self if value is not None]
        return " ".join(parts) or "-"


RESOURCE_FIELDS = ("cpu", "memory", "disk", "shm_size", "gpu")


def default_resources() -> ResourcesSpec:
    """Built-in defaults: cpu 2.., memory 8GB.., no GPU, no disk or shm_size limit."""
    return ResourcesSpec(cpu=CPUSpec(), memory=Range[Memory](min=Memory(8)))


def _validated(model: type[_Model], value: object, what: str) -> _Model:
    try:
        return model.model_validate(value)
    except ValidationError as error:
        raise ConfigError(plain_message(error, what=what)) from None


def parse_gpu_spec(value: str | int) -> GPUSpec:
    """`A100:80GB:2`, `24GB..:2`, `A10,A10G`, `nvidia:H100` or a count; ConfigError if malformed."""
    return _validated(GPUSpec, value, "gpu")


def parse_cpu_spec(value: str | int) -> CPUSpec:
    """`4`, `2..8`, `x86:4..` or `arm:8`; ConfigError if malformed."""
    return _validated(CPUSpec, value, "cpu")


def parse_memory_range(value: str | int | float) -> Range[Memory]:
    """`16GB`, `8GB..`, `512MB..2GB` or a number of GB; ConfigError if malformed."""
    return _validated(Range[Memory], value, "memory")


def parse_resources_spec(value: Mapping[str, Any]) -> ResourcesSpec:
    """A `resources:` mapping such as {"gpu": "A100:2", "memory": "16GB.."}; ConfigError if malformed."""
    return _validated(ResourcesSpec, dict(value), "resources")
