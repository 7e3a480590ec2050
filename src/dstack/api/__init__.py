"""The public Python API of dstack: `from dstack.api import Client`."""

from dstack.api.client import Client
from dstack.api.errors import APIError, NotConfigured, NotFound, ServerUnreachable, Unauthorized

__all__ = ["APIError", "Client", "NotConfigured", "NotFound", "ServerUnreachable", "Unauthorized"]
