"""What the server asks the agent to run: the job spec, validated from the JSON of POST /api/jobs."""

from __future__ import annotations

import posixpath
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

from dstack.agent.codestore import is_code_hash

_JOB_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_ENV_NAME_RE = re.compile(r"^[^=\0]+$")
DEFAULT_STOP_GRACE_SECONDS = 10.0
MAX_STOP_GRACE_SECONDS = 3600.0


class SpecError(ValueError):
    """The spec is invalid; the message is one sentence for the client."""


BUILD_POLICIES = ("use-build", "build", "force-build")


@dataclass(frozen=True)
class JobResources:
    """What the job holds on this host: limits to enforce where the driver can, and its GPUs."""

    cpus: Optional[float] = None  # None = shares the host's CPUs
    memory_bytes: Optional[int] = None  # None = shares the host's memory
    gpus: List[int] = field(default_factory=list)  # indices of the host GPUs the job may see
    shm_bytes: Optional[int] = None


@dataclass(frozen=True)
class JobSpec:
    id: str
    run_name: str
    commands: List[str]
    env: Dict[str, str] = field(default_factory=dict)
    working_dir: Optional[str] = None
    code_hash: Optional[str] = None
    stop_grace_seconds: float = DEFAULT_STOP_GRACE_SECONDS
    max_duration: Optional[int] = None
    # The environment (SPEC §5): a Python version for a virtualenv, or a container image; and the build.
    python: Optional[str] = None
    image: Optional[str] = None
    build: List[str] = field(default_factory=list)
    build_policy: str = "use-build"
    resources: JobResources = field(default_factory=JobResources)
    ports: List[int] = field(default_factory=list)  # the ports the task listens on (host networking)
    # The run's arguments: the script's positional parameters, which `${{ run.args }}` refers to ("$@").
    args: List[str] = field(default_factory=list)

    def to_json(self) -> Dict[str, Any]:
        return asdict(self)


def is_job_id(value: str) -> bool:
    # "." and ".." match the pattern but would name the jobs folder itself or its parent.
    return bool(_JOB_ID_RE.match(value)) and value not in (".", "..")


def parse_job_spec(data: Any) -> JobSpec:
    if not isinstance(data, dict):
        raise SpecError("The job spec must be a JSON object")
    known = set(JobSpec.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise SpecError(
            f"Unknown job spec field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}"
        )
    job_id = _require(data, "id", str)
    if not is_job_id(job_id):
        raise SpecError("Field id must be 1-64 characters of letters, digits, '_', '.' and '-'")
    commands = _require(data, "commands", list)
    if not all(isinstance(command, str) for command in commands):
        raise SpecError("Field commands must be a list of strings")
    return JobSpec(
        id=job_id,
        run_name=_require(data, "run_name", str),
        commands=list(commands),
        env=_parse_env(data.get("env")),
        working_dir=_parse_working_dir(data.get("working_dir")),
        code_hash=_parse_code_hash(data.get("code_hash")),
        stop_grace_seconds=_parse_grace(data.get("stop_grace_seconds")),
        max_duration=_parse_max_duration(data.get("max_duration")),
        python=_parse_optional_text(data.get("python"), "python", _PYTHON_RE),
        image=_parse_optional_text(data.get("image"), "image", _IMAGE_RE),
        build=_parse_text_list(data.get("build"), "build"),
        build_policy=_parse_build_policy(data.get("build_policy")),
        resources=_parse_resources(data.get("resources")),
        ports=_parse_ports(data.get("ports")),
        args=_parse_args(data.get("args")),
    )


_PYTHON_RE = re.compile(r"^3\.\d{1,2}$")
# Docker references: [registry[:port]/]name[:tag][@digest]; no whitespace, no shell metacharacters.
_IMAGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}$")


def _parse_optional_text(value: Any, name: str, pattern: "re.Pattern[str]") -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, str) or not pattern.match(value):
        raise SpecError(f"Field {name} has an invalid value {value!r}")
    return value


def _parse_text_list(value: Any, name: str) -> List[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise SpecError(f"Field {name} must be a list of strings")
    return list(value)


def _parse_build_policy(value: Any) -> str:
    if value is None:
        return "use-build"
    if value not in BUILD_POLICIES:
        raise SpecError(f"Field build_policy must be one of {', '.join(BUILD_POLICIES)}")
    return str(value)


def _parse_resources(value: Any) -> JobResources:
    if value is None:
        return JobResources()
    if not isinstance(value, dict):
        raise SpecError("Field resources must be an object")
    unknown = sorted(set(value) - set(JobResources.__dataclass_fields__))
    if unknown:
        raise SpecError(f"Unknown resources field(s) {', '.join(unknown)}")
    cpus = value.get("cpus")
    if cpus is not None and (isinstance(cpus, bool) or not isinstance(cpus, (int, float)) or cpus <= 0):
        raise SpecError("Field resources.cpus must be a positive number or null")
    gpus = value.get("gpus") or []
    if not isinstance(gpus, list) or not all(
        isinstance(g, int) and not isinstance(g, bool) and g >= 0 for g in gpus
    ):
        raise SpecError("Field resources.gpus must be a list of GPU indices")
    return JobResources(
        cpus=float(cpus) if cpus is not None else None,
        memory_bytes=_positive_int(value.get("memory_bytes"), "resources.memory_bytes"),
        gpus=list(gpus),
        shm_bytes=_positive_int(value.get("shm_bytes"), "resources.shm_bytes"),
    )


def _positive_int(value: Any, name: str) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SpecError(f"Field {name} must be a positive integer or null")
    return value


def _parse_args(value: Any) -> List[str]:
    args = _parse_text_list(value, "args")
    if any("\0" in arg for arg in args):
        raise SpecError("Field args must not hold NUL characters")
    return args


def _parse_ports(value: Any) -> List[int]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(
        isinstance(p, int) and not isinstance(p, bool) and 1 <= p <= 65535 for p in value
    ):
        raise SpecError("Field ports must be a list of port numbers (1-65535)")
    return list(value)


_KIND_NAMES: Dict[type, str] = {str: "string", list: "list"}


def _require(data: Dict[str, Any], name: str, kind: type) -> Any:
    value = data.get(name)
    if not isinstance(value, kind):
        raise SpecError(f"Field {name} is required and must be a {_KIND_NAMES[kind]}")
    return value


def _parse_env(value: Any) -> Dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise SpecError("Field env must be an object of string values")
    for name, text in value.items():
        if not _ENV_NAME_RE.match(name) or "\0" in text:
            raise SpecError(f"Environment variable {name!r} has an invalid name or value")
    return dict(value)


def _parse_working_dir(value: Any) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, str) or "\0" in value:
        raise SpecError("Field working_dir must be a string or null")
    normalized = posixpath.normpath(value) if value else "."
    if posixpath.isabs(value) or normalized == ".." or normalized.startswith("../"):
        raise SpecError(f"Working directory {value!r} must be a relative path inside the code folder")
    return normalized


def _parse_code_hash(value: Any) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, str) or not is_code_hash(value):
        raise SpecError("Field code_hash must be a lowercase sha256 hex digest or null")
    return value


def _parse_grace(value: Any) -> float:
    if value is None:
        return DEFAULT_STOP_GRACE_SECONDS
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError("Field stop_grace_seconds must be a number")
    if not 0 <= value <= MAX_STOP_GRACE_SECONDS:
        raise SpecError(f"Field stop_grace_seconds must be between 0 and {MAX_STOP_GRACE_SECONDS:g}")
    return float(value)


def _parse_max_duration(value: Any) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SpecError("Field max_duration must be a positive integer (seconds) or null")
    return value
