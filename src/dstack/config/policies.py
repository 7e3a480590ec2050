"""Profile fields of today's dstack beyond the tasks guide's: how a run stops, when it starts, where it may
be placed, and the provisioning options of cloud backends (accepted here; the plan says they have no
effect on this product's backends).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import (
    BeforeValidator,
    Discriminator,
    Field,
    StrictInt,
    Tag,
    WithJsonSchema,
    field_validator,
)

from dstack.config.base import ConfigModel, InvalidValue, describe_type, located_error
from dstack.config.cron import parse_cron
from dstack.config.durations import duration_seconds

MIN_UTILIZATION_WINDOW = 300  # dstack's minimum time_window (5m)
DEFAULT_STOP_DURATION = 300  # dstack's default graceful-stop limit (5m)
_DURATION_OR_OFF = {
    "anyOf": [
        {"type": "integer", "minimum": 0},
        {"type": "string", "examples": ["5m", "off"]},
        {"type": "boolean"},
        {"type": "null"},
    ]
}


def _off_duration(value: Any) -> Any:
    """`off`/false: no limit; true/None: the default; else a duration (0 allowed: at once)."""
    if value is None or value is True:
        return None
    if value is False or (isinstance(value, str) and value.strip().lower() == "off"):
        return "off"
    return duration_seconds(value)


def _idle_duration(value: Any) -> Any:
    # As in dstack: `off`/false/-1 keep the instance forever, true means the default.
    if value is None or value is True:
        return None
    if value is False or value == -1 or (isinstance(value, str) and value.strip().lower() in ("off", "-1")):
        return -1
    return duration_seconds(value)


StopDuration = Annotated[
    Union[int, Literal["off"], None], BeforeValidator(_off_duration), WithJsonSchema(_DURATION_OR_OFF)
]
IdleDuration = Annotated[Union[int, None], BeforeValidator(_idle_duration), WithJsonSchema(_DURATION_OR_OFF)]
CreationPolicy = Literal["reuse", "reuse-or-create"]
StartupOrder = Literal["any", "master-first", "workers-first"]
StopCriteria = Literal["all-done", "master-done"]


class UtilizationPolicy(ConfigModel):
    """Stop the run when any of its GPUs stays below `min_gpu_utilization` % for the whole `time_window`."""

    block_name = "utilization_policy"

    min_gpu_utilization: StrictInt = Field(ge=0, le=100)
    time_window: Annotated[int, WithJsonSchema({"anyOf": [{"type": "integer"}, {"type": "string"}]})]

    @field_validator("time_window", mode="before")
    @classmethod
    def _window(cls, value: Any) -> int:
        seconds = duration_seconds(value)
        if seconds < MIN_UTILIZATION_WINDOW:
            raise InvalidValue("time_window", value, "the minimum is 5m")
        return seconds


def _cron_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class Schedule(ConfigModel):
    """Start the run at these UTC times (cron syntax, week starting on Monday as in dstack)."""

    block_name = "schedule"

    cron: Annotated[
        list[str],
        BeforeValidator(_cron_list),
        WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}),
    ] = Field(min_length=1)

    @field_validator("cron")
    @classmethod
    def _valid_expressions(cls, value: list[str]) -> list[str]:
        for index, text in enumerate(value):
            try:
                parse_cron(text)
            except InvalidValue as error:
                raise located_error(str(error), index) from None
        return [" ".join(text.split()) for text in value]


class InstanceRef(ConfigModel):
    """An instance of a fleet by its position (`{fleet: my-fleet, index: 0}`)."""

    block_name = "instance"

    fleet: str = Field(min_length=1)
    index: StrictInt = Field(ge=0)


def _instance(value: Any) -> Any:
    if isinstance(value, str):
        if not value.strip():
            raise InvalidValue("instance", value, "give an instance name or hostname")
        return value.strip()
    return value


InstanceSelector = Annotated[
    Union[Annotated[str, Tag("name")], Annotated[InstanceRef, Tag("ref")]],
    # Only the branch that matches the shape is validated, so its errors are the only ones shown.
    Discriminator(lambda value: "ref" if isinstance(value, (dict, InstanceRef)) else "name"),
    BeforeValidator(_instance),
]


def _tags(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    tags = {}
    for key, item in value.items():
        if not key.strip():
            raise located_error("A tag name must not be empty", key, on_key=True)
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            raise located_error(f"The value of tag {key} must be a string, not {describe_type(item)}", key)
        tags[key] = getattr(item, "yaml_text", None) or str(item)
    return tags


Tags = Annotated[dict[str, str], BeforeValidator(_tags)]


def _backend_options(value: Any) -> Any:
    """A list of `{type: BACKEND, ...}` entries, or a mapping BACKEND -> options; at most one per backend."""
    if isinstance(value, dict):
        entries = []
        for backend, options in value.items():
            if options is not None and not isinstance(options, dict):
                raise located_error(f"The options of backend {backend} must be a mapping", backend)
            entries.append({"type": backend, **(options or {})})
        return entries
    if not isinstance(value, list):
        return value
    seen: set[str] = set()
    for index, entry in enumerate(value):
        if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
            raise located_error(
                f"Entry {index + 1} of backend_options must be a mapping with the backend's type", index
            )
        if entry["type"] in seen:
            raise located_error(
                f"backend_options has two entries for backend {entry['type']}; give one per backend", index
            )
        seen.add(entry["type"])
    return value


BackendOptions = Annotated[
    list[dict[str, Any]],
    BeforeValidator(_backend_options),
    WithJsonSchema({"anyOf": [{"type": "array", "items": {"type": "object"}}, {"type": "object"}]}),
]
