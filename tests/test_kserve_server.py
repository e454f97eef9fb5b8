"""The Open Inference Protocol against a real `dgae serve` process with the real `tritonclient`
(sync and aio): encode -> decode round trip with binary tensors equal to /decode with the same
seed, JSON-only requests, INT64 seeds and FP16, client-side errors as InferenceServerException,
and the malformed-request catalogue (every one 4xx, then a valid request still served)."""
from __future__ import annotations

import asyncio
import re

import httpx
import numpy as np
import pytest

from benchmarks.inputs import photo_arrays
from formats.images import encode_image
from formats.latents import dump_npy
from kserve_cases import DECODER, ENCODER, malformed_v2_requests, send_v2
from service_cases import AUTH, C, F, Limits, level_diff, native, serve

httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is a dev dependency")
from tritonclient.utils import InferenceServerException  # noqa: E402

pytestmark = pytest.mark.server

LIMITS = Limits()
PHOTO_SIDE = 64
STEPS = 2
SEED = 1234
MAX_LEVEL_DIFF = 1  # 8-bit levels, v2 vs /decode (float reassociation between batch compositions only)
LATENT_ATOL = 1e-5
HTTP_TIMEOUT_S = 120.0


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory):
    flags = ["--api-keys", AUTH["Authorization"].split()[1], "--max-wait-ms", "20", "--torch-threads", "1",
             "--default-steps", "1", *LIMITS.flags()]
    with serve(tiny_checkpoint, tmp_path_factory.mktemp("kserve"), *flags) as s:
        yield s


def triton(server) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(url=server.url.removeprefix("http://"),
                                            connection_timeout=HTTP_TIMEOUT_S, network_timeout=HTTP_TIMEOUT_S)


def auth() -> dict[str, str]:
    return dict(AUTH)  # tritonclient adds its own headers to the dict it is given: a fresh one per call


def tensor(name: str, array: np.ndarray, datatype: str, binary: bool = True):
    t = httpclient.InferInput(name, list(array.shape), datatype)
    t.set_data_from_numpy(array, binary_data=binary)
    return t


def photo() -> np.ndarray:
    arrays, _ = photo_arrays(1, PHOTO_SIDE)  # a scikit-image sample photo, centre-cropped and resized
    return np.stack(arrays)                  # uint8 [1, H, W, 3]


def test_health_and_metadata_through_tritonclient(server):
    c = triton(server)
    assert c.is_server_live() and c.is_server_ready()
    assert c.is_model_ready(ENCODER) and c.is_model_ready(DECODER)
    meta = c.get_server_metadata()
    assert meta["name"] == "dgae-serve" and "binary_tensor_data" in meta["extensions"]
    enc = c.get_model_metadata(ENCODER, headers=auth())
    assert {k: enc["inputs"][0][k] for k in ("name", "datatype", "shape")} == {
        "name": "images", "datatype": "UINT8", "shape": [-1, -1, -1, 3]}
    assert [a["datatype"] for a in enc["inputs"][0]["accepted"]] == ["UINT8", "FP32"]  # FP32 is accepted too
    dec = c.get_model_metadata(DECODER, model_version="1", headers=auth())
    assert [t["name"] for t in dec["inputs"]] == ["latents", "seeds"] and dec["outputs"][0]["datatype"] == "UINT8"
    with pytest.raises(InferenceServerException) as err:
        c.get_model_metadata("resnet50", headers=auth())
    assert err.value.status() == "400" and "unknown model" in err.value.message()


