"""HTTP errors: every failure becomes ``{"error": {"code", "message"}}`` with a fitting status.

The project's typed errors (dgae.errors) map by class; the service adds its own for media types,
parameters, auth, backpressure, memory and deadlines. Running out of memory (CUDA or CPU, in a batch
or anywhere in a route) is 503 ``out_of_memory`` with ``Retry-After``, never 500. Anything else
unexpected is logged with its traceback and answered 500 with a generic message, so no input can
kill the process or leak internals.
"""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

import torch

from dgae.errors import BackendError, CheckpointError, ConfigError, DGAEError, InputError, TooLargeError

log = logging.getLogger(__name__)

# Allocation failures by message: torch's CPU allocator ("DefaultCPUAllocator: can't allocate memory",
# "not enough memory" on Windows), CUDA ("out of memory"), ONNX Runtime ("Failed to allocate memory"),
# the OS (ENOMEM: "Cannot allocate memory").
OOM_MARKERS = ("out of memory", "can't allocate memory", "cannot allocate memory", "not enough memory",
               "failed to allocate memory")


class ServiceError(DGAEError):
    status = 500
    code = "service_error"
    headers: dict[str, str] = {}

    def __init__(self, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.headers = headers or {}


class UnsupportedMediaType(ServiceError):
    status, code = 415, "unsupported_media_type"


class ParameterError(ServiceError):
    status, code = 422, "invalid_parameter"


class UnprocessableInput(ServiceError):
    """The backend raised an unexpected exception on this request alone (its batch neighbours were
    answered): 422, not 500, so no input can produce a server error (docs/faults.md)."""

    status, code = 422, "unprocessable_input"


class UnknownParameter(ServiceError):
    status, code = 400, "unknown_parameter"


class Unauthorized(ServiceError):
    status, code = 401, "unauthorized"


class QuotaExceeded(ServiceError):
    status, code = 429, "quota_exceeded"


class QueueFull(ServiceError):
    status, code = 503, "queue_full"


class NotReady(ServiceError):
    status, code = 503, "not_ready"


class ShuttingDown(ServiceError):
    status, code = 503, "shutting_down"


class BudgetFull(ServiceError):
    status, code = 503, "budget_full"


class OutOfMemory(ServiceError):
    status, code = 503, "out_of_memory"


class DeadlineExceeded(ServiceError):
    status, code = 504, "deadline_exceeded"


class OverDeadline(ServiceError):
    """Refused up front: the cost model's estimate is over the request's deadline."""
    status, code = 413, "over_deadline"


class Busy(ServiceError):
    """Refused up front: the request fits its deadline alone, not behind the job on its worker."""
    status, code = 503, "busy"


class NotFound(ServiceError):
    status, code = 404, "not_found"


class TooManyJobs(ServiceError):
    status, code = 429, "too_many_jobs"


class StorageFull(ServiceError):
    status, code = 507, "storage_full"


class JobNotDone(ServiceError):
    status, code = 409, "job_not_done"


def retry_after(seconds: int) -> dict[str, str]:
    return {"Retry-After": str(seconds)}


def is_out_of_memory(exc: BaseException) -> bool:
    """A failed allocation: MemoryError, torch's OutOfMemoryError, or a runtime's allocator message.
    The project's own typed errors are never taken for one (their messages are about the input)."""
    oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                                  getattr(torch.cuda, "OutOfMemoryError", None)) if isinstance(t, type))
    if isinstance(exc, (MemoryError, *oom_types)):
        return True
    if isinstance(exc, DGAEError) or not isinstance(exc, Exception):
        return False
    text = str(exc).lower()
    return any(marker in text for marker in OOM_MARKERS)


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


# (class, status) in lookup order: the first isinstance match wins.
_STATUS_BY_CLASS: tuple[tuple[type[Exception], int], ...] = (
    (TooLargeError, 413),
    (InputError, 400),
    (BackendError, 500),
    (CheckpointError, 500),
    (ConfigError, 500),
)
_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
               413: "too_large", 415: "unsupported_media_type", 422: "invalid_parameter", 429: "quota_exceeded"}
