"""HTTP plumbing shared by every HTTP adapter (native routes, Open Inference Protocol, Remote VAE):
the engine of a request, the API-key dependency, the query-parameter check and timing headers.
Protocol-neutral otherwise: no route lives here."""
from __future__ import annotations

import time

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .auth import BEARER, PRINCIPAL_SCOPE_KEY  # noqa: F401 - BEARER: the scheme adapters name in 401s
from .engine import TIMEOUT_HEADER, Engine
from .errors import ParameterError
from .params import unknown_parameters

H_TIMING = "Server-Timing"  # "<op>;dur=<ms>": this request's wait in the batch queue + the model's batch
# Response headers every HTTP adapter sets alike (the seeds and steps a request was served with, the model)
H_SEEDS, H_STEPS, H_MODEL, H_SHA, H_MODE, H_SHAPE = (
    "X-DGAE-Seeds", "X-DGAE-Steps", "X-DGAE-Model", "X-DGAE-Checkpoint-Sha256", "X-DGAE-Mode", "X-DGAE-Shape")
MS_PER_S = 1000
_bearer = HTTPBearer(auto_error=False, description="required only when the server has API keys")


def engine(request: Request) -> Engine:
    return request.app.state.service


def authorize(request: Request, token: str | None) -> None:
    """401 for a missing or wrong key, 429 over the key's request rate (service.core.auth, .quotas);
    the principal goes on the scope, where admission charges its megapixels. For adapters that read
    the key themselves (Remote VAE: Bearer or Basic) and for :func:`require_api_key`."""
    request.scope[PRINCIPAL_SCOPE_KEY] = engine(request).authorize(token)


async def require_api_key(request: Request,
                          creds: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
    authorize(request, creds.credentials if creds else None)


def check_query(request: Request) -> None:
    """400 for query parameters the matched route does not declare (``step`` for ``steps``)."""
    route = request.scope.get("route")
    known = {p.alias or p.name for p in route.dependant.query_params} if route is not None else set()
    unknown_parameters(request.query_params.keys(), known)


def asked_timeout(request: Request) -> float | None:
    """The deadline a client asks for in seconds (``X-DGAE-Timeout-S``), None when it asks none;
    :meth:`Engine.timeout` caps it."""
    text = request.headers.get(TIMEOUT_HEADER)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ParameterError(f"{TIMEOUT_HEADER} must be a positive number of seconds, got {text[:40]!r}")
    return value


def timing(op: str, started: float) -> dict[str, str]:
    """Server-Timing for the model part of a request (queue wait + batch compute), since ``started``."""
    ms = (time.perf_counter() - started) * MS_PER_S
    return {H_TIMING: f'{op};dur={ms:.1f};desc="queue + model"'}
