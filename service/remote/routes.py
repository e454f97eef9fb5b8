"""The Remote VAE adapter: ``POST /remote/decode`` and ``POST /remote/encode``, the protocol of
Hugging Face's hybrid-inference VAE endpoints as diffusers' ``remote_decode`` / ``remote_encode``
speak it (the endpoint URL is all a client passes) and SD.Next's ``tensor/binary`` requests.

Requests carry a raw tensor body described by the ``shape`` / ``dtype`` query parameters (an
encode may send image bytes instead); tensor responses carry ``shape`` / ``dtype`` headers. The
client's ``scaling_factor`` / ``shift_factor`` map its diffusion model's latents onto DGAE's public
latents exactly as a diffusers pipeline does for its VAE: decode takes ``latents / scaling_factor
+ shift_factor``, encode returns ``(latents - shift_factor) * scaling_factor``; without them (or
with the deprecated ``do_scaling``) the latents are DGAE's public ones unchanged, since the
service's own factors are 1 and 0 (see docs/remote-vae.md). ``seed`` and ``steps`` may ride in the
endpoint URL's query; a decode without ``seed`` uses ``DEFAULT_SEED``, so it is reproducible like a
VAE's. Admission, limits, keys and metrics are those of the native routes.
"""
from __future__ import annotations

import functools
import base64
import binascii
import math
import time
from typing import Literal

import torch
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from dgae.errors import InputError
from formats.images import OUTPUT_MEDIA_TYPES, OUTPUT_SUFFIXES, encode_image, to_tensor, to_uint8

from ..core import codecs, cost
from ..core.engine import DECODE, ENCODE
from ..core.errors import ParameterError, UnsupportedMediaType, openapi_errors
from ..core.http import H_SEEDS, H_STEPS, authorize, check_query, engine, timing
from ..core.params import SEED_HELP, decode_request, encode_request, float_images
from .tensors import DTYPES, TENSOR_MEDIA, parse_tensor, tensor_response

PREFIX = "/remote"
DEFAULT_SEED = 0  # remote_decode has no seed argument: a decode without ?seed= is reproducible
JPEG_QUALITY = 95
TENSOR_BODY_TYPES = (TENSOR_MEDIA, "application/octet-stream", "")  # diffusers' encode sends no Content-Type
IMAGE_BODY_TYPES = codecs.IMAGE_TYPES + TENSOR_BODY_TYPES
TILE_DOC = "auto: tiles for images larger than the model's tile; off: one piece"
SCALE_DOC = ("the client's VAE scaling factor: decode takes latents / scaling_factor (+ shift_factor), encode "
             "returns (latents - shift_factor) * scaling_factor; absent: DGAE's public latents unchanged")
BASIC, BEARER = "basic", "bearer"


