"""AutoencoderDGAE (dgae_diffusers) on the tiny preset: `dgae export diffusers`, from_pretrained,
the latent scaling a pipeline applies, seeds from generators, slicing, tiling, and a real
diffusers DiT pipeline built from tiny random parts with this VAE."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers_cases import DecodeRecorder, run_dit, tiny_dit_pipeline
from safetensors.torch import load_file

from cli.main import main as dgae_main
from dgae import pipeline
from dgae.request import DecodeRequest, EncodeRequest
from dgae.checkpoint import load_checkpoint, save_checkpoint
from dgae.errors import ConfigError, InputError
from dgae.model import DGAE
from dgae_diffusers import AutoencoderDGAE
from dgae_diffusers.seeds import draw_seed

STEPS = 1
FP16_ATOL = 2e-3  # fp16-rounded weights, fp32 compute (measured 2e-4 on the tiny preset)
LATENT_SCALE, LATENT_SHIFT = 0.5, 0.25  # non-trivial, so the scaling a pipeline applies is exercised
H, W = 24, 40  # non-square, multiples of the tiny preset's f = 8
# small tiles so a 48 x 80 image is tiled on the tiny preset (its own tiles are 288 / 576 pixels)
SMALL_TILES = {"decode_tile": 32, "decode_overlap": 16, "encode_tile": 32, "encode_overlap": 16}
DIT_LATENT_SIDE = 8  # DiT's transformer is square: 64 x 64 images


@pytest.fixture(scope="module")
def scaled_checkpoint(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint's weights with latent_scale / latent_shift set."""
    tiny = load_checkpoint(tiny_checkpoint)
    model = DGAE(tiny.config.replace(latent_scale=LATENT_SCALE, latent_shift=LATENT_SHIFT))
    model.load_state_dict(tiny.state_dict())
    return save_checkpoint(model, tmp_path_factory.mktemp("scaled") / "scaled.safetensors")


