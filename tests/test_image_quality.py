"""PSNR / SSIM conventions: [-1, 1] inputs, data range 1.0, per-image values."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dgae.errors import InputError
from training.metrics.image_quality import psnr, ssim


def test_psnr_of_constant_offset():
    x = torch.zeros(2, 3, 16, 16)
    y = x + 0.2  # 0.1 in [0, 1] units -> MSE 0.01 -> 20 dB
    torch.testing.assert_close(psnr(x, y), torch.full((2,), 20.0))
    assert math.isinf(psnr(x, x)[0].item())


def test_psnr_clamps_to_data_range():
    x = torch.ones(1, 3, 8, 8)
    torch.testing.assert_close(psnr(x, x + 5.0), psnr(x, x + 5.0).new_tensor([math.inf]))


def test_ssim_identity_and_skimage_agreement():
    import skimage.data
    from skimage.metrics import structural_similarity

    img = skimage.data.chelsea()[:128, :160].astype(np.float64) / 255.0  # HWC in [0, 1]
    noisy = np.clip(img + 0.08 * np.random.default_rng(0).standard_normal(img.shape), 0, 1)
    to_model = lambda a: torch.from_numpy(a * 2 - 1).float().permute(2, 0, 1)[None]  # noqa: E731
    x, y = to_model(img), to_model(noisy)
    torch.testing.assert_close(ssim(x, x), torch.ones(1))
    expected = structural_similarity(img, noisy, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                     data_range=1.0, channel_axis=-1)
    got = ssim(x, y).item()
    assert 0.0 < got < 0.9
    assert abs(got - expected) < 1e-3, (got, expected)


def test_shape_errors():
    with pytest.raises(InputError):
        psnr(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))
    with pytest.raises(InputError):
        ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))
