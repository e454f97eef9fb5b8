"""Model shapes for every preset, flow-matching conventions, seeds and batch invariance."""
import pytest
import torch

from dgae.config import DGAEConfig
from dgae.errors import ConfigError, InputError
from dgae.model import DGAE
from dgae.presets import PAPER_DECODER_PARAMS, PAPER_ENCODER_PARAMS, PAPER_LATENTS, get_preset, preset_names

PARAM_TOLERANCE = 0.10


def count(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("latent", sorted(PAPER_LATENTS))
@pytest.mark.parametrize("size", ["B", "M", "L"])
def test_paper_param_counts_within_10_percent(latent, size):
    cfg = get_preset(f"{latent}-{size}")
    with torch.device("meta"):
        m = DGAE(cfg)
    dec, enc = count(m.decoder), count(m.encoder)
    assert abs(dec / PAPER_DECODER_PARAMS[size] - 1) <= PARAM_TOLERANCE, dec
    assert abs(enc / PAPER_ENCODER_PARAMS - 1) <= PARAM_TOLERANCE, enc
    f, c = PAPER_LATENTS[latent]
    assert cfg.downsample_factor == f and cfg.latent_channels == c


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_shapes_on_meta(name):
    cfg = get_preset(name)
    with torch.device("meta"):
        m = DGAE(cfg)
        f, c, mult = cfg.downsample_factor, cfg.latent_channels, cfg.decoder_multiple
        x = torch.empty(2, 3, 2 * mult, 3 * mult)
        mean, logvar = m.encoder(x)
        assert mean.shape == logvar.shape == (2, c, 2 * mult // f, 3 * mult // f)
        v = m.decoder(x, torch.empty(2), mean)
        assert v.shape == x.shape


def test_decoder_input_is_image_plus_latent_channels():
    cfg = get_preset("tiny")
    m = DGAE(cfg)
    assert m.decoder.conv_in.in_channels == 3 + cfg.latent_channels


def test_unknown_preset_and_bad_config():
    with pytest.raises(ConfigError, match="unknown preset"):
        get_preset("nope")
    with pytest.raises(ConfigError):
        DGAEConfig.from_dict({"latent_channels": 4, "bogus": 1})
    cfg = get_preset("tiny")
    assert DGAEConfig.from_json(cfg.to_json()) == cfg


def test_encode_mean_vs_sample(tiny_model):
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    m1 = tiny_model.encode(x, "mean")
    assert torch.equal(m1, tiny_model.encode(x, "mean"))
    s1 = tiny_model.encode(x, "sample", seeds=[1, 2])
    assert torch.equal(s1, tiny_model.encode(x, "sample", seeds=[1, 2]))
    assert not torch.equal(s1, tiny_model.encode(x, "sample", seeds=[3, 4]))
    assert not torch.equal(s1, m1)
    with pytest.raises(InputError):
        tiny_model.encode(torch.rand(1, 3, 30, 32))


def test_decode_seed_determinism_and_batch_invariance(tiny_model):
    torch.manual_seed(1)
    lat = torch.randn(8, 4, 4, 4)
    seeds = list(range(100, 108))
    batched = tiny_model.decode(lat, steps=3, seeds=seeds)
    assert batched.shape == (8, 3, 32, 32)
    assert batched.min() >= -1 and batched.max() <= 1
    for i in (0, 5):
        alone = tiny_model.decode(lat[i:i + 1], steps=3, seeds=[seeds[i]])
        assert (alone - batched[i:i + 1]).abs().max() <= 1e-4
    assert torch.equal(batched, tiny_model.decode(lat, steps=3, seeds=seeds))
    other = tiny_model.decode(lat, steps=3, seeds=[s + 1000 for s in seeds])
    assert (other - batched).abs().max() > 1e-3


def test_decode_any_latent_size_pads_for_the_unet(tiny_model):
    # tiny's U-Net needs multiples of 8 pixels = 1 latent; use a bigger-multiple config via odd sizes
    lat = torch.randn(1, 4, 3, 5)
    out = tiny_model.decode(lat, steps=1, seeds=0)
    assert out.shape == (1, 3, 24, 40)


def test_decode_rejects_bad_latents(tiny_model):
    with pytest.raises(InputError, match="latents must be"):
        tiny_model.decode(torch.randn(1, 5, 4, 4))
    with pytest.raises(InputError, match="NaN"):
        tiny_model.decode(torch.full((1, 4, 4, 4), float("nan")))
    with pytest.raises(InputError, match="steps"):
        tiny_model.decode(torch.randn(1, 4, 4, 4), steps=0)


def test_flow_matching_one_step_estimate_is_identity_for_exact_velocity():
    # x0' = x_t - t v with v = eps - x0 recovers x0 exactly: the convention the trainer uses.
    x0, eps, t = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8), torch.rand(2, 1, 1, 1)
    xt = (1 - t) * x0 + t * eps
    assert torch.allclose(xt - t * (eps - x0), x0, atol=1e-6)


def test_conv_first_upsample_is_the_conv_at_low_resolution_then_nearest():
    """DecoderConfig.upsample: the same Upsample weights, applied before or after the nearest x2;
    an old config (no field) reads as ADM's nearest-then-conv."""
    import dataclasses

    import torch.nn.functional as F

    from dgae.layers import Upsample

    torch.manual_seed(0)
    x = torch.randn(2, 8, 6, 5)
    late, early = Upsample(8), Upsample(8, conv_first=True)
    early.load_state_dict(late.state_dict())
    assert torch.equal(early(x), F.interpolate(late.conv(x), scale_factor=2.0, mode="nearest"))
    assert torch.equal(late(x), late.conv(F.interpolate(x, scale_factor=2.0, mode="nearest")))
    assert early(x).shape == late(x).shape == (2, 8, 12, 10)

    cfg = get_preset("tiny")
    old = cfg.to_dict()
    del old["decoder"]["upsample"]
    assert DGAEConfig.from_dict(old).decoder.upsample == "nearest-conv"
    conv_first = cfg.replace(decoder=dataclasses.replace(cfg.decoder, upsample="conv-nearest"))
    model = DGAE(conv_first)
    ups = [m for m in model.decoder.modules() if isinstance(m, Upsample)]
    assert ups and all(m.conv_first for m in ups)
    assert DGAE(cfg).state_dict().keys() == model.state_dict().keys()  # same weights, other function
    with pytest.raises(ConfigError, match="decoder.upsample"):
        cfg.replace(decoder=dataclasses.replace(cfg.decoder, upsample="bilinear"))
