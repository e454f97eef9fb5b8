"""The Remote VAE routes against a real `dgae serve`, driven by diffusers' own ``remote_decode`` /
``remote_encode`` unchanged (the endpoint URL is all they get; the API key comes from a netrc
entry, as ``requests`` reads one): images equal /decode with the same seed within one level,
latents equal /encode's, every output_type, the scaling/shift mapping, SD.Next's headers and the
typed errors."""
from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.inputs import photo_arrays
from formats.images import encode_image, to_tensor
from formats.latents import dump_npy
from service_cases import AUTH, C, F, Limits, level_diff, native, serve

remote_utils = pytest.importorskip("diffusers.utils.remote_utils", reason="diffusers is a dev dependency")

pytestmark = pytest.mark.server

LIMITS = Limits()
PHOTO_SIDE = 64
SEED = 4321
STEPS = 2
DEFAULT_SEED = 0  # service.remote.routes.DEFAULT_SEED, the documented default
MAX_LEVEL_DIFF = 1
LATENT_ATOL = 1e-5
SCALE, SHIFT = 0.5, 0.25
HTTP_TIMEOUT_S = 120.0
API_KEY = AUTH["Authorization"].split()[1]


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory):
    flags = [
        "--backend",
        "torch",
        "--api-keys",
        API_KEY,
        "--max-wait-ms",
        "20",
        "--torch-threads",
        "1",
        "--default-steps",
        "1",
        *LIMITS.flags(),
    ]
    with serve(tiny_checkpoint, tmp_path_factory.mktemp("remote"), *flags) as s:
        yield s


@pytest.fixture(autouse=True)
def netrc_key(tmp_path, monkeypatch):
    """The key where requests (and so diffusers, unchanged) finds it: a netrc entry for the host."""
    path = tmp_path / "netrc"
    path.write_text(f"machine 127.0.0.1 login dgae password {API_KEY}\n")
    path.chmod(0o600)
    monkeypatch.setenv("NETRC", str(path))


def photo() -> np.ndarray:
    arrays, _ = photo_arrays(1, PHOTO_SIDE)
    return arrays[0]  # uint8 [H, W, 3]


def native_latents(server, rgb: np.ndarray) -> np.ndarray:
    return native(server, "/encode?format=npy", encode_image(rgb), {"Content-Type": "image/png"})


