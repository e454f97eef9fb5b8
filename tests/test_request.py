"""dgae.request: the one place a request is checked and resolved; everything below trusts it."""
from __future__ import annotations

import math

import pytest
import torch

from dgae.errors import InputError
from dgae.model import DGAE
from dgae.presets import get_preset
from dgae.request import DecodeRequest, EncodeRequest, MEAN_SEED

CONFIG = get_preset("tiny")
C, F = CONFIG.latent_channels, CONFIG.downsample_factor


def latents(n: int = 2, h: int = 3, w: int = 2) -> torch.Tensor:
    return torch.randn(n, C, h, w, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("bad, needle", [
    (torch.randn(C, 2, 2), "must be [N, 4, h, w]"),
    (torch.randn(1, C + 1, 2, 2), f"they have {C + 1} channels and this model expects c={C}"),
    (torch.full((1, C, 2, 2), math.nan), "NaN or infinite"),
    (torch.full((1, C, 2, 2), math.inf), "NaN or infinite"),
    (torch.randn(0, C, 2, 2), "empty dimension"),
])
def test_decode_request_refuses_bad_latents(bad, needle):
    with pytest.raises(InputError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        DecodeRequest.resolve(CONFIG, bad)


@pytest.mark.parametrize("kwargs, needle", [
    ({"steps": 0}, "steps must be in"), ({"steps": CONFIG.sampler.max_steps + 1}, "steps must be in"),
    ({"steps": 3, "max_steps": 2}, r"steps must be in \[1, 2\]"), ({"solver": "rk4"}, "solver"),
    ({"tile": "maybe"}, "tile must be one of auto, off"), ({"seeds": [1, 2, 3]}, "got 3 seeds for 2 items"),
    ({"seeds": -1}, "out of range"),
])
def test_decode_request_refuses_bad_settings(kwargs, needle):
    with pytest.raises(InputError, match=needle):
        DecodeRequest.resolve(CONFIG, latents(), **kwargs)


def test_decode_request_resolves_defaults_and_seeds():
    req = DecodeRequest.resolve(CONFIG, latents().double(), seeds=7)
    assert req.steps == CONFIG.sampler.default_steps and req.plan.solver == CONFIG.sampler.solver
    assert req.seeds == (7, 8) and req.tile == "auto" and req.latents.dtype == torch.float32
    random = DecodeRequest.resolve(CONFIG, latents())
    assert len(random.seeds) == 2 and all(0 <= s < 2 ** 63 for s in random.seeds)


def test_split_and_of_batch_rebuild_the_same_request_without_checking_again():
    req = DecodeRequest.resolve(CONFIG, latents(4), steps=2, seeds=[5, 6, 7, 8], tile="off")
    part = req.split(slice(1, 3))
    assert part.seeds == (6, 7) and torch.equal(part.latents, req.latents[1:3]) and part.plan == req.plan
    joined = DecodeRequest.of_batch(req.batch_key(), req.latents, req.seeds)
    assert joined.seeds == req.seeds and joined.plan == req.plan and joined.tile == req.tile
    assert DecodeRequest.resolve(CONFIG, latents(1, 3, 2), steps=2, tile="off").batch_key() == req.batch_key()
    assert DecodeRequest.resolve(CONFIG, latents(1, 3, 2), steps=1, tile="off").batch_key() != req.batch_key()


def test_encode_request_checks_images_mode_and_tile_and_gives_mean_mode_no_noise_seeds():
    images = torch.zeros(2, 3, 2 * F, 3 * F)
    with pytest.raises(InputError, match="multiple of f"):
        EncodeRequest.resolve(CONFIG, torch.zeros(1, 3, F + 1, F))
    with pytest.raises(InputError, match="mode must be one of mean, sample"):
        EncodeRequest.resolve(CONFIG, images, mode="median")
    with pytest.raises(InputError, match="tile must be one of"):
        EncodeRequest.resolve(CONFIG, images, tile="on")
    mean = EncodeRequest.resolve(CONFIG, images, seeds=99)
    assert mean.seeds == (MEAN_SEED, MEAN_SEED) and mean.sample_seeds is None
    sample = EncodeRequest.resolve(CONFIG, images, mode="sample", seeds=[3, 4])
    assert sample.sample_seeds == [3, 4] and sample.batch_key() == ("sample", 2 * F, 3 * F, "auto")


def test_a_request_decodes_the_same_through_the_model_and_its_parts(tiny_checkpoint):
    from backends.torch_backend import TorchBackend  # noqa: PLC0415

    backend = TorchBackend.from_checkpoint(tiny_checkpoint)
    z = latents(3)
    req = DecodeRequest.resolve(backend.config, z, steps=2, seeds=[1, 2, 3])
    whole = backend.run_decode(req)
    parts = torch.cat([backend.run_decode(req.split(slice(i, i + 1))) for i in range(3)])
    assert (whole - parts).abs().max() < 1e-5
    assert torch.equal(whole, backend.decode(z, 2, [1, 2, 3]))


def test_model_and_backend_share_the_one_check():
    model = DGAE(CONFIG)
    with pytest.raises(InputError, match="NaN or infinite"):
        model.decode(torch.full((1, C, 2, 2), math.nan))
