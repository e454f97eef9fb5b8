"""In-process (ASGI) tests of the service routes, formats, errors, auth, readiness and metrics,
on the tiny checkpoint with small limits."""
from __future__ import annotations

import io
import json
import threading
import time
import zipfile

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from safetensors.torch import load as st_load

from backends.base import Backend
from backends.torch_backend import TorchBackend
from cli.main import main as dgae_main
from dgae.errors import CheckpointError, ConfigError
from dgae.presets import get_preset
from service.app import create_app
from cli.commands.serve import build_settings
from service.core.settings import ServiceSettings
from service_cases import AUTH, API_KEY, C, F, Limits, latents, malformed_requests, npy_bytes, png, send, st_bytes

LIMITS = Limits()
CASES = malformed_requests(LIMITS)
READY_WAIT_S = 60
STEPS = 1  # default decode steps in these tests (the model's own default is 2)


def wait_ready(client: TestClient) -> None:
    deadline = time.monotonic() + READY_WAIT_S
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").json()
        time.sleep(0.02)


def make_client(**overrides) -> TestClient:
    backend = overrides.pop("backend", None)
    settings = ServiceSettings(**{"backend": "torch", "api_keys": (API_KEY,), "max_wait_ms": 5, "default_steps": STEPS,
                                  "torch_threads": 1, **LIMITS.settings(), **overrides})
    return TestClient(create_app(settings, backend=backend))



@pytest.fixture(scope="module")
def client(tiny_checkpoint):
    with make_client(checkpoint=str(tiny_checkpoint)) as c:
        wait_ready(c)
        yield c


def assert_json_error(r, status: int, needle: str = "") -> dict:
    assert r.status_code == status, r.text[:500]
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) == {"code", "message"} and err["code"] and err["message"]
    assert needle in err["message"], err
    return err


def test_malformed_catalogue_is_large_and_distinct():
    assert len(CASES) >= 25 and len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("bad", CASES, ids=[c.name for c in CASES])
def test_malformed_request_gets_json_4xx(client, bad):
    assert_json_error(send(client, bad), bad.status, bad.needle)


def test_still_serves_after_malformed_requests(client):
    r = client.post("/decode?seed=1", content=st_bytes(latents()), headers=AUTH)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == (2 * F, 2 * F)


def test_roundtrip_restores_original_size_and_names(client):
    files = [("image", ("cat.png", png(20, 30, seed=1), "image/png")),
             ("image", ("dog.png", png(20, 30, seed=2), "image/png"))]
    enc = client.post("/encode", files=files, headers=AUTH)  # fit=pad by default
    assert enc.status_code == 200 and enc.headers["content-type"] == "application/x-safetensors"
    assert enc.headers["x-dgae-shape"] == f"2,{C},3,4" and enc.headers["x-dgae-model"] == "tiny"
    meta = json.loads(enc.content[8:8 + int.from_bytes(enc.content[:8], "little")])["__metadata__"]["dgae"]
    meta = json.loads(meta)
    assert (meta["f"], meta["c"], meta["mode"]) == (F, C, "mean") and len(meta["checkpoint_sha256"]) == 64
    assert [(im["name"], im["orig_height"], im["orig_width"], im["pad_bottom"]) for im in meta["images"]] == [
        ("cat.png", 20, 30, 4), ("dog.png", 20, 30, 4)]

    dec = client.post("/decode?seed=5", content=enc.content, headers=AUTH)
    assert dec.status_code == 200 and dec.headers["content-type"] == "application/zip"
    assert dec.headers["x-dgae-seeds"] == "5,6" and dec.headers["x-dgae-steps"] == str(STEPS)
    with zipfile.ZipFile(io.BytesIO(dec.content)) as zf:
        assert zf.namelist() == ["0000_cat.png", "0001_dog.png"]
        sizes = [Image.open(io.BytesIO(zf.read(n))).size for n in zf.namelist()]
    assert sizes == [(30, 20), (30, 20)]

    full = client.post("/decode?seed=5&format=npy", content=enc.content, headers=AUTH)
    arr = np.load(io.BytesIO(full.content))
    assert arr.dtype == np.uint8 and arr.shape == (2, 24, 32, 3)
    with zipfile.ZipFile(io.BytesIO(dec.content)) as zf:
        first = np.asarray(Image.open(io.BytesIO(zf.read("0000_cat.png"))))
    np.testing.assert_array_equal(first, arr[0, :20, :30])  # the zip holds the padding-cropped image


