"""What goes over the wire: request bodies and parameters from Python values, and Python values (and
typed errors) from the service's answers. Shared by ``Client`` and ``AsyncClient``; no I/O here.

torch is never imported at import time: tensors are recognised by duck typing and converted through
``.detach().cpu().numpy()``; only ``return_tensors="pt"`` imports torch, on that path.
"""
from __future__ import annotations

import email.utils
import io
import os
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Sequence, Union

import httpx
import numpy as np
from PIL import Image

from ._latents import attach, fit_records, metadata_of, read_safetensors, restore, safetensors_bytes
from .errors import ArgumentError, ResponseError, ServiceError, service_error_class

MAX_ERROR_CHARS = 500
OCTET, NPY, ZIP = "application/octet-stream", "application/x-npy", "application/zip"
LATENTS_FORMAT = "safetensors"                    # what encode asks for: the binary format with the fit metadata
IMAGE_FIELD = "image"
IMAGE_FORMATS = ("png", "jpeg", "webp")
TENSOR_TYPES = ("np", "pt")
LATENT_DTYPES = (np.float16, np.float32)          # sent as they are; other dtypes become float32
TORCH_LATENT_DTYPES = ("torch.float16", "torch.float32")
LATENTS_RANK = 4                                  # (N, c, h, w); (c, h, w) is one latent
UINT8_MAX = 255                                   # float images in [-1, 1] map to 0..255
HTTP_OK_MIN, HTTP_OK_MAX = 200, 299

# torch.Tensor is accepted wherever numpy arrays are (typed as Any: torch is optional).
ImageLike = Union[str, os.PathLike, bytes, bytearray, memoryview, np.ndarray, Image.Image, Any]
LatentsLike = Union[np.ndarray, bytes, bytearray, memoryview, str, os.PathLike, Any]
Seeds = Union[int, Sequence[int], None]
TensorType = Literal["np", "pt"]


@dataclass(frozen=True)
class Call:
    """One request, built once and sent on every attempt."""

    method: str
    path: str
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes | Path | None = None                  # raw body; a Path is streamed from disk
    parts: tuple[tuple[str, bytes | Path], ...] = ()     # multipart image files
    retry: bool = True


# --- torch, without importing it ---------------------------------------------------------------------
def is_tensor(value: Any) -> bool:
    """A torch tensor (or subclass), recognised without importing torch."""
    return type(value).__module__.partition(".")[0] == "torch" and hasattr(value, "detach")


def tensor_numpy(tensor: Any, keep: Sequence[str] = ()) -> np.ndarray:
    """A tensor's values on the CPU as numpy; dtypes outside ``keep`` (torch dtype names) become float32."""
    t = tensor.detach().cpu()
    return (t if str(t.dtype) in keep else t.float()).numpy()


def import_torch():
    """torch, for ``return_tensors="pt"`` only."""
    try:
        import torch  # noqa: PLC0415 - optional: the client installs and runs without torch
    except ModuleNotFoundError as exc:
        raise ArgumentError('return_tensors="pt" needs torch (pip install torch); return_tensors="np" does '
                            "not") from exc
    return torch


def check_tensor_type(return_tensors: str) -> None:
    if return_tensors not in TENSOR_TYPES:
        raise ArgumentError(f"return_tensors must be one of {', '.join(TENSOR_TYPES)}, got {return_tensors!r}")
    if return_tensors == "pt":
        import_torch()  # fail before the request, not after it


# --- request building --------------------------------------------------------------------------------
def seed_text(seeds: Seeds) -> str | None:
    if seeds is None:
        return None
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        return str(int(seeds))
    values = list(seeds)
    if not values or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in values):
        raise ArgumentError("seeds must be an int or a non-empty sequence of ints")
    return ",".join(str(int(s)) for s in values)


