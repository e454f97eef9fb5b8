"""dgae-client: the Python client of a running dgae-serve service (HTTP only).

Installable alone (``pip install ./clients/python``: numpy, httpx, pillow, safetensors) and importing
nothing of the project, torch included; see ``dgae_client.client`` for the API and docs/client.md for more.
"""
from ._latents import Latents
from .client import AsyncClient, Client, RetryPolicy
from .jobs import Job
from ._wire import error_from_response
from .errors import (ArgumentError, BadRequest, ClientError, ConnectionFailed, DeadlineExceeded, InvalidParameter,
                     NotFound, PayloadTooLarge, RequestTimeout, ResponseError, ServerError, ServiceError,
                     ServiceUnavailable, Unauthorized, UnsupportedMediaType)

__version__ = "0.1.0"
__all__ = ["AsyncClient", "Client", "Job", "Latents", "RetryPolicy", "error_from_response", "ArgumentError",
           "BadRequest", "ClientError", "ConnectionFailed", "DeadlineExceeded", "InvalidParameter", "NotFound",
           "PayloadTooLarge", "RequestTimeout", "ResponseError", "ServerError", "ServiceError", "ServiceUnavailable",
           "Unauthorized", "UnsupportedMediaType"]
