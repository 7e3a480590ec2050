"""Turning `dstack run`'s arguments, the configuration and the profiles into the run spec the server takes.

Validating a configuration needs PyYAML and pydantic, ~250 ms of imports on a small machine. The validated
result depends only on the files' bytes and a few flags, so it is cached under ~/.dstack/cache/configs by
a hash of exactly those; a warm `dstack run` of an unchanged file then needs neither library. Everything
that depends on the moment (the environment, the run name, run arguments) is applied after the cache.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

from dstack import __version__
from dstack.cli.errors import CLIError
from dstack.cli.requirements import OVERRIDE_FLAGS
from dstack.config.env import resolve_env_values
from dstack.config.errors import InterpolationError
from dstack.config.interpolation import command_table, interpolate_lines, run_references
from dstack.config.names import validate_run_name
from dstack.core.sha256 import sha256
from dstack.core.text import clip

CONFIG_NAMES = (".dstack.yml", ".dstack.yaml")
DEFAULT_CODE_LIMIT = 500 * 1024**2


class PreparedRun:
    """What `prepare` found. A plain class: importing dataclasses costs the warm `dstack run` ~15 ms."""

    def __init__(
        self,
        spec: dict[str, Any],
        code_root: Path,
        configuration: dict[str, Any],
        profile: dict[str, Any],
        code_limit: int,
        config_file: Path,
    ) -> None:
        self.spec = spec  # the run spec, without the code hash (known after packing)
        self.code_root = code_root
        self.configuration = configuration
        self.profile = profile
        self.retry = profile.get("retry") is not None
        self.code_limit = code_limit
        self.config_file = config_file
        self.summary: dict[str, str] = {}
        self.files: list[dict[str, Any]] = []  # `files` entries, their local paths resolved
        self.upload_code = True  # False when the code is a repo cloned on the host (`repos: [url]`)


def prepare(args: argparse.Namespace) -> PreparedRun:
    from dstack.code import find_code_root

    workdir = Path(args.workdir or ".").absolute()
    if not _is_dir(workdir, "working directory", args.workdir):
        raise CLIError(f"The working directory {clip(args.workdir)} does not exist or is not a directory")
    config_file = _config_file(args, workdir)
    code_root = find_code_root(workdir)
    validated = _validated(args, config_file, code_root)
    configuration, profile, ports = validated["configuration"], validated["profile"], validated["ports"]
    env = resolve_env_values(configuration["env"], os.environ, args.env)
    name = validate_run_name(args.name) if args.name else configuration.get("name")
    # Interpolated now, so that a mistake stops the run before any prompt (`finalize` redoes the commands
    # of an entrypoint task, which hold the run's name itself).
    commands, build = _interpolate(configuration, config_file, env, name or "run-name", args.run_args)
    _check_size(commands, build, env, args.run_args)
    workdir_rel = os.path.relpath(workdir.resolve(), code_root)
    working_dir = configuration.get("working_dir") or (None if workdir_rel == "." else workdir_rel)
    code_path = "."
    repos = configuration.get("repos") or []
    if repos:
        from dstack.cli.run_files import repo_folder

        # A repo is the task's code: a local one is packed instead of the code root, a url is cloned.
        local = repo_folder(configuration, config_file.parent)
        if local is not None:
            code_root, code_path = local
        working_dir = configuration.get("working_dir")
    python = configuration.get("python")
    if python is None and configuration.get("image") is None:
        python = f"{sys.version_info.major}.{sys.version_info.minor}"  # the task gets the CLI's own Python
    spec = {
        "run_name": name,
        "configuration_path": _display_path(config_file, code_root),
        "configuration": configuration,
        "profile": profile,
        "env": env,
        "working_dir": working_dir,
        "build_policy": args.build_policy or "use-build",
        "ports": ports,
        "python": python,
        "image": configuration.get("image"),
        "commands": commands,
        "build": build,
        # ${{ run.args }}: the job script's positional parameters (see dstack.config.interpolation).
        "args": list(args.run_args),
        "code_path": code_path,
        # A repo placed inside the job's code folder has paths the CLI cannot tell: no lookup for it.
        "build_inputs": _build_inputs(build, code_root, working_dir, env, name, args.run_args)
        if code_path == "."
        else None,
    }
    prepared = PreparedRun(
        spec=spec,
        code_root=code_root,
        configuration=configuration,
        profile=profile,
        code_limit=_code_limit(),
        config_file=config_file,
    )
    prepared.upload_code = not any(repo.get("url") for repo in repos)
    if configuration.get("files"):
        from dstack.cli.run_files import check_files

        prepared.files = check_files(configuration, config_file.parent)
    prepared.summary = _summary(prepared, args)
    return prepared


def finalize(prepared: PreparedRun, run_name: str, run_args: list[str]) -> None:
    """Fill in the run's name, once the server has given it (a shell's ${{ run.name }} reads it then)."""
    spec = prepared.spec
    spec["run_name"] = run_name
    if prepared.configuration.get("entrypoint"):
        spec["commands"], _ = _interpolate(
            prepared.configuration, prepared.config_file, spec["env"], run_name, run_args
        )


def _interpolate(
    configuration: dict[str, Any], config_file: Path, env: dict[str, str], run_name: str, run_args: list[str]
) -> tuple[list[str], list[str]]:
    entrypoint = bool(configuration.get("entrypoint"))
    table, plain = command_table(env=env, entrypoint=entrypoint, run_name=run_name, run_args=run_args)
    try:
        # `setup` (deprecated) runs before the commands, as in 0.11; `build` always runs in a shell.
        return (
            interpolate_lines(configuration.get("setup", []) + configuration["commands"], table, plain=plain),
            interpolate_lines(configuration["build"], run_references(env=env)),
        )
    except InterpolationError:
        # Re-run on the validated model: its error names the file, line and column.
        from dstack.config import interpolate_commands, load_configuration

        model = load_configuration(config_file, display_name=_rel_to_cwd(config_file))
        return interpolate_commands(model, env=env, run_name=run_name, run_args=run_args)


def _build_inputs(
    build: list[str],
    code_root: Path,
    working_dir: str | None,
    env: dict[str, str],
    run_name: str | None,
    run_args: list[str],
) -> dict[str, Any] | None:
    """What the build's cache key is made of, from the user's folder (the agent's own computation, on
    what the upload will carry): the plan asks each host whether it has that build (SPEC §5)."""
    if not build:
        return None
    from dstack.agent.environments.buildkey import build_inputs
    from dstack.code.ignore import IgnoreRules

    rules = IgnoreRules(code_root)

    def uploaded(path: Path) -> bool:
        return not rules.is_ignored(path.relative_to(code_root).as_posix(), False)

    variables = {**env, "DSTACK_RUN_NAME": run_name} if run_name else env
    cwd = code_root / working_dir if working_dir else code_root
    try:
        return build_inputs(working_dir or ".", build, cwd, code_root, variables, run_args, uploaded)
    except OSError:
        return None  # an unreadable file: the upload says so; the plan just cannot tell


def _check_size(commands: list[str], build: list[str], env: dict[str, str], run_args: list[str]) -> None:
    """The part of the job a host gets that the CLI knows already; the server checks the whole of it."""
    from dstack.core.limits import JOB_SPEC_LIMIT_BYTES, spec_too_big

    size = len(json.dumps([commands, build, env, run_args]).encode())
    if size > JOB_SPEC_LIMIT_BYTES:
        raise CLIError(spec_too_big(size))


def _config_file(args: argparse.Namespace, workdir: Path) -> Path:
    if args.file:
        path = Path(args.file)  # relative to the current directory, as a shell user expects
        try:
            status = path.stat()
        except FileNotFoundError:
            raise CLIError(f"The configuration file {clip(args.file)} does not exist") from None
        except (OSError, ValueError) as e:
            raise CLIError(_path_error("configuration file", args.file, e)) from None
        if not stat.S_ISREG(status.st_mode):
            raise CLIError(f"{clip(args.file)} is not a file")
        return path.absolute()
    for name in CONFIG_NAMES:
        if (workdir / name).is_file():
            return workdir / name
    shown = args.workdir or "."
    raise CLIError(f"No configuration in {shown}: create {shown}/.dstack.yml or pass one with -f FILE")


def _is_dir(path: Path, what: str, given: str) -> bool:
    try:
        return stat.S_ISDIR(path.stat().st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except (OSError, ValueError) as e:  # e.g. File name too long, or a NUL in it
        raise CLIError(_path_error(what, given, e)) from None


def _path_error(what: str, given: str, error: OSError | ValueError) -> str:
    reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    return f"Cannot use {clip(given)} as the {what}: {reason}"


def _profile_files(code_root: Path) -> list[Path]:
    return [code_root / ".dstack" / "profiles.yml", Path.home() / ".dstack" / "profiles.yml"]


def _validated(args: argparse.Namespace, config_file: Path, code_root: Path) -> dict[str, Any]:
    """{configuration, profile, ports} as JSON-able data, from the cache when the inputs are unchanged."""
    try:
        config_bytes = config_file.read_bytes()
    except OSError as e:
        raise CLIError(f"Cannot read {args.file or config_file}: {e.strerror}") from e
    flags = {k: getattr(args, k, None) for k in (*OVERRIDE_FLAGS, "profile", "port")}
    key = sha256()
    key.update(json.dumps([__version__, str(config_file), flags], sort_keys=True).encode())
    key.update(config_bytes)
    for path in _profile_files(code_root):
        key.update(path.read_bytes() if path.is_file() else b"\0missing\0")
    cache_file = Path.home() / ".dstack" / "cache" / "configs" / f"{key.hexdigest()}.json"
    try:
        return json.loads(cache_file.read_text())
    except (OSError, ValueError):
        pass
    result = _validate(args, config_file, code_root)
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(result))
        tmp.replace(cache_file)
    except OSError:
        pass  # a cache we cannot write only costs speed
    return result


def _validate(args: argparse.Namespace, config_file: Path, code_root: Path) -> dict[str, Any]:
    from dstack.cli.requirements import overrides_from
    from dstack.config import (
        load_configuration,
        load_profiles,
        merge_ports,
        resolve_profile,
        select_profile,
    )

    configuration = load_configuration(config_file, display_name=_rel_to_cwd(config_file))
    profile = select_profile(load_profiles(_profile_files(code_root)), args.profile)
    effective = resolve_profile(configuration, profile, overrides_from(args))
    ports = merge_ports(configuration.ports, args.port)
    return {
        "configuration": configuration.model_dump(mode="json"),
        "profile": effective.model_dump(mode="json"),
        "ports": [p.model_dump(mode="json") for p in ports],
    }


def _summary(prepared: PreparedRun, args: argparse.Namespace) -> dict[str, str]:
    profile = prepared.profile
    retry = profile.get("retry")
    max_duration = profile.get("max_duration")
    configuration = prepared.configuration
    summary = {
        "Configuration": prepared.spec["configuration_path"],
        "Environment": (
            f"image {prepared.spec['image']}"
            if prepared.spec["image"]
            else f"Python {prepared.spec['python']}"
        ),
        "Max price": f"${profile['max_price']:g}/h" if profile.get("max_price") else "-",
        "Max duration": _duration(max_duration) if max_duration else "-",
        "Spot policy": str(profile.get("spot_policy") or "on-demand"),
        "Retry policy": f"wait up to {_duration(retry['duration'])} for capacity" if retry else "no",
    }
    stop_duration = profile.get("stop_duration")
    if stop_duration is not None:
        summary["Stop duration"] = "off" if stop_duration == "off" else _duration(stop_duration)
    if configuration.get("priority") is not None:
        summary["Priority"] = str(configuration["priority"])
    if configuration.get("entrypoint"):
        summary["Entrypoint"] = configuration["entrypoint"]
    return summary


def _duration(seconds: int) -> str:
    from dstack.config.durations import format_duration

    return format_duration(int(seconds)) if seconds else "0s"


def _display_path(config_file: Path, code_root: Path) -> str:
    try:
        return str(config_file.resolve().relative_to(code_root))
    except ValueError:
        return str(config_file)


def _rel_to_cwd(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _code_limit() -> int:
    value = os.environ.get("DSTACK_CODE_LIMIT_MB")
    if not value:
        return DEFAULT_CODE_LIMIT
    try:
        return int(float(value) * 1024**2)
    except ValueError:
        raise CLIError(f"DSTACK_CODE_LIMIT_MB must be a number of megabytes, not {value!r}") from None
