"""The backend interface between callers (CLI, service, benchmarks) and a runtime, and the one
orchestration every runtime shares.

Callers hand a checked :class:`~dgae.request.EncodeRequest` / :class:`~dgae.request.DecodeRequest`
to :meth:`Backend.run_encode` / :meth:`Backend.run_decode` (the service does), or call
``encode(images, mode, seeds)`` / ``decode(latents, steps, seeds)``, which build that request
(the one place input is checked) and run it. Implemented here, once: splitting above the
runtime's batch limit and the shared sequence of :mod:`dgae.pipeline` (latent scaling, padding,
noise buffer, Euler/Heun loop, crop).
A runtime supplies only its primitives:

- :meth:`Backend.encoder_moments` ``(images) -> (mean, logvar)`` on the runtime's device;
- :meth:`Backend.denoise` ``(buf, t) -> v`` for the U-Net buffer ``[B, 3 + c, H, W]``;
- optionally :meth:`Backend.fast_sample` ``(buf, plan) -> image | None``: a whole-decode fast
  path (an unrolled graph, a CUDA graph) that integrates exactly the given plan.

So a seed means the same image on every backend, and adding a runtime is one small file.
"""
from __future__ import annotations

import abc
import math
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from dgae import pipeline
from dgae.config import DGAEConfig
from dgae.request import DecodeRequest, EncodeRequest, Seeds, check_images, choice, TILE_MODES
from dgae.sampler import SamplePlan, run_sampler

CPU_TILE_BATCH = 1
GPU_TILE_BATCH = 8

# Called in the compute thread after every network pass of a run (a denoiser call of a decode, a
# moments call of an encode); it may raise to stop the run between passes (a cancelled job).
PassHook = Callable[[], None]


def _counted(fn: Callable, on_pass: PassHook) -> Callable:
    def call(*args):
        out = fn(*args)
        on_pass()
        return out
    return call


@dataclass(frozen=True)
class BackendInfo:
    name: str
    device: str
    precision: str
    providers: tuple[str, ...] = ()
    max_batch_size: int = 0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


