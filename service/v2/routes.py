"""Open Inference Protocol (KServe v2) REST routes, mounted next to the native ones.

``GET /v2`` (server metadata and extensions), ``GET /v2/health/live`` and ``/v2/health/ready``,
``GET /v2/models/{model}[/versions/{v}]`` (metadata), ``.../ready`` and ``POST .../infer``.
Health and readiness bypass auth like /healthz and /readyz; metadata and inference need the API
key when one is set. Inference goes through the same body limit, batchers, deadlines and metrics
as /encode and /decode.

Errors under /v2 take the protocol's form ``{"error": "<message>"}``: the app's own handlers
decide status, message and headers (Retry-After, WWW-Authenticate) exactly as for the native
routes, and ``install`` rewrites their body for /v2 paths. Bad requests (400, 415 and 422 on the
native routes) are all 400 here; 401, 413, 500, 503 and 504 keep their meaning.
"""
from __future__ import annotations

import inspect
import json
import logging

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from dgae.errors import DGAEError

from ..core import codecs
from ..core.engine import ModelSpec
from ..core.http import engine as service
from ..core.http import require_api_key
from . import tensors
from ..core.oip import SERVER_NAME, V2Model, build_models, lookup, platform, server_version

log = logging.getLogger(__name__)

PREFIX = "/v2"
EXTENSIONS = ("binary_tensor_data", "parameters")
BAD_REQUEST = 400
BAD_REQUEST_STATUSES = (415, 422)  # native-route statuses that the protocol calls bad requests
ROUTING_STATUSES = (404, 405)  # errors whose message names the method and path
MAX_PATH_CHARS = 200
DROPPED_HEADERS = ("content-length", "content-type")
WRAPPED_HANDLERS = (DGAEError, RequestValidationError, StarletteHTTPException, Exception)


class V2Error(BaseModel):
    error: str


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class Live(BaseModel):
    live: bool


class Ready(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class TensorLayout(BaseModel):
    datatype: str
    shape: list[int]


class MetadataTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    accepted: list[TensorLayout] = Field(description="every datatype the tensor takes (inputs) or can be asked for "
                                                     "(outputs), each with its shape; datatype/shape give the first")


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]


_ERROR_TEXT = {400: "bad request: malformed tensors, unknown model/input/output/parameter",
               401: "missing or invalid API key", 404: "no such route", 405: "method not allowed",
               413: "body, pixels, item count or JSON tensor over the limit",
               429: "the API key's quota is used up (Retry-After)",
               500: "a backend that reports itself broken (never caused by an input)",
               503: "not ready or queue full (Retry-After)",
               504: "request deadline exceeded"}


def _errors(*statuses: int) -> dict[int, dict]:
    return {s: {"model": V2Error, "description": _ERROR_TEXT[s]} for s in statuses}


_TENSOR_DOC = {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
    "name": {"type": "string"}, "datatype": {"type": "string", "enum": list(tensors.DATATYPES)},
    "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
    "parameters": {"type": "object"}, "data": {"type": "array", "items": {}}}}
