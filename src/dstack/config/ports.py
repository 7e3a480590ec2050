"""Port mappings: `8000`, `"3000:8000"`, `"*:8000"` or `{local_port, container_port}`."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import Field, GetJsonSchemaHandler, ValidationError, model_validator
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

from dstack.config.base import ConfigModel, InvalidValue
from dstack.config.error_messages import flag_error, plain_message
from dstack.config.errors import ConfigError

Port = Annotated[int, Field(ge=1, le=65535)]

# ASCII digits, at most 6 of them: `\d` would read "٨٠" as 80, and 5,000 digits are no port.
_MAPPING = re.compile(r"(?:(\d{1,6}|\*):)?(\d{1,6})", re.ASCII)
_HINT = "use N, L:N or *:N with ports from 1 to 65535, e.g. 8000, 3000:8000 or *:8000"


class PortMapping(ConfigModel):
    """Local port `local_port` on the user's machine forwards to `container_port` of the task.

    `local_port` None means any free local port.
    """

    block_name = "port mapping"

    local_port: Port | None = None
    container_port: Port

    @model_validator(mode="before")
    @classmethod
    def _parse_shorthand(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise InvalidValue("port mapping", value, _HINT)
        if isinstance(value, int):
            return {"local_port": _port(value, value), "container_port": _port(value, value)}
        if isinstance(value, str):
            match = _MAPPING.fullmatch(value.strip())
            if match is None:
                raise InvalidValue("port mapping", value, _HINT)
            local, container = match.groups()
            return {
                "local_port": None if local == "*" else _port(int(local or container), value),
                "container_port": _port(int(container), value),
            }
        if not isinstance(value, (dict, PortMapping)):
            raise InvalidValue("port mapping", value, _HINT)
        return value

    def __str__(self) -> str:
        local = "*" if self.local_port is None else str(self.local_port)
        return f"{local}:{self.container_port}"

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {
            "anyOf": [
                {"type": "integer", "minimum": 1, "maximum": 65535},
                {"type": "string", "pattern": r"^((\d+|\*):)?\d+$"},
                handler(schema),
            ]
        }


def _port(number: int, whole: object) -> int:
    if not 1 <= number <= 65535:
        raise InvalidValue("port mapping", whole, f"port {number} is out of range; {_HINT}")
    return number


def duplicate_container_port(mappings: list[PortMapping]) -> tuple[int, PortMapping] | None:
    """The index and mapping of the first mapping whose container port an earlier one already maps."""
    seen: set[int] = set()
    for index, mapping in enumerate(mappings):
        if mapping.container_port in seen:
            return index, mapping
        seen.add(mapping.container_port)
    return None


def parse_port_mapping(value: str | int) -> PortMapping:
    """Parse one mapping as written in a configuration or given to `-p`; ConfigError if malformed."""
    try:
        return PortMapping.model_validate(value)
    except ValidationError as error:
        raise ConfigError(plain_message(error)) from None


def merge_ports(config_ports: list[PortMapping], cli_ports: list[str]) -> list[PortMapping]:
    """Apply `-p` mappings over the configuration's: a CLI mapping replaces the one for its container port."""
    parsed: list[PortMapping] = []
    for text in cli_ports:
        try:
            parsed.append(PortMapping.model_validate(text))
        except ValidationError as error:
            raise flag_error("--port", text, error) from None
    for source, mappings in (("the configuration", config_ports), ("--port", parsed)):
        duplicate = duplicate_container_port(mappings)
        if duplicate is not None:
            port = duplicate[1].container_port
            raise ConfigError(f"Port {port} is mapped twice in {source}; map each task port once")
    by_container = {mapping.container_port: mapping for mapping in config_ports}
    by_container.update({mapping.container_port: mapping for mapping in parsed})
    merged = list(by_container.values())
    local_users: dict[int, PortMapping] = {}
    for mapping in merged:
        if mapping.local_port is None:
            continue
        other = local_users.get(mapping.local_port)
        if other is not None:
            raise ConfigError(
                f"Local port {mapping.local_port} is used by two mappings ({other} and {mapping}); "
                "pick another local port with -p LOCAL:PORT"
            )
        local_users[mapping.local_port] = mapping
    return merged
