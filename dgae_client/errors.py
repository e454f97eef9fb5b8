"""Everything the client raises, in one place: ``ClientError`` and below it the argument, transport,
response and ``ServiceError`` (HTTP status) families.

The client is its own package (it imports nothing of the project), so its errors have their own base
class rather than the model's ``dgae.errors.DGAEError``. ``ArgumentError`` is also a ``ValueError``.
"""
from __future__ import annotations


class ClientError(Exception):
    """Base of everything this client raises."""

    code = "client_error"


class ArgumentError(ClientError, ValueError):
    """A bad argument to a client method or constructor (image, latents, seeds, format, timeout,
    retry settings); raised before any request is sent."""

    code = "invalid_argument"


class ConnectionFailed(ClientError):
    """The service could not be reached (after the retries)."""

    code = "connection_failed"


class RequestTimeout(ClientError):
    """No (complete) answer within the timeout."""

    code = "timeout"


class ResponseError(ClientError):
    """The service answered 2xx with a body this client cannot read."""

    code = "bad_response"


class ServiceError(ClientError):
    """The service answered with an error status; ``code`` and ``message`` are the server's."""

    code = "service_error"

    def __init__(self, status: int, code: str, message: str, retry_after_s: float | None = None):
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status, self.code, self.message, self.retry_after_s = status, code, message, retry_after_s


class BadRequest(ServiceError):
    """400: malformed image, tensor or metadata."""


class Unauthorized(ServiceError):
    """401: missing or wrong API key."""


class NotFound(ServiceError):
    """404 / 405: no such route or method (wrong base URL?)."""


class PayloadTooLarge(ServiceError):
    """413: body, pixels, item count or JSON size over the service's limits."""


class UnsupportedMediaType(ServiceError):
    """415."""


class InvalidParameter(ServiceError):
    """422: a parameter out of range (steps, seed, format, ...)."""


class ServerError(ServiceError):
    """5xx other than 503/504: the backend failed on this request's batch."""


class ServiceUnavailable(ServiceError):
    """503: queue full, not ready or shutting down (retried first)."""


class DeadlineExceeded(ServiceError):
    """504: the request waited and computed longer than the service's deadline."""


HTTP_SERVER_ERROR = 500
ERRORS_BY_STATUS: dict[int, type[ServiceError]] = {
    400: BadRequest, 401: Unauthorized, 404: NotFound, 405: NotFound, 413: PayloadTooLarge,
    415: UnsupportedMediaType, 422: InvalidParameter, 503: ServiceUnavailable, 504: DeadlineExceeded}


def service_error_class(status: int) -> type[ServiceError]:
    """The ``ServiceError`` subclass for an HTTP error status."""
    return ERRORS_BY_STATUS.get(status, ServerError if status >= HTTP_SERVER_ERROR else ServiceError)
