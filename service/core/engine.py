"""The one inference core every protocol adapter calls: ``Engine.encode(EncodeRequest)`` and
``Engine.decode(DecodeRequest)``.

An engine holds the model spec, the backend, one dynamic batcher and worker thread per operation
(a long decode never holds up an encode), admission and metrics. Requests arrive checked
(:mod:`service.core.params` builds them) and are batched by their typed ``batch_key()``; the worker
rebuilds one request for the joined batch and hands it to the backend, which trusts it. Start-up
(load, warm-up) and shut-down (drain) live apart, in :mod:`service.core.lifecycle`.
"""
from __future__ import annotations

import asyncio
import functools
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Awaitable, Callable

import torch

from backends.base import Backend, PassHook
from dgae.checkpoint import read_config, resolve_checkpoint
from dgae.config import DGAEConfig
from dgae.errors import ConfigError
from dgae.request import DecodeKey, DecodeRequest, EncodeKey, EncodeRequest

from .admission import Admission
from .auth import KeyStore, Principal
from .batcher import DynamicBatcher
from .cost import CostModel
from .errors import Busy, NotReady, OverDeadline, Unauthorized, retry_after
from .metrics import ServiceMetrics
from .quotas import Quotas
from .settings import ServiceSettings

ENCODE, DECODE = "encode", "decode"
OPERATIONS = (ENCODE, DECODE)
ESTIMATE_MARGIN = 1.25  # refuse when estimate x this passes the deadline: estimates are not promises
JOBS_ROUTE = "/v1/jobs"  # named in over_deadline messages (the jobs adapter, service.jobs, serves it)
TIMEOUT_HEADER = "X-DGAE-Timeout-S"
Request = EncodeRequest | DecodeRequest


@dataclass(frozen=True)
class ModelSpec:
    """What adapters need to know before the backend is loaded (read from the config alone)."""

    preset: str
    f: int
    c: int
    default_steps: int
    max_steps: int

    @classmethod
    def from_config(cls, cfg: DGAEConfig, settings: ServiceSettings) -> "ModelSpec":
        max_steps = min(settings.max_steps or cfg.sampler.max_steps, cfg.sampler.max_steps)
        default = settings.default_steps or min(cfg.sampler.default_steps, max_steps)
        if default > max_steps:
            raise ConfigError(f"default_steps {default} exceeds max_steps {max_steps}")
        return cls(cfg.name, cfg.downsample_factor, cfg.latent_channels, default, max_steps)


