"""The service's runtime state: model spec, backend, worker threads, batchers, admission and readiness.

Loading happens in the background after startup (so /healthz answers while a large model loads):
create the backend in a worker thread, warm it up with one tiny encode + decode, start one
batcher per operation, then report ready. Each operation has its own worker thread, so a long
decode never holds up an encode (or the reverse).

Shutdown runs under one deadline (``shutdown_timeout_s``): the batchers drain concurrently, then
the worker threads are joined off the event loop; the backend is closed only once no worker is
still computing in it (a batch abandoned at the deadline finishes on its own; the process exits
after it).
"""
from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Hashable

import torch

from backends.base import Backend
from dgae.checkpoint import read_config, resolve_checkpoint
from dgae.config import IMAGE_CHANNELS, DGAEConfig
from dgae.errors import ConfigError

from .admission import Admission
from .batcher import DynamicBatcher
from .errors import NotReady, retry_after
from .metrics import ServiceMetrics
from .settings import ServiceSettings

log = logging.getLogger(__name__)

ENCODE, DECODE = "encode", "decode"
OPERATIONS = (ENCODE, DECODE)
WARMUP_STEPS = 1
WARMUP_SEED = 0
WORKER_EXIT_GRACE_S = 1.0  # after the deadline, idle worker threads still get this long to exit


@dataclass(frozen=True)
class ModelSpec:
    """What routes need to know before the backend is loaded (read from the config alone)."""

    preset: str
    f: int
    c: int
    default_steps: int
    max_steps: int
    warmup_side: int

    @classmethod
    def from_config(cls, cfg: DGAEConfig, settings: ServiceSettings) -> "ModelSpec":
        max_steps = min(settings.max_steps or cfg.sampler.max_steps, cfg.sampler.max_steps)
        default = settings.default_steps or min(cfg.sampler.default_steps, max_steps)
        if default > max_steps:
            raise ConfigError(f"default_steps {default} exceeds max_steps {max_steps}")
        side = max(cfg.downsample_factor, cfg.decoder_multiple)
        return cls(cfg.name, cfg.downsample_factor, cfg.latent_channels, default, max_steps, side)


