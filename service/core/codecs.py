"""Request parsing and response encoding for the HTTP routes.

Requests: the body is read with a byte limit enforced while streaming; images come as multipart
file parts or one raw ``image/*`` body; latents as safetensors, npy (sniffed by magic) or JSON
``{"latents": [...]}``. Every check raises a typed error naming the problem (400/413/415).

Responses: latents as safetensors (with metadata), npy or JSON; images as PNG/JPEG/WebP (one),
a zip of them (several), or uint8 (N, H, W, 3) safetensors / npy.
"""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import PurePath
from typing import Callable

import numpy as np
import torch
from fastapi import Request
from safetensors.torch import save as st_save
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from dgae.errors import InputError, TooLargeError
from formats.images import (OUTPUT_MEDIA_TYPES, READ_MEDIA_TYPES, FitInfo, decode_image, encode_image, fit_image,
                            image_size, restore_size)
from formats.latents import IMAGES_KEY, META_KEY, check_latent_tensor, dump_npy, dump_safetensors, load_latents

from .errors import UnsupportedMediaType
from .params import ascii_digits

MULTIPART = "multipart/form-data"
JSON = "application/json"
SAFETENSORS = "application/x-safetensors"
NPY = "application/x-npy"
ZIP = "application/zip"
IMAGE_TYPES = READ_MEDIA_TYPES  # a raw body takes every format a multipart part or a file may hold
RAW_IMAGE_TYPES = IMAGE_TYPES + ("application/octet-stream",)
# Binary latents are sniffed (npy magic, else safetensors). curl --data-binary sends the form type.
RAW_TENSOR_TYPES = (SAFETENSORS, NPY, "application/octet-stream", "application/safetensors",
                    "application/npy", "application/x-www-form-urlencoded", "")
