"""The model of a `*.dstack.yml` file with `type: fleet`: the user's own hosts, reached over SSH.

Today's dstack shape:

    type: fleet
    name: my-boxes                 # optional: the file's name without .dstack.yml
    placement: any                 # or cluster: the hosts reach each other (multi-node tasks)
    ssh_config:
      user: root                   # defaults for every host
      port: 22
      identity_file: ~/.ssh/id_ed25519
      proxy_jump: {hostname: bastion, user: jump, identity_file: ~/.ssh/jump}
      hosts:
        - 10.250.1.2
        - hostname: 10.250.2.2
          port: 2222
          user: ubuntu
          identity_file: ~/.ssh/other_key
          internal_ip: 10.0.0.2    # the address the hosts reach each other on, if not `hostname`

Every value that reaches an `ssh` command line is checked here (a hostname or user starting with `-` would
be read as an option), and every error names file:line:column.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from dstack.config.base import ConfigModel, describe_type, located_error
from dstack.config.errors import ConfigError, Location
from dstack.config.yaml_source import SourceMap

FLEET_NAME = re.compile(r"[a-z][a-z0-9-]{1,40}")
_HOSTNAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,252}")
_USER = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")
MAX_HOSTS = 1000


def _hostname(value: Any, what: str = "hostname") -> str:
    if not isinstance(value, str):
        raise ValueError(f"The {what} must be a host name or IP address, got {describe_type(value)}")
    text = value.strip()
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        pass
    if not _HOSTNAME.fullmatch(text):
        raise ValueError(
            f"Invalid {what} {text[:60]!r}: use a host name (letters, digits, '.', '-', '_') or an IP address"
        )
    return text


def _user(value: Any) -> Any:
    if value is None:
        return None
    if not isinstance(value, str) or not _USER.fullmatch(value):
        shown = repr(value)[:60] if isinstance(value, str) else describe_type(value)
        raise ValueError(f"Invalid user {shown}: use a Unix user name such as root or ubuntu")
    return value


def _port(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError("The port must be a whole number from 1 to 65535")
    return value


def _identity_file(value: Any) -> Any:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise ValueError("identity_file must be the path of a private key file, e.g. ~/.ssh/id_ed25519")
    return value.strip()


class _Endpoint(ConfigModel):
    """What every way of naming an SSH endpoint shares."""

    user: str | None = None
    port: int | None = None
    identity_file: str | None = None

    @field_validator("user", mode="before")
    @classmethod
    def _valid_user(cls, value: Any) -> Any:
        return _user(value)

    @field_validator("port", mode="before")
    @classmethod
    def _valid_port(cls, value: Any) -> Any:
        return _port(value)

    @field_validator("identity_file", mode="before")
    @classmethod
    def _valid_identity_file(cls, value: Any) -> Any:
        return _identity_file(value)


class ProxyJump(_Endpoint):
    block_name = "proxy_jump"

    hostname: str

    @field_validator("hostname", mode="before")
    @classmethod
    def _valid_hostname(cls, value: Any) -> str:
        return _hostname(value)


class HostSpec(ProxyJump):
    """One host of the fleet; unset fields come from ssh_config."""

    block_name = "host"

    proxy_jump: ProxyJump | None = None
    internal_ip: str | None = None

    @field_validator("internal_ip", mode="before")
    @classmethod
    def _valid_internal_ip(cls, value: Any) -> Any:
        if value is None:
            return None
        try:
            return str(ipaddress.ip_address(str(value).strip()))
        except ValueError:
            raise ValueError(f"internal_ip {str(value)[:60]!r} is not an IP address") from None


class SSHConfig(_Endpoint):
    block_name = "ssh_config"

    proxy_jump: ProxyJump | None = None
    hosts: list[HostSpec] = Field(min_length=1, max_length=MAX_HOSTS)

    @field_validator("hosts", mode="before")
    @classmethod
    def _addresses_are_hosts(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("ssh_config.hosts is empty; list the addresses of your hosts under it")
        if not isinstance(value, list):
            return value
        return [{"hostname": item} if isinstance(item, str) else item for item in value]

    @field_validator("hosts")
    @classmethod
    def _each_host_once(cls, hosts: list[HostSpec]) -> list[HostSpec]:
        seen: set[tuple[str, int | None]] = set()
        for index, host in enumerate(hosts):
            key = (host.hostname, host.port)
            if key in seen:
                raise located_error(f"Host {host.hostname} is listed twice; list each host once", index)
            seen.add(key)
        return hosts


class FleetConfiguration(ConfigModel):
    """A fleet of the user's own hosts: `dstack apply` connects to them and makes them offers."""

    block_name = "fleet"

    type: Literal["fleet"]
    name: str | None = None
    placement: Literal["any", "cluster"] = "any"
    ssh_config: SSHConfig

    _source: SourceMap | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _check_type(cls, data: Any) -> Any:
        if isinstance(data, dict):
            cls.check_keys(data)
            if data.get("type") != "fleet":
                raise located_error("This is not a fleet configuration; use type: fleet", "type")
            if data.get("ssh_config") is None:
                raise located_error(
                    "Missing 'ssh_config'; add ssh_config with the fleet's hosts (and user, identity_file)"
                )
        return data

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str | None) -> str | None:
        if value is not None and not FLEET_NAME.fullmatch(value):
            raise ValueError(
                f"Invalid fleet name {value[:60]!r}; use 2 to 41 lowercase letters, digits and '-', "
                "starting with a letter (e.g. my-boxes)"
            )
        return value

    def location_of(self, *path: str | int) -> Location | None:
        return self._source.locate(path) if self._source is not None else None

    def attach_source(self, source: SourceMap) -> None:
        self._source = source

    def hosts(self) -> list[ResolvedHost]:
        """Every host with the defaults of ssh_config filled in."""
        config = self.ssh_config
        resolved = []
        for index, host in enumerate(config.hosts):
            jump = host.proxy_jump or config.proxy_jump
            resolved.append(
                ResolvedHost(
                    index=index,
                    hostname=host.hostname,
                    port=host.port or config.port or 22,
                    user=host.user or config.user or "root",
                    identity_file=host.identity_file or config.identity_file,
                    internal_ip=host.internal_ip,
                    proxy_jump=ResolvedHost(
                        index=-1,
                        hostname=jump.hostname,
                        port=jump.port or 22,
                        user=jump.user or config.user or "root",
                        identity_file=jump.identity_file or config.identity_file,
                    )
                    if jump is not None
                    else None,
                )
            )
        return resolved


