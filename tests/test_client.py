"""dgae.client: request building, typed errors, retries (Retry-After, capped backoff, connection
errors) on a mock transport, and against a real server: encode/decode/info/ready, server error
codes, and a retry across a 503 while the decode queue is full."""
from __future__ import annotations

import asyncio
import io
import logging
import re
import subprocess
import sys
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from dgae.client import (AsyncClient, BadRequest, Client, ConnectionFailed, InvalidParameter, RequestTimeout,
                         ServerError, ServiceError, ServiceUnavailable, Unauthorized, error_from_response)
from dgae.errors import InputError
from dgae.latents_io import dump_npy, safetensors_metadata
from service_cases import AUTH, API_KEY, C, F, latents, png, serve, st_bytes

RETRY_AFTER_S = 1           # what the mock and the slow server send
FAST_BACKOFF_S = 0.01
SLOW_STEPS = 64             # keeps the single-slot slow server busy
SLOW_SIDE = 8               # latent side of the slow decodes (64x64 images)
POLL_S = 0.05
HTTP_TIMEOUT_S = 120.0
REPO_ROOT = Path(__file__).resolve().parent.parent


def npy_response(array: np.ndarray, **headers) -> httpx.Response:
    return httpx.Response(200, content=dump_npy(array), headers={"Content-Type": "application/x-npy", **headers})


def native_error(status: int, code: str, message: str, **headers) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message}}, headers=headers)


class Script:
    """A mock transport handler answering from a list (the last answer repeats), recording requests."""

    def __init__(self, *answers):
        self.answers, self.requests, self.times, self.bodies = list(answers), [], [], []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.times.append(time.monotonic())
        self.bodies.append(request.read())
        answer = self.answers[min(len(self.requests) - 1, len(self.answers) - 1)]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.times, self.times[1:])]


def client_for(script: Script, **kw) -> Client:
    return Client("http://dgae.test", transport=httpx.MockTransport(script), **kw)


# --- request building ----------------------------------------------------------------------------------
def test_encode_one_image_is_a_raw_body_with_the_parameters(tmp_path):
    z = np.zeros((1, C, 2, 2), np.float32)
    script = Script(npy_response(z))
    path = tmp_path / "photo.png"
    path.write_bytes(png(16, 16))
    with client_for(script, api_key="k") as c:
        out = c.encode(path, mode="sample", seeds=[3], fit="crop", dtype="float16")
    assert np.array_equal(out, z)
    req = script.requests[0]
    assert req.url.path == "/encode" and req.headers["authorization"] == "Bearer k"
    assert dict(req.url.params) == {"mode": "sample", "fit": "crop", "dtype": "float16", "format": "safetensors",
                                    "seed": "3"}
    assert req.headers["content-type"] == "application/octet-stream" and script.bodies[0] == path.read_bytes()


def test_encode_several_images_of_every_kind_is_one_multipart_request(tmp_path):
    script = Script(npy_response(np.zeros((5, C, 2, 2), np.float32)))
    path = tmp_path / "a.png"
    path.write_bytes(png(16, 16))
    rgb = np.zeros((16, 16, 3), np.uint8)
    images = [path, png(16, 16, seed=1), rgb, Image.fromarray(rgb), torch.zeros(1, 3, 16, 16)]
    with client_for(script) as c:
        out = c.encode(images, return_tensors="pt")
    assert isinstance(out, torch.Tensor) and out.shape == (5, C, 2, 2)
    req = script.requests[0]
    assert req.headers["content-type"].startswith("multipart/form-data")
    assert script.bodies[0].count(b'name="image"') == len(images) and b'filename="a.png"' in script.bodies[0]


