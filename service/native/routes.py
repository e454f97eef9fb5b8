"""The native protocol adapter: ``POST /encode`` and ``POST /decode``.

Each handler reads the wire format (:mod:`service.core.codecs`), builds the checked request
(:mod:`service.core.params`), admits it by cost (padded, tiled pixels: :mod:`service.core.cost`)
and awaits the engine within the request's deadline (``X-DGAE-Timeout-S``, capped); nothing here
checks a tensor or a seed itself. Reading and answering are :func:`prepare_encode` /
:func:`prepare_decode`, which the jobs adapter (:mod:`service.jobs`) reuses: same bodies, same
parameters, same result bytes. CPU-heavy work (image decoding, tensor parsing, PNG encoding) runs in
the thread pool and model work in the engine's worker threads, so the event loop stays free.
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Literal

import torch
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from formats.images import to_tensor, to_uint8
from formats.latents import encode_metadata, fit_infos, image_names

from dgae.request import DecodeRequest, EncodeRequest

from ..core import codecs, cost
from ..core.engine import DECODE, ENCODE, Engine
from ..core.errors import ParameterError, openapi_errors
from ..core.http import (H_MODE, H_MODEL, H_SEEDS, H_SHA, H_SHAPE, H_STEPS, H_TIMING, asked_timeout, check_query,
                         engine, require_api_key, timing)
from ..core.params import SEED_HELP, decode_request, encode_request

DEFAULT_QUALITY = 95
MAX_QUALITY = 100
TILE_DOC = ("auto: images larger than the model's tile are processed as overlapping, blended tiles "
            "(bounded memory, linear time); off: in one piece (may run out of memory on large images)")
LATENT_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def model_headers(eng: Engine, **extra: str) -> dict[str, str]:
    return {H_MODEL: eng.spec.preset, H_SHA: eng.checkpoint_sha256, **extra}


def _body_doc(content: dict) -> dict:
    return {"requestBody": {"required": True, "content": content}}


def _binary(description: str) -> dict:
    return {"schema": {"type": "string", "format": "binary"}, "description": description}


ENCODE_BODY = _body_doc({
    "multipart/form-data": {"schema": {"type": "object", "properties": {"image": {
        "type": "array", "items": {"type": "string", "format": "binary"}}}}},
    **{t: _binary("one raw image") for t in codecs.IMAGE_TYPES}})
DECODE_BODY = _body_doc({
    codecs.SAFETENSORS: _binary("safetensors with a 'latents' tensor (N, c, h, w) or (c, h, w)"),
    codecs.NPY: _binary(".npy float32/float16 (N, c, h, w) or (c, h, w)"),
    "application/octet-stream": _binary("safetensors or npy (sniffed)"),
    codecs.JSON: {"schema": {"type": "object", "required": ["latents"],
                             "properties": {"latents": {"type": "array", "items": {}},
                                            "metadata": {"type": "object"}}}}})


def _header_doc(*names: str) -> dict:
    return {n: {"schema": {"type": "string"}} for n in names}


ENCODE_RESPONSES = {200: {"description": "latents (N, c, H/f, W/f)",
                          "headers": _header_doc(H_MODEL, H_SHA, H_MODE, H_SEEDS, H_SHAPE, H_TIMING),
                          "content": {codecs.SAFETENSORS: _binary("latents + metadata"),
                                      codecs.NPY: _binary("latents"), codecs.JSON: {"schema": {}}}}}
DECODE_RESPONSES = {200: {"description": "one image, a zip of several, or uint8 (N, H, W, 3) tensors",
                          "headers": _header_doc(H_MODEL, H_SHA, H_SEEDS, H_STEPS, H_TIMING),
                          "content": {**{m: _binary("image") for m in codecs.IMAGE_FORMATS.values()},
                                      codecs.ZIP: _binary("several images"),
                                      codecs.SAFETENSORS: _binary("uint8 'images' (N, H, W, 3)"),
                                      codecs.NPY: _binary("uint8 (N, H, W, 3)")}}}
ERRORS = openapi_errors(400, 401, 413, 415, 422, 429, 500, 503, 504)


@dataclass(frozen=True)
class Prepared:
    """A parsed, checked and admitted native request: what to compute, what it costs, and how its
    outputs become the response body (shared by the synchronous routes and the jobs adapter)."""

    operation: str
    req: EncodeRequest | DecodeRequest
    pixels: int
    respond: Callable[[torch.Tensor, dict[str, str]], Awaitable[tuple[bytes, str, dict[str, str]]]]


Admit = Callable[[str, int], None]  # (operation, pixels): reserve (synchronous) or only check (jobs)


async def prepare_encode(request: Request, eng: Engine, admit: Admit, *, mode: str, seed: str | None, tile: str,
                         fit: str, dtype: str, fmt: str) -> Prepared:
    """Read, admit (from the image headers, padded and tiled, before any pixel is decoded) and check."""
    s, spec = eng.settings, eng.spec
    body = await codecs.read_body(request, s.max_body_bytes)
    files = await codecs.image_files(request, body, s.max_items)
    charge = functools.partial(cost.encode_pixels, eng.config, tile=tile)
    pixels = await run_in_threadpool(codecs.image_pixels, files, s.max_pixels, charge)
    admit(ENCODE, pixels)
    rgbs, infos = await run_in_threadpool(codecs.decode_images, files, spec.f, fit, s.max_pixels)
    n, (h, w) = len(rgbs), rgbs[0].shape[:2]
    values = n * spec.c * (h // spec.f) * (w // spec.f)
    if fmt == "json" and values > s.max_json_values:
        raise ParameterError(f"format=json is limited to {s.max_json_values} latent values (this request has "
                             f"{values}); use safetensors or npy")
    images = await run_in_threadpool(to_tensor, rgbs)
    req = encode_request(eng, images, mode, seed if mode == "sample" else None, tile)

    async def respond(latents: torch.Tensor, timed: dict[str, str]) -> tuple[bytes, str, dict[str, str]]:
        meta = encode_metadata(eng.config, eng.checkpoint_sha256, mode, list(req.seeds),
                               [name for name, _ in files], infos)
        data, media = await run_in_threadpool(codecs.latents_body, latents, fmt, LATENT_DTYPES[dtype], meta)
        headers = model_headers(eng, **{H_MODE: mode, H_SHAPE: ",".join(map(str, latents.shape))}, **timed)
        if mode == "sample":
            headers[H_SEEDS] = ",".join(map(str, req.seeds))
        return data, media, headers

    return Prepared(ENCODE, req, pixels, respond)


async def prepare_decode(request: Request, eng: Engine, admit: Admit, *, tile: str, steps: int | None,
                         seed: str | None, fmt: str, quality: int) -> Prepared:
    """Read, check and admit (the denoiser's pixels: padded and tiled)."""
    s, spec = eng.settings, eng.spec
    body = await codecs.read_body(request, s.max_body_bytes)
    latents, meta = await run_in_threadpool(codecs.parse_latents, body, codecs.media_type(request),
                                            s.max_json_values)
    req = await run_in_threadpool(decode_request, eng, latents, steps, seed, tile)
    infos, names = fit_infos(meta, req.n, s.max_pixels), image_names(meta)
    pixels = cost.decode_charge(eng.config, req, infos)
    admit(DECODE, pixels)

    async def respond(images: torch.Tensor, timed: dict[str, str]) -> tuple[bytes, str, dict[str, str]]:
        out_meta = {"model": spec.preset, "steps": req.steps, "seeds": list(req.seeds)}
        rgbs = await run_in_threadpool(to_uint8, images)
        data, media, filename = await run_in_threadpool(codecs.images_body, rgbs, infos, names, fmt, quality,
                                                        out_meta)
        headers = model_headers(eng, **{H_SEEDS: ",".join(map(str, req.seeds)), H_STEPS: str(req.steps),
                                        "Content-Disposition": f'inline; filename="{filename}"'}, **timed)
        return data, media, headers

    return Prepared(DECODE, req, pixels, respond)


async def _serve(request: Request, eng: Engine, prepared: Prepared) -> Response:
    """Compute a prepared request within its deadline and answer it."""
    run = eng.encode if prepared.operation == ENCODE else eng.decode
    started = time.perf_counter()
    outputs = await run(prepared.req, eng.timeout(asked_timeout(request)))
    data, media, headers = await prepared.respond(outputs, timing(prepared.operation, started))
    return Response(data, media_type=media, headers=headers)


def _admit(request: Request, eng: Engine) -> Admit:
    return functools.partial(eng.admission.admit, request)


async def encode(
    request: Request,
    mode: Literal["mean", "sample"] = Query("mean", description="posterior mean, or a seeded sample"),
    seed: str | None = Query(None, description=f"mode=sample: {SEED_HELP} (image i uses s+i); random when "
                                               "absent (see X-DGAE-Seeds)"),
    tile: Literal["auto", "off"] = Query("auto", description=TILE_DOC),
    fit: Literal["error", "pad", "crop", "resize"] = Query(
        "pad", description="sides not a multiple of f: refuse, pad (decode crops back), centre-crop, or resize"),
    dtype: Literal["float32", "float16"] = Query("float32", description="latent dtype in the response"),
    fmt: Literal["safetensors", "npy", "json"] = Query("safetensors", alias="format",
                                                       description="response format; json only for small"),
) -> Response:
    eng = engine(request)
    eng.require_ready()
    prepared = await prepare_encode(request, eng, _admit(request, eng), mode=mode, seed=seed, tile=tile, fit=fit,
                                    dtype=dtype, fmt=fmt)
    return await _serve(request, eng, prepared)


async def decode(
    request: Request,
    tile: Literal["auto", "off"] = Query("auto", description=TILE_DOC),
    steps: int | None = Query(None, ge=1, description="sampler steps, 1..max_steps of the model (GET /v1/model "
                                                      "gives the range and the default)"),
    seed: str | None = Query(None, description=f"{SEED_HELP} (item i uses s+i); random when absent "
                                               "(see X-DGAE-Seeds)"),
    fmt: Literal["png", "jpeg", "webp", "safetensors", "npy"] = Query(
        "png", alias="format", description="one image: its bytes; several: a zip; safetensors/npy: uint8 "
                                           "(N, H, W, 3) at the decoder's full size"),
    quality: int = Query(DEFAULT_QUALITY, ge=1, le=MAX_QUALITY, description="jpeg/webp quality"),
) -> Response:
    eng = engine(request)
    eng.require_ready()
    prepared = await prepare_decode(request, eng, _admit(request, eng), tile=tile, steps=steps, seed=seed, fmt=fmt,
                                    quality=quality)
    return await _serve(request, eng, prepared)


def build_router() -> APIRouter:
    router = APIRouter(dependencies=[Depends(require_api_key), Depends(check_query)])
    router.add_api_route("/encode", encode, methods=["POST"], summary="Encode images to latents",
                         response_class=Response, openapi_extra=ENCODE_BODY, responses={**ENCODE_RESPONSES, **ERRORS})
    router.add_api_route("/decode", decode, methods=["POST"], summary="Decode latents to images",
                         response_class=Response, openapi_extra=DECODE_BODY, responses={**DECODE_RESPONSES, **ERRORS})
    return router
