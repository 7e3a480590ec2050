"""Checking a submitted run spec and deriving what the scheduler needs from it."""

from __future__ import annotations

import shlex
from collections import OrderedDict
from dataclasses import dataclass

from pydantic import ValidationError

from dstack.config import ConfigError, EffectiveProfile, TaskConfiguration
from dstack.config.policies import InstanceRef
from dstack.config.profiles import RetryEvent
from dstack.core.limits import JOB_SPEC_LIMIT_BYTES, spec_too_big
from dstack.server.scheduler.model import GpuRequest, Requirements, Span
from dstack.server.schemas import RunSpec
from dstack.server.services import secrets as secrets_service
from dstack.server.services.errors import ServiceError
from dstack.server.services.spec_notes import notes_for, refusal_for

# What the supervisor adds to a job request beyond the spec (ids, allocation, tokens): room left for it.
_REQUEST_MARGIN = 16 * 1024
_SERVER_ONLY = {"configuration", "profile", "build_inputs", "configuration_path"}


@dataclass(frozen=True)
class CheckedSpec:
    spec: RunSpec
    configuration: TaskConfiguration
    profile: EffectiveProfile
    requirements: Requirements
    notes: tuple[str, ...] = ()  # the plan's lines about fields honoured differently here, or not at all
    refusal: str | None = None  # why it cannot run on any backend here
    # What each node asks for, in rank order (a node group's own resources for its nodes); one entry for a
    # single-node task: `requirements`.
    node_requirements: tuple[Requirements, ...] = ()

    @property
    def nodes(self) -> int:
        return len(self.node_requirements) or 1

    @property
    def stop_criteria(self) -> str:
        value = self.profile.stop_criteria
        return str(getattr(value, "value", value) or "all-done")

    @property
    def startup_order(self) -> str:
        value = self.profile.startup_order
        return str(getattr(value, "value", value) or "any")

    @property
    def priority(self) -> int:
        return self.configuration.priority or 0

    @property
    def schedule(self) -> list[str] | None:
        schedule = self.profile.schedule
        return list(schedule.cron) if schedule is not None else None

    @property
    def secret_names(self) -> set[str]:
        """The project secrets the job's env and registry_auth refer to."""
        texts = list(self.spec.env.values())
        auth = self.configuration.registry_auth
        if auth is not None:
            texts += [auth.password, auth.username or ""]
        return secrets_service.references(texts)

    @property
    def retry_seconds(self) -> int | None:
        """How long a run may wait for capacity (from its submission); None = it fails at once."""
        retry = self.profile.retry
        if retry is None or RetryEvent.NO_CAPACITY not in retry.on_events:
            return None
        return int(retry.duration)

    def describe(self) -> str:
        req = self.requirements
        cpus = req.cpu.describe()
        parts = [f"{cpus} CPU" if cpus == "1" else f"{cpus} CPUs", f"{req.memory_gb.describe('GB')} memory"]
        if req.disk_gb is not None:
            parts.append(f"{req.disk_gb.describe('GB')} disk")
        gpu = self.profile.resources.gpu
        parts.append(f"GPU {gpu}" if gpu is not None else "no GPU")
        if req.ports:
            parts.append("ports " + ", ".join(str(p) for p in req.ports))
        return ", ".join(parts)


def check(spec: RunSpec) -> CheckedSpec:
    try:
        configuration = TaskConfiguration.model_validate(spec.configuration)
        profile = EffectiveProfile.model_validate(spec.profile)
    except (ValidationError, ConfigError) as e:
        raise ServiceError(f"The run spec is not valid: {_first_error(e)}") from e
    if spec.image is not None and spec.python is not None:
        raise ServiceError("The run spec sets both image and python; they are mutually exclusive")
    requirements = requirements_of(spec, profile, configuration)
    return CheckedSpec(
        spec=spec,
        configuration=configuration,
        profile=profile,
        requirements=requirements,
        notes=tuple(notes_for(configuration, profile)),
        refusal=refusal_for(configuration),
        node_requirements=_node_requirements(spec, profile, configuration, requirements),
    )


def _node_requirements(
    spec: RunSpec, profile: EffectiveProfile, configuration: TaskConfiguration, requirements: Requirements
) -> tuple[Requirements, ...]:
    """One entry per node, rank order: a group's own `resources` replace the fields they set."""
    found: list[Requirements] = []
    for group in configuration.node_groups():
        own = requirements
        if group.resources is not None and configuration.groups:
            given = {k: v for k, v in group.resources if v is not None}
            merged = profile.resources.model_copy(update=given)
            explicit = {**profile.resources_explicit, **{k: True for k in given}}
            own = requirements_of(
                spec,
                profile.model_copy(update={"resources": merged, "resources_explicit": explicit}),
                configuration,
            )
        found += [own] * group.nodes
    return tuple(found)


def build_advice(configuration_path: str) -> str:
    """The tasks guide's advice for a run whose build is not cached: run it again with --build."""
    config = f" -f {shlex.quote(configuration_path)}" if configuration_path else ""
    return f"run it with --build to build it (dstack run .{config} --build)"


