"""The bundled model through `dgae export diffusers` + AutoencoderDGAE.from_pretrained gives the
service's latents and images (within 1 level) for a non-square photo, tiled and untiled, and a
real diffusers DiT pipeline with it returns the service's image for the latents it made."""
from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers_cases import DecodeRecorder, run_dit, tiny_dit_pipeline
from fastapi.testclient import TestClient
from PIL import Image
from safetensors.torch import load as st_load
from service_cases import st_bytes

from cli.main import main as dgae_main
from dgae.checkpoint import BUNDLED_CHECKPOINT
from formats.images import decode_image, to_tensor, to_uint8
from dgae_diffusers import AutoencoderDGAE
from dgae_diffusers.seeds import draw_seed
from service.app import create_app
from service.core.settings import ServiceSettings

pytestmark = pytest.mark.slow

PHOTO = Path(__file__).resolve().parent.parent / "service" / "static" / "samples" / "coffee.jpg"  # 384 x 256
SEED = 7
MAX_LEVELS = 1  # uint8 levels between the diffusers image and the service's
LATENT_ATOL = 1e-4
READY_WAIT_S = 120
DIT_LATENT_SIDE = 40  # 320 x 320 images: larger than the bundled model's 288-pixel decode tile
UINT8_MAX = 255


@pytest.fixture(scope="module")
def client():
    settings = ServiceSettings(backend="torch", checkpoint=str(BUNDLED_CHECKPOINT), api_keys=(), torch_threads=1,
                               max_wait_ms=1)
    with TestClient(create_app(settings)) as c:
        deadline = time.monotonic() + READY_WAIT_S
        while c.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, c.get("/readyz").json()
            time.sleep(0.05)
        yield c


@pytest.fixture(scope="module")
def vae(tmp_path_factory):
    out = tmp_path_factory.mktemp("diffusers") / "dgae-small"
    assert dgae_main(["export", "diffusers", str(out)]) == 0  # the default checkpoint: the bundled model
    return AutoencoderDGAE.from_pretrained(out).eval()


@pytest.mark.parametrize("tile", ["off", "auto"])
def test_photo_round_trip_matches_the_service(client, vae, tile):
    data = PHOTO.read_bytes()
    rgb = decode_image(data)
    assert rgb.shape[0] != rgb.shape[1]
    if tile == "auto":
        vae.enable_tiling()  # the model's own tiles: the 384-pixel side is larger than one decode tile
    else:
        vae.disable_tiling()

    enc = client.post(f"/encode?tile={tile}", content=data, headers={"content-type": "image/jpeg"})
    assert enc.status_code == 200, enc.text
    service_latents = st_load(enc.content)["latents"]
    with torch.no_grad():
        z = vae.encode(to_tensor([rgb])).latent_dist.mode()
    latents = (z - vae.config.shift_factor) * vae.config.scaling_factor  # what a pipeline does
    torch.testing.assert_close(latents, service_latents, rtol=0, atol=LATENT_ATOL)

    dec = client.post(f"/decode?seed={SEED}&tile={tile}", content=enc.content,
                      headers={"content-type": "application/x-safetensors"})
    assert dec.status_code == 200, dec.text
    service_rgb = np.asarray(Image.open(io.BytesIO(dec.content)).convert("RGB"))
    steps = int(dec.headers["x-dgae-steps"])
    image = vae.decode(z, seeds=SEED, num_inference_steps=steps).sample  # the VAE's own round trip
    ours = to_uint8(image)[0]
    assert ours.shape == service_rgb.shape == rgb.shape
    diff = np.abs(ours.astype(np.int16) - service_rgb.astype(np.int16))
    assert diff.max() <= MAX_LEVELS, f"max {diff.max()} levels, {np.mean(diff > 0):.4%} of values differ"


def service_decode(client, latents: torch.Tensor, seed: int, steps: int, tile: str) -> np.ndarray:
    """The service's PNG for public latents [1, c, h, w] as uint8 [H, W, 3]."""
    r = client.post(f"/decode?seed={seed}&steps={steps}&tile={tile}", content=st_bytes(latents),
                    headers={"content-type": "application/x-safetensors"})
    assert r.status_code == 200, r.text
    return np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"))


@pytest.mark.parametrize("tile", ["off", "auto"])
def test_dit_pipeline_image_is_the_services_image_for_its_latents(client, vae, tile):
    (vae.enable_tiling if tile == "auto" else vae.disable_tiling)()
    with DecodeRecorder(vae) as rec:
        out = run_dit(tiny_dit_pipeline(vae, DIT_LATENT_SIDE))
    (z, rng), = rec.calls
    torch.set_rng_state(rng)
    (seed,) = draw_seed(None)  # DiT passes no generator: the VAE drew this seed from torch's global RNG
    public = (z - vae.config.shift_factor) * vae.config.scaling_factor
    expected = service_decode(client, public, seed, vae.dgae.sampler.default_steps, tile)
    ours = np.round(out[0] * UINT8_MAX).astype(np.int16)  # the pipeline's (x / 2 + 0.5) in [0, 1]
    assert ours.shape == expected.shape == (DIT_LATENT_SIDE * 8, DIT_LATENT_SIDE * 8, 3)
    diff = np.abs(ours - expected.astype(np.int16))
    assert diff.max() <= MAX_LEVELS, f"max {diff.max()} levels, {np.mean(diff > 0):.4%} of values differ"
