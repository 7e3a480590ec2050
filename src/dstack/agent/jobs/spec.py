"""What the server asks the agent to run: the job spec, validated from the JSON of POST /api/jobs."""

from __future__ import annotations

import posixpath
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, List, Optional

from dstack.agent.codestore import is_code_hash

_JOB_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_ENV_NAME_RE = re.compile(r"^[^=\0]+$")
DEFAULT_STOP_GRACE_SECONDS = 10.0
MAX_STOP_GRACE_SECONDS = 7 * 24 * 3600.0  # `stop_duration: off` asks for this much


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
class VolumeMount:
    """A folder of the host (`host_path`) that the task sees at `path`."""

    host_path: str
    path: str
    optional: bool = False


@dataclass(frozen=True)
class FilePlacement:
    """An uploaded archive (`code_hash`) with one file (`name`) or a folder's content, placed at `target`:
    relative to the working directory, absolute, or `~/...` (the last two in containers only)."""

    code_hash: str
    target: str
    kind: str  # file | dir
    name: Optional[str] = None


@dataclass(frozen=True)
class RepoClone:
    """A Git repository cloned on the host into `path` (relative to the code folder, or absolute)."""

    url: str
    path: str = "."
    branch: Optional[str] = None
    hash: Optional[str] = None
    if_exists: str = "error"
    single_branch: bool = True


@dataclass(frozen=True)
class RegistryAuth:
    password: str
    username: Optional[str] = None


@dataclass(frozen=True)
class UtilizationPolicy:
    min_gpu_utilization: int
    time_window: int  # seconds


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
    # Today's dstack's task fields (see dstack.server.services.job_request).
    code_path: str = "."  # where the code archive goes in the code folder
    entrypoint: Optional[List[str]] = None  # argv that runs instead of a shell; commands are its arguments
    shell: Optional[str] = None  # sh, bash or an absolute path
    user: Optional[str] = None  # the container's user, name[:group]
    privileged: bool = False
    container_workdir: Optional[str] = None  # an absolute (or ~/...) working directory in the container
    volumes: List[VolumeMount] = field(default_factory=list)
    files: List[FilePlacement] = field(default_factory=list)
    repo: Optional[RepoClone] = None
    registry_auth: Optional[RegistryAuth] = None
    utilization_policy: Optional[UtilizationPolicy] = None
    nvcc: bool = False
    # A multi-node run's MPI hostfile (one line per node): written beside the job, named by
    # DSTACK_MPI_HOSTFILE.
    mpi_hostfile: Optional[str] = None

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
        code_path=_parse_target(data.get("code_path") or ".", "code_path", outside=False),
        entrypoint=_parse_argv(data.get("entrypoint")),
        shell=_parse_shell(data.get("shell")),
        user=_parse_optional_text(data.get("user"), "user", _USER_RE),
        privileged=_parse_bool(data.get("privileged"), "privileged"),
        container_workdir=_parse_container_dir(data.get("container_workdir")),
        volumes=_parse_volumes(data.get("volumes")),
        files=_parse_files(data.get("files")),
        repo=_parse_repo(data.get("repo")),
        registry_auth=_parse_registry_auth(data.get("registry_auth")),
        utilization_policy=_parse_utilization(data.get("utilization_policy")),
        nvcc=_parse_bool(data.get("nvcc"), "nvcc"),
        mpi_hostfile=_parse_hostfile(data.get("mpi_hostfile")),
    )


MAX_HOSTFILE = 1024 * 1024


def _parse_hostfile(value: Any) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, str) or "\0" in value or len(value) > MAX_HOSTFILE:
        raise SpecError("Field mpi_hostfile must be a string of at most 1 MB")
    return value


_PYTHON_RE = re.compile(r"^3\.\d{1,2}$")
# Docker references: [registry[:port]/]name[:tag][@digest]; no whitespace, no shell metacharacters.
_IMAGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}$")


_USER_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]*)?$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_URL_RE = re.compile(r"^(?:(?:https?|ssh|git|file)://|[A-Za-z0-9_.+-]+@[A-Za-z0-9_.-]+:)[^\s]*$")
_REF_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./+-]*$")
_HASH_RE = re.compile(r"^[0-9a-f]{4,64}$")


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value or _CONTROL_RE.search(value):
        raise SpecError(f"Field {name} must be a non-empty string without control characters")
    return value


def _parse_bool(value: Any, name: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise SpecError(f"Field {name} must be true or false")
    return value


def _parse_target(value: Any, name: str, outside: bool) -> str:
    """A path relative to the working directory (normalised, never leaving it), or, where `outside`,
    absolute or ~/... (a container's own)."""
    text = _text(value, name)
    if text.startswith("/") or text == "~" or text.startswith("~/"):
        if not outside:
            raise SpecError(f"Field {name} must be a relative path")
        return posixpath.normpath(text) if text.startswith("/") else text
    normalized = posixpath.normpath(text)
    if normalized == ".." or normalized.startswith("../"):
        raise SpecError(f"Field {name} {text!r} leads outside the working directory")
    return normalized


def _parse_container_dir(value: Any) -> Optional[str]:
    return None if value is None else _parse_target(value, "container_workdir", outside=True)


def _parse_argv(value: Any) -> Optional[List[str]]:
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, str) and "\0" not in v for v in value)
    ):
        raise SpecError("Field entrypoint must be a non-empty list of strings")
    return list(value)


