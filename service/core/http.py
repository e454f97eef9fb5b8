"""HTTP plumbing shared by every HTTP adapter (native routes, Open Inference Protocol, Remote VAE):
the engine of a request, the API-key dependency, the query-parameter check and timing headers.
Protocol-neutral otherwise: no route lives here."""
from __future__ import annotations

import hmac
import time

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .engine import TIMEOUT_HEADER, Engine
from .errors import ParameterError, Unauthorized
from .params import unknown_parameters

H_TIMING = "Server-Timing"  # "<op>;dur=<ms>": this request's wait in the batch queue + the model's batch
# Response headers every HTTP adapter sets alike (the seeds and steps a request was served with, the model)
H_SEEDS, H_STEPS, H_MODEL, H_SHA, H_MODE, H_SHAPE = (
    "X-DGAE-Seeds", "X-DGAE-Steps", "X-DGAE-Model", "X-DGAE-Checkpoint-Sha256", "X-DGAE-Mode", "X-DGAE-Shape")
MS_PER_S = 1000
BEARER = "Bearer"
_bearer = HTTPBearer(auto_error=False, description="required only when the server has API keys")


def engine(request: Request) -> Engine:
    return request.app.state.service


def check_api_key(engine_: Engine, token: str | None) -> None:
    """401 unless the server has no keys or ``token`` is one of them (constant-time comparison)."""
    keys = engine_.settings.api_keys
    if not keys:
        return
    given = (token or "").encode()
    if not any(hmac.compare_digest(given, k.encode()) for k in keys):
        raise Unauthorized(f"missing or invalid API key: send 'Authorization: {BEARER} <key>'",
                           headers={"WWW-Authenticate": BEARER})


async def require_api_key(request: Request,
                          creds: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
    check_api_key(engine(request), creds.credentials if creds else None)


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
