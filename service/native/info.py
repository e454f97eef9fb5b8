"""Probes, metrics and model information over HTTP: ``/healthz``, ``/readyz``, ``/metrics`` and
``/v1/model``. Probes and metrics are never refused (no key, no queue); ``/v1/model`` needs the key."""
from __future__ import annotations

import dataclasses

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel

from backends.base import Backend

from ..core import codecs
from ..core.errors import openapi_errors
from ..core.http import engine, require_api_key


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
    cost: dict  # the cost model: seconds per megapixel-step (decode) / megapixel (encode) on this runtime


def backend_reason(backend: Backend, requested: str) -> str:
    """Why this runtime serves: the auto choice and every faster runtime skipped, or the request."""
    reason = getattr(backend, "auto_reason", "")
    if not reason:
        return f"backend={requested} was requested"
    skipped = getattr(backend, "auto_skipped", [])
    return f"backend=auto chose {reason}" + (f"; faster ones skipped: {'; '.join(skipped)}" if skipped else "")



async def healthz() -> Health:
    return Health(status="alive")


async def readyz(request: Request) -> Response:
    state = engine(request)
    if state.ready:
        return JSONResponse(Readiness(status="ready").model_dump())
    body = Readiness(status="failed", detail=state.load_error) if state.load_error else Readiness(status="loading")
    return JSONResponse(body.model_dump(), status_code=503,
                        headers={"Retry-After": str(state.settings.retry_after_s)})


async def metrics(request: Request) -> Response:
    return Response(engine(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)


async def model(request: Request) -> ModelInfo:
    svc = engine(request)
    svc.require_ready()
    spec, info, s = svc.spec, svc.backend.info(), svc.settings
    limits = {"max_batch_size": s.max_batch_size, "max_wait_ms": s.max_wait_ms, "queue_size": s.queue_size,
              "request_timeout_s": s.request_timeout_s, "max_request_timeout_s": s.max_request_timeout_s,
              "max_body_bytes": s.max_body_bytes,
              "max_pixels": s.max_pixels, "max_request_pixels": s.max_request_pixels,
              "inflight_pixels": s.inflight_pixels, "max_items": s.max_items,
              "max_json_values": s.max_json_values}
    return ModelInfo(preset=spec.preset, downsample_factor=spec.f, latent_channels=spec.c,
                     checkpoint_sha256=svc.checkpoint_sha256, backend=info.name, device=info.device,
                     precision=info.precision, providers=list(info.providers),
                     steps=StepsRange(min=1, max=spec.max_steps, default=spec.default_steps), limits=limits,
                     backend_reason=backend_reason(svc.backend, s.backend),
                     tiling=dataclasses.asdict(svc.config.tiling), cost=svc.cost.as_dict(),
                     formats={"encode": ["safetensors", "npy", "json"],
                              "decode": [*codecs.IMAGE_FORMATS, "safetensors", "npy"]})


def build_router() -> APIRouter:
    router = APIRouter()
    router.add_api_route("/healthz", healthz, response_model=Health, summary="Liveness")
    router.add_api_route("/readyz", readyz, response_model=Readiness, summary="Readiness (model loaded and warmed up)",
                         responses={503: {"model": Readiness, "description": "loading or failed"}})
    router.add_api_route(
        "/metrics",
        metrics,
        summary="Prometheus metrics",
        response_class=Response,
        responses={
            200: {
                "content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
                "description": "Prometheus text format",
            }
        },
    )
    router.add_api_route("/v1/model", model, response_model=ModelInfo, summary="Loaded model, backend and limits",
                         dependencies=[Depends(require_api_key)], responses=openapi_errors(401, 429, 503))
    return router
