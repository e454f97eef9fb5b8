"""The exported graphs' modules and I/O contract (names, symbolic shapes, dtypes), shared by the
exporter and its validation.

- ``encoder``: images [B, 3, H, W] in [-1, 1] -> mean, logvar [B, c, H/f, W/f] (raw posterior).
- ``denoiser``: x_t [B, 3, H, W], t [B] (fp32 always), z [B, c, H, W] (raw latent, already
  nearest-upsampled) -> v [B, 3, H, W].
- ``decode_unrolled``: noise [B, 3, H, W], z [B, c, H, W] -> image [B, 3, H, W].
"""
from __future__ import annotations

import torch
import torch.nn as nn

from dgae.config import IMAGE_CHANNELS, DGAEConfig
from dgae.errors import ExportError
from dgae.model import DGAE
from dgae.precision import NUMPY_PRECISIONS, get_precision

from . import manifest as mf


class EncoderGraph(nn.Module):
    def __init__(self, model: DGAE):
        super().__init__()
        self.encoder = model.encoder

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(images)  # mean, logvar [B, c, H/f, W/f]


class DenoiserGraph(nn.Module):
    def __init__(self, model: DGAE):
        super().__init__()
        self.decoder = model.decoder

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.decoder.forward_buffer(torch.cat([x_t, z], dim=1), t)  # [B, 3, H, W]


def graph_specs(
    name: str, config: DGAEConfig, precision: str
) -> tuple[tuple[mf.TensorSpec, ...], tuple[mf.TensorSpec, ...]]:
    """(inputs, outputs) of a graph with symbolic dims batch/height/width (latent_* for the encoder)."""
    io = get_precision(precision, ExportError, NUMPY_PRECISIONS).numpy_name
    c, img = config.latent_channels, ("batch", IMAGE_CHANNELS, "height", "width")
    S = mf.TensorSpec
    if name == mf.ENCODER:
        lat = ("batch", c, "latent_height", "latent_width")
        return (S("images", img, io),), (S("mean", lat, io), S("logvar", lat, io))
    full_z = S("z", ("batch", c, "height", "width"), io)
    if name == mf.DENOISER:
        return (S("x_t", img, io), S("t", ("batch",), "float32"), full_z), (S("v", img, io),)
    if name == mf.UNROLLED:
        return (S("noise", img, io), full_z), (S("image", img, io),)
    raise ExportError(f"unknown graph {name!r}")
