"""FastAPI app factory: ``create_app(settings, backend=None)``.

Startup returns at once and loads the model in the background (``/healthz`` answers meanwhile,
``/readyz`` turns 200 after load + warm-up). Health, readiness and metrics are never refused:
they bypass auth and the batch queues. A pure-ASGI middleware counts every request by route
template and status (unmatched paths share one label, so bad URLs cannot blow up cardinality);
two more release each exchange's admission reservation (service.core.admission) and drop the work of
clients that disconnect (service.core.disconnect).
"""
from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backends.base import Backend

from .core import lifecycle
from .core.admission import AdmissionMiddleware
from .core.disconnect import CLIENT_CLOSED_STATUS, CLIENT_DISCONNECTED, DISCONNECTED_SCOPE_KEY, DisconnectMiddleware
from .core.engine import Engine
from .core.errors import ERROR_CODE_SCOPE_KEY, install_handlers
from .core.settings import ServiceSettings
from .jobs.routes import install as install_jobs
from .native.info import build_router as info_router
from .native.routes import build_router as native_router
from .docs import install_docs
from .playground import install_playground
from .remote import build_router as remote_router
from .v2 import install as install_v2

log = logging.getLogger(__name__)

UNMATCHED_ROUTE = "unmatched"
SERVER_ERROR = 500
API_VERSION = "1"


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, state: Engine):
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


async def _start_grpc(state: Engine):
    """The gRPC server when ``grpc_port`` is set (grpcio and tritonclient[grpc] load only then)."""
    if state.settings.grpc_port is None:
        return None
    from .grpc_oip import start as start_grpc  # noqa: PLC0415

    return await start_grpc(state)


def create_app(settings: ServiceSettings | None = None, backend: Backend | None = None) -> FastAPI:
    """Build the app. ``backend`` (tests, embedding) skips loading from the configured checkpoint."""
    settings = settings or ServiceSettings()
    state = Engine(settings, backend)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        lifecycle.start(state)
        grpc_server = await _start_grpc(state)
        try:
            yield
        finally:
            if grpc_server is not None:  # in-flight gRPC calls finish before the batchers drain
                from .grpc_oip import stop as stop_grpc  # noqa: PLC0415

                await stop_grpc(grpc_server, settings.shutdown_timeout_s)
            await lifecycle.stop(state)

    app = FastAPI(title="DGAE tokenizer service", version=API_VERSION, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Images to latents and back with a diffusion-guided autoencoder. Errors are "
                              '`{"error": {"code", "message"}}`; see the README for the error table.')
    app.state.service = state
    install_handlers(app, settings.retry_after_s)
    # Outermost last: metrics see the final status (499 for a client gone), reservations are released
    # after the handler ends, however it ends.
    app.add_middleware(DisconnectMiddleware)
    app.add_middleware(AdmissionMiddleware)
    app.add_middleware(MetricsMiddleware, state=state)
    app.include_router(native_router())
    app.include_router(remote_router())  # Remote VAE (diffusers remote_decode / remote_encode) under /remote
    install_jobs(app, state)  # /v1/jobs: long work as jobs on the same workers (service.jobs)
    install_v2(app, state.spec)  # Open Inference Protocol (KServe v2) under /v2, after install_handlers
    install_playground(app)
    install_docs(app)  # /docs and /redoc with their assets served from here, not a CDN

    app.include_router(info_router())
    return app
