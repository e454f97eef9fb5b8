"""The one boundary where an encode or decode request is checked and resolved.

Everything a caller can get wrong is checked here, once: tensor rank and channels, finite values,
sides that are multiples of ``f``, the encode mode, the tile mode, the step count and solver, and
the seeds (one int ``s`` means ``s, s+1, ...``; random when absent). The result is a frozen
:class:`EncodeRequest` / :class:`DecodeRequest` that every layer below (backends, the shared
pipeline, tiling, the sampler) trusts without checking again. Callers with their own limits (the
service's pixel and item limits) check those first and then build the request here.

Requests split (:meth:`~DecodeRequest.split`) without re-checking, since a part of a checked
request is checked; requests with one ``batch_key()`` share every setting but their items, so a
batcher may join their tensors and rebuild one request with :meth:`~DecodeRequest.of_batch`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, NamedTuple, Sequence

import torch

from .config import IMAGE_CHANNELS, DGAEConfig
from .errors import InputError
from .sampler import SamplePlan, resolve_seeds

EncodeMode = Literal["mean", "sample"]
ENCODE_MODES: tuple[str, ...] = ("mean", "sample")
TileMode = Literal["auto", "off"]
TILE_MODES: tuple[str, ...] = ("auto", "off")
MEAN_SEED = 0  # mean mode draws no noise; a mean request still carries one (unused) seed per item

Seeds = int | Sequence[int] | None


def choice(name: str, value: str, choices: Sequence[str]) -> str:
    """``value`` when it is one of ``choices``, else an InputError naming both."""
    if value not in choices:
        raise InputError(f"{name} must be one of {', '.join(choices)}, got {str(value)[:40]!r}")
    return value


def check_images(config: DGAEConfig, images: torch.Tensor) -> None:
    f = config.downsample_factor
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != IMAGE_CHANNELS:
        raise InputError(f"images must be [N, 3, H, W], got {tuple(getattr(images, 'shape', ()))}")
    if 0 in images.shape:
        raise InputError(f"images have an empty dimension {tuple(images.shape)}")
    if images.shape[-2] % f or images.shape[-1] % f:
        raise InputError(f"image size {tuple(images.shape[-2:])} is not a multiple of f={f}")


def check_latents(config: DGAEConfig, latents: torch.Tensor) -> None:
    c = config.latent_channels
    if not isinstance(latents, torch.Tensor) or latents.dim() != 4:
        raise InputError(f"latents must be [N, {c}, h, w], got {tuple(getattr(latents, 'shape', ()))}")
    if latents.shape[1] != c:
        raise InputError(f"latents must be [N, {c}, h, w]: they have {latents.shape[1]} channels and this model "
                         f"expects c={c}")
    if 0 in latents.shape:
        raise InputError(f"latents have an empty dimension {tuple(latents.shape)}")
    if not torch.isfinite(latents).all():
        raise InputError("latents contain NaN or infinite values")


class EncodeKey(NamedTuple):
    """What encode requests must share to run in one batch."""

    mode: str
    height: int
    width: int
    tile: str


class DecodeKey(NamedTuple):
    """What decode requests must share to run in one batch."""

    plan: SamplePlan  # steps, solver and times
    channels: int
    height: int  # latent rows
    width: int  # latent columns
    tile: str


@dataclass(frozen=True)
class EncodeRequest:
    """Checked images float [N, 3, H, W] in [-1, 1] (CPU), with a seed per item and the tile mode."""

    images: torch.Tensor
    mode: str
    seeds: tuple[int, ...]  # sample: item i's posterior noise; mean: MEAN_SEED each (unused)
    tile: str

    @classmethod
    def resolve(cls, config: DGAEConfig, images: torch.Tensor, mode: str = "mean", seeds: Seeds = None,
                tile: str = "auto") -> "EncodeRequest":
        check_images(config, images)
        choice("mode", mode, ENCODE_MODES)
        choice("tile", tile, TILE_MODES)
        n = len(images)
        resolved = resolve_seeds(seeds, n) if mode == "sample" else [MEAN_SEED] * n
        return cls(images, mode, tuple(resolved), tile)

    @property
    def n(self) -> int:
        return len(self.images)

    @property
    def sample_seeds(self) -> list[int] | None:
        """The posterior-noise seeds (None in mean mode)."""
        return list(self.seeds) if self.mode == "sample" else None

    def batch_key(self) -> EncodeKey:
        return EncodeKey(self.mode, *self.images.shape[-2:], self.tile)

    @classmethod
    def of_batch(cls, key: EncodeKey, images: torch.Tensor, seeds: Sequence[int]) -> "EncodeRequest":
        """The request for the joined items of checked requests that share ``key`` (no re-check)."""
        return cls(images, key.mode, tuple(seeds), key.tile)

    def split(self, sl: slice) -> "EncodeRequest":
        return replace(self, images=self.images[sl], seeds=self.seeds[sl])

    def with_tile(self, tile: str) -> "EncodeRequest":
        return replace(self, tile=choice("tile", tile, TILE_MODES))


@dataclass(frozen=True)
class DecodeRequest:
    """Checked public latents float32 [N, c, h, w] (finite, CPU), the resolved sample plan, a seed
    per item and the tile mode."""

    latents: torch.Tensor
    plan: SamplePlan
    seeds: tuple[int, ...]
    tile: str

    @classmethod
    def resolve(cls, config: DGAEConfig, latents: torch.Tensor, steps: int | None = None, seeds: Seeds = None,
                tile: str = "auto", solver: str | None = None, max_steps: int | None = None) -> "DecodeRequest":
        """``max_steps`` lowers the model's own maximum (a service may cap it)."""
        check_latents(config, latents)
        choice("tile", tile, TILE_MODES)
        sampler = config.sampler
        if max_steps is not None:  # the steps range is checked in one place: SamplePlan.build
            sampler = replace(sampler, max_steps=min(max_steps, sampler.max_steps))
        plan = SamplePlan.build(sampler, steps, solver)
        return cls(latents.float(), plan, tuple(resolve_seeds(seeds, len(latents))), tile)

    @property
    def n(self) -> int:
        return len(self.latents)

    @property
    def steps(self) -> int:
        return self.plan.steps

    def batch_key(self) -> DecodeKey:
        return DecodeKey(self.plan, *self.latents.shape[1:], self.tile)

    @classmethod
    def of_batch(cls, key: DecodeKey, latents: torch.Tensor, seeds: Sequence[int]) -> "DecodeRequest":
        """The request for the joined items of checked requests that share ``key`` (no re-check)."""
        return cls(latents, key.plan, tuple(seeds), key.tile)

    def split(self, sl: slice) -> "DecodeRequest":
        return replace(self, latents=self.latents[sl], seeds=self.seeds[sl])

    def with_tile(self, tile: str) -> "DecodeRequest":
        return replace(self, tile=choice("tile", tile, TILE_MODES))

