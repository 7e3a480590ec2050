"""The base of every configuration model, and errors that point at a key inside a model."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, GetJsonSchemaHandler, model_validator
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

from dstack.config.errors import InvalidValue

__all__ = ["LOCATED_ERROR", "AlsoAccepts", "ConfigModel", "InvalidValue", "describe_type", "located_error"]

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
                    raise located_error(
                        f"Unknown key '{key}' in {cls.block_name}; allowed keys: {', '.join(allowed)}",
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
