"""The client's settings, ~/.dstack/config.yml: which server (URL + token) and project commands use.

Written as JSON, which is also YAML, so reading it needs only the json module (the CLI starts faster);
a file a user rewrote in YAML style is still read, through PyYAML.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def config_path() -> Path:
    return Path.home() / ".dstack" / "config.yml"


# Plain classes, not dataclasses: importing dataclasses costs ~20 ms, a fifth of a warm `dstack ps`.
class ProjectEntry:
    __slots__ = ("default", "embedded", "name", "token", "url")

    def __init__(
        self, name: str, url: str, token: str, default: bool = False, embedded: bool = False
    ) -> None:
        self.name = name
        self.url = url
        self.token = token
        self.default = default
        self.embedded = embedded  # the CLI started this server itself and may start it again

    def to_json(self) -> dict[str, Any]:
        return {s: getattr(self, s) for s in ("name", "url", "token", "default", "embedded")}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ProjectEntry) and self.to_json() == other.to_json()

    def __repr__(self) -> str:
        return f"ProjectEntry(name={self.name!r}, url={self.url!r}, default={self.default})"


class ClientConfig:
    def __init__(self, projects: list[ProjectEntry] | None = None) -> None:
        self.projects = projects or []

    def default(self, name: str | None = None) -> ProjectEntry | None:
        if name is not None:
            return next((p for p in self.projects if p.name == name), None)
        return next((p for p in self.projects if p.default), self.projects[0] if self.projects else None)

    def upsert(self, entry: ProjectEntry) -> None:
        if entry.default:
            for p in self.projects:
                p.default = False
        self.projects = [p for p in self.projects if p.name != entry.name] + [entry]


class ConfigFileError(Exception):
    pass


def load_config(path: Path | None = None) -> ClientConfig:
    path = path or config_path()
    try:
        text = path.read_text()
    except FileNotFoundError:
        return ClientConfig()
    data = _parse(text, path)
    projects = []
    for item in data.get("projects") or []:
        try:
            projects.append(
                ProjectEntry(
                    name=str(item["name"]),
                    url=str(item["url"]),
                    token=str(item["token"]),
                    default=bool(item.get("default", False)),
                    embedded=bool(item.get("embedded", False)),
                )
            )
        except (KeyError, TypeError) as e:
            raise ConfigFileError(
                f"{path} has a project entry without {e}; fix it or run dstack config"
            ) from e
    return ClientConfig(projects=projects)


def _parse(text: str, path: Path) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigFileError(f"{path} is not valid YAML; fix it or delete it: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigFileError(f"{path} must hold a mapping with a 'projects' list")
    return data


def save_config(config: ClientConfig, path: Path | None = None) -> None:
    path = path or config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"projects": [p.to_json() for p in config.projects]}, indent=2) + "\n"
    import tempfile  # only when writing, which is rare: reading stays cheap

    # Atomic and private: the file holds tokens.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".config-")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