class ResolvedHost(ConfigModel):
    """A host as the server connects to it (defaults applied); `identity_file` as the user wrote it."""

    block_name = "host"

    index: int
    hostname: str
    port: int = 22
    user: str = "root"
    identity_file: str | None = None
    internal_ip: str | None = None
    proxy_jump: ResolvedHost | None = None

    @property
    def address(self) -> str:
        """How the host is named in the fleet (and as INSTANCE in offers): host, or host:port."""
        return self.hostname if self.port == 22 else f"{self.hostname}:{self.port}"


def default_fleet_name(path: Path) -> str:
    """The name of a fleet whose file gives none: the file's name without .dstack.yml."""
    stem = path.name
    for suffix in (".dstack.yml", ".dstack.yaml"):
        stem = stem.removesuffix(suffix)
    candidate = re.sub(r"[^a-z0-9-]+", "-", stem.lower()).strip("-")
    if not candidate or not candidate[0].isalpha():
        candidate = f"fleet-{candidate}".rstrip("-")
    return candidate[:41] if FLEET_NAME.fullmatch(candidate[:41]) else "fleet"


def parse_fleet_configuration(text: str, *, filename: str) -> FleetConfiguration:
    """Parse the text of a fleet configuration (the loader's one type dispatch, see `kinds`); `filename` is
    used in messages only."""
    from dstack.config.loader import parse_document

    configuration = parse_document(text, filename=filename)
    if not isinstance(configuration, FleetConfiguration):
        raise ConfigError(
            f"This is a {getattr(configuration, 'type', '?')} configuration, not a fleet; "
            f"run it with dstack run -f {filename}",
            file=filename,
        )
    return configuration


def load_fleet_configuration(path: Path, *, display_name: str | None = None) -> FleetConfiguration:
    from dstack.config.loader import read_configuration_text

    name = display_name if display_name is not None else str(path)
    text = read_configuration_text(path, name, example="fleet.dstack.yml")
    configuration = parse_fleet_configuration(text, filename=name)
    if configuration.name is None:
        configuration.name = default_fleet_name(path)
    return configuration
