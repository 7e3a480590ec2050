"""The base of every configuration model, and errors that point at a key inside a model."""

from __future__ import annotations

import difflib
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, GetJsonSchemaHandler, model_validator
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

from dstack.config.errors import InvalidValue

__all__ = [
    "LOCATED_ERROR",
    "AlsoAccepts",
    "ConfigModel",
    "InvalidValue",
    "check_command_list",
    "describe_type",
    "located_error",
]

# Error type of the errors raised with `located_error`; the translator reads their context.
LOCATED_ERROR = "dstack_config"


def located_error(message: str, *at: str | int, on_key: bool = False) -> PydanticCustomError:
    """A validation error `at` a path below the value being validated (for reshaping validators).

    `on_key` points the user at the key itself rather than its value (unknown or conflicting keys).
    """
    # The message goes through the context because pydantic formats `{...}` in templates.
    return PydanticCustomError(LOCATED_ERROR, "{message}", {"message": message, "at": at, "on_key": on_key})


def describe_type(value: object) -> str:
    """How a YAML user would name the type of `value`."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


class ConfigModel(BaseModel):
    """Forbids unknown keys with a message that names the key and lists the allowed ones."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    # How messages name this block, e.g. "Unknown key 'x' in task".
    block_name: ClassVar[str] = "configuration"

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_keys(cls, data: Any) -> Any:
        cls.check_keys(data)
        return data

    @classmethod
    def check_keys(cls, data: Any) -> None:
        """Raise for the first unknown key; subclasses whose own checks run first call it before them."""
        if isinstance(data, dict):
            allowed = cls.allowed_keys()
            for key in data:
                if key not in allowed:
                    close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.75)
                    hint = f" (did you mean {close[0]}?)" if close else ""
                    raise located_error(
                        f"Unknown key '{key}' in {cls.block_name}{hint}; allowed keys: {', '.join(allowed)}",
                        key,
                        on_key=True,
                    )

    @classmethod
    def allowed_keys(cls) -> list[str]:
        return sorted(field.alias or name for name, field in cls.model_fields.items())


class AlsoAccepts:
    """`Annotated` marker: the JSON schema also allows these input forms (e.g. `retry: true`)."""

    def __init__(self, *schemas: JsonSchemaValue) -> None:
        self._schemas = schemas

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {"anyOf": [*self._schemas, handler(schema)]}


def check_command_list(value: Any, field: str) -> Any:
    """A list of non-empty strings, with a precise message for the usual YAML slips."""
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