def test_photo_roundtrip_with_binary_tensors_equals_native_decode(server):
    """Must show 1: encode a photo on dgae-encoder, decode on dgae-decoder (binary both ways);
    the image equals /decode of the same latents and seed within one level."""
    c, rgb = triton(server), photo()
    enc = c.infer(ENCODER, [tensor("images", rgb, "UINT8")],
                  outputs=[httpclient.InferRequestedOutput("latents", binary_data=True)], headers=auth())
    latents = enc.as_numpy("latents")
    assert latents.shape == (1, C, PHOTO_SIDE // F, PHOTO_SIDE // F) and latents.dtype == np.float32
    assert enc.get_output("latents")["parameters"]["binary_data_size"] == latents.nbytes
    dec = c.infer(DECODER, [tensor("latents", latents, "FP32")], parameters={"seed": SEED, "steps": STEPS},
                  headers=auth())  # no outputs given: tritonclient asks for binary_data_output
    images = dec.as_numpy("images")
    assert dec.get_response()["parameters"] == {"steps": STEPS, "seeds": str(SEED)}
    assert "binary_data_size" in dec.get_output("images")["parameters"]
    reference = native(server, f"/decode?seed={SEED}&steps={STEPS}&format=npy", content=dump_npy(latents))
    assert level_diff(images, reference) <= MAX_LEVEL_DIFF
    encoded = native(server, "/encode?format=npy", content=encode_image(rgb[0]), headers={"Content-Type": "image/png"})
    np.testing.assert_allclose(latents, encoded, atol=LATENT_ATOL)


def test_json_only_requests_match_binary_ones(server):
    c = triton(server)
    rgb = photo()[:, :F, :F]  # small enough for JSON under the test limits
    enc_json = c.infer(ENCODER, [tensor("images", np.ascontiguousarray(rgb), "UINT8", binary=False)],
                       outputs=[httpclient.InferRequestedOutput("latents", binary_data=False)], headers=auth())
    assert "data" in enc_json.get_output("latents")
    enc_bin = c.infer(ENCODER, [tensor("images", np.ascontiguousarray(rgb), "UINT8")], headers=auth())
    np.testing.assert_allclose(enc_json.as_numpy("latents"), enc_bin.as_numpy("latents"), atol=LATENT_ATOL)
    z = enc_json.as_numpy("latents")
    out = [httpclient.InferRequestedOutput("images", binary_data=False)]
    dec_json = c.infer(DECODER, [tensor("latents", z, "FP32", binary=False)], outputs=out,
                       parameters={"seed": SEED}, headers=auth())
    dec_bin = c.infer(DECODER, [tensor("latents", z, "FP32")], parameters={"seed": SEED}, headers=auth())
    assert level_diff(dec_json.as_numpy("images"), dec_bin.as_numpy("images")) <= MAX_LEVEL_DIFF


def test_int64_seeds_input_fp16_latents_and_gzip_bodies(server):
    c = triton(server)
    rgb = photo()
    z16 = c.infer(ENCODER, [tensor("images", rgb, "UINT8")], parameters={"dtype": "FP16"},
                  headers=auth()).as_numpy("latents")
    assert z16.dtype == np.float16
    z = np.concatenate([z16, z16]).astype(np.float32)
    by_input = c.infer(DECODER, [tensor("latents", z, "FP32"), tensor("seeds", np.array([7, 99], np.int64), "INT64")],
                       headers=auth(), request_compression_algorithm="gzip").as_numpy("images")
    by_param = c.infer(DECODER, [tensor("latents", z.astype(np.float16), "FP16")], parameters={"seed": "7,99"},
                       headers=auth(), request_compression_algorithm="deflate").as_numpy("images")
    assert level_diff(by_input, by_param) <= MAX_LEVEL_DIFF
    reference = native(server, "/decode?seed=99&format=npy", content=dump_npy(z[1:]))
    assert level_diff(by_input[1:], reference) <= MAX_LEVEL_DIFF


def test_aio_client_roundtrip(server):
    aio = pytest.importorskip("tritonclient.http.aio")
    rgb = photo()

    async def go():
        async with aio.InferenceServerClient(url=server.url.removeprefix("http://"),
                                             conn_timeout=HTTP_TIMEOUT_S) as c:
            assert await c.is_server_ready() and await c.is_model_ready(DECODER)
            images = aio.InferInput("images", list(rgb.shape), "UINT8")
            images.set_data_from_numpy(rgb)
            z = (await c.infer(ENCODER, [images], headers=auth())).as_numpy("latents")
            latents = aio.InferInput("latents", list(z.shape), "FP32")
            latents.set_data_from_numpy(z)
            out = await c.infer(DECODER, [latents], parameters={"seed": SEED, "steps": STEPS}, headers=auth())
            return z, out.as_numpy("images")

    z, images = asyncio.run(go())
    reference = native(server, f"/decode?seed={SEED}&steps={STEPS}&format=npy", content=dump_npy(z))
    assert level_diff(images, reference) <= MAX_LEVEL_DIFF


@pytest.mark.parametrize("model, inputs, needle", [
    (DECODER, lambda: [tensor("latents", np.zeros((1, C, 2, 2), np.int32), "INT32")], "datatype INT32"),
    (DECODER, lambda: [tensor("latents", np.zeros((1, 2, 2, C), np.float32), "FP32")], "shape"),
    (DECODER, lambda: [tensor("seeds", np.zeros(1, np.int64), "INT64")], "needs input 'latents'"),
    ("dgae-vae", lambda: [tensor("latents", np.zeros((1, C, 2, 2), np.float32), "FP32")], "unknown model"),
    (ENCODER, lambda: [tensor("images", np.zeros((1, F + 1, F + 1, 3), np.uint8), "UINT8")], "multiple"),
], ids=["wrong datatype", "wrong shape", "missing input", "unknown model", "size not a multiple of f"])
def test_bad_requests_reach_tritonclient_as_400(server, model, inputs, needle):
    with pytest.raises(InferenceServerException) as err:
        triton(server).infer(model, inputs(), headers=auth())
    assert err.value.status() == "400" and needle in err.value.message()


def test_malformed_requests_get_4xx_protocol_errors_and_a_valid_request_is_served_after(server):
    """Must show 2: every malformed v2 request gets its 4xx (400 for bad requests) with
    {"error": "..."}, no 5xx anywhere, and the server then serves a valid request."""
    cases = malformed_v2_requests(LIMITS)
    with httpx.Client(base_url=server.url, timeout=HTTP_TIMEOUT_S) as c:
        answers = {bad.name: send_v2(c, bad) for bad in cases}
    statuses = {name: r.status_code for name, r in answers.items()}
    assert statuses == {bad.name: bad.status for bad in cases}
    assert all(set(r.json()) == {"error"} and isinstance(r.json()["error"], str) for r in answers.values())
    assert sum(s == 400 for s in statuses.values()) >= 40
    z = np.zeros((1, C, 2, 2), np.float32)
    images = triton(server).infer(DECODER, [tensor("latents", z, "FP32")], headers=auth()).as_numpy("images")
    assert images.shape == (1, 2 * F, 2 * F, 3)
    text = httpx.get(server.url + "/metrics").text
    # /readyz answers 503 while the model loads; nothing else may
    assert not re.search(r'^dgae_requests_total\{route="(?!/readyz)[^"]*",status="5\d\d"\}', text, re.M)
    assert server.proc.poll() is None