@pytest.fixture(scope="module")
def exported(scaled_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("diffusers") / "vae"
    assert dgae_main(["export", "diffusers", str(out), "--checkpoint", str(scaled_checkpoint)]) == 0
    return out


@pytest.fixture()
def vae(exported):
    return AutoencoderDGAE.from_pretrained(exported).eval()


@pytest.fixture(scope="module")
def model(scaled_checkpoint):
    return load_checkpoint(scaled_checkpoint)


def images(n: int = 2, h: int = H, w: int = W, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_export_writes_a_diffusers_folder_with_the_checkpoints_tensors(exported, model, scaled_checkpoint):
    config = json.loads((exported / "config.json").read_text())
    assert config["_class_name"] == "AutoencoderDGAE"
    assert (config["scaling_factor"], config["shift_factor"]) == (LATENT_SCALE, LATENT_SHIFT)
    assert config["latent_channels"] == model.config.latent_channels
    assert 2 ** (len(config["block_out_channels"]) - 1) == model.config.downsample_factor  # vae_scale_factor
    weights = load_file(str(exported / "diffusion_pytorch_model.safetensors"))
    state = model.state_dict()
    assert set(weights) == set(state) and all(torch.equal(weights[k], state[k]) for k in state)


def test_fp16_export_stores_half_the_bytes_and_loads_back(scaled_checkpoint, exported, vae, tmp_path):
    assert dgae_main(["export", "diffusers", str(tmp_path), "-c", str(scaled_checkpoint), "--fp16"]) == 0
    weights = load_file(str(tmp_path / "diffusion_pytorch_model.safetensors"))
    assert {v.dtype for v in weights.values() if v.is_floating_point()} == {torch.float16}
    half = AutoencoderDGAE.from_pretrained(tmp_path, torch_dtype=torch.float32)
    z = torch.randn(1, 4, 2, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(half.decode(z, seeds=1, num_inference_steps=STEPS).sample,
                               vae.decode(z, seeds=1, num_inference_steps=STEPS).sample, rtol=0, atol=FP16_ATOL)


def test_config_that_disagrees_with_the_model_is_refused(model):
    with pytest.raises(ConfigError, match="scaling_factor"):
        AutoencoderDGAE(dgae_config=model.config.to_dict(), scaling_factor=LATENT_SCALE * 2)
    with pytest.raises(ConfigError, match="dgae_config"):
        AutoencoderDGAE()
    with pytest.raises(ConfigError, match="default_inference_steps"):
        AutoencoderDGAE(dgae_config=model.config.to_dict(), default_inference_steps=0)


def test_export_steps_become_the_decode_default(scaled_checkpoint, model, tmp_path):
    assert dgae_main(["export", "diffusers", str(tmp_path), "-c", str(scaled_checkpoint), "--steps", "3"]) == 0
    vae = AutoencoderDGAE.from_pretrained(tmp_path)
    z = torch.randn(1, 4, 2, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(vae.decode(z, seeds=1).sample, vae.decode(z, seeds=1, num_inference_steps=3).sample,
                               rtol=0, atol=0)
    assert not torch.allclose(vae.decode(z, seeds=1).sample, vae.decode(z, seeds=1, num_inference_steps=1).sample)


def test_encode_mode_is_the_raw_posterior_mean_and_scaling_gives_the_public_latents(vae, model):
    x = images()
    posterior = vae.encode(x).latent_dist
    z = posterior.mode()
    assert z.shape == (2, 4, H // 8, W // 8)
    # what a pipeline does to encoded latents: (z - shift_factor) * scaling_factor
    public = (z - vae.config.shift_factor) * vae.config.scaling_factor
    torch.testing.assert_close(public, model.encode(x, "mean"), rtol=0, atol=1e-6)
    assert not torch.allclose(public, z)


def test_posterior_sample_uses_the_services_per_sample_seeds(vae, model):
    x = images()
    z = vae.encode(x).latent_dist.sample(seeds=[3, 4])
    public = pipeline.to_public(model.config, z)
    torch.testing.assert_close(public, model.encode(x, "sample", seeds=[3, 4]), rtol=0, atol=1e-6)
    gen = vae.encode(x).latent_dist.sample(generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        gen, vae.encode(x).latent_dist.sample(seeds=draw_seed(torch.Generator().manual_seed(0), 2))
    )


def test_decode_of_pipeline_latents_is_the_models_decode_of_the_public_latents(vae, model):
    public = torch.randn(2, 4, H // 8, W // 8, generator=torch.Generator().manual_seed(1))
    # what a pipeline hands the VAE: latents / scaling_factor + shift_factor
    out = vae.decode(public / vae.config.scaling_factor + vae.config.shift_factor, seeds=[7, 8],
                     num_inference_steps=STEPS)
    assert out.sample.shape == (2, 3, H, W)
    torch.testing.assert_close(out.sample, model.decode(public, STEPS, seeds=[7, 8]), rtol=0, atol=1e-5)
    tup = vae.decode(public / LATENT_SCALE + LATENT_SHIFT, return_dict=False, seeds=7, num_inference_steps=STEPS)
    torch.testing.assert_close(tup[0], out.sample, rtol=0, atol=1e-6)  # one int s: s, s+1 as in the service


def test_generators_map_to_per_sample_seeds(vae):
    z = torch.randn(2, 4, H // 8, W // 8, generator=torch.Generator().manual_seed(2))
    def dec(**kw):
        return vae.decode(z, num_inference_steps=STEPS, **kw).sample
    one = dec(generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(one, dec(generator=torch.Generator().manual_seed(0)), rtol=0, atol=0)
    torch.testing.assert_close(one, dec(seeds=draw_seed(torch.Generator().manual_seed(0), 2)), rtol=0, atol=0)
    assert not torch.allclose(one, dec(generator=torch.Generator().manual_seed(1)))
    per_item = dec(generator=[torch.Generator().manual_seed(5), torch.Generator().manual_seed(6)])
    alone = vae.decode(z[1:], num_inference_steps=STEPS, generator=torch.Generator().manual_seed(6)).sample
    torch.testing.assert_close(per_item[1:], alone, rtol=0, atol=1e-6)  # an item decodes the same in any batch
    torch.manual_seed(11)
    glob = dec()
    torch.manual_seed(11)
    torch.testing.assert_close(glob, dec(), rtol=0, atol=0)  # no generator: torch's global RNG, as diffusers
    with pytest.raises(InputError, match="3 generators for 2 items"):
        dec(generator=[torch.Generator()] * 3)


def test_slicing_changes_nothing(vae):
    x, z = images(), torch.randn(2, 4, H // 8, W // 8, generator=torch.Generator().manual_seed(3))
    whole_mean = vae.encode(x).latent_dist.mode()
    whole = vae.decode(z, seeds=[1, 2], num_inference_steps=STEPS).sample
    vae.enable_slicing()
    torch.testing.assert_close(vae.encode(x).latent_dist.mode(), whole_mean, rtol=0, atol=1e-6)
    torch.testing.assert_close(vae.decode(z, seeds=[1, 2], num_inference_steps=STEPS).sample, whole, rtol=0, atol=1e-6)


@torch.no_grad()
def test_tiling_runs_the_services_tiled_sequence(vae, model):
    x = images(1, 48, 80)
    z = vae.encode(x).latent_dist.mode()
    untiled = vae.decode(z, seeds=4, num_inference_steps=STEPS).sample
    vae.enable_tiling(**SMALL_TILES)
    tiled_z = vae.encode(x).latent_dist.mode()
    tiled = vae.decode(z, seeds=4, num_inference_steps=STEPS).sample
    cfg = vae.dgae  # the model's config with the small tiles: the same tiled sequence as the service's tile=auto
    assert pipeline.decode_grid(cfg, 48, 80) is not None and pipeline.encode_grid(cfg, 48, 80) is not None
    expected = pipeline.decode(cfg, model.decoder.forward_buffer,
                               DecodeRequest.resolve(cfg, pipeline.to_public(cfg, z), STEPS, [4], "auto"))
    torch.testing.assert_close(tiled, expected, rtol=0, atol=1e-5)
    expected_z = pipeline.from_public(
        cfg, pipeline.encode(cfg, model.encoder, EncodeRequest.resolve(cfg, x, tile="auto"))
    )
    torch.testing.assert_close(tiled_z, expected_z, rtol=0, atol=1e-5)
    assert not torch.allclose(tiled, untiled, atol=1e-6)  # the tiles really ran
    vae.disable_tiling()
    torch.testing.assert_close(vae.decode(z, seeds=4, num_inference_steps=STEPS).sample, untiled, rtol=0, atol=0)


def test_forward_is_encode_then_decode(vae):
    x = images(1)
    torch.manual_seed(0)
    out = vae(x).sample
    torch.manual_seed(0)
    torch.testing.assert_close(out, vae.decode(vae.encode(x).latent_dist.mode()).sample, rtol=0, atol=0)


@pytest.mark.parametrize("tiled", [False, True], ids=["untiled", "tiled"])
def test_runs_as_the_vae_of_a_diffusers_dit_pipeline(vae, tiled):
    if tiled:
        vae.enable_tiling(**SMALL_TILES)
    with DecodeRecorder(vae) as rec:
        out = run_dit(tiny_dit_pipeline(vae, DIT_LATENT_SIDE))
    side = DIT_LATENT_SIDE * 8
    assert out.shape == (1, side, side, 3) and np.isfinite(out).all() and 0 <= out.min() and out.max() <= 1
    assert out.std() > 0
    (z, rng), = rec.calls
    assert z.shape == (1, vae.config.latent_channels, DIT_LATENT_SIDE, DIT_LATENT_SIDE)
    torch.set_rng_state(rng)
    replay = (rec.decode(z).sample / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(out, replay, rtol=0, atol=1e-6)  # the pipeline's image is this VAE's decode
    assert (pipeline.decode_grid(vae.dgae, side, side, vae.tile_mode) is not None) == tiled
