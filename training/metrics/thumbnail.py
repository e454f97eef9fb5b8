"""The equal-size thumbnail baseline: the cheapest "codec" that stores as many numbers as the latent.

For a crop of side ``crop`` and a latent of ``c`` channels at factor ``f`` the latent holds
``c * (crop / f) ** 2`` numbers; an RGB thumbnail of side ``round(sqrt(numbers / 3))`` holds about
the same (f8c4 on 256 px: 32 * 32 * 4 = 4096 numbers -> 37 x 37 x 3 = 4107). Each crop is
downsampled to that thumbnail (bicubic with antialiasing, i.e. a proper low-pass filter), kept in
float like the latent, and upsampled back bicubically. An autoencoder that cannot beat this on
PSNR/LPIPS adds nothing over plain resizing.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dgae.config import IMAGE_CHANNELS
from dgae.errors import InputError

PIXEL_MIN, PIXEL_MAX = -1.0, 1.0  # model image range


def latent_numbers(crop: int, f: int, c: int) -> int:
    """How many numbers the latent of one ``crop`` x ``crop`` image holds."""
    if crop <= 0 or f <= 0 or c <= 0 or crop % f:
        raise InputError(f"crop ({crop}) must be a positive multiple of f ({f}) and c ({c}) positive")
    return c * (crop // f) ** 2


def thumbnail_side(crop: int, f: int, c: int) -> int:
    """Side of the square RGB thumbnail with as many numbers as the latent (capped at ``crop``)."""
    side = round(math.sqrt(latent_numbers(crop, f, c) / IMAGE_CHANNELS))
    return max(1, min(side, crop))


def thumbnail_baseline(images: torch.Tensor, side: int) -> torch.Tensor:
    """images [N, 3, H, W] in [-1, 1] -> down to [N, 3, side, side] -> back up to [N, 3, H, W].

    A thumbnail as large as the image is the identity (nothing is lost)."""
    if images.dim() != 4 or images.shape[1] != IMAGE_CHANNELS:
        raise InputError(f"images must be [N, 3, H, W], got {tuple(images.shape)}")
    if side <= 0:
        raise InputError(f"thumbnail side must be positive, got {side}")
    height, width = images.shape[-2:]
    if side >= max(height, width):
        return images.clone()
    x = images.float()
    thumb = F.interpolate(x, size=(side, side), mode="bicubic", antialias=True, align_corners=False)
    up = F.interpolate(thumb, size=(height, width), mode="bicubic", align_corners=False)
    return up.clamp(PIXEL_MIN, PIXEL_MAX)
