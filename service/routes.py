"""``POST /encode`` and ``POST /decode``: parse, validate, admit by cost, queue on the batcher, encode the answer.

Everything CPU-heavy (image decoding, tensor parsing, PNG encoding) runs in the thread pool;
model work runs in the backend's worker thread via the batcher, so the event loop stays free.
Parameter ranges come from the model spec, so /openapi.json states the real limits.
"""
from __future__ import annotations

import hmac
import time
from typing import Literal

import torch

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from dgae.errors import InputError
from dgae.imageio import to_tensor, to_uint8
from dgae.latents_io import encode_metadata, fit_infos, image_names
from dgae.sampler import resolve_seeds

from . import codecs
from .errors import ParameterError, Unauthorized, openapi_errors
from .state import DECODE, ENCODE, ModelSpec, ServiceState

SEED_PATTERN = r"^[0-9]{1,19}(,[0-9]{1,19})*$"
DEFAULT_QUALITY = 95
MAX_QUALITY = 100
TILE_DOC = ("auto: images larger than the model's tile are processed as overlapping, blended tiles "
            "(bounded memory, linear time); off: in one piece (may run out of memory on large images)")
LATENT_DTYPES = {"float32": torch.float32, "float16": torch.float16}
H_SEEDS, H_STEPS, H_MODEL, H_SHA, H_MODE, H_SHAPE = (
    "X-DGAE-Seeds", "X-DGAE-Steps", "X-DGAE-Model", "X-DGAE-Checkpoint-Sha256", "X-DGAE-Mode", "X-DGAE-Shape")
H_TIMING = "Server-Timing"  # "<op>;dur=<ms>": this request's wait in the batch queue + the model's batch
MS_PER_S = 1000
_bearer = HTTPBearer(auto_error=False, description="required only when the server sets DGAE_API_KEYS")


def service(request: Request) -> ServiceState:
    return request.app.state.service