def test_remote_encode_of_an_image_equals_native_encode(server):
    rgb = photo()
    latents = remote_utils.remote_encode(server.url + "/remote/encode", Image.fromarray(rgb))
    assert latents.dtype == torch.float32 and tuple(latents.shape) == (1, C, PHOTO_SIDE // F, PHOTO_SIDE // F)
    np.testing.assert_allclose(latents.numpy(), native_latents(server, rgb), atol=LATENT_ATOL)
    # a float tensor in [-1, 1] gives the same latents as the image it holds (contiguous: diffusers
    # serialises a temporary .contiguous() copy through a view that outlives it)
    from_tensor = remote_utils.remote_encode(server.url + "/remote/encode", to_tensor([rgb]).contiguous())
    np.testing.assert_allclose(from_tensor.numpy(), latents.numpy(), atol=LATENT_ATOL)


def test_remote_decode_png_equals_native_decode_with_the_same_seed(server):
    """Must show: diffusers' remote_decode, unchanged, against a real server: the image equals
    /decode with the same seed within one level (seed and steps ride in the endpoint URL)."""
    z = native_latents(server, photo())
    image = remote_utils.remote_decode(f"{server.url}/remote/decode?seed={SEED}&steps={STEPS}",
                                       torch.from_numpy(z), image_format="png")
    assert isinstance(image, Image.Image) and image.size == (PHOTO_SIDE, PHOTO_SIDE)
    reference = native(server, f"/decode?seed={SEED}&steps={STEPS}&format=npy", dump_npy(z))
    assert level_diff(np.asarray(image)[None], reference) <= MAX_LEVEL_DIFF
    # without ?seed= the documented default seed is used: reproducible, equal to /decode?seed=0
    default = remote_utils.remote_decode(server.url + "/remote/decode", torch.from_numpy(z), image_format="png")
    reference0 = native(server, f"/decode?seed={DEFAULT_SEED}&format=npy", dump_npy(z))
    assert level_diff(np.asarray(default)[None], reference0) <= MAX_LEVEL_DIFF


def test_remote_decode_pt_outputs(server):
    """output_type="pt": uint8 [N, H, W, 3] with partial_postprocess (equal to /decode), else
    [N, 3, H, W] in [-1, 1] in the request's dtype; several latents in one request."""
    z = np.concatenate([native_latents(server, photo())] * 2)
    url = f"{server.url}/remote/decode?seed={SEED}&steps={STEPS}"
    uint8 = remote_utils.remote_decode(url, torch.from_numpy(z), output_type="pt", partial_postprocess=True,
                                       return_type="pt")
    assert uint8.dtype == torch.uint8 and tuple(uint8.shape) == (2, PHOTO_SIDE, PHOTO_SIDE, 3)
    reference = native(server, f"/decode?seed={SEED}&steps={STEPS}&format=npy", dump_npy(z))
    assert level_diff(uint8.numpy(), reference) <= MAX_LEVEL_DIFF
    floats = remote_utils.remote_decode(url, torch.from_numpy(z).half(), output_type="pt", return_type="pt")
    assert floats.dtype == torch.float16 and tuple(floats.shape) == (2, 3, PHOTO_SIDE, PHOTO_SIDE)
    as_uint8 = ((floats.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert level_diff(as_uint8, reference) <= MAX_LEVEL_DIFF + 1  # fp16 latents in and images out
    pil = remote_utils.remote_decode(url, torch.from_numpy(z[:1]), output_type="pt", partial_postprocess=True)
    assert isinstance(pil, Image.Image) and level_diff(np.asarray(pil)[None], reference[:1]) <= MAX_LEVEL_DIFF


def test_scaling_and_shift_factors_round_trip(server):
    """encode returns (z - shift) * scale, decode takes latents / scale + shift: a client's scaled
    latents decode to the image of DGAE's public ones."""
    rgb = photo()
    z = native_latents(server, rgb)
    scaled = remote_utils.remote_encode(server.url + "/remote/encode", Image.fromarray(rgb),
                                        scaling_factor=SCALE, shift_factor=SHIFT)
    np.testing.assert_allclose(scaled.numpy(), (z - SHIFT) * SCALE, atol=LATENT_ATOL)
    url = f"{server.url}/remote/decode?seed={SEED}"
    via_factors = remote_utils.remote_decode(url, scaled, scaling_factor=SCALE, shift_factor=SHIFT,
                                             image_format="png")
    plain = remote_utils.remote_decode(url, torch.from_numpy(z), image_format="png")  # do_scaling=True: identity
    assert level_diff(np.asarray(via_factors), np.asarray(plain)) <= MAX_LEVEL_DIFF


def test_sdnext_style_tensor_binary_request_and_jpeg(server):
    z = native_latents(server, photo())
    params = {"shape": list(z.shape), "dtype": "float32", "seed": SEED, "output_type": "pil", "image_format": "jpg"}
    r = httpx.post(server.url + "/remote/decode", params=params, content=z.tobytes(), timeout=HTTP_TIMEOUT_S,
                   headers={**AUTH, "Content-Type": "tensor/binary", "Accept": "image/jpeg"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg" and r.content[:2] == b"\xff\xd8"
    assert r.headers["X-DGAE-Seeds"] == str(SEED) and "Server-Timing" in r.headers
    processor = httpx.post(server.url + "/remote/decode", params=params, content=z.tobytes(), timeout=HTTP_TIMEOUT_S,
                           headers={**AUTH, "Content-Type": "tensor/binary", "Accept": "tensor/binary"})
    assert json.loads(processor.headers["shape"]) == [1, 3, PHOTO_SIDE, PHOTO_SIDE]  # [0, 1] for a processor
    values = np.frombuffer(processor.content, np.float32)
    assert processor.headers["dtype"] == "float32" and values.min() >= 0 and values.max() <= 1


def test_errors_are_typed_and_the_server_stays_up(server, monkeypatch):
    z = np.zeros((1, C, 2, 2), np.float32)
    tensor_headers = {**AUTH, "Content-Type": "tensor/binary"}

    def post(route: str, params: dict, content: bytes = z.tobytes(), headers: dict = tensor_headers):
        return httpx.post(server.url + route, params=params, content=content, headers=headers, timeout=HTTP_TIMEOUT_S)

    shape = {"shape": [1, C, 2, 2], "dtype": "float32"}
    cases = [
        (post("/remote/decode", {"dtype": "float32"}), 400, "'shape' and 'dtype'"),
        (post("/remote/decode", {**shape, "shape": [1, C, 2, 3]}), 400, "needs 96"),
        (post("/remote/decode", {**shape, "dtype": "int64"}), 422, "dtype must be one of"),
        (post("/remote/decode", {**shape, "output_type": "mp4"}), 422, "output_type"),
        (post("/remote/decode", {**shape, "scaling_factor": 0}), 422, "non-zero"),
        (post("/remote/decode", {**shape, "height": 16, "width": 16}), 422, "packed"),
        (post("/remote/decode", {**shape, "sed": 1}), 400, "did you mean 'seed'"),
        (post("/remote/decode", {**shape, "shape": [2, C, 2, 2]}, np.zeros((2, C, 2, 2), np.float32).tobytes()),
         400, "one image"),
        (post("/remote/decode", {**shape, "shape": [1, 3, 2, 2]}, np.zeros((1, 3, 2, 2), np.float32).tobytes()),
         400, "channels"),
        (post("/remote/decode", {**shape, "shape": [LIMITS.max_items + 1, C, 2, 2], "output_type": "pt"},
              np.zeros((LIMITS.max_items + 1, C, 2, 2), np.float32).tobytes()), 413, f"limit of {LIMITS.max_items}"),
        (post("/remote/decode", {**shape, "shape": [1, C, 32, 32]}, np.zeros((1, C, 32, 32), np.float32).tobytes()),
         413, "pixels"),
        (post("/remote/decode", shape, headers={**tensor_headers, "Content-Type": "image/png"}), 415, "Content-Type"),
        (post("/remote/decode", shape, headers={"Content-Type": "tensor/binary"}), 401, "API key"),
        (post("/remote/encode", {}, b"not an image"), 400, ""),
        (post("/remote/encode", {"shape": [1, 3, F, F], "dtype": "float32"},
              np.full((1, 3, F, F), 2.0, np.float32).tobytes()), 400, "[-1, 1]"),
        (post("/remote/encode", {}, encode_image(photo()[: F + 1, : F + 1])), 400, "multiple"),
    ]
    for response, status, needle in cases:
        assert response.status_code == status, response.text
        assert needle in response.json()["error"]["message"]
    with pytest.raises(RuntimeError):  # diffusers raises the server's JSON error
        remote_utils.remote_decode(server.url + "/remote/decode?steps=100000", torch.zeros(1, C, 2, 2))
    monkeypatch.delenv("NETRC")
    monkeypatch.setenv("HOME", "/nonexistent")
    with pytest.raises(RuntimeError, match="API key"):  # no netrc entry: no key
        remote_utils.remote_decode(server.url + "/remote/decode", torch.zeros(1, C, 2, 2))
    image = post("/remote/decode", {**shape, "image_format": "png"}, headers={**tensor_headers, "Accept": "image/png"})
    assert image.status_code == 200 and image.content[:4] == b"\x89PNG"
    metrics = httpx.get(server.url + "/metrics").text
    assert 'route="/remote/decode",status="200"' in metrics and 'route="/remote/decode",status="400"' in metrics
    assert server.proc.poll() is None
