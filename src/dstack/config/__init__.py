"""Configuration of dstack runs: `*.dstack.yml` task files, profiles, resources and interpolation.

Names are loaded lazily: `import dstack.config.interpolation` (used by the CLI's fast path) must not
import pydantic or yaml, and Python imports this package first.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dstack.config.durations import parse_duration
    from dstack.config.env import resolve_env
    from dstack.config.errors import ConfigError, InterpolationError, Location
    from dstack.config.interpolation import interpolate, interpolate_commands
    from dstack.config.loader import load_configuration, load_profiles, parse_configuration, select_profile
    from dstack.config.names import random_run_name, validate_run_name
    from dstack.config.ports import PortMapping, merge_ports, parse_port_mapping
    from dstack.config.profiles import Duration, Off, Profile, Retry, RetryEvent, SpotPolicy
    from dstack.config.ranges import Memory, Range
    from dstack.config.resolve import (
        EffectiveProfile,
        ProfileOverrides,
        ResourcesOverrides,
        parse_overrides,
        resolve_profile,
    )
    from dstack.config.resources import (
        CPUSpec,
        GPUSpec,
        ResourcesSpec,
        parse_cpu_spec,
        parse_gpu_spec,
        parse_memory_range,
        parse_resources_spec,
    )
    from dstack.config.schema import configuration_json_schema
    from dstack.config.task import TaskConfiguration

_HOMES = {
    "dstack.config.durations": ("parse_duration",),
    "dstack.config.env": ("resolve_env",),
    "dstack.config.errors": ("ConfigError", "InterpolationError", "Location"),
    "dstack.config.interpolation": ("interpolate", "interpolate_commands"),
    "dstack.config.loader": ("load_configuration", "load_profiles", "parse_configuration", "select_profile"),
    "dstack.config.names": ("random_run_name", "validate_run_name"),
    "dstack.config.ports": ("PortMapping", "merge_ports", "parse_port_mapping"),
    "dstack.config.profiles": ("Duration", "Off", "Profile", "Retry", "RetryEvent", "SpotPolicy"),
    "dstack.config.ranges": ("Memory", "Range"),
    "dstack.config.resolve": (
        "EffectiveProfile",
        "ProfileOverrides",
        "ResourcesOverrides",
        "parse_overrides",
        "resolve_profile",
    ),
    "dstack.config.resources": (
        "CPUSpec",
        "GPUSpec",
        "ResourcesSpec",
        "parse_cpu_spec",
        "parse_gpu_spec",
        "parse_memory_range",
        "parse_resources_spec",
    ),
    "dstack.config.schema": ("configuration_json_schema",),
    "dstack.config.task": ("TaskConfiguration",),
}
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names}

# Spelled out (not computed) so that linters and IDEs see the public names; a test keeps it in sync.
__all__ = [
    "CPUSpec",
    "ConfigError",
    "Duration",
    "EffectiveProfile",
    "GPUSpec",
    "InterpolationError",
    "Location",
    "Memory",
    "Off",
    "PortMapping",
    "Profile",
    "ProfileOverrides",
    "Range",
    "ResourcesOverrides",
    "ResourcesSpec",
    "Retry",
    "RetryEvent",
    "SpotPolicy",
    "TaskConfiguration",
    "configuration_json_schema",
    "interpolate",
    "interpolate_commands",
    "load_configuration",
    "load_profiles",
    "merge_ports",
    "parse_configuration",
    "parse_cpu_spec",
    "parse_duration",
    "parse_gpu_spec",
    "parse_memory_range",
    "parse_overrides",
    "parse_port_mapping",
    "parse_resources_spec",
    "random_run_name",
    "resolve_env",
    "resolve_profile",
    "select_profile",
    "validate_run_name",
]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'dstack.config' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