IMAGE_FORMATS = OUTPUT_MEDIA_TYPES
MAX_FORM_FIELDS = 32


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The whole body, refusing (413) as soon as Content-Length or the bytes read pass ``max_bytes``."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not ascii_digits(declared.strip()):
            raise InputError(f"invalid Content-Length {declared!r}")
        if int(declared) > max_bytes:
            raise TooLargeError(f"body of {int(declared)} bytes exceeds the limit of {max_bytes} bytes")
    chunks, total = [], 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > max_bytes:
                raise TooLargeError(f"body exceeds the limit of {max_bytes} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise InputError("client disconnected while sending the body") from None
    return b"".join(chunks)


# --- images in ----------------------------------------------------------------------------------
async def image_files(request: Request, body: bytes, max_items: int) -> list[tuple[str, bytes]]:
    """(name, bytes) for each uploaded image: multipart file parts or one raw image body."""
    mtype = media_type(request)
    if mtype in RAW_IMAGE_TYPES:
        return [("body", body)]
    if mtype != MULTIPART:
        raise UnsupportedMediaType(f"unsupported Content-Type {mtype or '(none)'!r} for /encode; send "
                                   f"multipart/form-data file parts (curl -F image=@photo.png) or one raw "
                                   f"image body with Content-Type {', '.join(IMAGE_TYPES)}")

    async def replay():
        yield body

    parser = MultiPartParser(request.headers, replay(), max_files=max_items + 1, max_fields=MAX_FORM_FIELDS)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        if "too many files" in exc.message.lower():
            raise TooLargeError(f"too many images (limit {max_items} per request)") from None
        raise InputError(f"malformed multipart body: {exc.message}") from None
    except (ValueError, KeyError, UnicodeDecodeError) as exc:
        raise InputError(f"malformed multipart body: {exc}") from None
    try:
        files = [(part.filename or field, await part.read())
                 for field, part in form.multi_items() if isinstance(part, UploadFile)]
    finally:
        await form.close()
    if not files:
        raise InputError("no image file parts in the multipart body (send each image as a file, "
                         "e.g. curl -F image=@photo.png)")
    if len(files) > max_items:
        raise TooLargeError(f"{len(files)} images exceed the limit of {max_items} per request")
    return files


def _nonempty(name: str, data: bytes) -> bytes:
    if not data:
        raise InputError(f"{name}: empty image file")
    return data


def image_pixels(files: list[tuple[str, bytes]], max_pixels: int,
                 charge: Callable[[int, int], int] | None = None) -> int:
    """Total pixels of the uploaded images, from their headers alone (no pixel decoded); each image
    is checked against ``max_pixels`` on the way. ``charge(height, width)``: what an image costs
    (default its pixels; the service charges them padded and tiled, see service.core.cost)."""
    total = 0
    for name, data in files:
        w, h = image_size(_nonempty(name, data), name=name, max_pixels=max_pixels)
        total += charge(h, w) if charge else w * h
    return total


def decode_images(files: list[tuple[str, bytes]], f: int, fit: str,
                  max_pixels: int) -> tuple[list[np.ndarray], list[FitInfo]]:
    """Decode and fit every image (uint8 [H, W, 3]); all must share one size after fitting."""
    rgbs, infos = [], []
    for name, data in files:
        rgb = decode_image(_nonempty(name, data), name=name, max_pixels=max_pixels)
        try:
            rgb, info = fit_image(rgb, f, fit)
        except InputError as exc:
            raise InputError(f"{name}: {exc}") from None
        rgbs.append(rgb)
        infos.append(info)
    sizes = sorted({r.shape[:2] for r in rgbs})
    if len(sizes) > 1:
        raise InputError(f"images have different sizes after fitting ({', '.join(f'{w}x{h}' for h, w in sizes)}); "
                         f"one request holds one size: send them separately")
    return rgbs, infos


# --- latents in ---------------------------------------------------------------------------------
def parse_latents(body: bytes, mtype: str, max_json_values: int) -> tuple[torch.Tensor, dict]:
    """Latents float32 [N, c, h, w] and their metadata (empty when none) from a request body."""
    if mtype not in RAW_TENSOR_TYPES + (JSON,):
        raise UnsupportedMediaType(f"unsupported Content-Type {mtype!r} for /decode; send safetensors or npy "
                                   f"({SAFETENSORS}, {NPY} or application/octet-stream) or {JSON}")
    if not body:
        raise InputError("empty body: send latents as safetensors, npy or JSON")
    if mtype == JSON:
        return _json_latents(body, max_json_values)
    return load_latents(body, "body")


def _json_latents(body: bytes, max_values: int) -> tuple[torch.Tensor, dict]:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:  # ValueError: syntax, encoding, an int over 4300 digits
        raise InputError(f"body is not valid JSON ({str(exc)[:200]})") from None
    if not isinstance(doc, dict) or "latents" not in doc:
        raise InputError('JSON body must be an object {"latents": [...]} with a nested list (c, h, w) '
                         'or (N, c, h, w)')
    try:
        arr = np.array(doc["latents"], dtype=object)
    except (ValueError, RecursionError) as exc:
        raise InputError(f"latents: not a rectangular nested list ({str(exc)[:200]})") from None
    if arr.size > max_values:
        raise TooLargeError(
            f"latents: {arr.size} JSON values exceed the limit of {max_values}; send safetensors or npy"
        )
    if arr.ndim not in (3, 4) or not all(type(v) in (int, float) for v in arr.ravel()):
        raise InputError("latents must be a rectangular nested list of numbers with rank 3 (c, h, w) "
                         f"or 4 (N, c, h, w); got rank {arr.ndim}"
                         f"{' with non-number entries' if arr.ndim in (3, 4) else ''}")
    try:
        values = arr.astype(np.float32)  # [.., c, h, w]
    except OverflowError:
        raise InputError("latents contain a number too large for float32") from None
    meta = doc.get("metadata")
    return check_latent_tensor(torch.from_numpy(values), "latents"), meta if isinstance(meta, dict) else {}


# --- responses ---------------------------------------------------------------------------------
def latents_body(latents: torch.Tensor, fmt: str, dtype: torch.dtype, meta: dict) -> tuple[bytes, str]:
    t = latents.to(dtype).contiguous()
    if fmt == "safetensors":
        return dump_safetensors(t, meta), SAFETENSORS
    if fmt == "npy":
        return dump_npy(t.numpy()), NPY
    doc = {"latents": t.float().tolist(), "shape": list(t.shape), "dtype": str(dtype).removeprefix("torch."),
           "metadata": meta}
    return json.dumps(doc).encode(), JSON


def images_body(rgbs: np.ndarray, infos: list[FitInfo | None], names: list[str], fmt: str, quality: int,
                meta: dict) -> tuple[bytes, str, str]:
    """rgbs uint8 [N, H, W, 3] -> (bytes, media type, file name). Image formats undo the encode-time
    fit (crop padding / resize back); tensor formats keep the decoder's full output."""
    if fmt == "safetensors":
        return st_save({IMAGES_KEY: torch.from_numpy(rgbs)}, metadata={META_KEY: json.dumps(meta)}), \
            SAFETENSORS, "images.safetensors"
    if fmt == "npy":
        return dump_npy(rgbs), NPY, "images.npy"
    restored = [restore_size(rgb, info) for rgb, info in zip(rgbs, infos)]
    files = [encode_image(rgb, fmt, quality) for rgb in restored]
    if len(files) == 1:
        return files[0], IMAGE_FORMATS[fmt], f"image.{fmt}"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:  # images are compressed already
        for name, data in zip(zip_names(names, len(files), fmt), files):
            zf.writestr(name, data)
    return buf.getvalue(), ZIP, "images.zip"


def zip_names(names: list[str], n: int, fmt: str) -> list[str]:
    """<index>_<original stem>.<fmt> (stems sanitised), or <index>.<fmt> without names."""
    out = []
    for i in range(n):
        stem = PurePath(names[i]).stem if i < len(names) and isinstance(names[i], str) else ""
        stem = "".join(ch for ch in stem if ch.isalnum() or ch in "-_.")[:64]
        out.append(f"{i:04d}_{stem}.{fmt}" if stem else f"{i:04d}.{fmt}")
    return out
