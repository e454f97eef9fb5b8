"""FastAPI app factory: ``create_app(settings, backend=None)``.

Startup returns at once and loads the model in the background (``/healthz`` answers meanwhile,
``/readyz`` turns 200 after load + warm-up). Health, readiness and metrics are never refused:
they bypass auth and the batch queues. A pure-ASGI middleware counts every request by route
template and status (unmatched paths share one label, so bad URLs cannot blow up cardinality);
two more release each exchange's admission reservation (service.admission) and drop the work of
clients that disconnect (service.disconnect).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backends.base import Backend

from . import codecs
from .admission import AdmissionMiddleware
from .disconnect import CLIENT_CLOSED_STATUS, CLIENT_DISCONNECTED, DISCONNECTED_SCOPE_KEY, DisconnectMiddleware
from .errors import ERROR_CODE_SCOPE_KEY, install_handlers, openapi_errors
from .playground import install_playground
from .routes import build_router, require_api_key, service
from .settings import ServiceSettings
from .state import ServiceState
from .v2 import install as install_v2

log = logging.getLogger(__name__)

UNMATCHED_ROUTE = "unmatched"
SERVER_ERROR = 500
API_VERSION = "1"


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str  # ready | loading | failed
    detail: str | None = None


class StepsRange(BaseModel):
    min: int
    max: int
    default: int


class ModelInfo(BaseModel):
    preset: str
    downsample_factor: int
    latent_channels: int
    checkpoint_sha256: str
    backend: str
    device: str
    precision: str
    providers: list[str]
    steps: StepsRange
    backend_reason: str  # why this runtime serves (backend=auto: the faster ones skipped and why)
    limits: dict[str, int | float]
    tiling: dict[str, int]  # tile and overlap sizes in pixels (requests choose tile=auto|off)
    formats: dict[str, list[str]]


def backend_reason(backend: Backend, requested: str) -> str:
    """Why this runtime serves: the auto choice and every faster runtime skipped, or the request."""
    reason = getattr(backend, "auto_reason", "")
    if not reason:
        return f"backend={requested} was requested"
    skipped = getattr(backend, "auto_skipped", [])
    return f"backend=auto chose {reason}" + (f"; faster ones skipped: {'; '.join(skipped)}" if skipped else "")


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, state: ServiceState):
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status, started = SERVER_ERROR, time.monotonic()

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            if scope.get(DISCONNECTED_SCOPE_KEY):
                status = CLIENT_CLOSED_STATUS
                scope[ERROR_CODE_SCOPE_KEY] = CLIENT_DISCONNECTED
            route = getattr(scope.get("route"), "path", UNMATCHED_ROUTE)
            m = self.state.metrics
            m.requests.labels(route, str(status)).inc()
            m.request_seconds.labels(route).observe(time.monotonic() - started)
            if status >= 400:
                m.failures.labels(route, scope.get(ERROR_CODE_SCOPE_KEY, f"http_{status}")).inc()


def create_app(settings: ServiceSettings | None = None, backend: Backend | None = None) -> FastAPI:
    """Build the app. ``backend`` (tests, embedding) skips loading from the configured checkpoint."""
    settings = settings or ServiceSettings()
    state = ServiceState(settings, backend)
    spec = state.spec

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        state.start()
        try:
            yield
        finally:
            await state.stop()

    app = FastAPI(title="DGAE tokenizer service", version=API_VERSION, lifespan=lifespan,
                  description="Images to latents and back with a diffusion-guided autoencoder. Errors are "
                              '`{"error": {"code", "message"}}`; see the README for the error table.')
    app.state.service = state
    install_handlers(app, settings.retry_after_s)
    # Outermost last: metrics see the final status (499 for a client gone), reservations are released
    # after the handler ends, however it ends.
    app.add_middleware(DisconnectMiddleware)
    app.add_middleware(AdmissionMiddleware)
    app.add_middleware(MetricsMiddleware, state=state)
    app.include_router(build_router(spec))
    install_v2(app, spec)  # Open Inference Protocol (KServe v2) under /v2, after install_handlers
    install_playground(app)

    @app.get("/healthz", response_model=Health, summary="Liveness")
    async def healthz() -> Health:
        return Health(status="alive")

    @app.get("/readyz", response_model=Readiness, summary="Readiness (model loaded and warmed up)",
             responses={503: {"model": Readiness, "description": "loading or failed"}})
    async def readyz() -> Response:
        if state.ready:
            return JSONResponse(Readiness(status="ready").model_dump())
        body = Readiness(status="failed", detail=state.load_error) if state.load_error else Readiness(status="loading")
        return JSONResponse(body.model_dump(), status_code=503,
                            headers={"Retry-After": str(settings.retry_after_s)})

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response,
             responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
                              "description": "Prometheus text format"}})
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/model", response_model=ModelInfo, summary="Loaded model, backend and limits",
             dependencies=[Depends(require_api_key)], responses=openapi_errors(401, 503))
    async def model(request: Request) -> ModelInfo:
        svc = service(request)
        svc.require_ready()
        info = svc.backend.info()
        s = svc.settings
        limits = {"max_batch_size": s.max_batch_size, "max_wait_ms": s.max_wait_ms, "queue_size": s.queue_size,
                  "request_timeout_s": s.request_timeout_s, "max_body_bytes": s.max_body_bytes,
                  "max_pixels": s.max_pixels, "max_request_pixels": s.max_request_pixels,
                  "inflight_pixels": s.inflight_pixels, "max_items": s.max_items,
                  "max_json_values": s.max_json_values}
        return ModelInfo(preset=spec.preset, downsample_factor=spec.f, latent_channels=spec.c,
                         checkpoint_sha256=svc.backend.checkpoint_sha256, backend=info.name, device=info.device,
                         precision=info.precision, providers=list(info.providers),
                         steps=StepsRange(min=1, max=spec.max_steps, default=spec.default_steps), limits=limits,
                         backend_reason=backend_reason(svc.backend, s.backend),
                         tiling=dataclasses.asdict(svc.backend.config.tiling),
                         formats={"encode": ["safetensors", "npy", "json"],
                                  "decode": [*codecs.IMAGE_FORMATS, "safetensors", "npy"]})

    return app
