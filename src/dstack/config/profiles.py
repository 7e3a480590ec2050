"""Profile fields (shared by profiles and task configurations) and `.dstack/profiles.yml`."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BeforeValidator,
    Discriminator,
    Field,
    StrictBool,
    Tag,
    WithJsonSchema,
    model_validator,
)

from dstack.config.base import AlsoAccepts, ConfigModel, InvalidValue, located_error
from dstack.config.durations import duration_seconds
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
from dstack.config.resources import ResourcesSpec


class SpotPolicy(str, Enum):
    SPOT = "spot"
    ON_DEMAND = "on-demand"
    AUTO = "auto"


class RetryEvent(str, Enum):
    NO_CAPACITY = "no-capacity"
    INTERRUPTION = "interruption"
    ERROR = "error"


# This product's backends first, then today's dstack's: a file written for dstack that names a cloud backend
# is accepted, and the plan says that no offer here is from that backend.
BackendName = Literal[
    "local",
    "ssh",
    "slurm",
    "amddevcloud",
    "aws",
    "azure",
    "cloudrift",
    "cudo",
    "datacrunch",
    "digitalocean",
    "dstack",
    "gcp",
    "hotaisle",
    "kubernetes",
    "lambda",
    "nebius",
    "oci",
    "remote",
    "runpod",
    "tensordock",
    "vastai",
    "verda",
    "vultr",
]
DEFAULT_RETRY_DURATION = 3600
_DURATION_SCHEMA = {
    "anyOf": [{"type": "integer", "minimum": 1}, {"type": "string", "examples": ["30m", "72h"]}]
}


def positive_duration(value: Any) -> int:
    seconds = duration_seconds(value)
    if seconds == 0:
        raise InvalidValue("duration", value, "it must be longer than zero")
    return seconds


def _max_duration(value: Any) -> Any:
    if value is None or value is True:
        return None  # `true` asks for the default, i.e. whatever a lower layer or the built-in says
    if value is False or (isinstance(value, str) and value.strip().lower() == "off"):
        return "off"
    return positive_duration(value)


def _price(value: Any) -> Any:
    if isinstance(value, bool):
        raise InvalidValue("max_price", value, "use a price in USD per hour, e.g. 0.5")
    return value


Duration = Annotated[int, BeforeValidator(positive_duration), WithJsonSchema(_DURATION_SCHEMA)]
Off = Literal["off"]
MaxDuration = Annotated[
    Union[int, Off, None],
    BeforeValidator(_max_duration),
    WithJsonSchema({"anyOf": [*_DURATION_SCHEMA["anyOf"], {"type": "boolean"}, {"type": "null"}]}),
]
Price = Annotated[float, BeforeValidator(_price), Field(gt=0)]


def _all_events() -> list[RetryEvent]:
    return list(RetryEvent)


class Retry(ConfigModel):
    """Resubmit the run on these events until `duration` seconds have passed since its submission."""

    block_name = "retry"

    on_events: list[RetryEvent] = Field(default_factory=_all_events, min_length=1)
    duration: Duration = DEFAULT_RETRY_DURATION


def _retry_setting(value: Any) -> Any:
    if value is True:
        return Retry()
    if value is None or value is False or isinstance(value, (dict, Retry)):
        return value
    raise InvalidValue("retry", value, "use true, false or a mapping with duration and on_events")


RetrySetting = Annotated[
    Union[
        Annotated[
            Union[Annotated[Retry, Tag("on")], Annotated[Literal[False], Tag("off")]],
            # Only the branch that matches the shape is validated, so its errors are the only ones shown.
            Discriminator(lambda value: "off" if value is False else "on"),
        ],
        None,
    ],
    BeforeValidator(_retry_setting),
    AlsoAccepts({"type": "boolean", "description": "true: retry on every event for 1h"}),
]


class RetryPolicy(ConfigModel):
    """The 2023 spelling (`retry_policy: {retry: true, limit: 3h}`), mapped onto `retry`."""

    block_name = "retry_policy"

    retry: StrictBool = False
    limit: Duration | None = None

    def to_retry(self) -> Retry | Literal[False]:
        # As in dstack, a limit implies retrying; unlike dstack 0.12, no limit means 1h, not forever.
        if self.limit is not None:
            return Retry(duration=self.limit)
        return Retry() if self.retry else False


class ProfileParams(ConfigModel):
    """Fields that may be set in a profile and in a configuration; None means "not set here"."""

    resources: ResourcesSpec | None = None
    backends: list[BackendName] | None = Field(default=None, min_length=1)
    regions: list[str] | None = Field(default=None, min_length=1)
    spot_policy: SpotPolicy | None = None
    max_price: Price | None = None
    max_duration: MaxDuration = None
    # The effective setting: a `retry_policy` given by the user is folded into it and then set to None.
    retry: RetrySetting = None
    retry_policy: RetryPolicy | None = None
    # Today's dstack's profile fields (reference §10.2): see `policies.py` and the plan's notes.
    stop_duration: StopDuration = None
    utilization_policy: UtilizationPolicy | None = None
    schedule: Schedule | None = None
    fleets: list[str] | None = Field(default=None, min_length=1)
    instances: list[InstanceSelector] | None = Field(default=None, min_length=1)
    startup_order: StartupOrder | None = None
    stop_criteria: StopCriteria | None = None
    # Provisioning options of cloud backends: accepted, without effect here (the plan says so).
    availability_zones: list[str] | None = Field(default=None, min_length=1)
    instance_types: list[str] | None = Field(default=None, min_length=1)
    reservation: str | None = None
    idle_duration: IdleDuration = None
    creation_policy: CreationPolicy | None = None
    tags: Tags | None = None
    backend_options: BackendOptions | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_retry_spelling(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("retry") is not None and data.get("retry_policy") is not None:
            later = [key for key in data if key in ("retry", "retry_policy")][-1]
            raise located_error(
                "Give either retry or retry_policy, not both (retry_policy is the older spelling of retry)",
                later,
                on_key=True,
            )
        return data

    @model_validator(mode="after")
    def _fold_retry_policy(self) -> ProfileParams:
        if self.retry_policy is not None:
            # Folded and cleared, so that a dumped model validates again (both keys would be refused).
            self.retry = self.retry_policy.to_retry()
            self.retry_policy = None
        return self


class Profile(ProfileParams):
    """A named set of defaults from `.dstack/profiles.yml`, chosen with `--profile NAME`."""

    block_name = "profile"

    name: str = Field(min_length=1)
    default: StrictBool = False


class ProfilesFile(ConfigModel):
    block_name = "profiles file"

    profiles: list[Profile] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _null_is_empty(cls, data: Any) -> Any:
        if isinstance(data, dict) and "profiles" in data and data["profiles"] is None:
            return {**data, "profiles": []}
        return data

    @model_validator(mode="after")
    def _unique_names_and_default(self) -> ProfilesFile:
        names: set[str] = set()
        default: str | None = None
        for index, profile in enumerate(self.profiles):
            if profile.name in names:
                raise located_error(
                    f"Profile '{profile.name}' is defined twice; give each profile its own name",
                    "profiles",
                    index,
                    "name",
                )
            names.add(profile.name)
            if profile.default:
                if default is not None:
                    raise located_error(
                        f"Profiles '{default}' and '{profile.name}' are both marked default: true; keep one",
                        "profiles",
                        index,
                        "default",
                    )
                default = profile.name
        return self
