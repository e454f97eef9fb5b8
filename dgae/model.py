"""DGAE: SD-VAE KL encoder + ADM U-Net diffusion decoder trained with flow matching.

Shapes and ranges:
- images: float [N, 3, H, W] in [-1, 1]; H and W multiples of f = config.downsample_factor.
- public latents: float [N, c, H/f, W/f] = (posterior sample or mean - latent_shift) * latent_scale.
"""
from __future__ import annotations

from typing import Callable, Literal, Sequence

import torch
import torch.nn as nn

from . import checks
from .config import DGAEConfig
from .decoder import Decoder
from .encoder import Encoder
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
        return checks.to_public(self.config, z)

    def from_public(self, latents: torch.Tensor) -> torch.Tensor:
        return checks.from_public(self.config, latents)

    # --- encode ----------------------------------------------------------------------------
    def check_images(self, images: torch.Tensor) -> None:
        checks.check_images(self.config, images)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, mode: EncodeMode = "mean",
               seeds: int | Sequence[int] | None = None) -> torch.Tensor:
        """images [N, 3, H, W] in [-1, 1] -> public latents [N, c, H/f, W/f]. ``sample`` draws the
        reparameterisation noise per item from ``seeds`` (see :func:`resolve_seeds`)."""
        self.check_images(images)
        checks.check_mode(mode)
        mean, logvar = self.encoder(images)
        if mode == "mean":
            z = mean
        else:  # "sample"
            noise = per_sample_noise(resolve_seeds(seeds, len(images)), tuple(mean.shape[1:]),
                                     device=mean.device, dtype=mean.dtype)
            z = mean + torch.exp(0.5 * logvar) * noise
        return self.to_public(z)

    # --- decode ----------------------------------------------------------------------------
    def check_latents(self, latents: torch.Tensor) -> None:
        checks.check_latents(self.config, latents)

    def prepare_buffer(self, latents: torch.Tensor, seeds: Sequence[int]) -> tuple[torch.Tensor, tuple[int, int]]:
        """U-Net input [N, 3 + c, H', W'] (padded to the U-Net's multiple) and the output size (H, W)."""
        return prepare_decode_buffer(self.from_public(latents), self.config.downsample_factor,
                                     self.config.decoder_multiple, seeds)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, steps: int | None = None,
               seeds: int | Sequence[int] | None = None, solver: str | None = None,
               sample: Callable[[torch.Tensor, SamplePlan], torch.Tensor] | None = None) -> torch.Tensor:
        """public latents [N, c, h, w] -> images [N, 3, h*f, w*f] in [-1, 1].

        ``sample(buf, plan) -> buf`` replaces the eager sampler loop: backends pass one that runs a
        compiled denoiser or replays a CUDA graph (its buffer may be reused, hence the clone)."""
        self.check_latents(latents)
        plan = SamplePlan.build(self.config.sampler, steps, solver)
        buf, (h, w) = self.prepare_buffer(latents, resolve_seeds(seeds, len(latents)))
        out = sample(buf, plan) if sample is not None else run_sampler(self.decoder.forward_buffer, buf, plan)
        return out[..., :h, :w].clone()

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # pragma: no cover - convenience
        return self.decode(self.encode(images), seeds=0)
