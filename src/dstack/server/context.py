"""Everything a request handler or background loop needs, built once per server process."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dstack.server.db.engine import Database
from dstack.server.events import Notifier
from dstack.server.settings import ServerSettings

if TYPE_CHECKING:
    from dstack.server.backends.registry import BackendRegistry


@dataclass
class ServerContext:
    settings: ServerSettings
    db: Database
    backends: BackendRegistry
    notifier: Notifier = field(default_factory=Notifier)
