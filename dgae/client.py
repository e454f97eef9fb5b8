"""Python client for a running dgae-serve service (its native routes), sync and async, on httpx.

    from dgae.client import Client

    with Client("http://127.0.0.1:8000", api_key=None) as c:
        c.wait_ready()
        z = c.encode(["a.png", "b.png"])                 # numpy float32 (N, c, H/f, W/f)
        x = c.decode(z, steps=4, seeds=7)                # numpy uint8 (N, H, W, 3); item i uses seed 7+i
        pngs = c.decode(z, seeds=7, image_format="png")  # list of PNG files (bytes), one per latent

``AsyncClient`` has the same methods as coroutines. Images may be file paths, encoded image bytes,
PIL images, uint8 numpy arrays (H, W, 3) / (N, H, W, 3) or float torch tensors (3, H, W) /
(N, 3, H, W) in [-1, 1] (sent as lossless PNG); several images go in one request and must share
one size after the server's ``fit``. Latents may be numpy arrays or torch tensors (c, h, w) /
(N, c, h, w), or the bytes / path of a .safetensors or .npy latents file. ``return_tensors="pt"``
returns torch tensors instead of numpy arrays.

Original sizes survive the round trip: ``encode`` asks for safetensors and returns the latents with
the server's metadata (each image's original size and ``fit``) attached as ``.metadata`` (a
:class:`Latents` numpy array, or a torch tensor with that attribute). ``decode`` sends that
metadata back, so a 451x300 photo padded to 456x304 decodes to 451x300: image files are cropped by
the server, arrays here (a list of arrays when the originals differ in size). ``z[i]`` / ``z[a:b]``
keep their images' records; other derived arrays (arithmetic, ``np.asarray``, torch slicing) and
plain arrays carry none and decode at the decoder's full size.

Requests from files are streamed from disk. Every call has a timeout; 503 answers (queue full,
loading, draining) and connection failures are retried up to ``retries`` times, waiting the
server's ``Retry-After`` when given, else an exponential backoff, each wait capped at
``max_backoff_s``. Failures raise typed errors: ``ServiceError`` subclasses carry the HTTP status,
the server's error ``code`` (e.g. ``queue_full``) and ``message``; ``ConnectionFailed`` and
``RequestTimeout`` when no answer came. This module talks HTTP only: it never imports the service.
"""
from __future__ import annotations

import asyncio
import contextlib
import email.utils
import io
import logging
import os
import time
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, AsyncIterator, Literal, Sequence, Union

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.numpy import load as st_load_np

from .errors import ConfigError, DGAEError, InputError
from .imageio import DEFAULT_MAX_PIXELS, encode_image, restore_size, to_uint8
from .latents_io import IMAGES_KEY, LATENTS_KEY, dump_npy, dump_safetensors, fit_infos, safetensors_metadata

try:
    import httpx
except ModuleNotFoundError as exc:  # the client is an optional extra of the package
    raise ModuleNotFoundError("dgae.client needs httpx: pip install 'dgae-serve[client]'", name=exc.name) from exc

log = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT_S = 300.0          # a whole request: queue + compute on a busy CPU service
DEFAULT_CONNECT_TIMEOUT_S = 10.0
DEFAULT_RETRIES = 3                # extra attempts after the first
DEFAULT_BACKOFF_S = 0.5            # first wait without Retry-After; doubles every retry
DEFAULT_MAX_BACKOFF_S = 30.0       # cap on any one wait, Retry-After included
BACKOFF_FACTOR = 2.0
DEFAULT_POLL_S = 0.25              # wait_ready polling period
RETRY_STATUSES = (503,)
# The request may not have reached the model: safe to send again (encode/decode are pure functions).
RETRY_TRANSPORT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError,
                          httpx.ReadError, httpx.WriteError)
MAX_ERROR_CHARS = 500
CHUNK_BYTES = 1 << 16
OCTET, NPY, ZIP = "application/octet-stream", "application/x-npy", "application/zip"
LATENTS_FORMAT = "safetensors"     # what encode asks for: the only binary format with the fit metadata
IMAGE_FIELD = "image"
IMAGE_FORMATS = ("png", "jpeg", "webp")
TENSOR_TYPES = ("np", "pt")
HTTP_OK_MIN, HTTP_OK_MAX = 200, 299
HTTP_SERVER_ERROR = 500

