"""Python client for a running dgae-serve service (its native routes), sync and async, on httpx.

    from dgae_client import Client

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
the service's metadata (each image's original size and ``fit``) as ``.metadata`` (a ``Latents``
numpy array, or a torch tensor with that attribute); ``decode`` sends it back, so a 451x300 photo
padded to 456x304 decodes to 451x300 (see ``dgae_client._latents``).

torch is optional: tensors are recognised without importing it, and only ``return_tensors="pt"``
imports it.

Requests from files are streamed from disk. Every call has a timeout; 503 answers (queue full,
loading, draining) and connection failures are retried up to ``retries`` times, waiting the
server's ``Retry-After`` when given, else an exponential backoff, each wait capped at
``max_backoff_s``. Failures raise typed errors (``dgae_client.errors``): ``ServiceError`` subclasses
carry the HTTP status, the server's error ``code`` (e.g. ``queue_full``) and ``message``;
``ConnectionFailed`` and ``RequestTimeout`` when no answer came; ``ArgumentError`` before any request.
This package talks HTTP only: it imports nothing of the project (no model, no service, no torch).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Sequence

try:
    import httpx
except ModuleNotFoundError as exc:  # a dependency of dgae-client, an optional extra of dgae-serve
    raise ModuleNotFoundError("dgae_client needs httpx: pip install dgae-client (or 'dgae-serve[client]')",
                              name=exc.name) from exc

from ._wire import IMAGE_FIELD, OCTET, ImageLike, LatentsLike, Seeds, TensorType
from .jobs import DEFAULT_POLL_S as JOB_POLL_S
from .jobs import JOBS_ROUTE, Job, Progress, job_call, job_from
from ._wire import Call as _Call
from ._wire import array as _array
from ._wire import encoded as _encoded
from ._wire import check_tensor_type as _check_tensor_type
from ._wire import checked as _checked
from ._wire import decode_call as _decode_call
from ._wire import encode_call as _encode_call
from ._wire import error_from_response
from ._wire import image_files as _image_files
from ._wire import json_body as _json
from ._wire import restored as _restored
from .errors import ArgumentError, ClientError, ConnectionFailed, RequestTimeout, ServiceError

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
CHUNK_BYTES = 1 << 16


# --- retries ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RetryPolicy:
    retries: int = DEFAULT_RETRIES
    backoff_s: float = DEFAULT_BACKOFF_S
    max_backoff_s: float = DEFAULT_MAX_BACKOFF_S

    def __post_init__(self) -> None:
        if self.retries < 0 or self.backoff_s < 0 or self.max_backoff_s < 0:
            raise ArgumentError("retries, backoff_s and max_backoff_s must be >= 0")

    def delay(self, attempt: int, retry_after_s: float | None) -> float:
        """Seconds to wait before retry ``attempt`` (0-based): Retry-After, else exponential; capped."""
        wait = retry_after_s if retry_after_s is not None else self.backoff_s * BACKOFF_FACTOR ** attempt
        return min(wait, self.max_backoff_s)


def _describe(call: _Call) -> str:
    return f"{call.method} {call.path}"


class _Settings:
    """Connection settings shared by Client and AsyncClient."""

    def __init__(self, url: str, api_key: str | None, timeout_s: float, connect_timeout_s: float,
                 retries: int, backoff_s: float, max_backoff_s: float):
        if timeout_s <= 0 or connect_timeout_s <= 0:
            raise ArgumentError("timeout_s and connect_timeout_s must be > 0")
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
        the original sizes when the latents carry ``encode``'s metadata (a list of arrays when those
        sizes differ), else at the decoder's size."""
        _check_tensor_type(return_tensors)
        response = self._request(_decode_call(latents, steps, seeds, image_format, quality))
        return _image_files(response) if image_format else _restored(_array(response, return_tensors), latents)

    # --- long work as jobs (see dgae_client.jobs) --------------------------------------------------------
    def submit_decode(self, latents: LatentsLike, *, steps: int | None = None, seeds: Seeds = None,
                      image_format: str | None = None, quality: int | None = None,
                      return_tensors: TensorType = "np") -> Job:
        """``decode``'s request as a job (``POST /v1/jobs/decode``); ``wait(job)`` returns its result."""
        _check_tensor_type(return_tensors)
        call = _decode_call(latents, steps, seeds, image_format, quality)

        def parse(response: httpx.Response):
            return _image_files(response) if image_format else _restored(_array(response, return_tensors), latents)

        return job_from(_json(self._request(job_call(call))), parse)

    def submit_encode(self, images: ImageLike | Sequence[ImageLike], *, mode: str = "mean", seeds: Seeds = None,
                      fit: str = "pad", dtype: str = "float32", return_tensors: TensorType = "np") -> Job:
        """``encode``'s request as a job (``POST /v1/jobs/encode``)."""
        _check_tensor_type(return_tensors)
        call = _encode_call(images, mode, seeds, fit, dtype)
        return job_from(_json(self._request(job_call(call))), lambda r: _encoded(r, return_tensors))

    def job(self, job: Job | str) -> Job:
        """The job's state now (``GET /v1/jobs/{id}``)."""
        path = job.path if isinstance(job, Job) else f"{JOBS_ROUTE}/{job}"
        return job_from(_json(self._request(_Call("GET", path))), job.parse if isinstance(job, Job) else None)

    def cancel(self, job: Job | str) -> None:
        """Cancel a queued or running job (between two passes), or delete a finished one."""
        path = job.path if isinstance(job, Job) else f"{JOBS_ROUTE}/{job}"
        self._request(_Call("DELETE", path, retry=False))

    def wait(self, job: Job, *, poll_s: float = JOB_POLL_S, timeout_s: float | None = None, progress: bool = True):
        """Poll until the job ends, showing its passes with tqdm (``progress``), then return what the
        synchronous call would have; a failed job raises its error, a cancelled one 410."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        bar = Progress(progress, f"{job.operation} {job.id[:8]}")
        try:
            while True:
                job = self.job(job)
                bar.update(job)
                if job.finished:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    raise RequestTimeout(f"job {job.id} still {job.state} after {timeout_s:g} s "
                                         f"({job.done}/{job.total} passes)")
                time.sleep(poll_s)
        finally:
            bar.close()
        response = self._request(_Call("GET", f"{job.path}/result"))
        return job.parse(response) if job.parse else response.content

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
