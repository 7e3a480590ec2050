"""Errors of the API client; each message is one sentence a user can act on."""

from __future__ import annotations


class APIError(Exception):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class ServerUnreachable(APIError):
    """Nothing answered, or the link broke."""


class Unauthorized(APIError):
    pass


class NotFound(APIError):
    pass


class NotConfigured(APIError):
    pass