INTERNAL_MESSAGE = "internal error; see the server log"
ERROR_CODE_SCOPE_KEY = "dgae.error_code"  # set on the ASGI scope for the metrics middleware


def status_of(exc: Exception) -> int:
    if isinstance(exc, ServiceError):
        return exc.status
    for cls, status in _STATUS_BY_CLASS:
        if isinstance(exc, cls):
            return status
    return 500


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = ErrorBody(error=ErrorDetail(code=code, message=message))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def out_of_memory(what: str, exc: BaseException, retry_after_s: int) -> OutOfMemory:
    return OutOfMemory(f"the server ran out of memory {what} ({type(exc).__name__}); retry later or send a "
                       f"smaller request", headers=retry_after(retry_after_s))


def describe(exc: Exception, retry_after_s: int) -> tuple[int, str, str, dict[str, str]]:
    """(status, code, message, headers) of any exception, for every transport: typed errors by
    class, allocation failures as 503 out_of_memory, anything else logged and answered 500 with a
    generic message."""
    if is_out_of_memory(exc):
        log.error("out of memory while handling a request", exc_info=exc)
        exc = out_of_memory("handling the request", exc, retry_after_s)
    if isinstance(exc, DGAEError):
        headers = exc.headers if isinstance(exc, ServiceError) else {}
        return status_of(exc), exc.code, str(exc), headers
    log.error("unhandled error", exc_info=exc)
    return 500, "internal_error", INTERNAL_MESSAGE, {}


def response_for(exc: Exception, retry_after_s: int) -> JSONResponse:
    """The JSON error response for any exception (used by handlers and by the batcher's callers)."""
    status, code, message, headers = describe(exc, retry_after_s)
    return error_response(status, code, message, headers or None)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "header", "path"))
        parts.append(f"{where or 'request'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request parameters"


def install_handlers(app: FastAPI, retry_after_s: int) -> None:
    """Register the JSON error handlers; each tags the scope with its code for the failure metric.
    ``retry_after_s`` goes on the 503 an out-of-memory error becomes."""
    def tagged(request: Request, response: JSONResponse, code: str) -> JSONResponse:
        request.scope[ERROR_CODE_SCOPE_KEY] = code
        return response

    async def on_dgae_error(request: Request, exc: DGAEError) -> JSONResponse:
        return tagged(request, response_for(exc, retry_after_s), exc.code)

    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return tagged(request, error_response(422, "invalid_parameter", _validation_message(exc)), "invalid_parameter")

    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return tagged(request, error_response(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None)),
                      code)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        response = response_for(exc, retry_after_s)
        return tagged(request, response, OutOfMemory.code if is_out_of_memory(exc) else "internal_error")

    app.add_exception_handler(DGAEError, on_dgae_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    # Allocation failures surface as these; handled like any typed error (answered, not re-raised to the server).
    app.add_exception_handler(MemoryError, on_unexpected)
    app.add_exception_handler(RuntimeError, on_unexpected)
    app.add_exception_handler(Exception, on_unexpected)


def openapi_errors(*statuses: int) -> dict[int, dict]:
    """``responses=`` entries documenting the JSON error body for the given statuses."""
    text = {400: "malformed input (image, tensor, metadata)", 401: "missing or invalid API key",
            413: "body, pixels (per image or per request, padded and tiled) or item count over the limit, or "
                 "the estimated time over the request's deadline (over_deadline: use /v1/jobs)",
            415: "unsupported Content-Type",
            422: "parameter out of range, or an input the backend could not process (unprocessable_input)",
            429: "the API key's quota (requests per second or megapixels per minute) is used up, or too many "
                 "jobs (Retry-After)",
            500: "a backend that reports itself broken (backend_error; never caused by an input)",
            503: "queue or in-flight pixel budget full, out of memory, not ready or shutting down (Retry-After)",
            504: "request deadline exceeded", 404: "no such job (unknown, expired or another key's)",
            409: "the job has not finished", 410: "the job was cancelled",
            507: "job results fill their disk quota"}
    return {s: {"model": ErrorBody, "description": text.get(s, "error")} for s in statuses}