class ServiceState:
    def __init__(self, settings: ServiceSettings, backend: Backend | None = None):
        self.settings = settings
        self.metrics = ServiceMetrics()
        self.admission = Admission(settings, self.metrics)
        self.backend = backend
        self.checkpoint = None if backend else resolve_checkpoint(settings.checkpoint)
        config = backend.config if backend else read_config(self.checkpoint)  # fails fast on a bad file
        self.spec = ModelSpec.from_config(config, settings)
        self.ready = False
        self.load_error: str | None = None
        self.executors: dict[str, ThreadPoolExecutor] = {}
        self.batchers: dict[str, DynamicBatcher] = {}
        self._load_task: asyncio.Task | None = None

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        if self.settings.torch_threads:
            torch.set_num_threads(self.settings.torch_threads)  # process-wide
        s = self.settings
        runs = {ENCODE: self._encode_batch, DECODE: self._decode_batch}
        for op in OPERATIONS:
            self.executors[op] = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"dgae-{op}")
            self.batchers[op] = DynamicBatcher(op, runs[op], self.executors[op], self.metrics,
                                               max_batch_size=s.max_batch_size, max_wait_s=s.max_wait_ms / 1000,
                                               queue_size=s.queue_size, retry_after_s=s.retry_after_s)
        self._load_task = asyncio.get_running_loop().create_task(self._load(), name="dgae-load")

    async def stop(self) -> None:
        self.ready = False
        self.metrics.ready.set(0)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.shutdown_timeout_s
        if self._load_task and not self._load_task.done():
            self._load_task.cancel()
        await asyncio.gather(*(b.close(deadline - loop.time()) for b in self.batchers.values()))
        idle = await self._join_workers(deadline - loop.time())
        if self.backend and idle:
            self.backend.close()
        elif self.backend:
            log.warning("backend left open: a worker thread is still computing after %ds",
                        self.settings.shutdown_timeout_s)
        log.info("service stopped")

    async def _join_workers(self, timeout_s: float) -> bool:
        """Shut the worker threads down without blocking the event loop; True once all have exited."""
        for executor in self.executors.values():
            executor.shutdown(wait=False, cancel_futures=True)
        loop = asyncio.get_running_loop()
        joins = [loop.run_in_executor(None, executor.shutdown, True) for executor in self.executors.values()]
        if not joins:
            return True
        _, busy = await asyncio.wait(joins, timeout=max(timeout_s, WORKER_EXIT_GRACE_S))
        return not busy

    async def _load(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            if self.backend is None:
                self.backend = await loop.run_in_executor(self.executors[ENCODE], self._create_backend)
            if self.settings.warmup:
                latents = await loop.run_in_executor(self.executors[ENCODE], self._warmup_encode)
                await loop.run_in_executor(self.executors[DECODE], self._warmup_decode, latents)
        except Exception as exc:  # noqa: BLE001 - reported by /readyz and the log, process stays up
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.error("model failed to load: %s", self.load_error, exc_info=exc)
            return
        for batcher in self.batchers.values():
            batcher.start()
        info = self.backend.info()
        self.metrics.model_info.labels(self.spec.preset, info.name, info.device, info.precision,
                                       self.backend.checkpoint_sha256).set(1)
        self.ready = True
        self.metrics.ready.set(1)
        log.info("ready: %s on %s (%s), backend %s", self.spec.preset, info.device, info.precision, info.name)

    def _create_backend(self) -> Backend:
        from backends.factory import create_backend  # noqa: PLC0415 - heavy, loaded in the worker

        s = self.settings
        log.info("loading %s with backend %s on %s (%s)", self.checkpoint, s.backend, s.device, s.precision)
        paths = {k: v for k, v in (("onnx_dir", s.onnx_dir), ("engine_dir", s.engine_dir)) if v}
        return create_backend(s.backend, self.checkpoint, device=s.device, precision=s.precision,
                              max_batch_size=s.max_batch_size, compile=s.compile, **paths)

    def _warmup_encode(self) -> torch.Tensor:
        side = self.spec.warmup_side
        return self.backend.encode(torch.zeros(1, IMAGE_CHANNELS, side, side), "mean", [WARMUP_SEED])

    def _warmup_decode(self, latents: torch.Tensor) -> None:
        self.backend.decode(latents, WARMUP_STEPS, [WARMUP_SEED])
        log.info("warm-up done (%dx%d image)", self.spec.warmup_side, self.spec.warmup_side)

    # --- requests ---------------------------------------------------------------------------------
    def require_ready(self) -> None:
        if not self.ready:
            state = f"failed to load ({self.load_error})" if self.load_error else "still loading"
            raise NotReady(f"the model is {state}", headers=retry_after(self.settings.retry_after_s))

    async def submit(self, op: str, key: Hashable, inputs: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        return await self.batchers[op].submit(key, inputs, seeds, self.settings.request_timeout_s)

    # One entry point per operation for every protocol (native routes, Open Inference Protocol), so
    # batching, admission and the image counters apply alike whatever the request's wire format.
    async def encode(self, images: torch.Tensor, mode: str, seeds: list[int], tile: str = "auto") -> torch.Tensor:
        """images float [N, 3, H, W] in [-1, 1] -> latents [N, c, H/f, W/f] (tiled when larger than a tile)."""
        n, _, h, w = images.shape
        latents = await self.submit(ENCODE, (mode, h, w, tile), images, seeds)
        self.metrics.images_encoded.inc(n)
        return latents

    async def decode(self, latents: torch.Tensor, steps: int, seeds: list[int], tile: str = "auto") -> torch.Tensor:
        """latents [N, c, h, w] -> images float [N, 3, h*f, w*f] in [-1, 1] (item i seeded seeds[i])."""
        images = await self.submit(DECODE, (steps, *latents.shape[1:], tile), latents, seeds)
        self.metrics.images_decoded.inc(len(latents))
        for _ in range(len(latents)):
            self.metrics.decode_steps.observe(steps)
        return images

    # Worker-thread batch functions: key = (mode, H, W, tile) for encode, (steps, c, h, w, tile) for decode.
    def _encode_batch(self, key: Hashable, images: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        return self.backend.encode(images, key[0], seeds, tile=key[-1])

    def _decode_batch(self, key: Hashable, latents: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        return self.backend.decode(latents, key[0], seeds, tile=key[-1])