def test_encode_formats_agree(client):
    body, hdr = png(16, 24, seed=3), {**AUTH, "Content-Type": "image/png"}
    st = st_load(client.post("/encode", content=body, headers=hdr).content)["latents"]
    npy = np.load(io.BytesIO(client.post("/encode?format=npy&dtype=float16", content=body, headers=hdr).content))
    js = client.post("/encode?format=json", content=body, headers=hdr).json()
    assert st.shape == (1, C, 2, 3) and npy.dtype == np.float16 and js["shape"] == [1, C, 2, 3]
    np.testing.assert_allclose(npy.astype(np.float32), st.numpy(), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(np.array(js["latents"], dtype=np.float32), st.numpy(), rtol=1e-6)


def test_decode_inputs_agree_across_safetensors_npy_and_json(client):
    z = latents(seed=4)
    outs = [client.post("/decode?seed=9", headers=AUTH, **kw).content for kw in (
        {"content": st_bytes(z)}, {"content": npy_bytes(z.numpy())}, {"json": {"latents": z.tolist()}},
        {"content": npy_bytes(z[0].numpy())})]
    assert outs[0] == outs[1] == outs[2] == outs[3]


def test_decode_output_formats(client):
    z = st_bytes(latents(seed=5))
    for fmt, media in (("png", "image/png"), ("jpeg", "image/jpeg"), ("webp", "image/webp")):
        r = client.post(f"/decode?seed=1&format={fmt}&quality=80", content=z, headers=AUTH)
        assert r.headers["content-type"] == media
        assert Image.open(io.BytesIO(r.content)).format == fmt.upper()
    st = client.post("/decode?seed=1&format=safetensors", content=z, headers=AUTH)
    images = st_load(st.content)["images"]
    png_rgb = np.asarray(Image.open(io.BytesIO(client.post("/decode?seed=1", content=z, headers=AUTH).content)))
    assert images.dtype == torch.uint8 and images.shape == (1, 2 * F, 2 * F, 3)
    np.testing.assert_array_equal(images[0].numpy(), png_rgb)


def test_seeds_decide_the_noise(client):
    z = st_bytes(latents(2, seed=6))
    a = client.post("/decode?seed=5&format=npy", content=z, headers=AUTH)
    b = client.post("/decode?seed=5,6&format=npy", content=z, headers=AUTH)
    c = client.post("/decode?seed=7,8&format=npy", content=z, headers=AUTH)
    assert a.content == b.content and a.content != c.content
    rand = client.post("/decode?format=npy", content=z, headers=AUTH)
    again = client.post(f"/decode?format=npy&seed={rand.headers['x-dgae-seeds']}", content=z, headers=AUTH)
    assert again.content == rand.content


def test_encode_sample_mode_is_seeded(client):
    body, hdr = png(16, 16, seed=7), {**AUTH, "Content-Type": "image/png"}
    s1 = client.post("/encode?mode=sample&seed=3&format=npy", content=body, headers=hdr)
    s2 = client.post("/encode?mode=sample&seed=3&format=npy", content=body, headers=hdr)
    mean = client.post("/encode?format=npy", content=body, headers=hdr)
    assert s1.headers["x-dgae-seeds"] == "3" and s1.content == s2.content and s1.content != mean.content


def test_probes_and_metrics_need_no_key_but_model_info_does(client):
    for path in ("/healthz", "/readyz", "/metrics"):
        assert client.get(path).status_code == 200
    assert_json_error(client.get("/v1/model"), 401)
    info = client.get("/v1/model", headers=AUTH).json()
    assert (info["preset"], info["downsample_factor"], info["latent_channels"]) == ("tiny", F, C)
    assert info["steps"] == {"min": 1, "max": 64, "default": STEPS} and info["backend"] == "torch"
    assert info["limits"]["max_items"] == LIMITS.max_items and len(info["checkpoint_sha256"]) == 64


def test_metrics_cover_requests_failures_batches_and_images(client):
    client.post("/decode?seed=1", content=st_bytes(latents()), headers=AUTH)
    client.post("/decode?steps=0", content=st_bytes(latents()), headers=AUTH)
    text = client.get("/metrics").text
    for needle in (
        'dgae_requests_total{route="/decode",status="200"}',
        'dgae_request_failures_total{reason="invalid_parameter",route="/decode"}',
        'dgae_batch_size_count{operation="decode"}',
        'dgae_queue_duration_seconds_count{operation="decode"}',
        'dgae_compute_duration_seconds_count{operation="encode"}',
        'dgae_pending_requests{operation="decode"} 0.0',
        "dgae_images_encoded_total",
        "dgae_images_decoded_total",
        'dgae_decode_steps_bucket{le="1.0"}',
        "dgae_ready 1.0",
        'dgae_requests_total{route="unmatched",status="404"}',
    ):
        assert needle in text, needle


def test_openapi_documents_parameters_limits_and_errors(client):
    doc = client.get("/openapi.json").json()
    enc, dec = doc["paths"]["/encode"]["post"], doc["paths"]["/decode"]["post"]
    assert {p["name"] for p in enc["parameters"]} == {"mode", "seed", "fit", "dtype", "format", "tile"}
    assert {p["name"] for p in dec["parameters"]} == {"steps", "seed", "format", "quality", "tile"}
    steps = next(p for p in dec["parameters"] if p["name"] == "steps")
    assert steps["schema"]["anyOf"][0]["minimum"] == 1 and "/v1/model" in steps["description"]
    assert {"400", "401", "413", "415", "422", "500", "503", "504"} <= set(dec["responses"])
    assert (
        "multipart/form-data" in enc["requestBody"]["content"] and "application/json" in dec["requestBody"]["content"]
    )
    assert client.get("/docs").status_code == 200


# --- readiness, failures and deadlines with wrapped backends ------------------------------------
class Wrapped(Backend):
    """Delegates to a TorchBackend; ``hook(op, tensor)`` runs first (block, sleep or raise)."""

    def __init__(self, inner: TorchBackend, hook):
        self.inner, self.hook = inner, hook
        self.config, self.checkpoint_sha256 = inner.config, inner.checkpoint_sha256

    def run_encode(self, req):
        self.hook("encode", req.images)
        return self.inner.run_encode(req)

    def run_decode(self, req):
        self.hook("decode", req.latents)
        return self.inner.run_decode(req)

    def encoder_moments(self, images):
        return self.inner.encoder_moments(images)

    def denoise(self, buf, t):
        return self.inner.denoise(buf, t)

    def info(self):
        return self.inner.info()


@pytest.fixture()
def torch_backend(tiny_checkpoint):
    return TorchBackend.from_checkpoint(tiny_checkpoint)


def test_not_ready_until_warmed_up(torch_backend):
    gate = threading.Event()
    with make_client(backend=Wrapped(torch_backend, lambda op, t: gate.wait(READY_WAIT_S))) as c:
        assert c.get("/healthz").status_code == 200
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "loading" and r.headers["retry-after"]
        err = assert_json_error(c.post("/decode", content=st_bytes(latents()), headers=AUTH), 503)
        assert err["code"] == "not_ready"
        gate.set()
        wait_ready(c)
        assert c.post("/decode", content=st_bytes(latents()), headers=AUTH).status_code == 200


POISON = 1234.5


def test_worker_exception_is_422_for_that_request_and_service_keeps_serving(torch_backend):
    def hook(op, t):
        if op == "decode" and (t == POISON).any():
            raise RuntimeError("simulated kernel failure")

    with make_client(backend=Wrapped(torch_backend, hook), warmup=False) as c:
        wait_ready(c)
        err = assert_json_error(c.post("/decode", content=st_bytes(torch.full((1, C, 2, 2), POISON)), headers=AUTH),
                                422, "simulated kernel failure")
        assert err["code"] == "unprocessable_input"
        assert c.post("/decode", content=st_bytes(latents()), headers=AUTH).status_code == 200


def test_deadline_gives_504(torch_backend):
    slow = Wrapped(torch_backend, lambda op, t: time.sleep(0.5) if op == "decode" else None)
    with make_client(backend=slow, request_timeout_s=0.1, warmup=False) as c:
        wait_ready(c)
        err = assert_json_error(c.post("/decode", content=st_bytes(latents()), headers=AUTH), 504)
        assert err["code"] == "deadline_exceeded"
        assert c.get("/healthz").status_code == 200


def test_no_api_keys_means_open_access(torch_backend):
    with make_client(backend=torch_backend, api_keys=(), warmup=False) as c:
        wait_ready(c)
        assert c.post("/decode", content=st_bytes(latents())).status_code == 200


# --- configuration -------------------------------------------------------------------------------
def test_settings_from_env_and_flags(monkeypatch, tiny_checkpoint):
    monkeypatch.setenv("DGAE_MAX_BATCH_SIZE", "3")
    monkeypatch.setenv("DGAE_API_KEYS", "a, b,")
    monkeypatch.setenv("DGAE_QUEUE_SIZE", "5")
    s = ServiceSettings()
    assert (s.max_batch_size, s.api_keys, s.queue_size) == (3, ("a", "b"), 5)
    assert "a" not in json.dumps(s.redacted()["api_keys"])
    from cli.main import build_parser  # noqa: PLC0415

    args = build_parser().parse_args(["serve", "--queue-size", "9", "--no-warmup", "--max-wait-ms", "2.5"])
    s = build_settings(args)
    assert (s.queue_size, s.warmup, s.max_wait_ms, s.max_batch_size) == (9, False, 2.5, 3)
    with pytest.raises(ConfigError, match="max_batch_size"):
        build_settings(build_parser().parse_args(["serve", "--max-batch-size", "0"]))


def test_bad_configuration_fails_fast(tmp_path, capsys):
    with pytest.raises(CheckpointError):
        create_app(ServiceSettings(checkpoint=str(tmp_path / "missing.safetensors")))
    assert dgae_main(["serve", "--checkpoint", str(tmp_path / "missing.safetensors")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="default_steps"):
        create_app(ServiceSettings(default_steps=9, max_steps=4), backend=ConfigOnly())


class ConfigOnly(Backend):
    """A backend that only carries a config (create_app validates step limits against it)."""

    def __init__(self):
        self.config = get_preset("tiny")

    def encoder_moments(self, images):
        raise NotImplementedError

    def denoise(self, buf, t):
        raise NotImplementedError

    def info(self):
        raise NotImplementedError


def test_cli_decode_of_a_service_encoding_restores_the_size_through_the_validated_path(
    client, tmp_path, tiny_checkpoint
):
    """/encode?fit=pad writes fit metadata; `dgae decode` restores the original size with the same
    validation as /decode, so metadata the service refuses is refused by the CLI too."""
    import json as _json

    from safetensors.torch import save as st_save

    enc = client.post("/encode?fit=pad", content=png(30, 21), headers={**AUTH, "Content-Type": "image/png"})
    assert enc.status_code == 200
    lat = tmp_path / "z.safetensors"
    lat.write_bytes(enc.content)
    out = tmp_path / "rec.png"
    assert (
        dgae_main(["decode", str(lat), "-o", str(out), "-c", str(tiny_checkpoint), "--steps", "1", "--seed", "4"]) == 0
    )
    cli_rgb = np.asarray(Image.open(out))
    assert cli_rgb.shape == (30, 21, 3)  # png(h, w): neither side a multiple of f
    served = client.post("/decode?steps=1&seed=4", content=enc.content, headers=AUTH)
    assert np.abs(np.asarray(Image.open(io.BytesIO(served.content))).astype(int) - cli_rgb).max() <= 1

    tensors = st_load(enc.content)
    meta = _json.loads(_st_metadata(enc.content)["dgae"])
    meta["images"][0]["orig_width"] = 10 ** 6  # a decompression bomb in the metadata
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(st_save(tensors, metadata={"dgae": _json.dumps(meta)}))
    assert client.post("/decode", content=bad.read_bytes(), headers=AUTH).status_code == 413
    assert dgae_main(["decode", str(bad), "-o", str(tmp_path / "bad.png"), "-c", str(tiny_checkpoint)]) == 2
    assert not (tmp_path / "bad.png").exists()


def _st_metadata(data: bytes) -> dict:
    header_len = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + header_len])["__metadata__"]
