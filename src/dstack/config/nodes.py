"""Multi-node tasks: `nodes: N`, or `groups` of nodes with their own commands and resources.

Parsed and validated here with dstack's rules (reference §11, cases 1-7); running them is the multi-node
work's. `TaskConfiguration.node_groups()` gives them in one shape either way: a list of groups, each with
its node count.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

from pydantic import Field, StrictInt, ValidationInfo, field_validator

from dstack.config.base import ConfigModel, InvalidValue, check_command_list
from dstack.config.ports import PortMapping
from dstack.config.resources import ResourcesSpec

GROUP_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")
DEFAULT_GROUP_NAME = "0"
# Keys that belong to each group once groups are given.
PER_GROUP_KEYS = ("commands", "ports", "entrypoint")


class NodeGroup(ConfigModel):
    """`nodes` nodes that run the same commands with the same resources."""

    block_name = "node group"

    name: str | None = None
    nodes: StrictInt = Field(default=1, ge=1)
    resources: ResourcesSpec | None = None
    commands: list[str] = Field(default_factory=list)
    ports: list[PortMapping] = Field(default_factory=list)

    @field_validator("commands", mode="before")
    @classmethod
    def _commands_are_strings(cls, value: Any, info: ValidationInfo) -> Any:
        return check_command_list(value, str(info.field_name))

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str | None) -> str | None:
        if value is not None and not GROUP_NAME.fullmatch(value):
            raise InvalidValue(
                "node group name",
                value,
                "use 1 to 40 lowercase letters, digits and '-', starting with a letter or digit",
            )
        return value


class NodeGroupPlan(NamedTuple):
    """One group as the multi-node work consumes it (an implicit group for `nodes: N`)."""

    name: str
    nodes: int
    commands: list[str]
    resources: ResourcesSpec | None
    ports: list[PortMapping]


def name_groups(groups: list[Any]) -> list[Any]:
    """Give unnamed groups their position as name, as dstack does ("0", "1", ...)."""
    named = []
    for index, group in enumerate(groups):
        if isinstance(group, dict) and group.get("name") is None:
            group = {**group, "name": str(index)}
        named.append(group)
    return named


def duplicate_name(groups: list[NodeGroup]) -> tuple[int, str] | None:
    seen: set[str] = set()
    for index, group in enumerate(groups):
        name = group.name or str(index)
        if name in seen:
            return index, name
        seen.add(name)
    return None