ImageLike = Union[str, os.PathLike, bytes, bytearray, memoryview, np.ndarray, torch.Tensor, Image.Image]
LatentsLike = Union[np.ndarray, torch.Tensor, bytes, bytearray, memoryview, str, os.PathLike]
Seeds = Union[int, Sequence[int], None]
TensorType = Literal["np", "pt"]


# --- errors -----------------------------------------------------------------------------------------
class ClientError(DGAEError):
    """Base of everything this client raises."""

    code = "client_error"


class ConnectionFailed(ClientError):
    """The service could not be reached (after the retries)."""

    code = "connection_failed"


class RequestTimeout(ClientError):
    """No (complete) answer within the timeout."""

    code = "timeout"


class ResponseError(ClientError):
    """The service answered 2xx with a body this client cannot read."""

    code = "bad_response"


class ServiceError(ClientError):
    """The service answered with an error status; ``code`` and ``message`` are the server's."""

    code = "service_error"

    def __init__(self, status: int, code: str, message: str, retry_after_s: float | None = None):
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status, self.code, self.message, self.retry_after_s = status, code, message, retry_after_s


class BadRequest(ServiceError):
    """400: malformed image, tensor or metadata."""


class Unauthorized(ServiceError):
    """401: missing or wrong API key."""


class NotFound(ServiceError):
    """404 / 405: no such route or method (wrong base URL?)."""


class PayloadTooLarge(ServiceError):
    """413: body, pixels, item count or JSON size over the service's limits."""


class UnsupportedMediaType(ServiceError):
    """415."""


class InvalidParameter(ServiceError):
    """422: a parameter out of range (steps, seed, format, ...)."""


class ServerError(ServiceError):
    """5xx other than 503/504: the backend failed on this request's batch."""


class ServiceUnavailable(ServiceError):
    """503: queue full, not ready or shutting down (retried first)."""


class DeadlineExceeded(ServiceError):
    """504: the request waited and computed longer than the service's deadline."""


_ERRORS_BY_STATUS: dict[int, type[ServiceError]] = {
    400: BadRequest, 401: Unauthorized, 404: NotFound, 405: NotFound, 413: PayloadTooLarge,
    415: UnsupportedMediaType, 422: InvalidParameter, 503: ServiceUnavailable, 504: DeadlineExceeded}


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
    cls = _ERRORS_BY_STATUS.get(status, ServerError if status >= HTTP_SERVER_ERROR else ServiceError)
    return cls(status, code, message, retry_after_seconds(response.headers))


# --- retries ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RetryPolicy:
    retries: int = DEFAULT_RETRIES
    backoff_s: float = DEFAULT_BACKOFF_S
    max_backoff_s: float = DEFAULT_MAX_BACKOFF_S

    def __post_init__(self) -> None:
        if self.retries < 0 or self.backoff_s < 0 or self.max_backoff_s < 0:
            raise ConfigError("retries, backoff_s and max_backoff_s must be >= 0")

    def delay(self, attempt: int, retry_after_s: float | None) -> float:
        """Seconds to wait before retry ``attempt`` (0-based): Retry-After, else exponential; capped."""
        wait = retry_after_s if retry_after_s is not None else self.backoff_s * BACKOFF_FACTOR ** attempt
        return min(wait, self.max_backoff_s)


# --- requests (shared by both clients) --------------------------------------------------------------
@dataclass(frozen=True)
class _Call:
    method: str
    path: str
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes | Path | None = None                  # raw body; a Path is streamed from disk
    parts: tuple[tuple[str, bytes | Path], ...] = ()     # multipart image files
    retry: bool = True


def _seed_text(seeds: Seeds) -> str | None:
    if seeds is None:
        return None
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        return str(int(seeds))
    values = list(seeds)
    if not values or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in values):
        raise InputError("seeds must be an int or a non-empty sequence of ints")
    return ",".join(str(int(s)) for s in values)


