"""Errors a service raises for the client; routers turn them into HTTP answers with one sentence."""

from __future__ import annotations


class ServiceError(Exception):
    status_code = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(ServiceError):
    status_code = 404


class Conflict(ServiceError):
    status_code = 409


class Forbidden(ServiceError):
    status_code = 403


class TooLarge(ServiceError):
    status_code = 413


class Gone(ServiceError):
    status_code = 410


class LengthRequired(ServiceError):
    status_code = 411


class BadGateway(ServiceError):
    status_code = 502


class Unavailable(ServiceError):
    """The run's host does not answer now; trying again later may work."""

    status_code = 503