def test_decode_sends_npy_and_reads_arrays_or_image_files():
    z = np.random.default_rng(0).standard_normal((2, C, 2, 2)).astype(np.float32)
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr("0000.png", b"first")
        zf.writestr("0001.png", b"second")
    script = Script(npy_response(np.zeros((2, 16, 16, 3), np.uint8)),
                    httpx.Response(200, content=zipped.getvalue(), headers={"Content-Type": "application/zip"}))
    with client_for(script) as c:
        images = c.decode(torch.from_numpy(z), steps=3, seeds=7)
        files = c.decode(z, seeds=[1, 2], image_format="png")
    assert images.shape == (2, 16, 16, 3) and images.dtype == np.uint8
    assert files == [b"first", b"second"]
    first, second = script.requests
    assert dict(first.url.params) == {"format": "npy", "steps": "3", "seed": "7"}
    assert dict(second.url.params) == {"format": "png", "seed": "1,2"}
    assert first.headers["content-type"] == "application/x-npy"
    assert np.array_equal(np.load(io.BytesIO(script.bodies[0])), z)


PHOTO_W, PHOTO_H = 451, 300                        # not multiples of F: fit=pad encodes 456x304
PADDED_W, PADDED_H = -(-PHOTO_W // F) * F, -(-PHOTO_H // F) * F


def encode_answer(n: int = 1) -> httpx.Response:
    """What the service answers to /encode?format=safetensors for n 451x300 photos (fit=pad)."""
    info = {"orig_height": PHOTO_H, "orig_width": PHOTO_W, "height": PADDED_H, "width": PADDED_W, "fit": "pad",
            "pad_bottom": PADDED_H - PHOTO_H, "pad_right": PADDED_W - PHOTO_W, "crop_top": 0, "crop_left": 0}
    meta = {"model": "tiny", "f": F, "c": C, "mode": "mean", "seeds": None,
            "images": [{"name": f"p{i}.png", **info} for i in range(n)]}
    body = st_bytes(latents(n, PADDED_H // F, PADDED_W // F), meta)
    return httpx.Response(200, content=body, headers={"Content-Type": "application/x-safetensors"})


def test_numpy_latents_keep_the_original_size_through_decode():
    """Issue 27: a 451x300 photo came back 456x304 from numpy latents. encode's metadata now rides on
    the returned array (also z[i], and torch tensors) and decode restores 451x300."""
    full = np.zeros((2, PADDED_H, PADDED_W, 3), np.uint8)
    script = Script(encode_answer(2), npy_response(full), npy_response(full[:1]), encode_answer(1),
                    npy_response(full[:1]), npy_response(full))
    with client_for(script) as c:
        z = c.encode([png(PHOTO_H, PHOTO_W), png(PHOTO_H, PHOTO_W, seed=1)])
        assert z.shape == (2, C, PADDED_H // F, PADDED_W // F) and z.metadata["images"][1]["name"] == "p1.png"
        assert c.decode(z).shape == (2, PHOTO_H, PHOTO_W, 3)
        assert c.decode(z[1]).shape == (1, PHOTO_H, PHOTO_W, 3)         # one item keeps its own record
        zt = c.encode(png(PHOTO_H, PHOTO_W), return_tensors="pt")
        images = c.decode(zt, return_tensors="pt")
        assert isinstance(images, torch.Tensor) and tuple(images.shape) == (1, PHOTO_H, PHOTO_W, 3)
        assert c.decode(np.asarray(z)).shape == (2, PADDED_H, PADDED_W, 3)  # a plain array: no record, full size
    sent = safetensors_metadata(script.bodies[1])  # safetensors carrying the records back
    assert [im["orig_width"] for im in sent["images"]] == [PHOTO_W, PHOTO_W]
    assert script.bodies[5].startswith(b"\x93NUMPY")


@pytest.mark.parametrize("call", [
    lambda c: c.encode([]), lambda c: c.encode("/no/such/file.png"), lambda c: c.encode(np.zeros((4, 4, 3))),
    lambda c: c.encode(torch.zeros(4, 4, dtype=torch.uint8)), lambda c: c.encode(42),
    lambda c: c.decode(object()), lambda c: c.decode(np.zeros((1, C, 2, 2)), image_format="gif"),
    lambda c: c.decode(np.zeros((1, C, 2, 2)), seeds=[True]), lambda c: c.encode(png(), return_tensors="tf"),
], ids=["no images", "missing file", "float numpy", "uint8 torch", "int", "object latents", "gif", "bool seed",
        "tensor type"])
def test_bad_arguments_raise_input_error_before_any_request(call):
    script = Script(httpx.Response(200))
    with client_for(script) as c, pytest.raises(InputError):
        call(c)
    assert script.requests == []


# --- typed errors ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("response, cls, code, message", [
    (native_error(422, "invalid_parameter", "steps: too large"), InvalidParameter, "invalid_parameter",
     "steps: too large"),
    (native_error(400, "invalid_input", "holiday.png: cannot decode"), BadRequest, "invalid_input", "holiday.png"),
    (native_error(401, "unauthorized", "missing key"), Unauthorized, "unauthorized", "missing key"),
    (httpx.Response(400, json={"error": "unknown model 'x'"}), BadRequest, "http_400", "unknown model"),
    (httpx.Response(502, text="<html>Bad Gateway</html>"), ServerError, "http_502", "Bad Gateway"),
    (httpx.Response(418, text=""), ServiceError, "http_418", "I'm a teapot"),
])
def test_errors_carry_status_code_and_message(response, cls, code, message):
    err = error_from_response(response)
    assert type(err) is cls and err.status == response.status_code and err.code == code and message in err.message
    assert code in str(err)


def test_client_raises_the_typed_error_without_retrying_4xx():
    script = Script(native_error(422, "invalid_parameter", "steps: must be >= 1"))
    with client_for(script) as c, pytest.raises(InvalidParameter) as err:
        c.decode(np.zeros((1, C, 2, 2), np.float32), steps=0)
    assert err.value.code == "invalid_parameter" and len(script.requests) == 1


# --- retries ---------------------------------------------------------------------------------------------
def test_503_waits_retry_after_then_succeeds(caplog):
    z = np.zeros((1, C, 2, 2), np.float32)
    script = Script(native_error(503, "queue_full", "decode queue is full", **{"Retry-After": str(RETRY_AFTER_S)}),
                    npy_response(z))
    with caplog.at_level(logging.WARNING, "dgae.client"), client_for(script, backoff_s=FAST_BACKOFF_S) as c:
        c.decode(z, seeds=1)
    assert len(script.requests) == 2 and script.gaps()[0] >= RETRY_AFTER_S
    assert script.bodies[0] == script.bodies[1]
    assert any("queue_full" in r.getMessage() and "Retry-After 1" in r.getMessage() for r in caplog.records)


def test_retry_after_is_capped_and_retries_are_bounded():
    script = Script(native_error(503, "queue_full", "full", **{"Retry-After": "3600"}))
    started = time.monotonic()
    with client_for(script, retries=2, max_backoff_s=FAST_BACKOFF_S) as c, pytest.raises(ServiceUnavailable) as err:
        c.info()
    assert time.monotonic() - started < RETRY_AFTER_S
    assert len(script.requests) == 3
    assert err.value.code == "queue_full" and err.value.status == 503 and err.value.retry_after_s == 3600


def test_backoff_without_retry_after_is_exponential():
    script = Script(httpx.Response(503, json={"error": "busy"}))
    with client_for(script, retries=3, backoff_s=0.05) as c, pytest.raises(ServiceUnavailable):
        c.info()
    gaps = script.gaps()
    assert len(gaps) == 3 and gaps[0] >= 0.05 and gaps[1] >= 0.1 and gaps[2] >= 0.2


def test_connection_errors_are_retried_and_bodies_resent_from_disk(tmp_path):
    path = tmp_path / "z.npy"
    path.write_bytes(dump_npy(np.zeros((1, C, 2, 2), np.float32)))
    refused = httpx.ConnectError("connection refused")
    script = Script(refused, httpx.RemoteProtocolError("server disconnected"),
                    npy_response(np.zeros((1, 16, 16, 3), np.uint8)))
    with client_for(script, backoff_s=FAST_BACKOFF_S) as c:
        assert c.decode(path).shape == (1, 16, 16, 3)
    assert len(script.requests) == 3 and set(script.bodies) == {path.read_bytes()}
    with client_for(Script(refused), retries=1, backoff_s=FAST_BACKOFF_S) as c, pytest.raises(ConnectionFailed):
        c.info()


def test_read_timeouts_are_not_retried():
    script = Script(httpx.ReadTimeout("slow"))
    with client_for(script) as c, pytest.raises(RequestTimeout):
        c.decode(np.zeros((1, C, 2, 2), np.float32))
    assert len(script.requests) == 1


def test_ready_is_false_on_503_and_unreachable_without_retrying():
    script = Script(httpx.Response(503, json={"status": "loading"}, headers={"Retry-After": "1"}))
    with client_for(script) as c:
        assert c.ready() is False
    assert len(script.requests) == 1
    with client_for(Script(httpx.ConnectError("refused"))) as c:
        assert c.ready() is False


def test_async_client_retries_like_the_sync_one(tmp_path):
    z = np.zeros((1, C, 2, 2), np.float32)
    path = tmp_path / "z.npy"
    path.write_bytes(dump_npy(z))
    script = Script(native_error(503, "queue_full", "full", **{"Retry-After": str(RETRY_AFTER_S)}),
                    httpx.ConnectError("refused"), npy_response(z))

    async def go():
        async with AsyncClient("http://dgae.test", transport=httpx.MockTransport(script),
                               backoff_s=FAST_BACKOFF_S) as c:
            return await c.decode(path, seeds=2)

    assert np.array_equal(asyncio.run(go()), z)
    assert len(script.requests) == 3 and script.gaps()[0] >= RETRY_AFTER_S
    assert set(script.bodies) == {path.read_bytes()}  # streamed from disk again on every attempt


def test_the_client_does_not_import_the_service():
    code = "import sys, dgae.client; sys.exit(any(m == 'service' or m.startswith('service.') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT).returncode == 0


# --- against a real server ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def slow_server(tiny_checkpoint, tmp_path_factory):
    """One decode computes, one waits, the rest are refused with 503 queue_full (Retry-After 1)."""
    flags = ["--api-keys", API_KEY, "--max-batch-size", "1", "--queue-size", "1", "--max-wait-ms", "0",
             "--torch-threads", "1", "--default-steps", "1", "--retry-after-s", str(RETRY_AFTER_S)]
    with serve(tiny_checkpoint, tmp_path_factory.mktemp("client"), *flags) as s:
        yield s


def metric(url: str, name: str, labels: str) -> float:
    m = re.search(rf'^{name}\{{{labels}\}} (\S+)$', httpx.get(url + "/metrics").text, re.M)
    return float(m.group(1)) if m else 0.0


@pytest.mark.server
def test_real_server_encode_decode_info_ready_and_error_codes(slow_server, tmp_path):
    photo = tmp_path / "photo.png"
    photo.write_bytes(png(40, 48, seed=2))
    with Client(slow_server.url, api_key=API_KEY) as c:
        assert c.ready()
        c.wait_ready()
        info = c.info()
        assert info["preset"] == "tiny" and info["latent_channels"] == C
        z = c.encode([photo, photo])  # fit=pad: 48x40 -> latents 6x5
        assert z.shape == (2, C, 5, 6) and z.dtype == np.float32
        images = c.decode(z, seeds=5)
        assert images.shape == (2, 5 * F, 6 * F, 3)
        pngs = c.decode(st_bytes(torch.from_numpy(z[:1])), seeds=5, image_format="png")
        assert len(pngs) == 1 and Image.open(io.BytesIO(pngs[0])).size == (6 * F, 5 * F)
        with pytest.raises(InvalidParameter) as err:
            c.decode(z, steps=0)
        assert err.value.code == "invalid_parameter" and err.value.status == 422
        with pytest.raises(BadRequest) as err:
            c.encode(b"not an image")
        assert err.value.code == "invalid_input" and "cannot decode" in err.value.message
    with Client(slow_server.url) as c, pytest.raises(Unauthorized) as err:
        c.info()
    assert err.value.code == "unauthorized"

    async def go():
        async with AsyncClient(slow_server.url, api_key=API_KEY) as c:
            return await c.encode(photo), await c.ready()

    z1, ready = asyncio.run(go())
    assert ready and np.allclose(z1, z[:1], atol=1e-5)


@pytest.mark.server
def test_real_server_round_trips_a_451x300_photo_at_its_size(slow_server):
    """Issue 27 against the service: numpy latents from encode decode to 451x300 (arrays and PNG)."""
    with Client(slow_server.url, api_key=API_KEY) as c:
        z = c.encode(png(PHOTO_H, PHOTO_W, seed=3))
        assert z.shape == (1, C, PADDED_H // F, PADDED_W // F)
        assert c.decode(z, seeds=1).shape == (1, PHOTO_H, PHOTO_W, 3)
        [file] = c.decode(z, seeds=1, image_format="png")
        assert Image.open(io.BytesIO(file)).size == (PHOTO_W, PHOTO_H)


@pytest.mark.server
def test_client_waits_retry_after_across_a_full_queue_and_succeeds(slow_server, caplog):
    """Must show 3: with one decode computing and one queued, the next request is refused 503
    queue_full; Client names that code (retries=0), and with retries waits Retry-After and succeeds."""
    import tritonclient.http as httpclient  # noqa: PLC0415 - the v2 form of the same refusal
    from tritonclient.utils import InferenceServerException  # noqa: PLC0415

    busy = st_bytes(latents(1, SLOW_SIDE, SLOW_SIDE))
    z = latents(1, 2, 2).numpy()
    rejected = 'operation="decode"'
    before = metric(slow_server.url, "dgae_queue_rejections_total", rejected)
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(httpx.post, f"{slow_server.url}/decode?steps={SLOW_STEPS}&seed={i}", content=busy,
                               headers=AUTH, timeout=HTTP_TIMEOUT_S) for i in range(2)]
        while metric(slow_server.url, "dgae_pending_requests", rejected) < len(futures):  # one computing, one queued
            assert not any(f.done() for f in futures), [f.result().text for f in futures if f.done()]
            time.sleep(POLL_S)
        with Client(slow_server.url, api_key=API_KEY, retries=0) as c, pytest.raises(ServiceUnavailable) as err:
            c.decode(z, seeds=3)
        assert err.value.code == "queue_full" and err.value.status == 503
        assert err.value.retry_after_s == RETRY_AFTER_S and "queue is full" in err.value.message
        with pytest.raises(InferenceServerException) as v2_err:
            inp = httpclient.InferInput("latents", list(z.shape), "FP32")
            inp.set_data_from_numpy(z)
            httpclient.InferenceServerClient(slow_server.url.removeprefix("http://")).infer(
                "dgae-decoder", [inp], headers=dict(AUTH))
        assert v2_err.value.status() == "503" and "queue is full" in v2_err.value.message()
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, "dgae.client"), \
                Client(slow_server.url, api_key=API_KEY, retries=60, max_backoff_s=2 * RETRY_AFTER_S) as c:
            images = c.decode(z, seeds=3)
        waited = time.monotonic() - started
        assert all(f.result().status_code == 200 for f in futures)
    assert images.shape == (1, 2 * F, 2 * F, 3)
    retries = [r.getMessage() for r in caplog.records if "queue_full" in r.getMessage()]
    assert retries and all(f"Retry-After {RETRY_AFTER_S}" in m for m in retries), retries
    assert waited >= RETRY_AFTER_S * len(retries)
    assert metric(slow_server.url, "dgae_queue_rejections_total", rejected) >= before + 2 + len(retries)
    with Client(slow_server.url, api_key=API_KEY) as c:  # the same latents and seed alone: the same image
        assert np.abs(c.decode(z, seeds=3).astype(int) - images.astype(int)).max() <= 1
    print(f"\nretry across 503: {len(retries)} refusal(s) with Retry-After {RETRY_AFTER_S}, succeeded after "
          f"{waited:.2f} s")
