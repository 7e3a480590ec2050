"""Everything a request handler or background loop needs, built once per server process."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dstack.server.config_file import RetentionConfig
from dstack.server.db.engine import Database
from dstack.server.events import Notifier
from dstack.server.settings import ServerSettings

if TYPE_CHECKING:
    from dstack.server.backends.registry import BackendRegistry
    from dstack.server.services.retention import Readers


@dataclass
class ServerContext:
    settings: ServerSettings
    db: Database
    backends: BackendRegistry
    notifier: Notifier = field(default_factory=Notifier)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    readers: Readers = field(default_factory=lambda: _readers())


def _readers() -> Readers:
    from dstack.server.services.retention import Readers

    return Readers()