def check_size(spec: RunSpec) -> None:
    """Refuse at submission what a host would refuse at start: a job request over the agent's limit.

    The request (services/job_request.py) is the spec's commands, env, files and the like made concrete
    for one host; what only the server reads (the configuration as written, the profile) is left out."""
    size = len(spec.model_dump_json(exclude=_SERVER_ONLY).encode())
    if size > JOB_SPEC_LIMIT_BYTES - _REQUEST_MARGIN:
        raise ServiceError(spec_too_big(size))


# Run specs parsed (and checked) by this process, by run: a stored spec never changes, and a burst of runs
# would otherwise parse and validate each one at submission, in the scheduling pass, and again for each of
# its jobs' supervisors and requests. Bounded (least recently used out first); a miss only costs a parse.
_RECENT: OrderedDict[str, _Parsed] = OrderedDict()
_RECENT_MAX = 1_000  # ~17 KB each for a tiny task


@dataclass
class _Parsed:
    text: str  # the stored spec, as the database holds it
    spec: RunSpec
    checked: CheckedSpec | None = None


def remember(run_id: str, text: str, checked: CheckedSpec) -> None:
    """At submission: the run's stored spec `text` is `checked.spec`, checked."""
    _keep(run_id, _Parsed(text, checked.spec, checked))


def recall(run_id: str) -> CheckedSpec | None:
    """The run's checked spec if this process has it at hand."""
    found = _RECENT.get(run_id)
    return found.checked if found is not None else None


def text_of(run_id: str) -> str | None:
    """The run's stored spec text if this process has it at hand (a row read without it can be given it)."""
    found = _RECENT.get(run_id)
    return found.text if found is not None else None


def spec_of(run_id: str, text: str) -> RunSpec:
    """The run's stored spec `text`, parsed (ValueError if it cannot be)."""
    return _parsed(run_id, text).spec


def checked_of(run_id: str, text: str) -> CheckedSpec:
    """The run's stored spec `text`, parsed and checked (ServiceError or ValueError if it fails)."""
    found = _parsed(run_id, text)
    if found.checked is None:
        found.checked = check(found.spec)
    return found.checked


def forget(run_id: str) -> None:
    _RECENT.pop(run_id, None)


def _parsed(run_id: str, text: str) -> _Parsed:
    found = _RECENT.get(run_id)
    if found is not None and (found.text is text or found.text == text):
        _RECENT.move_to_end(run_id)
        return found
    found = _Parsed(text, RunSpec.model_validate_json(text))
    _keep(run_id, found)
    return found


def _keep(run_id: str, parsed: _Parsed) -> None:
    _RECENT[run_id] = parsed
    _RECENT.move_to_end(run_id)
    while len(_RECENT) > _RECENT_MAX:
        _RECENT.popitem(last=False)


def _first_error(e: Exception) -> str:
    if isinstance(e, ValidationError):
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return f"{where}: {first['msg']}"
    return str(e)


def requirements_of(
    spec: RunSpec, profile: EffectiveProfile, configuration: TaskConfiguration | None = None
) -> Requirements:
    resources = profile.resources
    explicit = profile.resources_explicit
    cpu = resources.cpu
    memory = resources.memory
    gpu = resources.gpu
    gpu_request = None
    if gpu is not None:
        gpu_request = GpuRequest(
            count=_span(gpu.count.min, gpu.count.max),
            names=tuple(n.upper() for n in gpu.name or ()),
            memory_gb=_span(gpu.memory.min, gpu.memory.max) if gpu.memory is not None else None,
            vendor=gpu.vendor,
        )
    return Requirements(
        cpu=_span(cpu.count.min, cpu.count.max) if cpu is not None else Span(2, None),
        memory_gb=_span(memory.min, memory.max) if memory is not None else Span(8, None),
        disk_gb=_span(resources.disk.min, resources.disk.max) if resources.disk is not None else None,
        gpu=gpu_request,
        cpu_explicit=bool(explicit.get("cpu")),
        memory_explicit=bool(explicit.get("memory")),
        arch=cpu.arch if cpu is not None else None,
        ports=tuple(p.container_port for p in spec.ports),
        needs_containers=spec.image is not None,
        python=spec.python if spec.image is None else None,
        max_price=profile.max_price,
        spot_policy=str(
            profile.spot_policy.value if hasattr(profile.spot_policy, "value") else profile.spot_policy
        ),
        backends=tuple(profile.backends) if profile.backends else None,
        regions=tuple(profile.regions) if profile.regions else None,
        fleets=tuple(profile.fleets) if profile.fleets else None,
        instances=_instances(profile),
        needs_nvcc=bool(configuration is not None and configuration.nvcc),
    )


def _instances(profile: EffectiveProfile) -> tuple[tuple[str | None, str | int], ...] | None:
    """`instances:` as (fleet, name or index) pairs: a name or hostname matches in any fleet."""
    if not profile.instances:
        return None
    return tuple(
        (item.fleet, item.index) if isinstance(item, InstanceRef) else (None, item)
        for item in profile.instances
    )


def _span(low: object, high: object) -> Span:
    return Span(float(low) if low is not None else 0.0, float(high) if high is not None else None)  # type: ignore[arg-type]