async def require_api_key(request: Request,
                          creds: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
    keys = service(request).settings.api_keys
    if not keys:
        return
    given = (creds.credentials if creds else "").encode()
    if not any(hmac.compare_digest(given, k.encode()) for k in keys):
        raise Unauthorized("missing or invalid API key: send 'Authorization: Bearer <key>'",
                           headers={"WWW-Authenticate": "Bearer"})


def parse_seeds(text: str | None, n: int) -> list[int]:
    """None -> random; "s" -> s, s+1, ...; "s0,s1,..." -> one per item."""
    if text is None:
        return resolve_seeds(None, n)
    try:
        values = [int(part) for part in text.split(",")]
        return resolve_seeds(values[0] if len(values) == 1 else values, n)
    except (ValueError, InputError) as exc:
        raise ParameterError(f"seed: {exc}") from None


def _headers(svc: ServiceState, **extra: str) -> dict[str, str]:
    return {H_MODEL: svc.spec.preset, H_SHA: svc.backend.checkpoint_sha256 if svc.backend else "", **extra}


def _timing(op: str, started: float) -> dict[str, str]:
    """Server-Timing for the model part of a request (queue wait + batch compute), since ``started``."""
    ms = (time.perf_counter() - started) * MS_PER_S
    return {H_TIMING: f'{op};dur={ms:.1f};desc="queue + model"'}


def _body_doc(content: dict) -> dict:
    return {"requestBody": {"required": True, "content": content}}


def _binary(description: str) -> dict:
    return {"schema": {"type": "string", "format": "binary"}, "description": description}


ENCODE_BODY = _body_doc({
    "multipart/form-data": {"schema": {"type": "object", "properties": {"image": {
        "type": "array", "items": {"type": "string", "format": "binary"}}}}},
    **{t: _binary("one raw image") for t in ("image/png", "image/jpeg", "image/webp", "image/bmp")}})
DECODE_BODY = _body_doc({
    codecs.SAFETENSORS: _binary("safetensors with a 'latents' tensor (N, c, h, w) or (c, h, w)"),
    codecs.NPY: _binary(".npy float32/float16 (N, c, h, w) or (c, h, w)"),
    "application/octet-stream": _binary("safetensors or npy (sniffed)"),
    codecs.JSON: {"schema": {"type": "object", "required": ["latents"],
                             "properties": {"latents": {"type": "array", "items": {}},
                                            "metadata": {"type": "object"}}}}})


def _header_doc(*names: str) -> dict:
    return {n: {"schema": {"type": "string"}} for n in names}


def build_router(spec: ModelSpec) -> APIRouter:
    router = APIRouter(dependencies=[Depends(require_api_key)])
    errors = openapi_errors(400, 401, 413, 415, 422, 500, 503, 504)

    @router.post("/encode", summary="Encode images to latents", response_class=Response, openapi_extra=ENCODE_BODY,
                 responses={200: {"description": f"latents (N, {spec.c}, H/{spec.f}, W/{spec.f})",
                                  "headers": _header_doc(H_MODEL, H_SHA, H_MODE, H_SEEDS, H_SHAPE, H_TIMING),
                                  "content": {codecs.SAFETENSORS: _binary("latents + metadata"),
                                              codecs.NPY: _binary("latents"), codecs.JSON: {"schema": {}}}},
                            **errors})
    async def encode(
        request: Request,
        mode: Literal["mean", "sample"] = Query("mean", description="posterior mean, or a seeded sample"),
        seed: str | None = Query(None, pattern=SEED_PATTERN,
                                 description="mode=sample: one int s (image i uses s+i) or one per image, "
                                             "comma-separated; random when absent (see X-DGAE-Seeds)"),
        tile: Literal["auto", "off"] = Query("auto", description=TILE_DOC),
        fit: Literal["error", "pad", "crop", "resize"] = Query(
            "pad", description=f"sides not a multiple of f={spec.f}: refuse, pad (decode crops back), "
                               "centre-crop, or resize"),
        dtype: Literal["float32", "float16"] = Query("float32", description="latent dtype in the response"),
        fmt: Literal["safetensors", "npy", "json"] = Query("safetensors", alias="format",
                                                           description="response format; json only for small"),
    ) -> Response:
        svc = service(request)
        svc.require_ready()
        s = svc.settings
        body = await codecs.read_body(request, s.max_body_bytes)
        files = await codecs.image_files(request, body, s.max_items)
        svc.admission.admit(request, ENCODE, await run_in_threadpool(codecs.image_pixels, files, s.max_pixels))
        rgbs, infos = await run_in_threadpool(codecs.decode_images, files, spec.f, fit, s.max_pixels)
        n, (h, w) = len(rgbs), rgbs[0].shape[:2]
        values = n * spec.c * (h // spec.f) * (w // spec.f)
        if fmt == "json" and values > s.max_json_values:
            raise ParameterError(f"format=json is limited to {s.max_json_values} latent values (this request has "
                                 f"{values}); use safetensors or npy")
        seeds = parse_seeds(seed, n) if mode == "sample" else [0] * n
        images = await run_in_threadpool(to_tensor, rgbs)
        started = time.perf_counter()
        latents = await svc.encode(images, mode, seeds, tile)
        timing = _timing(ENCODE, started)
        meta = encode_metadata(svc.backend.config, svc.backend.checkpoint_sha256, mode, seeds,
                               [name for name, _ in files], infos)
        data, media = await run_in_threadpool(codecs.latents_body, latents, fmt, LATENT_DTYPES[dtype], meta)
        headers = _headers(svc, **{H_MODE: mode, H_SHAPE: ",".join(map(str, latents.shape))}, **timing)
        if mode == "sample":
            headers[H_SEEDS] = ",".join(map(str, seeds))
        return Response(data, media_type=media, headers=headers)

    @router.post("/decode", summary="Decode latents to images", response_class=Response, openapi_extra=DECODE_BODY,
                 responses={200: {"description": "one image, a zip of several, or uint8 (N, H, W, 3) tensors",
                                  "headers": _header_doc(H_MODEL, H_SHA, H_SEEDS, H_STEPS, H_TIMING),
                                  "content": {**{m: _binary("image") for m in codecs.IMAGE_FORMATS.values()},
                                              codecs.ZIP: _binary("several images"),
                                              codecs.SAFETENSORS: _binary("uint8 'images' (N, H, W, 3)"),
                                              codecs.NPY: _binary("uint8 (N, H, W, 3)")}},
                            **errors})
    async def decode(
        request: Request,
        tile: Literal["auto", "off"] = Query("auto", description=TILE_DOC),
        steps: int | None = Query(None, ge=1, le=spec.max_steps,
                                  description=f"sampler steps, 1..{spec.max_steps} (default {spec.default_steps})"),
        seed: str | None = Query(None, pattern=SEED_PATTERN,
                                 description="one int s (item i uses s+i) or one per item, comma-separated; "
                                             "random when absent (see X-DGAE-Seeds)"),
        fmt: Literal["png", "jpeg", "webp", "safetensors", "npy"] = Query(
            "png", alias="format", description="one image: its bytes; several: a zip; safetensors/npy: uint8 "
                                               "(N, H, W, 3) at the decoder's full size"),
        quality: int = Query(DEFAULT_QUALITY, ge=1, le=MAX_QUALITY, description="jpeg/webp quality"),
    ) -> Response:
        svc = service(request)
        svc.require_ready()
        s = svc.settings
        body = await codecs.read_body(request, s.max_body_bytes)
        latents, meta = await run_in_threadpool(codecs.parse_latents, body, codecs.media_type(request),
                                                s.max_json_values)
        codecs.check_latents(latents, svc.backend.config, s.max_items, s.max_pixels)
        n = len(latents)
        infos, names = fit_infos(meta, n, s.max_pixels), image_names(meta)
        svc.admission.admit(request, DECODE, codecs.decoded_pixels(latents, spec.f, infos))
        seeds = parse_seeds(seed, n)
        steps = steps or spec.default_steps
        started = time.perf_counter()
        images = await svc.decode(latents, steps, seeds, tile)
        timing = _timing(DECODE, started)
        out_meta = {"model": spec.preset, "steps": steps, "seeds": seeds}
        rgbs = await run_in_threadpool(to_uint8, images)
        data, media, filename = await run_in_threadpool(codecs.images_body, rgbs, infos, names, fmt, quality,
                                                        out_meta)
        headers = _headers(svc, **{H_SEEDS: ",".join(map(str, seeds)), H_STEPS: str(steps),
                                   "Content-Disposition": f'inline; filename="{filename}"'}, **timing)
        return Response(data, media_type=media, headers=headers)

    return router