class Backend(abc.ABC):
    """images: float [N, 3, H, W] in [-1, 1] (CPU tensors); latents: float [N, c, H/f, W/f].

    A runtime sets ``config``, ``checkpoint_sha256``, ``device`` (where its tensors live),
    ``dtype`` (its networks' input dtype), ``state_dtype`` (the sampler state's) and
    ``max_batch_size`` (0: no limit; larger inputs are split, invisibly thanks to per-item seeds).
    """

    config: DGAEConfig
    checkpoint_sha256: str = ""
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    state_dtype: torch.dtype = torch.float32
    max_batch_size: int = 0

    # --- what a runtime supplies -----------------------------------------------------------
    @abc.abstractmethod
    def encoder_moments(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images [B, 3, H, W] (on ``device``, in ``dtype``) -> raw mean, logvar [B, c, H/f, W/f]."""

    @abc.abstractmethod
    def denoise(self, buf: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """buf [B, 3 + c, H, W] (x_t, upsampled raw latent; ``state_dtype``), t [B] fp32 -> v [B, 3, H, W]."""

    def fast_sample(self, buf: torch.Tensor, plan: SamplePlan) -> torch.Tensor | None:
        """The whole decode in one call when this runtime has a path for ``plan``, else None."""
        return None

    @abc.abstractmethod
    def info(self) -> BackendInfo: ...

    def warmup_side(self) -> int:
        """Side (pixels) of the square image a warm-up encode + decode uses: the smallest size this
        runtime accepts (a runtime with a fixed shape range, e.g. TensorRT profiles, overrides it)."""
        return self.config.size_multiple

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release runtime resources (sessions, engines, streams)."""

    # --- the shared orchestration ----------------------------------------------------------
    def chunks(self, n: int) -> list[slice]:
        step = self.max_batch_size or n
        return [slice(i, min(i + step, n)) for i in range(0, n, step)]

    @property
    def tile_batch(self) -> int:
        """Tiles per network call in a tiled decode/encode. On a CPU one at a time: a tile's
        activations then stay in cache, and batching tiles measured ~1.5x slower per pixel (2-core
        EPYC, bundled model); a GPU wants several to fill its SMs. Never above the batch limit."""
        cap = GPU_TILE_BATCH if self.device.type == "cuda" else CPU_TILE_BATCH
        return min(cap, self.max_batch_size) if self.max_batch_size else cap

    def encode(self, images: torch.Tensor, mode: str = "mean", seeds: Seeds = None,
               tile: str = "auto") -> torch.Tensor:
        """Images larger than the config's encode tile are encoded tiled (``tile="off"``: never)."""
        return self.run_encode(EncodeRequest.resolve(self.config, images, mode, seeds, tile))

    def decode(self, latents: torch.Tensor, steps: int | None = None, seeds: Seeds = None,
               tile: str = "auto") -> torch.Tensor:
        """Images larger than the config's decode tile are decoded tiled (``tile="off"``: never)."""
        return self.run_decode(DecodeRequest.resolve(self.config, latents, steps, seeds, tile))

    @torch.no_grad()
    def run_encode(self, req: EncodeRequest, on_pass: PassHook | None = None) -> torch.Tensor:
        """A checked request -> public latents [N, c, H/f, W/f] float on the CPU. ``on_pass`` runs after
        each encoder call (:meth:`encode_passes` of them)."""
        moments = self._moments if on_pass is None else _counted(self._moments, on_pass)
        return _cat([pipeline.encode(self.config, moments, req.split(sl), self.tile_batch).cpu()
                     for sl in self.chunks(req.n)])

    @torch.no_grad()
    def run_decode(self, req: DecodeRequest, on_pass: PassHook | None = None) -> torch.Tensor:
        """A checked request -> images float [N, 3, h*f, w*f] in [-1, 1] on the CPU. ``on_pass`` runs
        after each denoiser call (:meth:`decode_passes` of them); whole-decode fast paths are then
        skipped (they integrate the same plan, so the image is the same)."""
        denoise, sample = self.denoise, self._sample
        if on_pass is not None:
            denoise, sample = _counted(self.denoise, on_pass), None
        return _cat([pipeline.decode(self.config, denoise, req.split(sl), sample=sample,
                                     state_dtype=self.state_dtype, tile_batch=self.tile_batch,
                                     device=self.device).float().cpu()
                     for sl in self.chunks(req.n)])

    def encode_passes(self, req: EncodeRequest) -> int:
        """Encoder calls :meth:`run_encode` makes for ``req`` (tiles of every item, ``tile_batch`` per call)."""
        return self._calls(req.n, pipeline.encode_tiles(self.config, *req.images.shape[-2:], req.tile))

    def decode_passes(self, req: DecodeRequest) -> int:
        """Denoiser calls :meth:`run_decode` makes for ``req``: tiles x steps (x2 for Heun's corrector)."""
        size = pipeline.decode_buffer_size(self.config, *req.latents.shape[-2:])
        return req.plan.evaluations * self._calls(req.n, pipeline.decode_tiles(self.config, *size, req.tile))

    def _calls(self, n: int, tiles: tuple[int, int, int] | None) -> int:
        """Network calls for ``n`` items: one per chunk in one piece, else their tiles ``tile_batch`` per call."""
        chunks = self.chunks(n)
        if tiles is None:
            return len(chunks)
        return sum(math.ceil((sl.stop - sl.start) * tiles[0] / self.tile_batch) for sl in chunks)

    @torch.no_grad()
    def moments(self, images: torch.Tensor, tile: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
        """The raw posterior (mean, logvar) [N, c, H/f, W/f], float32 on the CPU (what ``encode``
        scales or samples from, tiled alike; bulk encoding stores it so training can resample)."""
        check_images(self.config, images)
        choice("tile", tile, TILE_MODES)
        parts = [pipeline.encode_moments(self.config, self._moments, images[sl], tile, self.tile_batch)
                 for sl in self.chunks(len(images))]
        return _cat([m.cpu() for m, _ in parts]), _cat([lv.cpu() for _, lv in parts])

    def _moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.encoder_moments(x.to(self.device, self.dtype))
        return mean.float(), logvar.float()

    def _sample(self, buf: torch.Tensor, plan: SamplePlan) -> torch.Tensor:
        out = self.fast_sample(buf, plan)
        return out if out is not None else run_sampler(self.denoise, buf, plan)


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    """torch.cat without the copy when there is one part (the common case: no split)."""
    return parts[0] if len(parts) == 1 else torch.cat(parts)
