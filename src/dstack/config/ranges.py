"""Memory sizes (`512MB`, `16GB`, `1TB`) and ranges (`2..8`, `8GB..`, `..4`, `{min, max}`)."""

from __future__ import annotations

import math
import re
from typing import Any, Generic, TypeVar, get_args

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler, model_validator
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

from dstack.config.base import ConfigModel, InvalidValue, located_error
from dstack.core.numbers import MAX_DIGITS, parse_whole

# ASCII digits (`\d` alone would read fullwidth digits), spaces only around the number and its unit (a
# space inside a number, "1 6GB", is a typo, not 16GB), and never more digits than a size needs.
_MEMORY = re.compile(r"\s*(\d{1,15}(?:\.\d{0,9})?|\.\d{1,9})\s*(mb|gb|tb)?\s*", re.ASCII | re.IGNORECASE)
MAX_MEMORY_GB = 1024.0**3  # an exabyte: anything bigger is a typo
MAX_COUNT = 1_000_000  # CPUs or GPUs; more is a typo
_UNIT_IN_GB = {"mb": 1 / 1024, "gb": 1.0, "tb": 1024.0, None: 1.0}
_MEMORY_HINT = "use a number with MB, GB or TB (a bare number is GB), e.g. 512MB, 16GB or 1TB"
_MEMORY_PATTERN = r"^\s*(\d+(\.\d*)?|\.\d+)\s*([mMgGtT][bB])?\s*$"


class Memory(float):
    """A memory size in GB (512MB is 0.5)."""

    @classmethod
    def parse(cls, value: object) -> Memory:
        if isinstance(value, Memory):
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise InvalidValue("memory size", value, _MEMORY_HINT)
        if isinstance(value, str):
            match = _MEMORY.fullmatch(value)
            if match is None:
                raise InvalidValue("memory size", value, _MEMORY_HINT)
            unit = match.group(2).lower() if match.group(2) else None
            value = float(match.group(1)) * _UNIT_IN_GB[unit]
        elif not math.isfinite(value) or value < 0:
            raise InvalidValue("memory size", value, "it must be a non-negative number of GB")
        if value > MAX_MEMORY_GB:
            raise InvalidValue(
                "memory size", value, "it is more than an exabyte; use e.g. 512MB, 16GB or 1TB"
            )
        return cls(value)

    def __str__(self) -> str:
        if 0 < self < 1:
            return f"{self * 1024:g}MB"
        return f"{float(self):g}GB"

    def __repr__(self) -> str:
        return f"Memory({float(self)!r})"

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls.parse,
            serialization=core_schema.plain_serializer_function_ser_schema(float, when_used="json"),
        )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {
            "anyOf": [
                {"type": "number", "minimum": 0, "description": "GB"},
                {"type": "string", "pattern": _MEMORY_PATTERN},
            ]
        }


T = TypeVar("T", int, Memory)


class Range(ConfigModel, Generic[T]):
    """From `min` to `max`, both inclusive; a missing end is unbounded."""

    block_name = "range"

    min: T | None = None
    max: T | None = None

    @model_validator(mode="before")
    @classmethod
    def _parse_shorthand(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise InvalidValue(cls._what(), value, "use a value or a range such as 2..8, 2.. or ..8")
        if isinstance(value, (int, float)):
            end = cls._end(value, value)
            return {"min": end, "max": end}
        if isinstance(value, str):
            return cls._split(value)
        if isinstance(value, dict):
            return {key: cls._mapping_end(key, end) for key, end in value.items()}
        return value

    @classmethod
    def _mapping_end(cls, key: object, end: object) -> object:
        if key not in ("min", "max"):
            return end  # reported as an unknown key
        try:
            return cls._end(end, end)
        except InvalidValue as error:
            raise located_error(str(error), key) from None

    @model_validator(mode="after")
    def _check_order(self) -> Range[T]:
        if self.min is None and self.max is None:
            raise InvalidValue(self._what(), {}, "give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise InvalidValue(self._what(), str(self), f"min ({self.min}) is greater than max ({self.max})")
        return self

    @classmethod
    def _split(cls, text: str) -> dict[str, Any]:
        if re.search(r"\d\s+\d", text, re.ASCII):
            raise InvalidValue(cls._what(), text, "a number has a space (or a line break) in it")
        compact = "".join(text.split())
        if "..." in compact or compact.count("..") > 1:
            raise InvalidValue(cls._what(), text, "use two dots between the ends, e.g. 2..8")
        if ".." not in compact:
            end = cls._end(compact, text)
            return {"min": end, "max": end}
        low, high = compact.split("..")
        if not low and not high:
            raise InvalidValue(cls._what(), text, "give at least one end, e.g. 2.. or ..8")
        return {"min": cls._end(low, text) if low else None, "max": cls._end(high, text) if high else None}

    @classmethod
    def _end(cls, end: object, whole: object) -> object:
        if cls._is_memory():
            if end is None:
                return None
            try:
                return Memory.parse(end)
            except InvalidValue as error:
                raise InvalidValue("memory size", whole, error.reason) from None
        if isinstance(end, str) and end:
            text, end = end, parse_whole(end)
            if end is None and text.isascii() and text.isdigit():
                raise InvalidValue(cls._what(), whole, f"a count has at most {MAX_DIGITS} digits")
            if end is None:
                raise InvalidValue(cls._what(), whole, "use whole numbers, e.g. 2, 2..8, 2.. or ..8")
        if end is None or (isinstance(end, int) and not isinstance(end, bool) and 0 <= end <= MAX_COUNT):
            return end
        if isinstance(end, int) and not isinstance(end, bool) and end > MAX_COUNT:
            raise InvalidValue(cls._what(), whole, f"a count is at most {MAX_COUNT:,}")
        raise InvalidValue(cls._what(), whole, "use whole numbers, e.g. 2, 2..8, 2.. or ..8")

    @classmethod
    def _is_memory(cls) -> bool:
        return Memory in get_args(cls.model_fields["min"].annotation)

    @classmethod
    def _what(cls) -> str:
        return "memory range" if cls._is_memory() else "range"

    def contains(self, value: float) -> bool:
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)

    def __str__(self) -> str:
        if self.min is not None and self.min == self.max:
            return str(self.min)
        low = "" if self.min is None else str(self.min)
        high = "" if self.max is None else str(self.max)
        return f"{low}..{high}"

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        scalar = {"type": "integer", "minimum": 0} if not cls._is_memory() else {"type": "number"}
        return {
            "anyOf": [
                scalar,
                {"type": "string", "description": "a value or a range: 2..8, 2.., ..8"},
                handler(schema),
            ]
        }