def readable(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.is_file():
        raise ArgumentError(f"{p}: no such file")
    return p


def png(image: Image.Image | np.ndarray) -> bytes:
    """Lossless PNG bytes of a PIL image or a uint8 (H, W, 3) array."""
    buf = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buf, format="PNG")
    return buf.getvalue()


def tensor_rgbs(tensor: Any) -> np.ndarray:
    """Float (3, H, W) / (N, 3, H, W) images in [-1, 1] -> uint8 (N, H, W, 3), rounded to nearest."""
    if not tensor.is_floating_point() or tensor.dim() not in (3, 4) or tensor.shape[-3] != 3:
        raise ArgumentError(f"torch images must be float (3, H, W) or (N, 3, H, W) in [-1, 1], got "
                            f"{tensor.dtype} {tuple(tensor.shape)}")
    x = tensor_numpy(tensor[None] if tensor.dim() == 3 else tensor)
    x = np.round((np.clip(x, -1.0, 1.0) + 1.0) * (UINT8_MAX / 2))
    return np.ascontiguousarray(x.astype(np.uint8).transpose(0, 2, 3, 1))


def image_parts(images: ImageLike | Sequence[ImageLike]) -> list[tuple[str, bytes | Path]]:
    """(file name, encoded image bytes or path) per image; arrays and tensors become PNG."""
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    parts: list[tuple[str, bytes | Path]] = []
    for item in items:
        if isinstance(item, (str, os.PathLike)):
            path = readable(item)
            parts.append((path.name, path))
        elif isinstance(item, (bytes, bytearray, memoryview)):
            parts.append((f"image{len(parts)}", bytes(item)))
        elif isinstance(item, Image.Image):
            parts.append((f"image{len(parts)}.png", png(item)))
        elif isinstance(item, np.ndarray):
            if item.dtype != np.uint8 or item.ndim not in (3, 4) or item.shape[-1] != 3:
                raise ArgumentError(f"numpy images must be uint8 (H, W, 3) or (N, H, W, 3), got {item.dtype} "
                                    f"{item.shape}")
            parts += [(f"image{len(parts) + i}.png", png(rgb)) for i, rgb in
                      enumerate(item[None] if item.ndim == 3 else item)]
        elif is_tensor(item):
            parts += [(f"image{len(parts) + i}.png", png(rgb)) for i, rgb in enumerate(tensor_rgbs(item))]
        else:
            raise ArgumentError(f"cannot send {type(item).__name__} as an image (path, bytes, PIL image, uint8 "
                                "numpy array or float torch tensor)")
    if not parts:
        raise ArgumentError("no images to encode")
    return parts


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def latents_body(latents: LatentsLike) -> tuple[bytes | Path, str]:
    """(body, content type): files and bytes go as they are (the server sniffs safetensors / .npy);
    arrays and tensors as .npy, or as safetensors with their encode metadata when they carry it."""
    if isinstance(latents, (str, os.PathLike)):
        return readable(latents), OCTET
    if isinstance(latents, (bytes, bytearray, memoryview)):
        return bytes(latents), OCTET
    meta = metadata_of(latents)
    if is_tensor(latents):
        latents = tensor_numpy(latents, keep=TORCH_LATENT_DTYPES)
    if isinstance(latents, np.ndarray):
        if latents.dtype not in LATENT_DTYPES:
            latents = latents.astype(np.float32)
        array = np.ascontiguousarray(latents).view(np.ndarray)
        if meta is not None:  # the encode's fit records travel back: the server can restore the sizes
            fit_records(meta, len(array) if array.ndim == LATENTS_RANK else 1)
            return safetensors_bytes(array, meta), OCTET
        return npy_bytes(array), NPY
    raise ArgumentError(f"cannot send {type(latents).__name__} as latents (numpy array, torch tensor, or the "
                        "bytes / path of a .safetensors or .npy file)")


