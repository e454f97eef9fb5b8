"""DGAE: SD-VAE KL encoder + ADM U-Net diffusion decoder trained with flow matching.

Shapes and ranges:
- images: float [N, 3, H, W] in [-1, 1]; H and W multiples of f = config.downsample_factor.
- public latents: float [N, c, H/f, W/f] = (posterior sample or mean - latent_shift) * latent_scale.
"""
from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn as nn

from .config import IMAGE_CHANNELS, DGAEConfig
from .decoder import Decoder
from .encoder import Encoder
from .errors import InputError
from .sampler import SamplePlan, per_sample_noise, prepare_decode_buffer, resolve_seeds, run_sampler

EncodeMode = Literal["mean", "sample"]


class DGAE(nn.Module):
    def __init__(self, config: DGAEConfig):
        super().__init__()
        self.config = config.validate()
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)

    # --- latent scaling --------------------------------------------------------------------
    def to_public(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.config.latent_shift) * self.config.latent_scale

    def from_public(self, latents: torch.Tensor) -> torch.Tensor:
        return latents / self.config.latent_scale + self.config.latent_shift

    # --- encode ----------------------------------------------------------------------------
    def check_images(self, images: torch.Tensor) -> None:
        f = self.config.downsample_factor
        if images.dim() != 4 or images.shape[1] != IMAGE_CHANNELS:
            raise InputError(f"images must be [N, 3, H, W], got {tuple(images.shape)}")
        if images.shape[-2] % f or images.shape[-1] % f:
            raise InputError(f"image size {tuple(images.shape[-2:])} is not a multiple of f={f}")

    @torch.no_grad()
    def encode(self, images: torch.Tensor, mode: EncodeMode = "mean",
               seeds: int | Sequence[int] | None = None) -> torch.Tensor:
        """images [N, 3, H, W] in [-1, 1] -> public latents [N, c, H/f, W/f]. ``sample`` draws the
        reparameterisation noise per item from ``seeds`` (see :func:`resolve_seeds`)."""
        self.check_images(images)
        mean, logvar = self.encoder(images)
        if mode == "mean":
            z = mean
        elif mode == "sample":
            noise = per_sample_noise(resolve_seeds(seeds, len(images)), tuple(mean.shape[1:]),
                                     device=mean.device, dtype=mean.dtype)
            z = mean + torch.exp(0.5 * logvar) * noise
        else:
            raise InputError(f"mode must be 'mean' or 'sample', got {mode!r}")
        return self.to_public(z)

    # --- decode ----------------------------------------------------------------------------
    def check_latents(self, latents: torch.Tensor) -> None:
        c = self.config.latent_channels
        if latents.dim() != 4 or latents.shape[1] != c:
            raise InputError(f"latents must be [N, {c}, h, w], got {tuple(latents.shape)}")
        if not torch.isfinite(latents).all():
            raise InputError("latents contain NaN or infinite values")

    def prepare_buffer(self, latents: torch.Tensor, seeds: Sequence[int]) -> tuple[torch.Tensor, tuple[int, int]]:
        """U-Net input [N, 3 + c, H', W'] (padded to the U-Net's multiple) and the output size (H, W)."""
        return prepare_decode_buffer(self.from_public(latents), self.config.downsample_factor,
                                     self.config.decoder_multiple, seeds)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, steps: int | None = None,
               seeds: int | Sequence[int] | None = None, solver: str | None = None) -> torch.Tensor:
        """public latents [N, c, h, w] -> images [N, 3, h*f, w*f] in [-1, 1]."""
        self.check_latents(latents)
        plan = SamplePlan.build(self.config.sampler, steps, solver)
        buf, (h, w) = self.prepare_buffer(latents, resolve_seeds(seeds, len(latents)))
        return run_sampler(self.decoder.forward_buffer, buf, plan)[..., :h, :w].clone()

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # pragma: no cover - convenience
        return self.decode(self.encode(images), seeds=0)