def _parse_shell(value: Any) -> Optional[str]:
    if value is None or value in ("sh", "bash"):
        return value
    text = _text(value, "shell")
    if not text.startswith("/") or any(c.isspace() for c in text):
        raise SpecError("Field shell must be sh, bash or an absolute path")
    return text


def _fields(value: Any, name: str, cls: Any) -> Dict[str, Any]:
    if not isinstance(value, dict):
        raise SpecError(f"Field {name} must be an object")
    unknown = sorted(set(value) - {f.name for f in fields(cls)})
    if unknown:
        raise SpecError(f"Unknown {name} field(s) {', '.join(unknown)}")
    return value


def _parse_volumes(value: Any) -> List[VolumeMount]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise SpecError("Field volumes must be a list")
    volumes = []
    for item in value:
        data = _fields(item, "volumes", VolumeMount)
        host, path = (
            _text(data.get("host_path"), "volumes.host_path"),
            _text(data.get("path"), "volumes.path"),
        )
        if not host.startswith("/") or not path.startswith("/"):
            raise SpecError("Fields volumes.host_path and volumes.path must be absolute paths")
        volumes.append(
            VolumeMount(
                host_path=posixpath.normpath(host),
                path=posixpath.normpath(path),
                optional=_parse_bool(data.get("optional"), "volumes.optional"),
            )
        )
    return volumes


def _parse_files(value: Any) -> List[FilePlacement]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise SpecError("Field files must be a list")
    files = []
    for item in value:
        data = _fields(item, "files", FilePlacement)
        kind = data.get("kind")
        if kind not in ("file", "dir"):
            raise SpecError("Field files.kind must be file or dir")
        name = data.get("name")
        if kind == "file":
            name = _text(name, "files.name")
            if "/" in name or name in (".", ".."):
                raise SpecError("Field files.name must be a file name")
        files.append(
            FilePlacement(
                code_hash=_parse_code_hash(data.get("code_hash")) or "",
                target=_parse_target(data.get("target"), "files.target", outside=True),
                kind=kind,
                name=name if kind == "file" else None,
            )
        )
    if any(not f.code_hash for f in files):
        raise SpecError("Field files.code_hash is required")
    return files


def _parse_repo(value: Any) -> Optional[RepoClone]:
    if value is None:
        return None
    data = _fields(value, "repo", RepoClone)
    url = _text(data.get("url"), "repo.url")
    if not _URL_RE.match(url) or url.startswith("-"):
        raise SpecError("Field repo.url must be an http(s), ssh, git or file URL, or user@host:path")
    branch, commit = data.get("branch"), data.get("hash")
    if branch is not None and (not isinstance(branch, str) or not _REF_RE.match(branch) or ".." in branch):
        raise SpecError("Field repo.branch must be a branch name")
    if commit is not None and (not isinstance(commit, str) or not _HASH_RE.match(commit)):
        raise SpecError("Field repo.hash must be a commit hash (lowercase hex)")
    if_exists = data.get("if_exists") or "error"
    if if_exists not in ("error", "skip"):
        raise SpecError("Field repo.if_exists must be error or skip")
    single = data.get("single_branch")
    return RepoClone(
        url=url,
        path=_parse_target(data.get("path") or ".", "repo.path", outside=True),
        branch=branch,
        hash=commit,
        if_exists=if_exists,
        single_branch=True if single is None else _parse_bool(single, "repo.single_branch"),
    )


def _parse_registry_auth(value: Any) -> Optional[RegistryAuth]:
    if value is None:
        return None
    data = _fields(value, "registry_auth", RegistryAuth)
    password, username = data.get("password"), data.get("username")
    if not isinstance(password, str) or (username is not None and not isinstance(username, str)):
        raise SpecError("Fields registry_auth.username and registry_auth.password must be strings")
    return RegistryAuth(password=password, username=username)


def _parse_utilization(value: Any) -> Optional[UtilizationPolicy]:
    if value is None:
        return None
    data = _fields(value, "utilization_policy", UtilizationPolicy)
    threshold, window = data.get("min_gpu_utilization"), data.get("time_window")
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, int)
        or not 0 <= threshold <= 100
        or isinstance(window, bool)
        or not isinstance(window, int)
        or window <= 0
    ):
        raise SpecError(
            "Field utilization_policy needs min_gpu_utilization (0-100) and time_window (seconds)"
        )
    return UtilizationPolicy(min_gpu_utilization=threshold, time_window=window)


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
