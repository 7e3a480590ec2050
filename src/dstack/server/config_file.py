"""The server's own settings file, ~/.dstack/server/config.yml: which backends it offers.

Created with the local backend on first start, so a new user never has to write it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

DEFAULT_CONFIG = """\
# dstack server settings. Backends say where tasks run.
backends:
  - type: local      # this machine
    price: 0         # USD per hour shown in plans
"""


class ServerConfigError(Exception):
    pass


class LocalBackendConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["local"] = "local"
    price: float = Field(default=0.0, ge=0)
    # Resources the agent cannot detect (e.g. GPUs on a machine without drivers); they override detection.
    resources: dict[str, Any] = Field(default_factory=dict)


class ServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backends: list[LocalBackendConfig] = Field(default_factory=lambda: [LocalBackendConfig()])


def load_server_config(path: Path) -> ServerConfig:
    if not path.exists():
        path.write_text(DEFAULT_CONFIG)
    try:
        data = yaml.safe_load(path.read_text()) or {}
        return ServerConfig.model_validate(data)
    except yaml.YAMLError as e:
        raise ServerConfigError(f"{path} is not valid YAML: {e}") from e
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ServerConfigError(f"{path}: {where}: {first['msg']}") from e