INFER_BODY = {"requestBody": {"required": True, "content": {
    tensors.JSON_MEDIA: {"schema": {"type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"}, "parameters": {"type": "object"},
        "inputs": {"type": "array", "items": _TENSOR_DOC},
        "outputs": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string"}, "parameters": {"type": "object"}}}}}}},
    tensors.BINARY_MEDIA: {"schema": {"type": "string", "format": "binary"},
                           "description": f"JSON header of {tensors.HEADER_LENGTH} bytes, then binary tensor data"}}}}
INFER_OK = {"description": "outputs as JSON, or a JSON header followed by binary outputs",
            "headers": {tensors.HEADER_LENGTH: {"schema": {"type": "string"},
                                                "description": "length of the JSON header (binary outputs only)"}},
            "content": {tensors.JSON_MEDIA: {"schema": {"type": "object"}},
                        tensors.BINARY_MEDIA: {"schema": {"type": "string", "format": "binary"}}}}


MODELS_STATE = "v2_models"  # app.state attribute: {name: V2Model} of the loaded checkpoint
MODEL, VERSION = "/models/{model_name}", "/models/{model_name}/versions/{model_version}"


def _models(request: Request) -> dict[str, V2Model]:
    return getattr(request.app.state, MODELS_STATE)


async def server_metadata() -> ServerMetadata:
    return ServerMetadata(name=SERVER_NAME, version=server_version(), extensions=list(EXTENSIONS))


async def live() -> Live:
    return Live(live=True)


async def ready(request: Request) -> Response:
    svc = service(request)
    return _readiness(Ready(ready=svc.ready), svc.ready, svc.settings.retry_after_s)


def _metadata(request: Request, model_name: str, model_version: str | None) -> ModelMetadata:
    model = lookup(_models(request), model_name, model_version)
    return ModelMetadata(**model.metadata(platform=platform(service(request))))


def _model_ready(request: Request, model_name: str, model_version: str | None) -> Response:
    model, svc = lookup(_models(request), model_name, model_version), service(request)
    return _readiness(ModelReady(name=model.name, ready=svc.ready), svc.ready, svc.settings.retry_after_s)


async def model_metadata(request: Request, model_name: str) -> ModelMetadata:
    return _metadata(request, model_name, None)


async def model_version_metadata(request: Request, model_name: str, model_version: str) -> ModelMetadata:
    return _metadata(request, model_name, model_version)


async def model_ready(request: Request, model_name: str) -> Response:
    return _model_ready(request, model_name, None)


async def model_version_ready(request: Request, model_name: str, model_version: str) -> Response:
    return _model_ready(request, model_name, model_version)


async def infer(request: Request, model_name: str) -> Response:
    return await _infer(request, model_name, None)


async def infer_version(request: Request, model_name: str, model_version: str) -> Response:
    return await _infer(request, model_name, model_version)


async def _infer(request: Request, model_name: str, model_version: str | None) -> Response:
    model = lookup(_models(request), model_name, model_version)
    svc = service(request)
    svc.require_ready()
    s = svc.settings
    body = await codecs.read_body(request, s.max_body_bytes)
    body = tensors.decompress(body, request.headers.get("content-encoding"), s.max_body_bytes)
    length = tensors.header_length(request.headers.get(tensors.HEADER_LENGTH), len(body))
    req = await run_in_threadpool(tensors.parse_request, body, length, s.max_json_values)
    response = await model.infer(svc, lambda op, pixels: svc.admission.admit(request, op, pixels), req)
    data, headers, media = await run_in_threadpool(tensors.encode_response, response)
    log.debug("%s: %s -> %d bytes", model.name, ", ".join(f"{t.name}{list(t.shape)}" for t in req.inputs.values()),
              len(data))
    return Response(data, media_type=media, headers=headers)


def build_router() -> APIRouter:
    router = APIRouter(prefix=PREFIX, tags=["Open Inference Protocol (KServe v2)"])
    auth = [Depends(require_api_key)]
    meta_errors = _errors(400, 401, 404, 429)
    ready_doc = {**_errors(400, 404), 503: {"model": ModelReady, "description": "not ready"}}
    infer_doc = dict(methods=["POST"], response_class=Response, dependencies=auth, openapi_extra=INFER_BODY,
                     responses={200: INFER_OK, **_errors(400, 401, 404, 413, 429, 500, 503, 504)}, summary="Inference")
    router.add_api_route("", server_metadata, response_model=ServerMetadata,
                         summary="Server metadata and supported extensions")
    router.add_api_route("/health/live", live, response_model=Live, summary="Liveness")
    router.add_api_route("/health/ready", ready, response_model=Ready, summary="Readiness (model loaded and warmed up)",
                         responses={503: {"model": Ready, "description": "loading or failed"}})
    for path, what, handlers in (
        (MODEL, "", (model_metadata, model_ready, infer)),
        (VERSION, " (one version)", (model_version_metadata, model_version_ready, infer_version)),
    ):
        router.add_api_route(path, handlers[0], response_model=ModelMetadata, dependencies=auth,
                             responses=meta_errors, summary="Model metadata" + what)
        router.add_api_route(path + "/ready", handlers[1], response_model=ModelReady, responses=ready_doc,
                             summary="Model readiness" + what)
        router.add_api_route(path + "/infer", handlers[2], **infer_doc)
    return router


async def _maybe_await(value):
    return await value if inspect.isawaitable(value) else value


def _readiness(body: BaseModel, ok: bool, retry_after_s: int) -> JSONResponse:
    if ok:
        return JSONResponse(body.model_dump())
    return JSONResponse(body.model_dump(), status_code=503, headers={"Retry-After": str(retry_after_s)})


# --- errors in the protocol's form -------------------------------------------------------------------
def is_v2_path(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


def to_v2_error(response: Response, request: Request) -> JSONResponse:
    """The app's ``{"error": {"code", "message"}}`` response -> ``{"error": "<message>"}``, same headers."""
    try:
        message = json.loads(response.body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = f"HTTP {response.status_code}"
    if response.status_code in ROUTING_STATUSES:
        message = f"{message}: {request.method} {request.url.path[:MAX_PATH_CHARS]}"
    status = BAD_REQUEST if response.status_code in BAD_REQUEST_STATUSES else response.status_code
    headers = {k: v for k, v in response.headers.items() if k.lower() not in DROPPED_HEADERS}
    return JSONResponse(V2Error(error=message).model_dump(), status_code=status, headers=headers)


def install(app: FastAPI, spec: ModelSpec) -> None:
    """Mount the /v2 routes and make the app's error handlers answer /v2 paths in the protocol's form."""
    setattr(app.state, MODELS_STATE, build_models(spec))
    app.include_router(build_router())
    for exc_class in WRAPPED_HANDLERS:
        original = app.exception_handlers.get(exc_class)
        if original is not None:
            app.add_exception_handler(exc_class, _v2_aware(original))
    log.debug("Open Inference Protocol routes mounted at %s", PREFIX)


def _v2_aware(original):
    async def handler(request: Request, exc: Exception) -> Response:
        response = await _maybe_await(original(request, exc))
        return to_v2_error(response, request) if is_v2_path(request.url.path) else response

    return handler
