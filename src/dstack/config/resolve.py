"""Command-line overrides, and the effective profile of a run: CLI > configuration > profile > default."""

from __future__ import annotations

import math
import re
from typing import Any, get_args

from pydantic import BaseModel, Field, ValidationError

from dstack.config.error_messages import flag_error
from dstack.config.errors import ConfigError, InvalidValue, show_value
from dstack.config.policies import (
    BackendOptions,
    CreationPolicy,
    IdleDuration,
    InstanceSelector,
    Schedule,
    StartupOrder,
    StopCriteria,
    StopDuration,
    Tags,
    UtilizationPolicy,
)
from dstack.config.profiles import (
    BackendName,
    MaxDuration,
    Profile,
    ProfileParams,
    Retry,
    RetrySetting,
    SpotPolicy,
    positive_duration,
)
from dstack.config.ranges import Memory, Range
from dstack.config.resources import RESOURCE_FIELDS, CPUSpec, GPUSpec, ResourcesSpec, default_resources
from dstack.config.task import TaskConfiguration

_FLAG_EXAMPLES = {
    "--gpu": "--gpu A100:2",
    "--cpu": "--cpu 4",
    "--memory": "--memory 16GB..",
    "--disk": "--disk 100GB..",
}
_FLEET_NAME = re.compile(r"[a-z][a-z0-9-]{0,63}")


class ResourcesOverrides(ResourcesSpec):
    """Resources given by CLI flags (`--gpu`, `--cpu`, `--memory`, `--disk`); None means not given."""

    block_name = "resource flags"


class ProfileOverrides(BaseModel):
    """What CLI flags set; None means the flag was not given. `retry=False` is `--no-retry`."""

    resources: ResourcesOverrides = Field(default_factory=ResourcesOverrides)
    backends: list[BackendName] | None = None
    regions: list[str] | None = None
    spot_policy: SpotPolicy | None = None
    max_price: float | None = Field(default=None, gt=0)
    max_duration: MaxDuration = None
    retry: RetrySetting = None
    fleets: list[str] | None = None


class EffectiveProfile(BaseModel):
    """Everything about where and how long a run may go, resolved; JSON-serialisable."""

    resources: ResourcesSpec
    # Which of cpu/memory/disk/gpu/shm_size the user set anywhere: unset cpu/memory means "share the machine".
    resources_explicit: dict[str, bool]
    backends: list[str] | None = None
    regions: list[str] | None = None
    spot_policy: SpotPolicy = SpotPolicy.ON_DEMAND
    max_price: float | None = None
    max_duration: int | None = None  # seconds; None = no limit
    retry: Retry | None = None  # None = no retry
    profile_name: str | None = None
    # Today's dstack's profile fields, from the first layer that sets them (None: no layer does).
    stop_duration: StopDuration = None
    utilization_policy: UtilizationPolicy | None = None
    schedule: Schedule | None = None
    fleets: list[str] | None = None
    instances: list[InstanceSelector] | None = None
    startup_order: StartupOrder | None = None
    stop_criteria: StopCriteria | None = None
    availability_zones: list[str] | None = None
    instance_types: list[str] | None = None
    reservation: str | None = None
    idle_duration: IdleDuration = None
    creation_policy: CreationPolicy | None = None
    tags: Tags | None = None
    backend_options: BackendOptions | None = None


# Profile fields that the effective profile takes as they are, from the first layer that sets them.
PASSED_THROUGH = (
    "stop_duration",
    "utilization_policy",
    "schedule",
    "fleets",
    "instances",
    "startup_order",
    "stop_criteria",
    "availability_zones",
    "instance_types",
    "reservation",
    "idle_duration",
    "creation_policy",
    "tags",
    "backend_options",
)