def encode_call(images, mode: str, seeds: Seeds, fit: str, dtype: str) -> Call:
    parts = image_parts(images)
    params = {"mode": mode, "fit": fit, "dtype": dtype, "format": LATENTS_FORMAT}
    if (seed := seed_text(seeds)) is not None:
        params["seed"] = seed
    if len(parts) == 1:  # one raw image body (the server sniffs the format)
        return Call("POST", "/encode", params, {"Content-Type": OCTET}, content=parts[0][1])
    return Call("POST", "/encode", params, parts=tuple(parts))


def decode_call(latents, steps: int | None, seeds: Seeds, image_format: str | None, quality: int | None) -> Call:
    if image_format is not None and image_format not in IMAGE_FORMATS:
        raise ArgumentError(f"image_format must be one of {', '.join(IMAGE_FORMATS)} or None (arrays)")
    content, media = latents_body(latents)
    params = {"format": image_format or "npy"}
    for key, value in (("steps", steps), ("quality", quality), ("seed", seed_text(seeds))):
        if value is not None:
            params[key] = str(value)
    return Call("POST", "/decode", params, {"Content-Type": media}, content=content)


# --- response parsing --------------------------------------------------------------------------------
def array(response: httpx.Response, return_tensors: str):
    """The .npy body as a numpy array, or a torch tensor for ``return_tensors="pt"``."""
    try:
        arr = np.load(io.BytesIO(response.content), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ResponseError(f"the service sent an unreadable .npy body ({exc})") from None
    return import_torch().from_numpy(arr) if return_tensors == "pt" else arr


def encoded(response: httpx.Response, return_tensors: str):
    """Latents from an /encode answer with the service's metadata attached as ``.metadata`` (a .npy
    answer, from a service that ignores ``format``, has none)."""
    if response.headers.get("content-type", "").split(";")[0] == NPY:
        return array(response, return_tensors)
    latents, meta = read_safetensors(response.content)
    return attach(latents, meta, import_torch() if return_tensors == "pt" else None)


def restored(images, latents):
    """Decoded arrays (numpy or torch) cropped / resized back to the original sizes ``latents``'
    metadata records: one array when they share a size, else a list of arrays."""
    records = fit_records(metadata_of(latents), len(images))
    if records is None:
        return images
    if is_tensor(images):
        out = restore(images.numpy(), records)
        torch = import_torch()
        return [torch.from_numpy(a) for a in out] if isinstance(out, list) else torch.from_numpy(out)
    return restore(images, records)


def image_files(response: httpx.Response) -> list[bytes]:
    if response.headers.get("content-type", "").split(";")[0] != ZIP:
        return [response.content]
    try:
        with zipfile.ZipFile(io.BytesIO(response.content)) as zf:
            return [zf.read(name) for name in sorted(zf.namelist())]
    except zipfile.BadZipFile as exc:
        raise ResponseError(f"the service sent an unreadable zip ({exc})") from None


def json_body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise ResponseError(f"the service sent invalid JSON ({exc})") from None


def retry_after_seconds(headers: httpx.Headers) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date), None when absent or unreadable."""
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def error_from_response(response: httpx.Response) -> ServiceError:
    """The typed error for a non-2xx answer: ``{"error": {"code", "message"}}`` (native routes),
    ``{"error": "..."}`` (the /v2 routes, proxies) or any other body (code ``http_<status>``)."""
    status = response.status_code
    code, message = f"http_{status}", (response.text[:MAX_ERROR_CHARS] or response.reason_phrase)
    try:
        doc = response.json()
    except ValueError:
        doc = None
    err = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(err, dict):
        code, message = str(err.get("code") or code), str(err.get("message") or message)
    elif isinstance(err, str):
        message = err
    return service_error_class(status)(status, code, message, retry_after_seconds(response.headers))


def checked(response: httpx.Response) -> httpx.Response:
    if HTTP_OK_MIN <= response.status_code <= HTTP_OK_MAX:
        return response
    raise error_from_response(response)
