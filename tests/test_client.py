"""dgae_client on a mock transport: request building, typed errors, retries (Retry-After, capped
backoff, connection errors). This module imports no torch and nothing of the project but the client:
tests/test_client_server.py also runs it with torch hidden. Torch tensors in and out, and a real
served model, are in tests/test_client_server.py."""
from __future__ import annotations

import asyncio
import io
import json
import logging
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import save as st_save

from dgae_client import (ArgumentError, AsyncClient, BadRequest, Client, ConnectionFailed, InvalidParameter, Latents,
                         RequestTimeout, ServerError, ServiceError, ServiceUnavailable, Unauthorized,
                         error_from_response)
from tests import layers

C = 4                       # latent channels in the mocks (the mock transport checks no shapes)
F = 8                       # the mocked model's downsampling factor
PHOTO_W, PHOTO_H = 451, 300                        # not multiples of F: fit=pad encodes 456x304
PADDED_W, PADDED_H = -(-PHOTO_W // F) * F, -(-PHOTO_H // F) * F
SAFETENSORS_HEADER_LEN = 8  # bytes of the little-endian header length
RETRY_AFTER_S = 1           # what the mock sends
FAST_BACKOFF_S = 0.01
REPO_ROOT = Path(__file__).resolve().parent.parent
# what importing the client must not load: every other project package, and torch
FORBIDDEN_MODULES = tuple(sorted(set(layers.LEVEL) - {"dgae_client"} | {"torch"}))


def dump_npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def png(h: int = 32, w: int = 32, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def npy_response(array: np.ndarray, **headers) -> httpx.Response:
    return httpx.Response(200, content=dump_npy(array), headers={"Content-Type": "application/x-npy", **headers})


def encode_answer(n: int = 1, fit: str = "pad", width: int = PHOTO_W) -> httpx.Response:
    """What the service answers to /encode?format=safetensors for n photos width x 300 (fit=pad, or
    resize to the padded size)."""
    info = {"orig_height": PHOTO_H, "orig_width": width, "height": PADDED_H, "width": PADDED_W, "fit": fit,
            "pad_bottom": PADDED_H - PHOTO_H if fit == "pad" else 0,
            "pad_right": PADDED_W - width if fit == "pad" else 0, "crop_top": 0, "crop_left": 0}
    meta = {"model": "tiny", "f": F, "c": C, "mode": "mean", "seeds": None,
            "images": [{"name": f"p{i}.png", **info} for i in range(n)]}
    z = np.random.default_rng(n).standard_normal((n, C, PADDED_H // F, PADDED_W // F)).astype(np.float32)
    body = st_save({"latents": z}, metadata={"dgae": json.dumps(meta)})
    return httpx.Response(200, content=body, headers={"Content-Type": "application/x-safetensors"})


def sent_metadata(body: bytes) -> dict:
    """The dgae metadata of a safetensors request body."""
    header_len = int.from_bytes(body[:SAFETENSORS_HEADER_LEN], "little")
    header = json.loads(body[SAFETENSORS_HEADER_LEN:SAFETENSORS_HEADER_LEN + header_len])
    return json.loads(header["__metadata__"]["dgae"])


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
    script = Script(npy_response(np.zeros((6, C, 2, 2), np.float32)))
    path = tmp_path / "a.png"
    path.write_bytes(png(16, 16))
    rgb = np.zeros((16, 16, 3), np.uint8)
    images = [path, png(16, 16, seed=1), rgb, Image.fromarray(rgb), np.stack([rgb, rgb])]
    with client_for(script) as c:
        out = c.encode(images)
    assert isinstance(out, np.ndarray) and out.shape == (6, C, 2, 2)
    req = script.requests[0]
    assert req.headers["content-type"].startswith("multipart/form-data")
    assert script.bodies[0].count(b'name="image"') == 6 and b'filename="a.png"' in script.bodies[0]
    assert b'filename="image5.png"' in script.bodies[0]  # the (N, H, W, 3) batch went as two PNGs


def test_decode_sends_npy_and_reads_arrays_or_image_files():
    z = np.random.default_rng(0).standard_normal((2, C, 2, 2)).astype(np.float32)
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr("0000.png", b"first")
        zf.writestr("0001.png", b"second")
    script = Script(npy_response(np.zeros((2, 16, 16, 3), np.uint8)),
                    httpx.Response(200, content=zipped.getvalue(), headers={"Content-Type": "application/zip"}))
    with client_for(script) as c:
        images = c.decode(z.astype(np.float64), steps=3, seeds=7)  # sent as float32
        files = c.decode(z, seeds=[1, 2], image_format="png")
    assert images.shape == (2, 16, 16, 3) and images.dtype == np.uint8
    assert files == [b"first", b"second"]
    first, second = script.requests
    assert dict(first.url.params) == {"format": "npy", "steps": "3", "seed": "7"}
    assert dict(second.url.params) == {"format": "png", "seed": "1,2"}
    assert first.headers["content-type"] == "application/x-npy"
    sent = np.load(io.BytesIO(script.bodies[0]))
    assert sent.dtype == np.float32 and np.array_equal(sent, z)


def test_numpy_latents_keep_the_original_size_through_decode():
    """Issue 27: a 451x300 photo came back 456x304 from numpy latents. encode's metadata now rides on
    the returned array (also z[i] and z[a:b]) and decode sends it back and restores 451x300."""
    full = np.zeros((2, PADDED_H, PADDED_W, 3), np.uint8)
    script = Script(encode_answer(2), npy_response(full), npy_response(full[:1]), npy_response(full),
                    httpx.Response(200, content=b"png", headers={"Content-Type": "image/png"}))
    with client_for(script) as c:
        z = c.encode([png(PHOTO_H, PHOTO_W), png(PHOTO_H, PHOTO_W, seed=1)])
        assert z.shape == (2, C, PADDED_H // F, PADDED_W // F) and z.metadata["images"][1]["name"] == "p1.png"
        z[0, 0, 0, 0] = 1.0  # a writable array
        assert c.decode(z).shape == (2, PHOTO_H, PHOTO_W, 3)
        assert c.decode(z[1]).shape == (1, PHOTO_H, PHOTO_W, 3)             # one item keeps its own record
        assert c.decode(np.asarray(z) * 1).shape == (2, PADDED_H, PADDED_W, 3)  # derived: no record, full size
        assert c.decode(z[1:], image_format="png") == [b"png"]
    assert [im["orig_width"] for im in sent_metadata(script.bodies[1])["images"]] == [PHOTO_W, PHOTO_W]
    assert [im["name"] for im in sent_metadata(script.bodies[2])["images"]] == ["p1.png"]
    assert [im["name"] for im in sent_metadata(script.bodies[4])["images"]] == ["p1.png"]
    assert script.bodies[3].startswith(b"\x93NUMPY")
    assert dict(script.requests[4].url.params) == {"format": "png"}  # the server crops image files itself


def test_resized_latents_of_different_sizes_decode_to_a_list_at_their_sizes():
    """fit=resize records: arrays are resized back here (bicubic), one per image when sizes differ."""
    narrow = encode_answer(1, fit="resize", width=PHOTO_W - F)
    wide = encode_answer(1, fit="resize")
    full = np.zeros((1, PADDED_H, PADDED_W, 3), np.uint8)
    script = Script(narrow, wide, npy_response(np.concatenate([full, full])))
    with client_for(script) as c:
        a, b = c.encode(png(PHOTO_H, PHOTO_W - F)), c.encode(png(PHOTO_H, PHOTO_W))
        both = np.concatenate([a, b]).view(Latents)
        both.metadata = {"images": a.metadata["images"] + b.metadata["images"]}
        images = c.decode(both)
    assert isinstance(images, list) and [x.shape for x in images] == [(PHOTO_H, PHOTO_W - F, 3), (PHOTO_H, PHOTO_W, 3)]


def test_latents_whose_records_do_not_match_are_refused_before_any_request():
    script = Script(encode_answer(2))
    with client_for(script) as c:
        z = c.encode([png(PHOTO_H, PHOTO_W), png(PHOTO_H, PHOTO_W, seed=1)])
        z.metadata = {"images": z.metadata["images"][:1]}
        with pytest.raises(ArgumentError, match="one record per latent"):
            c.decode(z)
    assert len(script.requests) == 1


@pytest.mark.parametrize("call", [
    lambda c: c.encode([]), lambda c: c.encode("/no/such/file.png"), lambda c: c.encode(np.zeros((4, 4, 3))),
    lambda c: c.encode(np.zeros((4, 4, 4), np.uint8)), lambda c: c.encode(42),
    lambda c: c.decode(object()), lambda c: c.decode(np.zeros((1, C, 2, 2)), image_format="gif"),
    lambda c: c.decode(np.zeros((1, C, 2, 2)), seeds=[True]), lambda c: c.encode(png(), return_tensors="tf"),
], ids=["no images", "missing file", "float numpy", "4 channels", "int", "object latents", "gif", "bool seed",
        "tensor type"])
def test_bad_arguments_raise_argument_error_before_any_request(call):
    script = Script(httpx.Response(200))
    with client_for(script) as c, pytest.raises(ArgumentError):
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
    with caplog.at_level(logging.WARNING, "dgae_client"), client_for(script, backoff_s=FAST_BACKOFF_S) as c:
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


def test_the_client_imports_nothing_of_the_project_nor_torch():
    code = (
        f"import sys, dgae_client; print(sorted({{m.split('.')[0] for m in sys.modules}} & set({FORBIDDEN_MODULES!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_bad_settings_are_argument_errors():
    for kw in ({"timeout_s": 0}, {"connect_timeout_s": -1}, {"retries": -1}, {"backoff_s": -0.5}):
        with pytest.raises(ArgumentError):
            Client("http://dgae.test", **kw)