async def require_key(request: Request) -> None:
    """The API key as ``Authorization: Bearer <key>`` or as the password of Basic auth, which is
    what ``requests`` (so diffusers, unchanged) sends from a ``~/.netrc`` entry for the host."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    token = None
    if scheme.lower() == BEARER:
        token = value.strip()
    elif scheme.lower() == BASIC:
        try:
            token = base64.b64decode(value.strip(), validate=True).decode().partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            token = None
    authorize(request, token)


def _factor(name: str, value: float | None, nonzero: bool) -> float | None:
    if value is not None and (not math.isfinite(value) or (nonzero and value == 0)):
        raise ParameterError(f"{name} must be a finite{' non-zero' if nonzero else ''} number, got {value!r}")
    return value


def to_public(latents: torch.Tensor, scaling_factor: float | None, shift_factor: float | None) -> torch.Tensor:
    """The client's latents -> DGAE's public latents: latents / scaling_factor + shift_factor."""
    out = latents.float()
    if _factor("scaling_factor", scaling_factor, nonzero=True) is not None:
        out = out / scaling_factor
    if _factor("shift_factor", shift_factor, nonzero=False) is not None:
        out = out + shift_factor
    return out


def from_public(latents: torch.Tensor, scaling_factor: float | None, shift_factor: float | None) -> torch.Tensor:
    """DGAE's public latents -> the client's: (latents - shift_factor) * scaling_factor."""
    out = latents.float()
    if _factor("shift_factor", shift_factor, nonzero=False) is not None:
        out = out - shift_factor
    if _factor("scaling_factor", scaling_factor, nonzero=True) is not None:
        out = out * scaling_factor
    return out


def _media(request: Request, allowed: tuple[str, ...], route: str) -> None:
    mtype = codecs.media_type(request)
    if mtype not in allowed:
        raise UnsupportedMediaType(f"unsupported Content-Type {mtype!r} for {route}; send "
                                   f"{', '.join(t or '(none)' for t in allowed)}")


def _accepts_tensor(request: Request) -> bool:
    return TENSOR_MEDIA in request.headers.get("accept", "")


async def decode(
    request: Request,
    shape: list[int] | None = Query(None, description="the latents' shape [N, c, h, w] (repeated parameter)"),
    dtype: str | None = Query(None, description="the body's dtype: float16, float32 or bfloat16"),
    output_type: Literal["pil", "pt"] = Query("pil", description="pil: one image (image_format); pt: a tensor"),
    image_format: Literal["png", "jpg"] = Query("jpg", description="output_type=pil: the image's format"),
    partial_postprocess: bool = Query(False, description="output_type=pt: uint8 [N, H, W, 3] instead of "
                                                         "[N, 3, H, W] in [-1, 1] in the request's dtype"),
    scaling_factor: float | None = Query(None, description=SCALE_DOC),
    shift_factor: float | None = Query(None, description="see scaling_factor"),
    do_scaling: bool | None = Query(None, description="deprecated by diffusers; DGAE's own factors are 1 and 0"),
    height: int | None = Query(None, description="packed (Flux) latents only: refused"),
    width: int | None = Query(None, description="packed (Flux) latents only: refused"),
    steps: int | None = Query(None, ge=1, description="sampler steps (the service's default when absent)"),
    seed: str | None = Query(None, description=f"{SEED_HELP}; {DEFAULT_SEED} when absent"),
    tile: Literal["auto", "off"] = Query("auto", description=TILE_DOC),
) -> Response:
    eng = engine(request)
    eng.require_ready()
    s = eng.settings
    if height is not None or width is not None:
        raise ParameterError("height and width are for packed (Flux) latents; DGAE latents are [N, c, h, w], "
                             "send them unpacked without height and width")
    _media(request, TENSOR_BODY_TYPES, "/remote/decode")
    body = await codecs.read_body(request, s.max_body_bytes)
    raw = await run_in_threadpool(parse_tensor, body, shape, dtype)
    latents = to_public(raw, scaling_factor, shift_factor)
    req = await run_in_threadpool(decode_request, eng, latents, steps, DEFAULT_SEED if seed is None else seed, tile)
    as_image = output_type == "pil" and not _accepts_tensor(request)
    if as_image and req.n != 1:
        raise InputError(f"output_type='pil' returns one image and this request has {req.n} latents; send one, "
                         "or use output_type='pt'")
    eng.admission.admit(request, DECODE, cost.decode_charge(eng.config, req))
    started = time.perf_counter()
    images = await eng.decode(req)
    headers = {H_SEEDS: ",".join(map(str, req.seeds)), H_STEPS: str(req.steps), **timing(DECODE, started)}
    if as_image:
        fmt = OUTPUT_SUFFIXES["." + image_format]
        rgbs = await run_in_threadpool(to_uint8, images)
        data = await run_in_threadpool(encode_image, rgbs[0], fmt, JPEG_QUALITY)
        return Response(data, media_type=OUTPUT_MEDIA_TYPES[fmt], headers=headers)
    if output_type == "pt" and partial_postprocess:
        out = torch.from_numpy(await run_in_threadpool(to_uint8, images))  # uint8 [N, H, W, 3]
    elif output_type == "pt":
        out = images.to(DTYPES[dtype])  # [N, 3, H, W] in [-1, 1], not denormalised
    else:  # pil with Accept: tensor/binary (a diffusers processor): [N, 3, H, W] in [0, 1]
        out = ((images.float() + 1) / 2).clamp(0, 1).to(DTYPES[dtype])
    data, tensor_headers = await run_in_threadpool(tensor_response, out)
    return Response(data, media_type=TENSOR_MEDIA, headers={**headers, **tensor_headers})


async def encode(
    request: Request,
    shape: list[int] | None = Query(None, description="a tensor body's shape [N, 3, H, W] or [3, H, W]"),
    dtype: str | None = Query(None, description="a tensor body's dtype: float16, float32 or bfloat16 "
                                                "(pixels in [-1, 1]); without shape/dtype the body is an image"),
    scaling_factor: float | None = Query(None, description=SCALE_DOC),
    shift_factor: float | None = Query(None, description="see scaling_factor"),
    mode: Literal["mean", "sample"] = Query("mean", description="posterior mean, or a seeded sample"),
    seed: str | None = Query(None, description=f"mode=sample: {SEED_HELP}"),
    tile: Literal["auto", "off"] = Query("auto", description=TILE_DOC),
    fit: Literal["error", "pad", "crop", "resize"] = Query(
        "error", description="image sides not a multiple of f: refuse, pad, centre-crop or resize (the latents "
                             "carry no record of it, so nothing is undone on decode)"),
) -> Response:
    eng = engine(request)
    eng.require_ready()
    s, spec = eng.settings, eng.spec
    body = await codecs.read_body(request, s.max_body_bytes)
    if shape is not None or dtype is not None:
        _media(request, TENSOR_BODY_TYPES, "/remote/encode with a tensor body")
        raw = await run_in_threadpool(parse_tensor, body, shape, dtype)
        images = await run_in_threadpool(float_images, raw.unsqueeze(0) if raw.dim() == 3 else raw)
        pixels = None  # charged once the request is checked
    else:
        _media(request, IMAGE_BODY_TYPES, "/remote/encode with an image body")
        files = [("image", body)]
        charge = functools.partial(cost.encode_pixels, eng.config, tile=tile)  # from the header, as /encode
        pixels = await run_in_threadpool(codecs.image_pixels, files, s.max_pixels, charge)
        rgbs, _ = await run_in_threadpool(codecs.decode_images, files, spec.f, fit, s.max_pixels)
        images = await run_in_threadpool(to_tensor, rgbs)
    req = encode_request(eng, images, mode, seed if mode == "sample" else None, tile)
    eng.admission.admit(request, ENCODE, cost.encode_charge(eng.config, req) if pixels is None else pixels)
    started = time.perf_counter()
    latents = await eng.encode(req)
    headers = timing(ENCODE, started)
    if mode == "sample":
        headers[H_SEEDS] = ",".join(map(str, req.seeds))
    data, tensor_headers = await run_in_threadpool(tensor_response,
                                                   from_public(latents, scaling_factor, shift_factor))
    return Response(data, media_type=TENSOR_MEDIA, headers={**headers, **tensor_headers})


def _binary(description: str) -> dict:
    return {"schema": {"type": "string", "format": "binary"}, "description": description}


# Documented as application/octet-stream (which OpenAPI tools can send); tensor/binary and no
# Content-Type are accepted the same way.
RAW_BODY = "application/octet-stream"
DECODE_BODY = {"requestBody": {"required": True, "content": {
    RAW_BODY: _binary(f"raw latents (little-endian, row-major) described by shape and dtype ({TENSOR_MEDIA} too)")}}}
ENCODE_BODY = {"requestBody": {"required": True, "content": {
    RAW_BODY: _binary(f"raw float pixels in [-1, 1] described by shape and dtype ({TENSOR_MEDIA} too), or an image"),
    **{t: _binary("one image") for t in ("image/png", "image/jpeg")}}}}
TENSOR_HEADERS = {"shape": {"schema": {"type": "string"}, "description": "JSON list"},
                  "dtype": {"schema": {"type": "string"}, "description": "float16, float32, bfloat16 or uint8"}}
TENSOR_OUT = {TENSOR_MEDIA: _binary("raw tensor described by the shape and dtype headers")}
IMAGE_OUT = {OUTPUT_MEDIA_TYPES[f]: _binary("one image") for f in ("png", "jpeg")}
ERRORS = openapi_errors(400, 401, 413, 415, 422, 500, 503, 504)


def build_router() -> APIRouter:
    router = APIRouter(prefix=PREFIX, tags=["Remote VAE (diffusers hybrid inference)"],
                       dependencies=[Depends(require_key), Depends(check_query)])
    router.add_api_route("/decode", decode, methods=["POST"], summary="Decode latents (diffusers remote_decode)",
                         response_class=Response, openapi_extra=DECODE_BODY,
                         responses={200: {"description": "one image, or a tensor with shape/dtype headers",
                                          "headers": TENSOR_HEADERS, "content": {**IMAGE_OUT, **TENSOR_OUT}},
                                    **ERRORS})
    router.add_api_route("/encode", encode, methods=["POST"], summary="Encode an image (diffusers remote_encode)",
                         response_class=Response, openapi_extra=ENCODE_BODY,
                         responses={200: {"description": "latents float32 with shape/dtype headers",
                                          "headers": TENSOR_HEADERS, "content": TENSOR_OUT}, **ERRORS})
    return router