def parse_overrides(
    *,
    gpu: str | None = None,
    cpu: str | None = None,
    memory: str | None = None,
    disk: str | None = None,
    backends: list[str] | None = None,
    max_price: float | None = None,
    max_duration: str | None = None,
    spot_policy: str | None = None,
    retry: bool | None = None,
    retry_limit: str | None = None,
    fleets: list[str] | None = None,
) -> ProfileOverrides:
    """Parse CLI flag values; a bad one raises ConfigError("Invalid --gpu value 'x': ...")."""
    flags = {"gpu": gpu, "cpu": cpu, "memory": memory, "disk": disk}
    try:
        resources = ResourcesOverrides(
            gpu=_flag("--gpu", GPUSpec, gpu),
            cpu=_flag("--cpu", CPUSpec, cpu),
            memory=_flag("--memory", Range[Memory], memory),
            disk=_flag("--disk", Range[Memory], disk),
        )
    except ValidationError as error:  # a check across the parsed value, e.g. `--cpu 0`
        field = str(error.errors()[0]["loc"][0])
        raise flag_error(f"--{field}", flags.get(field), error) from None
    allowed_backends: tuple[str, ...] = get_args(BackendName)
    for backend in backends or []:
        if backend not in allowed_backends:
            raise ConfigError(
                f"Invalid --backend value {show_value(backend)}: use one of {', '.join(allowed_backends)}"
            )
    if max_price is not None and not (math.isfinite(max_price) and max_price > 0):
        raise ConfigError(f"Invalid --max-price value '{max_price}': use a price in USD per hour above 0")
    return ProfileOverrides(
        resources=resources,
        backends=list(backends) if backends is not None else None,
        spot_policy=_spot_policy(spot_policy),
        max_price=max_price,
        max_duration=_max_duration(max_duration),
        retry=_retry(retry, retry_limit),
        fleets=_fleets(fleets),
    )


def resolve_profile(
    configuration: TaskConfiguration, profile: Profile | None, overrides: ProfileOverrides
) -> EffectiveProfile:
    """Merge the layers field by field; resources merge per sub-field (gpu as a whole)."""
    layers: list[ProfileParams | ProfileOverrides] = [overrides, configuration]
    if profile is not None:
        layers.append(profile)

    def first(field: str) -> Any:
        return next(
            (
                getattr(layer, field)
                for layer in layers
                if getattr(layer, field, None) is not None  # CLI flags set only some fields
            ),
            None,
        )

    defaults = default_resources()
    chosen: dict[str, Any] = {}
    explicit: dict[str, bool] = {}
    for field in RESOURCE_FIELDS:
        given = next(
            (
                getattr(layer.resources, field)
                for layer in layers
                if layer.resources is not None and getattr(layer.resources, field) is not None
            ),
            None,
        )
        explicit[field] = given is not None
        chosen[field] = given if given is not None else getattr(defaults, field)
    gpu: GPUSpec | None = chosen["gpu"]
    if gpu is not None and gpu.count.max == 0:
        chosen["gpu"] = None  # `gpu: 0` asks for no GPU; one spelling of "none" is easier downstream
    max_duration = first("max_duration")
    retry = first("retry")
    return EffectiveProfile(
        resources=ResourcesSpec(**chosen),
        resources_explicit=explicit,
        backends=first("backends"),
        regions=first("regions"),
        spot_policy=first("spot_policy") or SpotPolicy.ON_DEMAND,
        max_price=first("max_price"),
        max_duration=None if max_duration == "off" else max_duration,
        retry=retry or None,
        profile_name=profile.name if profile is not None else None,
        **{field: first(field) for field in PASSED_THROUGH},
    )


def _flag(flag: str, model: type[Any], value: str | None) -> Any:
    if value is None:
        return None
    if not value.strip():
        raise ConfigError(f"{flag} needs a value, e.g. {_FLAG_EXAMPLES[flag]}")
    try:
        return model.model_validate(value)
    except ValidationError as error:
        raise flag_error(flag, value, error) from None


def _fleets(names: list[str] | None) -> list[str] | None:
    if names is None:
        return None
    for name in names:
        if not _FLEET_NAME.fullmatch(name):
            raise ConfigError(
                f"Invalid --fleet value {name[:60]!r}: give the name of a fleet (see dstack fleet)"
            )
    return list(names)


def _spot_policy(value: str | None) -> SpotPolicy | None:
    if value is None:
        return None
    try:
        return SpotPolicy(value)
    except ValueError:
        allowed = ", ".join(policy.value for policy in SpotPolicy)
        raise ConfigError(f"Invalid --spot-policy value {show_value(value)}: use one of {allowed}") from None


def _max_duration(value: str | None) -> int | str | None:
    if value is None:
        return None
    if value.strip().lower() == "off":
        return "off"
    return _duration_flag("--max-duration", value)


def _retry(retry: bool | None, retry_limit: str | None) -> Retry | bool | None:
    if retry_limit is not None:
        if retry is False:
            raise ConfigError("--no-retry and --retry-limit contradict each other; give only one of them")
        return Retry(duration=_duration_flag("--retry-limit", retry_limit))
    if retry is None:
        return None
    return Retry() if retry else False


def _duration_flag(flag: str, value: str) -> int:
    try:
        return positive_duration(value)
    except InvalidValue as error:
        raise ConfigError(f"Invalid {flag} value {show_value(value)}: {error.reason}") from None
