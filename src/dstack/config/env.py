"""The task's environment variables: `KEY=VALUE`, bare `KEY` (pass-through) or a mapping."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from dstack.config.errors import ConfigError, Location, show_value
from dstack.core.text import clip

if TYPE_CHECKING:
    from dstack.config.task import TaskConfiguration


def located_error(message: str, at: str | int, *, on_key: bool = False) -> Exception:
    # Imported late: the CLI's fast path resolves env from cached data and must not load pydantic.
    from dstack.config.base import located_error as _located

    return _located(message, at, on_key=on_key)


ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_KEY_HINT = "names use letters, digits and '_' and do not start with a digit"


def env_key_of(item: str) -> str:
    """The key of a list entry `KEY=VALUE` or `KEY`."""
    return item.partition("=")[0].strip()


def normalise_env(value: Any) -> Any:
    """A list or mapping of env entries -> {KEY: value}, where None means "take it from the CLI's env".

    Anything that is neither list nor mapping is returned as is, for the type check to report.
    """
    if value is None:
        return {}
    if isinstance(value, list):
        return _from_list(value)
    if isinstance(value, dict):
        return {_checked_key(key, key): _as_text(item, key) for key, item in value.items()}
    return value


def _from_list(items: list[Any]) -> dict[str, str | None]:
    env: dict[str, str | None] = {}
    for index, item in enumerate(items):
        if not isinstance(item, str):
            raise located_error(
                f"Env entry {index + 1} must be KEY=VALUE or KEY; quote it if it contains ': '", index
            )
        key, has_value, text = item.partition("=")
        key = _checked_key(key.strip(), index)
        if key in env:
            raise located_error(f"Env variable {key} is given twice; keep one of them", index)
        env[key] = text if has_value else None
    return env


def _checked_key(key: object, at: str | int) -> str:
    if not isinstance(key, str) or not ENV_KEY.fullmatch(key):
        shown = show_value(key) if isinstance(key, str) else f"'{key}'"
        raise located_error(f"Invalid env variable name {shown}; {_KEY_HINT}", at, on_key=isinstance(at, str))
    return key


def _as_text(value: object, key: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return getattr(value, "yaml_text", None) or str(value)
    raise located_error(f"The value of env variable {key} must be a string, not a list or a mapping", key)


def resolve_env(
    configuration: TaskConfiguration, environ: Mapping[str, str], cli_env: list[str]
) -> dict[str, str]:
    """The task's env: the configuration's (bare keys read from `environ`), then `-e` entries over it."""
    return resolve_env_values(
        configuration.env, environ, cli_env, location_of=lambda key: configuration.location_of("env", key)
    )


def resolve_env_values(
    config_env: Mapping[str, str | None],
    environ: Mapping[str, str],
    cli_env: list[str],
    *,
    location_of: Callable[[str], Location | None] | None = None,
) -> dict[str, str]:
    """`resolve_env` on plain data (a dumped configuration's env), for the CLI's fast path."""
    from_cli = _cli_env(environ, cli_env)
    env: dict[str, str] = {}
    for key, value in config_env.items():
        if key in from_cli:
            continue  # a value given with -e needs no value from the configuration or the shell
        if value is not None:
            env[key] = value
        elif key in environ:
            env[key] = environ[key]
        else:
            raise ConfigError.at(
                f"Environment variable {clip(key)} is not set; "
                f"export it or give a value in env ({clip(key)}=...)",
                location_of(key) if location_of is not None else None,
            )
    env.update(from_cli)
    return env


def _cli_env(environ: Mapping[str, str], cli_env: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for entry in cli_env:
        key, has_value, value = entry.partition("=")
        if not ENV_KEY.fullmatch(key):
            raise ConfigError(
                f"Invalid -e value {show_value(entry)}; use -e KEY=VALUE or -e KEY, where {_KEY_HINT}"
            )
        if has_value:
            env[key] = value
        elif key in environ:
            env[key] = environ[key]
        else:
            raise ConfigError(
                f"Environment variable {clip(key)} given with -e is not set; "
                f"export it or use -e {clip(key)}=VALUE"
            )
    return env
