"""PSNR and SSIM for reconstruction evaluation.

Conventions (shared by both functions):
  * inputs are RGB tensors [N, 3, H, W] in the model's [-1, 1] range;
  * they are mapped to [0, 1] with (x + 1) / 2 and clamped there, so the data range is 1.0;
  * the result is one value per image, shape [N] (average it yourself), computed in float32.

SSIM is Wang et al. 2004 with an 11x11 Gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03, valid
(unpadded) filtering, averaged over channels; this matches
``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1.0, channel_axis=-1)``. Images must be at least 11 px.
"""
from __future__ import annotations

import torch

from dgae.errors import InputError

DATA_RANGE = 1.0
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K = (0.01, 0.03)


def _to_unit(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if x.shape != y.shape or x.dim() != 4:
        raise InputError(f"expected two [N, C, H, W] tensors of equal shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    unit = lambda t: ((t.float() + 1.0) * 0.5).clamp(0.0, DATA_RANGE)  # noqa: E731  [-1,1] -> [0,1]
    return unit(x), unit(y)


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image, [N]; ``inf`` where the images are identical."""
    a, b = _to_unit(x, y)
    mse = (a - b).pow(2).flatten(1).mean(dim=1)  # [N]
    return 10.0 * torch.log10(DATA_RANGE**2 / mse)


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Structural similarity per image, [N] (1.0 for identical images)."""
    from pytorch_msssim import ssim as _ssim  # local import: optional "train" extra

    a, b = _to_unit(x, y)
    if min(a.shape[-2:]) < SSIM_WINDOW:
        raise InputError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {tuple(a.shape[-2:])}")
    return _ssim(a, b, data_range=DATA_RANGE, size_average=False, win_size=SSIM_WINDOW,
                 win_sigma=SSIM_SIGMA, K=SSIM_K)
