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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from backends.base import Backend
from dgae.checkpoint import read_config, resolve_checkpoint
from dgae.config import DGAEConfig
from dgae.errors import ConfigError
from dgae.request import DecodeKey, DecodeRequest, EncodeKey, EncodeRequest

from .admission import Admission
from .auth import KeyStore, Principal
from .batcher import DynamicBatcher
from .errors import NotReady, Unauthorized, retry_after
from .metrics import ServiceMetrics
from .quotas import Quotas
from .settings import ServiceSettings

ENCODE, DECODE = "encode", "decode"
OPERATIONS = (ENCODE, DECODE)


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

    async def encode(self, req: EncodeRequest) -> torch.Tensor:
        """A checked request -> latents [N, c, H/f, W/f] (tiled when larger than a tile)."""
        latents = await self.batchers[ENCODE].submit(req.batch_key(), req.images, list(req.seeds),
                                                     self.settings.request_timeout_s)
        self.metrics.images_encoded.inc(req.n)
        return latents

    async def decode(self, req: DecodeRequest) -> torch.Tensor:
        """A checked request -> images float [N, 3, h*f, w*f] in [-1, 1] (item i seeded ``req.seeds[i]``)."""
        images = await self.batchers[DECODE].submit(req.batch_key(), req.latents, list(req.seeds),
                                                    self.settings.request_timeout_s)
        self.metrics.images_decoded.inc(req.n)
        for _ in range(req.n):
            self.metrics.decode_steps.observe(req.steps)
        return images

    # Worker-thread batch functions: the joined items of requests that share one key.
    def encode_batch(self, key: EncodeKey, images: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        return self.backend.run_encode(EncodeRequest.of_batch(key, images, seeds))

    def decode_batch(self, key: DecodeKey, latents: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        return self.backend.run_decode(DecodeRequest.of_batch(key, latents, seeds))
