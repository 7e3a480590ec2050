"""Read configuration and profile files into models; every problem is a located ConfigError."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from dstack.config import kinds
from dstack.config.base import ConfigModel, describe_type
from dstack.config.env import env_key_of
from dstack.config.error_messages import translate
from dstack.config.errors import ConfigError
from dstack.config.profiles import Profile, ProfilesFile
from dstack.config.task import TaskConfiguration
from dstack.config.yaml_source import YamlDocument, read_yaml
from dstack.core.text import clip

# Blocks that a file must not leave empty (`resources:` with nothing under it), as in today's dstack.
_NOT_EMPTY = {"resources": "cpu, memory, disk, shm_size or gpu"}

CONFIGURATION_SUFFIXES = (".dstack.yml", ".dstack.yaml")


def load_configuration(path: Path, *, display_name: str | None = None) -> TaskConfiguration:
    """Load a `*.dstack.yml` file; `display_name` is what messages call it (default: the path as given)."""
    name = display_name if display_name is not None else str(path)
    return parse_configuration(read_configuration_text(path, name), filename=name)


def parse_configuration(text: str, *, filename: str) -> TaskConfiguration:
    """Parse the text of a task configuration; `filename` is used in messages only."""
    configuration = parse_document(text, filename=filename)
    if not isinstance(configuration, TaskConfiguration):
        kind = getattr(configuration, "type", "?")
        raise ConfigError(
            f"This is a {kind} configuration, not a task; apply it with "
            f"{kinds.PRODUCT_TYPES.get(str(kind), 'dstack apply')} -f {filename}",
            file=filename,
        )
    return configuration


def parse_document(text: str, *, filename: str) -> ConfigModel:
    """Parse a configuration of any registered type (see `kinds`); `filename` is used in messages only."""
    document = read_yaml(text, filename=filename)
    if document.data is None:
        raise ConfigError(
            "The configuration is empty; it needs at least 'type: task' and commands", file=filename
        )
    _require_mapping(document, "a configuration", "type, commands")
    data = document.data
    kind = data.get("type")
    if kind is None:
        raise ConfigError.at(
            "Missing 'type'; add 'type: task' at the top of the file", document.source.locate(())
        )
    if not isinstance(kind, str) or kind not in kinds.registered():
        raise ConfigError.at(
            kinds.unsupported_message(kind, describe_type(kind)), document.source.locate(("type",))
        )
    _reject_empty_blocks(document)
    _locate_env_keys(document)
    model = kinds.model_for(kind)
    try:
        configuration = model.model_validate(data)
    except ValidationError as error:
        raise translate(error, document.source, what=kind) from None
    if hasattr(configuration, "attach_source"):
        configuration.attach_source(document.source)
    return configuration


def load_profiles(paths: list[Path]) -> list[Profile]:
    """Profiles from each existing file, in order; the first file wins when two define the same name."""
    profiles: dict[str, Profile] = {}
    for path in paths:
        if not path.exists():
            continue
        for profile in _profiles_in(path):
            profiles.setdefault(profile.name, profile)
    return list(profiles.values())


def select_profile(profiles: list[Profile], name: str | None) -> Profile | None:
    """The profile called `name`; without a name, the first marked `default: true`, else None."""
    if name is not None:
        for profile in profiles:
            if profile.name == name:
                return profile
        available = (
            ", ".join(profile.name for profile in profiles) or "none (define them in .dstack/profiles.yml)"
        )
        raise ConfigError(f"No profile named '{clip(name)}'; available: {available}")
    return next((profile for profile in profiles if profile.default), None)


def _profiles_in(path: Path) -> list[Profile]:
    name = str(path)
    document = read_yaml(_read_text(path, name, "Profiles file"), filename=name)
    if document.data is None:
        return []
    _require_mapping(document, "a profiles file", "profiles")
    profiles = document.data.get("profiles")
    for index, profile in enumerate(profiles if isinstance(profiles, list) else []):
        if isinstance(profile, dict):
            _reject_empty_blocks(document, profile, ("profiles", index))
    try:
        return ProfilesFile.model_validate(document.data).profiles
    except ValidationError as error:
        raise translate(error, document.source, what="profiles file") from None


def _read_text(path: Path, name: str, what: str) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{what} {name} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {name} cannot be read: it is a folder, not a file") from None
    except OSError as error:
        raise ConfigError(f"{what} {name} cannot be read: {error.strerror or error}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {name} cannot be read: it is not UTF-8 text") from None


def _require_mapping(document: YamlDocument, what: str, example_keys: str) -> None:
    if not isinstance(document.data, dict):
        raise ConfigError.at(
            f"The top level of {what} must be a mapping of keys such as {example_keys}, "
            f"got {describe_type(document.data)}",
            document.source.locate(()),
        )


def _reject_empty_blocks(
    document: YamlDocument, data: dict[str, Any] | None = None, at: tuple[str | int, ...] = ()
) -> None:
    """`resources:` with nothing under it is an error (a parsed model writes an unset block as null)."""
    block = document.data if data is None else data
    for key, expected in _NOT_EMPTY.items():
        if key in block and block[key] is None:
            raise ConfigError.at(
                f"The key {key} is empty; give {expected} under it, or remove it",
                document.source.locate((*at, key), prefer_key=True),
            )


def _locate_env_keys(document: YamlDocument) -> None:
    """Validation turns an env list into a mapping; let errors about `env.KEY` find the list entry."""
    data: Any = document.data
    env = data.get("env")
    if isinstance(env, list):
        for index, item in enumerate(env):
            if isinstance(item, str):
                document.source.alias(("env", env_key_of(item)), ("env", index))


def read_configuration_text(path: Path, name: str, *, example: str = "train.dstack.yml") -> str:
    """The text of a configuration file of any type, or a ConfigError saying why it cannot be read."""
    if not path.name.endswith(CONFIGURATION_SUFFIXES):
        raise ConfigError(
            f"Configuration file {name} must be named *.dstack.yml or *.dstack.yaml "
            f"(e.g. {example}); rename it"
        )
    return _read_text(path, name, "Configuration file")
