"""Input checks and latent scaling shared by the torch model and the runtime backends that have no
torch model to call (ONNX Runtime, TensorRT), so every backend applies the same rules and messages."""
from __future__ import annotations

import torch

from .config import IMAGE_CHANNELS, DGAEConfig
from .errors import InputError


def check_images(config: DGAEConfig, images: torch.Tensor) -> None:
    f = config.downsample_factor
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != IMAGE_CHANNELS:
        raise InputError(f"images must be [N, 3, H, W], got {tuple(getattr(images, 'shape', ()))}")
    if images.shape[-2] % f or images.shape[-1] % f:
        raise InputError(f"image size {tuple(images.shape[-2:])} is not a multiple of f={f}")


def check_latents(config: DGAEConfig, latents: torch.Tensor) -> None:
    c = config.latent_channels
    if not isinstance(latents, torch.Tensor) or latents.dim() != 4 or latents.shape[1] != c:
        raise InputError(f"latents must be [N, {c}, h, w], got {tuple(getattr(latents, 'shape', ()))}")
    if not torch.isfinite(latents).all():
        raise InputError("latents contain NaN or infinite values")


def check_mode(mode: str) -> None:
    if mode not in ("mean", "sample"):
        raise InputError(f"mode must be 'mean' or 'sample', got {mode!r}")


def to_public(config: DGAEConfig, z: torch.Tensor) -> torch.Tensor:
    """Raw posterior latents -> public latents: (z - latent_shift) * latent_scale."""
    return (z - config.latent_shift) * config.latent_scale


def from_public(config: DGAEConfig, latents: torch.Tensor) -> torch.Tensor:
    """Public latents -> raw latents (the inverse of :func:`to_public`)."""
    return latents / config.latent_scale + config.latent_shift
