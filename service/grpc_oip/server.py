"""The Open Inference Protocol over gRPC: ``inference.GRPCInferenceService`` on ``--grpc-port``,
beside the HTTP app, in its event loop and on its engine.

ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata and ModelInfer serve the same
two models as /v2 over HTTP (:mod:`service.core.oip`), with the same parameters, admission by
cost, limits and keys (``authorization: Bearer <key>`` metadata; health, readiness and server
metadata need none, as over HTTP). The servicer base and messages are those ``tritonclient[grpc]``
ships. The other methods of the service (repository, shared memory, statistics) answer
UNIMPLEMENTED from the base class.

Errors carry the HTTP adapter's status and message (:func:`service.core.errors.describe`) as a
gRPC code: 400/415/422 INVALID_ARGUMENT, 401 UNAUTHENTICATED, 413 RESOURCE_EXHAUSTED, 503
UNAVAILABLE (with ``retry-after`` trailing metadata), 504 DEADLINE_EXCEEDED, 500 INTERNAL. Each call
is counted in the service's request metrics under its method path, with the HTTP-equivalent status.

Shut-down: :func:`stop` refuses new calls and gives in-flight ones ``shutdown_timeout_s`` to
finish, before the engine drains its batchers (the app's lifespan calls it first).
"""
from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from typing import Awaitable, Callable

import grpc
from grpc import aio
from starlette.concurrency import run_in_threadpool
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from ..core.disconnect import CLIENT_CLOSED_STATUS, CLIENT_DISCONNECTED
from ..core.engine import Engine
from ..core.errors import describe
from ..core.auth import BEARER, Principal
from ..core.oip import SERVER_NAME, V2Model, build_models, lookup, platform, server_version
from .convert import fill_response, parse_request

log = logging.getLogger(__name__)

SERVICE = "/inference.GRPCInferenceService/"  # metric route: SERVICE + method
EXTENSIONS = ("parameters",)
AUTHORIZATION = "authorization"
RETRY_AFTER = "retry-after"
OK = 200
CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
         404: grpc.StatusCode.NOT_FOUND, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
         415: grpc.StatusCode.INVALID_ARGUMENT, 422: grpc.StatusCode.INVALID_ARGUMENT,
         500: grpc.StatusCode.INTERNAL, 503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.DEADLINE_EXCEEDED}
# The authorized caller of the call being handled (set in handle(), read by infer()'s admission); None
# when the server has no keys' quotas to charge.
CALLER: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("dgae_grpc_caller", default=None)
UNLIMITED = -1  # grpc channel option: no limit on sent messages (outputs are bounded by the pixel limits)


def _token(context: aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key.lower() == AUTHORIZATION:
            scheme, _, token = value.partition(" ")
            return token.strip() if scheme.lower() == BEARER.lower() else None
    return None


async def handle(engine: Engine, method: str, context: aio.ServicerContext, work: Callable[[], Awaitable],
                 auth: bool = False):
    """Run one call: the API key (when ``auth``), the work, metrics, and errors as gRPC statuses."""
    m, route = engine.metrics, SERVICE + method
    status, code, started = OK, "", time.monotonic()
    try:
        if auth:  # the caller, for the admission of this call's work (its megapixel quota)
            CALLER.set(engine.authorize(_token(context)))
        return await work()
    except asyncio.CancelledError:  # the client went away or its deadline passed
        status, code = CLIENT_CLOSED_STATUS, CLIENT_DISCONNECTED
        raise
    except Exception as exc:  # noqa: BLE001 - every failure becomes a status, none reaches grpc raw
        status, code, message, headers = describe(exc, engine.settings.retry_after_s)
        if RETRY_AFTER in {k.lower() for k in headers}:
            context.set_trailing_metadata(((RETRY_AFTER, str(engine.settings.retry_after_s)),))
        await context.abort(CODES.get(status, grpc.StatusCode.UNKNOWN), message)
    finally:
        m.requests.labels(route, str(status)).inc()
        m.request_seconds.labels(route).observe(time.monotonic() - started)
        if status != OK:
            m.failures.labels(route, code or f"http_{status}").inc()


async def infer(engine: Engine, models: dict[str, V2Model], request: pb.ModelInferRequest) -> pb.ModelInferResponse:
    model = lookup(models, request.model_name, request.model_version or None)
    engine.require_ready()
    req = await run_in_threadpool(parse_request, request)
    reservations = []  # released when the call ends, however it ends
    try:
        result = await model.infer(engine, lambda op, pixels: reservations.append(
            engine.admission.reserve(op, pixels, CALLER.get())), req)
    finally:
        for reservation in reservations:
            reservation.release()
    response = pb.ModelInferResponse()
    await run_in_threadpool(fill_response, result, response)
    return response


def model_metadata(engine: Engine, models: dict[str, V2Model], request: pb.ModelMetadataRequest):
    meta = lookup(models, request.name, request.version or None).metadata(platform=platform(engine))
    response = pb.ModelMetadataResponse(name=meta["name"], versions=meta["versions"], platform=meta["platform"])
    for field in ("inputs", "outputs"):
        for tensor in meta[field]:
            getattr(response, field).add(name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"])
    return response


class Servicer(pb_grpc.GRPCInferenceServiceServicer):
    """The six methods, each one line over :func:`handle`."""

    def __init__(self, engine: Engine):
        self.engine, self.models = engine, build_models(engine.spec)

    async def ServerLive(self, request, context):  # noqa: N802 - the protocol's method names
        return await handle(self.engine, "ServerLive", context, _value(pb.ServerLiveResponse(live=True)))

    async def ServerReady(self, request, context):  # noqa: N802
        return await handle(self.engine, "ServerReady", context,
                            _value(lambda: pb.ServerReadyResponse(ready=self.engine.ready)))

    async def ModelReady(self, request, context):  # noqa: N802
        def ready():
            lookup(self.models, request.name, request.version or None)
            return pb.ModelReadyResponse(ready=self.engine.ready)
        return await handle(self.engine, "ModelReady", context, _value(ready))

    async def ServerMetadata(self, request, context):  # noqa: N802
        return await handle(self.engine, "ServerMetadata", context, _value(lambda: pb.ServerMetadataResponse(
            name=SERVER_NAME, version=server_version(), extensions=list(EXTENSIONS))))

    async def ModelMetadata(self, request, context):  # noqa: N802
        return await handle(self.engine, "ModelMetadata", context,
                            _value(lambda: model_metadata(self.engine, self.models, request)), auth=True)

    async def ModelInfer(self, request, context):  # noqa: N802
        return await handle(self.engine, "ModelInfer", context,
                            lambda: infer(self.engine, self.models, request), auth=True)


def _value(make) -> Callable[[], Awaitable]:
    """A work function for :func:`handle` from a value or a synchronous callable."""
    async def work():
        return make() if callable(make) else make
    return work


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def start(engine: Engine) -> aio.Server:
    """Serve the protocol on ``settings.grpc_port`` in the running event loop."""
    s = engine.settings
    server = aio.server(options=[("grpc.max_receive_message_length", s.max_body_bytes),
                                 ("grpc.max_send_message_length", UNLIMITED)])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(engine), server)
    port = server.add_insecure_port(_address(s.host, s.grpc_port))
    await server.start()
    log.info("Open Inference Protocol over gRPC on %s", _address(s.host, port))
    return server


async def stop(server: aio.Server, grace_s: float) -> None:
    """Refuse new calls; in-flight ones get ``grace_s`` to finish, then are cancelled."""
    log.info("gRPC: draining in-flight calls (up to %ds)", grace_s)
    await server.stop(grace_s)
