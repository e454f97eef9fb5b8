"""DGAE: SD-VAE KL encoder + ADM U-Net diffusion decoder trained with flow matching.

Shapes and ranges:
- images: float [N, 3, H, W] in [-1, 1]; H and W multiples of f = config.downsample_factor.
- public latents: float [N, c, H/f, W/f] = (posterior sample or mean - latent_shift) * latent_scale.

Encode and decode run the shared sequence in :mod:`dgae.pipeline` with this model's encoder and
denoiser, exactly as every other runtime does.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from . import pipeline
from .config import DGAEConfig
from .decoder import Decoder
from .encoder import Encoder
from .pipeline import Sample
from .request import DecodeRequest, EncodeMode, EncodeRequest


class DGAE(nn.Module):
    def __init__(self, config: DGAEConfig):
        super().__init__()
        self.config = config.validate()
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, mode: EncodeMode = "mean",
               seeds: int | Sequence[int] | None = None, tile: str = "auto") -> torch.Tensor:
        """images [N, 3, H, W] in [-1, 1] -> public latents [N, c, H/f, W/f]."""
        return pipeline.encode(self.config, self.encoder, EncodeRequest.resolve(self.config, images, mode, seeds, tile))

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, steps: int | None = None,
               seeds: int | Sequence[int] | None = None, solver: str | None = None,
               sample: Sample | None = None, tile: str = "auto") -> torch.Tensor:
        """public latents [N, c, h, w] -> images [N, 3, h*f, w*f] in [-1, 1]."""
        req = DecodeRequest.resolve(self.config, latents, steps, seeds, tile, solver)
        return pipeline.decode(self.config, self.decoder.forward_buffer, req, sample)

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # pragma: no cover - convenience
        return self.decode(self.encode(images), seeds=0)