class Engine:
    def __init__(self, settings: ServiceSettings, backend: Backend | None = None):
        self.settings = settings
        self.metrics = ServiceMetrics()
        self.keys = KeyStore(settings.api_keys, settings.api_keys_file, on_reload=self._keys_reloaded)  # fails fast
        self.metrics.api_keys.set(self.keys.count)
        self.quotas = Quotas(self.metrics)
        self.admission = Admission(settings, self.metrics, self.quotas)
        self.backend = backend
        self.checkpoint = None if backend else resolve_checkpoint(settings.checkpoint)
        self.config: DGAEConfig = backend.config if backend else read_config(self.checkpoint)  # fails fast
        self.spec = ModelSpec.from_config(self.config, settings)
        self.ready = False
        self.load_error: str | None = None
        self.executors: dict[str, ThreadPoolExecutor] = {}
        self.batchers: dict[str, DynamicBatcher] = {}
        self.load_task: asyncio.Task | None = None  # service.core.lifecycle's background load
        self.cost = CostModel(self.config, metrics=self.metrics)
        # Adapters with their own background work (service.jobs) hook into start-up and shut-down:
        # on_start runs once the batchers exist; on_stop(seconds left) drains beside the batchers.
        self.on_start: list[Callable[[], None]] = []
        self.on_stop: list[Callable[[float], Awaitable[None]]] = []
        # Seconds of work (a job) that a new request of an operation would wait behind on its worker.
        self.work_ahead: list[Callable[[str], float]] = []

    def require_ready(self) -> None:
        if not self.ready:
            state = f"failed to load ({self.load_error})" if self.load_error else "still loading"
            raise NotReady(f"the model is {state}", headers=retry_after(self.settings.retry_after_s))

    def authorize(self, token: str | None) -> Principal:
        """The caller of a request on any protocol: its key checked (401) and its request counted
        against its requests-per-second quota (429). Pass the principal on to admission
        (``admission.reserve(op, pixels, principal)``) to charge its megapixels."""
        try:
            principal = self.keys.authenticate(token)
        except Unauthorized:
            self.metrics.auth_failures.inc()
            raise
        self.quotas.charge_request(principal)
        return principal

    def _keys_reloaded(self, ok: bool, file_keys: int) -> None:
        self.metrics.key_reloads.labels("ok" if ok else "error").inc()
        self.metrics.api_keys.set(self.keys.count)

    @property
    def checkpoint_sha256(self) -> str:
        return self.backend.checkpoint_sha256 if self.backend else ""

    def timeout(self, asked_s: float | None = None) -> float:
        """A request's deadline: the one it asked for (capped by ``max_request_timeout_s``), else
        ``request_timeout_s``."""
        s = self.settings
        return s.request_timeout_s if asked_s is None else min(asked_s, s.max_request_timeout_s)

    def check_deadline(self, operation: str, req: Request, timeout_s: float) -> None:
        """Refuse at once, rather than answer 504 after computing for the whole deadline: 413
        ``over_deadline`` when the cost model's estimate (x ESTIMATE_MARGIN) is over ``timeout_s``;
        503 ``busy`` when it fits alone but not behind the job computing on the worker now."""
        est = self.cost.estimate(operation, req)
        if est.seconds is None:
            return
        own = est.seconds * ESTIMATE_MARGIN
        ahead = sum(hook(operation) for hook in self.work_ahead)
        if own + ahead <= timeout_s:
            return
        self.metrics.over_deadline.labels(operation).inc()
        s = self.settings
        if own <= timeout_s:
            raise Busy(f"this {operation} is estimated at {est.describe()}, but the {operation} worker is busy with "
                       f"a job for about {ahead:.0f} s more, past this request's deadline of {timeout_s:g} s; retry "
                       f"later or submit it as a job: POST {JOBS_ROUTE}/{operation}",
                       headers=retry_after(max(s.retry_after_s, math.ceil(ahead))))
        longer = (f"ask for a deadline of up to {s.max_request_timeout_s:g} s with the {TIMEOUT_HEADER} header, or "
                  if own <= s.max_request_timeout_s and timeout_s < s.max_request_timeout_s else "")
        raise OverDeadline(
            f"this {operation} is estimated at {est.describe()} on {self.cost.backend or 'this backend'}"
            f"/{self.cost.device or 'device'}, over this request's deadline of {timeout_s:g} s "
            f"(estimates count x{ESTIMATE_MARGIN:g}); {longer}submit it as a job: POST "
            f"{JOBS_ROUTE}/{operation} with the same body and parameters, then poll GET {JOBS_ROUTE}/{{id}}"
        )

    async def encode(self, req: EncodeRequest, timeout_s: float | None = None) -> torch.Tensor:
        """A checked request -> latents [N, c, H/f, W/f] (tiled when larger than a tile)."""
        timeout_s = timeout_s or self.settings.request_timeout_s
        self.check_deadline(ENCODE, req, timeout_s)
        latents = await self.batchers[ENCODE].submit(req.batch_key(), req.images, list(req.seeds), timeout_s)
        self.metrics.images_encoded.inc(req.n)
        return latents

    async def decode(self, req: DecodeRequest, timeout_s: float | None = None) -> torch.Tensor:
        """A checked request -> images float [N, 3, h*f, w*f] in [-1, 1] (item i seeded ``req.seeds[i]``)."""
        timeout_s = timeout_s or self.settings.request_timeout_s
        self.check_deadline(DECODE, req, timeout_s)
        images = await self.batchers[DECODE].submit(req.batch_key(), req.latents, list(req.seeds), timeout_s)
        self._count_decode(req)
        return images

    def _count_decode(self, req: DecodeRequest) -> None:
        self.metrics.images_decoded.inc(req.n)
        for _ in range(req.n):
            self.metrics.decode_steps.observe(req.steps)

    def passes(self, operation: str, req: Request) -> int:
        """Network passes a run of ``req`` makes (a job's progress total)."""
        return self.backend.decode_passes(req) if operation == DECODE else self.backend.encode_passes(req)

    async def run_job(self, operation: str, req: Request, on_pass: PassHook) -> torch.Tensor:
        """One job's whole run on the operation's worker thread: after the batch computing now, before
        the batches that arrive while it waits (one thread: sync work and jobs never compute at once).
        No deadline; ``on_pass`` reports progress and may raise to cancel between passes."""
        run = self.backend.run_decode if operation == DECODE else self.backend.run_encode
        out = await asyncio.get_running_loop().run_in_executor(
            self.executors[operation], self._measured, operation, req, functools.partial(run, req, on_pass))
        if operation == DECODE:
            self._count_decode(req)
        else:
            self.metrics.images_encoded.inc(req.n)
        return out

    def _measured(self, operation: str, req: Request, run: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``run()`` timed into the cost model (worker thread)."""
        started = time.perf_counter()
        out = run()
        self.cost.observe(operation, self.cost.work(operation, req), time.perf_counter() - started,
                          self.passes(operation, req))
        return out

    # Worker-thread batch functions: the joined items of requests that share one key.
    def encode_batch(self, key: EncodeKey, images: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        req = EncodeRequest.of_batch(key, images, seeds)
        return self._measured(ENCODE, req, functools.partial(self.backend.run_encode, req))

    def decode_batch(self, key: DecodeKey, latents: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        req = DecodeRequest.of_batch(key, latents, seeds)
        return self._measured(DECODE, req, functools.partial(self.backend.run_decode, req))