def _readable(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such file")
    return p


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _image_parts(images: ImageLike | Sequence[ImageLike]) -> list[tuple[str, bytes | Path]]:
    """(file name, encoded image bytes or path) per image; arrays and tensors become PNG."""
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    parts: list[tuple[str, bytes | Path]] = []
    for item in items:
        name = f"image{len(parts)}.png"
        if isinstance(item, (str, os.PathLike)):
            path = _readable(item)
            parts.append((path.name, path))
        elif isinstance(item, (bytes, bytearray, memoryview)):
            parts.append((f"image{len(parts)}", bytes(item)))
        elif isinstance(item, Image.Image):
            parts.append((name, _png(item)))
        elif isinstance(item, np.ndarray):
            if item.dtype != np.uint8 or item.ndim not in (3, 4) or item.shape[-1] != 3:
                raise InputError(f"numpy images must be uint8 (H, W, 3) or (N, H, W, 3), got {item.dtype} "
                                 f"{item.shape}")
            parts += [(f"image{len(parts) + i}.png", encode_image(rgb)) for i, rgb in
                      enumerate(item[None] if item.ndim == 3 else item)]
        elif isinstance(item, torch.Tensor):
            if not item.is_floating_point() or item.dim() not in (3, 4) or item.shape[-3] != 3:
                raise InputError(f"torch images must be float (3, H, W) or (N, 3, H, W) in [-1, 1], got "
                                 f"{item.dtype} {tuple(item.shape)}")
            rgbs = to_uint8(item[None] if item.dim() == 3 else item)
            parts += [(f"image{len(parts) + i}.png", encode_image(rgb)) for i, rgb in enumerate(rgbs)]
        else:
            raise InputError(f"cannot send {type(item).__name__} as an image (path, bytes, PIL image, uint8 numpy "
                             "array or float torch tensor)")
    if not parts:
        raise InputError("no images to encode")
    return parts


class Latents(np.ndarray):
    """A numpy latents array as ``encode`` returns it, with the encode's ``metadata`` (per image: name,
    original size, fit) that ``decode`` sends back to restore the original sizes."""

    metadata: dict | None = None

    def __array_finalize__(self, obj) -> None:
        self.metadata = None  # derived arrays do not inherit records that may not describe them

    def __getitem__(self, key):
        out = super().__getitem__(key)
        images = (self.metadata or {}).get(IMAGES_KEY)
        if isinstance(out, Latents) and isinstance(key, (int, np.integer, slice)) and \
                isinstance(images, list) and len(images) == len(self):  # items along the batch axis
            out.metadata = {**self.metadata, IMAGES_KEY: images[key] if isinstance(key, slice) else [images[key]]}
        return out


def _with_metadata(arr: np.ndarray, meta: dict, return_tensors: str) -> np.ndarray | torch.Tensor:
    if return_tensors == "pt":
        t = torch.from_numpy(arr)
        t.metadata = meta or None
        return t
    out = arr.view(Latents)
    out.metadata = meta or None
    return out


def _latents_metadata(latents) -> dict | None:
    meta = getattr(latents, "metadata", None)
    return meta if isinstance(meta, dict) and meta else None


def _latents_body(latents: LatentsLike) -> tuple[bytes | Path, str]:
    if isinstance(latents, (str, os.PathLike)):
        return _readable(latents), OCTET
    if isinstance(latents, (bytes, bytearray, memoryview)):
        return bytes(latents), OCTET
    meta = _latents_metadata(latents)
    if isinstance(latents, torch.Tensor):
        t = latents.detach().cpu()
        latents = (t if t.dtype in (torch.float16, torch.float32) else t.float()).numpy()
    if isinstance(latents, np.ndarray):
        if latents.dtype not in (np.float16, np.float32):
            latents = latents.astype(np.float32)
        array = np.ascontiguousarray(latents).view(np.ndarray)
        if meta is not None:  # the encode's fit records travel back: the server can restore the sizes
            return dump_safetensors(torch.from_numpy(array), meta), OCTET
        return dump_npy(array), NPY
    raise InputError(f"cannot send {type(latents).__name__} as latents (numpy array, torch tensor, or the bytes / "
                     "path of a .safetensors or .npy file)")


def _encode_call(images, mode: str, seeds: Seeds, fit: str, dtype: str) -> _Call:
    parts = _image_parts(images)
    params = {"mode": mode, "fit": fit, "dtype": dtype, "format": LATENTS_FORMAT}
    if (seed := _seed_text(seeds)) is not None:
        params["seed"] = seed
    if len(parts) == 1:  # one raw image body (the server sniffs the format)
        return _Call("POST", "/encode", params, {"Content-Type": OCTET}, content=parts[0][1])
    return _Call("POST", "/encode", params, parts=tuple(parts))


def _decode_call(latents, steps: int | None, seeds: Seeds, image_format: str | None, quality: int | None) -> _Call:
    if image_format is not None and image_format not in IMAGE_FORMATS:
        raise InputError(f"image_format must be one of {', '.join(IMAGE_FORMATS)} or None (arrays)")
    content, media = _latents_body(latents)
    params = {"format": image_format or "npy"}
    for key, value in (("steps", steps), ("quality", quality), ("seed", _seed_text(seeds))):
        if value is not None:
            params[key] = str(value)
    return _Call("POST", "/decode", params, {"Content-Type": media}, content=content)


def _check_tensor_type(return_tensors: str) -> None:
    if return_tensors not in TENSOR_TYPES:
        raise InputError(f"return_tensors must be one of {', '.join(TENSOR_TYPES)}, got {return_tensors!r}")


def _array(response: httpx.Response, return_tensors: str) -> np.ndarray | torch.Tensor:
    try:
        arr = np.load(io.BytesIO(response.content), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ResponseError(f"the service sent an unreadable .npy body ({exc})") from None
    return torch.from_numpy(arr) if return_tensors == "pt" else arr


def _encoded(response: httpx.Response, return_tensors: str) -> np.ndarray | torch.Tensor:
    """Latents from an encode answer, with its metadata attached (see the module docstring)."""
    if response.headers.get("content-type", "").split(";")[0] == NPY:  # no metadata to keep
        return _array(response, return_tensors)
    try:
        arr, meta = st_load_np(response.content)[LATENTS_KEY], safetensors_metadata(response.content, "response")
    except (SafetensorError, ValueError, KeyError, DGAEError) as exc:
        raise ResponseError(f"the service sent unreadable latents ({str(exc)[:MAX_ERROR_CHARS]})") from None
    return _with_metadata(arr, meta, return_tensors)


def _restored(images: np.ndarray | torch.Tensor, latents) -> np.ndarray | torch.Tensor | list:
    """Decoded arrays cropped / resized back to the original sizes the latents' metadata records: one
    array when they share a size, else a list (one per image)."""
    meta = _latents_metadata(latents)
    if meta is None:
        return images
    arrays = images.numpy() if isinstance(images, torch.Tensor) else images
    infos = fit_infos(meta, len(arrays), DEFAULT_MAX_PIXELS)
    out = [restore_size(rgb, info) for rgb, info in zip(arrays, infos)]
    if len({a.shape for a in out}) > 1:
        return [torch.from_numpy(np.ascontiguousarray(a)) for a in out] if isinstance(images, torch.Tensor) else out
    stacked = np.ascontiguousarray(np.stack(out))
    return torch.from_numpy(stacked) if isinstance(images, torch.Tensor) else stacked


def _image_files(response: httpx.Response) -> list[bytes]:
    if response.headers.get("content-type", "").split(";")[0] != ZIP:
        return [response.content]
    try:
        with zipfile.ZipFile(io.BytesIO(response.content)) as zf:
            return [zf.read(name) for name in sorted(zf.namelist())]
    except zipfile.BadZipFile as exc:
        raise ResponseError(f"the service sent an unreadable zip ({exc})") from None


def _checked(response: httpx.Response) -> httpx.Response:
    if HTTP_OK_MIN <= response.status_code <= HTTP_OK_MAX:
        return response
    raise error_from_response(response)


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise ResponseError(f"the service sent invalid JSON ({exc})") from None


def _describe(call: _Call) -> str:
    return f"{call.method} {call.path}"


class _Settings:
    """Connection settings shared by Client and AsyncClient."""

    def __init__(self, url: str, api_key: str | None, timeout_s: float, connect_timeout_s: float,
                 retries: int, backoff_s: float, max_backoff_s: float):
        if timeout_s <= 0 or connect_timeout_s <= 0:
            raise ConfigError("timeout_s and connect_timeout_s must be > 0")
        self.url = url.rstrip("/")
        self.retry = RetryPolicy(retries, backoff_s, max_backoff_s)
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s)

    def next_delay(self, call: _Call, attempt: int, response: httpx.Response | None,
                   exc: Exception | None) -> float | None:
        """Seconds to wait before trying ``call`` again, or None to stop here."""
        if not call.retry or attempt >= self.retry.retries:
            return None
        if exc is not None:
            delay = self.retry.delay(attempt, None)
            log.warning("%s: %s; retry %d/%d in %.2f s", _describe(call), exc, attempt + 1, self.retry.retries, delay)
            return delay
        if response.status_code not in RETRY_STATUSES:
            return None
        err = error_from_response(response)
        delay = self.retry.delay(attempt, err.retry_after_s)
        log.warning("%s: HTTP %d %s; retry %d/%d in %.2f s (Retry-After %s)", _describe(call), err.status, err.code,
                    attempt + 1, self.retry.retries, delay, response.headers.get("retry-after", "absent"))
        return delay


def _limits(limits: httpx.Limits | None) -> dict:
    return {} if limits is None else {"limits": limits}  # None: httpx's own default pool


def _transport_error(call: _Call, exc: httpx.HTTPError) -> ClientError:
    if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
        return RequestTimeout(f"{_describe(call)}: no answer in time ({type(exc).__name__})")
    return ConnectionFailed(f"{_describe(call)}: {type(exc).__name__}: {exc}")


# --- sync -------------------------------------------------------------------------------------------
class Client:
    """Blocking client; use as a context manager or call ``close()``."""

    def __init__(self, url: str = DEFAULT_URL, *, api_key: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
                 connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S, retries: int = DEFAULT_RETRIES,
                 backoff_s: float = DEFAULT_BACKOFF_S, max_backoff_s: float = DEFAULT_MAX_BACKOFF_S,
                 limits: httpx.Limits | None = None, transport: httpx.BaseTransport | None = None):
        self._s = _Settings(url, api_key, timeout_s, connect_timeout_s, retries, backoff_s, max_backoff_s)
        self._http = httpx.Client(base_url=self._s.url, headers=self._s.headers, timeout=self._s.timeout,
                                  transport=transport, **_limits(limits))

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def encode(self, images: ImageLike | Sequence[ImageLike], *, mode: str = "mean", seeds: Seeds = None,
               fit: str = "pad", dtype: str = "float32", return_tensors: TensorType = "np"):
        """Images -> latents (N, c, H/f, W/f); ``seeds`` for mode="sample" (int s: image i uses s+i)."""
        _check_tensor_type(return_tensors)
        return _encoded(self._request(_encode_call(images, mode, seeds, fit, dtype)), return_tensors)

    def decode(self, latents: LatentsLike, *, steps: int | None = None, seeds: Seeds = None,
               image_format: str | None = None, quality: int | None = None, return_tensors: TensorType = "np"):
        """Latents -> uint8 images (N, H, W, 3), or with ``image_format`` a list of encoded files; both at
        the original sizes when the latents carry ``encode``'s metadata, else at the decoder's size."""
        _check_tensor_type(return_tensors)
        response = self._request(_decode_call(latents, steps, seeds, image_format, quality))
        return _image_files(response) if image_format else _restored(_array(response, return_tensors), latents)

    def info(self) -> dict:
        """GET /v1/model: preset, f, c, checkpoint, backend, steps range, limits."""
        return _json(self._request(_Call("GET", "/v1/model")))

    def ready(self) -> bool:
        """True when /readyz answers 200 (no retries; an unreachable service is not ready)."""
        try:
            self._request(_Call("GET", "/readyz", retry=False))
        except (ServiceError, ConnectionFailed, RequestTimeout):
            return False
        return True

    def wait_ready(self, timeout_s: float = DEFAULT_TIMEOUT_S, poll_s: float = DEFAULT_POLL_S) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if time.monotonic() >= deadline:
                raise RequestTimeout(f"{self._s.url} not ready after {timeout_s:g} s")
            time.sleep(poll_s)

    def metrics(self) -> str:
        """GET /metrics (Prometheus text)."""
        return self._request(_Call("GET", "/metrics", retry=False)).text

    def _request(self, call: _Call) -> httpx.Response:
        attempt = 0
        while True:
            response, failure = None, None
            try:
                with contextlib.ExitStack() as files:
                    request = self._http.build_request(call.method, call.path, params=call.params,
                                                       headers=call.headers, **_sync_body(call, files))
                    response = self._http.send(request, stream=True)
                    try:
                        response.read()
                    finally:
                        response.close()
            except RETRY_TRANSPORT_ERRORS as exc:
                failure = exc
            except httpx.HTTPError as exc:
                raise _transport_error(call, exc) from exc
            delay = self._s.next_delay(call, attempt, response, failure)
            if delay is None:
                if failure is not None:
                    raise _transport_error(call, failure) from failure
                return _checked(response)
            time.sleep(delay)
            attempt += 1


def _sync_body(call: _Call, files: contextlib.ExitStack) -> dict:
    """httpx body arguments for one attempt; files are opened here (streamed) and closed after."""
    def open_(payload):
        return files.enter_context(open(payload, "rb")) if isinstance(payload, Path) else payload

    if call.parts:
        return {"files": [(IMAGE_FIELD, (name, open_(p), OCTET)) for name, p in call.parts]}
    return {} if call.content is None else {"content": open_(call.content)}


# --- async ------------------------------------------------------------------------------------------
class AsyncClient:
    """The same API as ``Client`` with coroutines; use ``async with`` or ``await aclose()``."""

    def __init__(self, url: str = DEFAULT_URL, *, api_key: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
                 connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S, retries: int = DEFAULT_RETRIES,
                 backoff_s: float = DEFAULT_BACKOFF_S, max_backoff_s: float = DEFAULT_MAX_BACKOFF_S,
                 limits: httpx.Limits | None = None, transport: httpx.AsyncBaseTransport | None = None):
        self._s = _Settings(url, api_key, timeout_s, connect_timeout_s, retries, backoff_s, max_backoff_s)
        self._http = httpx.AsyncClient(base_url=self._s.url, headers=self._s.headers, timeout=self._s.timeout,
                                       transport=transport, **_limits(limits))

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def encode(self, images: ImageLike | Sequence[ImageLike], *, mode: str = "mean", seeds: Seeds = None,
                     fit: str = "pad", dtype: str = "float32", return_tensors: TensorType = "np"):
        _check_tensor_type(return_tensors)
        call = await asyncio.to_thread(_encode_call, images, mode, seeds, fit, dtype)  # PNG encoding is CPU work
        return _encoded(await self._request(call), return_tensors)

    async def decode(self, latents: LatentsLike, *, steps: int | None = None, seeds: Seeds = None,
                     image_format: str | None = None, quality: int | None = None, return_tensors: TensorType = "np"):
        _check_tensor_type(return_tensors)
        response = await self._request(_decode_call(latents, steps, seeds, image_format, quality))
        return _image_files(response) if image_format else _restored(_array(response, return_tensors), latents)

    async def info(self) -> dict:
        return _json(await self._request(_Call("GET", "/v1/model")))

    async def ready(self) -> bool:
        try:
            await self._request(_Call("GET", "/readyz", retry=False))
        except (ServiceError, ConnectionFailed, RequestTimeout):
            return False
        return True

    async def wait_ready(self, timeout_s: float = DEFAULT_TIMEOUT_S, poll_s: float = DEFAULT_POLL_S) -> None:
        deadline = time.monotonic() + timeout_s
        while not await self.ready():
            if time.monotonic() >= deadline:
                raise RequestTimeout(f"{self._s.url} not ready after {timeout_s:g} s")
            await asyncio.sleep(poll_s)

    async def metrics(self) -> str:
        return (await self._request(_Call("GET", "/metrics", retry=False))).text

    async def _request(self, call: _Call) -> httpx.Response:
        attempt = 0
        while True:
            response, failure = None, None
            body = await _async_body(call)
            try:
                request = self._http.build_request(call.method, call.path, params=call.params, headers=call.headers,
                                                   **body)
                response = await self._http.send(request, stream=True)
                try:
                    await response.aread()
                finally:
                    await response.aclose()
            except RETRY_TRANSPORT_ERRORS as exc:
                failure = exc
            except httpx.HTTPError as exc:
                raise _transport_error(call, exc) from exc
            finally:
                if hasattr(body.get("content"), "aclose"):  # a file stream cut short closes its file now
                    await body["content"].aclose()
            delay = self._s.next_delay(call, attempt, response, failure)
            if delay is None:
                if failure is not None:
                    raise _transport_error(call, failure) from failure
                return _checked(response)
            await asyncio.sleep(delay)
            attempt += 1


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    """A file's bytes, read in a worker thread chunk by chunk (the event loop never blocks on disk)."""
    fh = await asyncio.to_thread(open, path, "rb")
    try:
        while chunk := await asyncio.to_thread(fh.read, CHUNK_BYTES):
            yield chunk
    finally:
        fh.close()


def _read_parts(parts: tuple[tuple[str, bytes | Path], ...]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [(IMAGE_FIELD, (name, p.read_bytes() if isinstance(p, Path) else p, OCTET)) for name, p in parts]


async def _async_body(call: _Call) -> dict:
    """httpx body arguments for one attempt; disk reads run in a worker thread."""
    if call.parts:
        return {"files": await asyncio.to_thread(_read_parts, call.parts)}
    if isinstance(call.content, Path):
        return {"content": _file_chunks(call.content)}
    return {} if call.content is None else {"content": call.content}
