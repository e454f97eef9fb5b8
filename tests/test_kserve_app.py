"""In-process (ASGI) tests of the Open Inference Protocol routes on the tiny checkpoint: metadata,
health, JSON and binary tensors, parity with /encode and /decode, seeds, FP16, gzip bodies, the
malformed-request catalogue, limits, auth and the protocol's error form."""
from __future__ import annotations

import gzip
import io
import json
import threading
import time

import numpy as np
import pytest

from backends.torch_backend import TorchBackend
from formats.images import encode_image, to_tensor
from formats.latents import dump_npy
from kserve_cases import (DECODER, ENCODER, HEADER_LENGTH, assert_v2_error, binary_request, image_u8, infer_path,
                          json_tensor, latents_f32, malformed_v2_requests, read_binary_response, send_v2)
from service.v2.tensors import DATATYPES, datatype_of
from service_cases import AUTH, C, F, Limits
from test_service_app import POISON, READY_WAIT_S, STEPS, make_client, wait_ready

LIMITS = Limits()
CASES = malformed_v2_requests(LIMITS)
SLOW_BATCH_S = 0.5
JSON_SIDE = F  # JSON tensors stay under the small max_json_values: 8x8 images, 1x1 latents
LATENT_ATOL = 1e-5  # same backend call alone vs another batch composition (float reassociation)



@pytest.fixture(scope="module")
def client(tiny_checkpoint):
    with make_client(checkpoint=str(tiny_checkpoint)) as c:
        wait_ready(c)
        yield c


def infer_json(client, model: str, doc: dict) -> dict:
    r = client.post(infer_path(model), json=doc, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json") and HEADER_LENGTH.lower() not in r.headers
    return r.json()


def infer_binary(client, model: str, inputs, parameters=None, outputs=None) -> tuple[dict, dict[str, np.ndarray]]:
    body, headers = binary_request(inputs, parameters, outputs)
    r = client.post(infer_path(model), content=body, headers={**AUTH, **headers})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    return read_binary_response(r.content, int(r.headers[HEADER_LENGTH]))


def output(doc: dict, name: str) -> np.ndarray:
    out = next(o for o in doc["outputs"] if o["name"] == name)
    return np.array(out["data"], DATATYPES[out["datatype"]]).reshape(out["shape"])


def native_decode(client, z: np.ndarray, seed: int, steps: int = STEPS) -> np.ndarray:
    r = client.post(f"/decode?seed={seed}&steps={steps}&format=npy", content=dump_npy(z), headers=AUTH)
    assert r.status_code == 200, r.text
    return np.load(io.BytesIO(r.content))


def test_server_metadata_health_and_model_metadata(client):
    meta = client.get("/v2").json()
    assert meta["name"] == "dgae-serve" and {"binary_tensor_data", "parameters"} <= set(meta["extensions"])
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    enc = client.get(f"/v2/models/{ENCODER}", headers=AUTH).json()
    assert enc["name"] == ENCODER and enc["versions"] == ["1"] and enc["platform"] == "dgae_torch"
    nhwc, latent = [-1, -1, -1, 3], [-1, C, -1, -1]
    assert enc["inputs"] == [{"name": "images", "datatype": "UINT8", "shape": nhwc,
                              "accepted": [{"datatype": "UINT8", "shape": nhwc},
                                           {"datatype": "FP32", "shape": [-1, 3, -1, -1]}]}]
    assert enc["outputs"] == [{"name": "latents", "datatype": "FP32", "shape": latent,
                               "accepted": [{"datatype": "FP32", "shape": latent},
                                            {"datatype": "FP16", "shape": latent}]}]
    dec = client.get(f"/v2/models/{DECODER}/versions/1", headers=AUTH).json()
    assert dec["inputs"] == [{"name": "latents", "datatype": "FP32", "shape": latent,
                              "accepted": [{"datatype": "FP32", "shape": latent},
                                           {"datatype": "FP16", "shape": latent}]},
                             {"name": "seeds", "datatype": "INT64", "shape": [-1],
                              "accepted": [{"datatype": "INT64", "shape": [-1]}]}]
    assert dec["outputs"] == [{"name": "images", "datatype": "UINT8", "shape": nhwc,
                               "accepted": [{"datatype": "UINT8", "shape": nhwc}]}]
    for model in (ENCODER, DECODER):
        assert client.get(f"/v2/models/{model}/ready").json() == {"name": model, "ready": True}


def test_health_and_readiness_need_no_key_but_metadata_does(client):
    assert client.get("/v2/health/ready").status_code == 200
    assert client.get(f"/v2/models/{DECODER}/ready").status_code == 200
    r = client.get(f"/v2/models/{DECODER}")
    assert_v2_error(r, 401, "API key")
    assert r.headers["www-authenticate"] == "Bearer"


def test_encode_json_and_binary_agree_with_native_encode(client):
    img = image_u8(2, JSON_SIDE, seed=3)
    doc = infer_json(client, ENCODER, {"inputs": [json_tensor("images", img, "UINT8")]})
    assert doc["model_name"] == ENCODER and doc["model_version"] == "1" and doc["parameters"] == {"mode": "mean"}
    z_json = output(doc, "latents")
    _, arrays = infer_binary(client, ENCODER, [("images", img, "UINT8")], {"binary_data_output": True})
    assert z_json.shape == (2, C, JSON_SIDE // F, JSON_SIDE // F) and z_json.dtype == np.float32
    np.testing.assert_allclose(arrays["latents"], z_json, atol=LATENT_ATOL)
    files = [("image", (f"{i}.png", encode_image(img[i]), "image/png")) for i in range(2)]
    native = np.load(io.BytesIO(client.post("/encode?format=npy", files=files, headers=AUTH).content))
    np.testing.assert_allclose(z_json, native, atol=LATENT_ATOL)


def test_fp32_nchw_images_equal_uint8_images(client):
    img = image_u8(1, 16, seed=4)
    as_float = to_tensor(list(img)).numpy()
    _, a = infer_binary(client, ENCODER, [("images", img, "UINT8")], {"binary_data_output": True})
    _, b = infer_binary(client, ENCODER, [("images", as_float, "FP32")], {"binary_data_output": True})
    np.testing.assert_allclose(a["latents"], b["latents"], atol=LATENT_ATOL)


def test_fp16_latents_out_and_in(client):
    img = image_u8(1, 16, seed=5)
    doc, arrays = infer_binary(client, ENCODER, [("images", img, "UINT8")],
                               {"dtype": "FP16", "binary_data_output": True})
    z16 = arrays["latents"]
    assert z16.dtype == np.float16 and doc["outputs"][0]["datatype"] == "FP16"
    _, out16 = infer_binary(client, DECODER, [("latents", z16, "FP16")], {"seed": 2, "binary_data_output": True})
    _, out32 = infer_binary(client, DECODER, [("latents", z16.astype(np.float32), "FP32")],
                            {"seed": 2, "binary_data_output": True})
    assert np.array_equal(out16["images"], out32["images"])


def test_decode_with_seed_equals_native_decode_with_that_seed(client):
    z = latents_f32(2, seed=6)
    doc, arrays = infer_binary(client, DECODER, [("latents", z, "FP32")], {"seed": 41},
                               outputs=[{"name": "images", "parameters": {"binary_data": True}}])
    assert doc["parameters"] == {"steps": STEPS, "seeds": "41,42"}
    images = arrays["images"]
    assert images.shape == (2, 2 * F, 2 * F, 3) and images.dtype == np.uint8
    assert np.abs(images.astype(int) - native_decode(client, z, 41).astype(int)).max() <= 1


def test_seeds_input_equals_seed_parameter_and_steps_apply(client):
    z = latents_f32(2, seed=7)
    _, by_param = infer_binary(client, DECODER, [("latents", z, "FP32")], {"seed": "5,9", "steps": 2,
                                                                             "binary_data_output": True})
    doc, by_input = infer_binary(client, DECODER, [("latents", z, "FP32"), ("seeds", np.array([5, 9]), "INT64")],
                                 {"steps": 2, "binary_data_output": True})
    assert doc["parameters"] == {"steps": 2, "seeds": "5,9"}
    assert np.array_equal(by_param["images"], by_input["images"])
    for i, seed in enumerate((5, 9)):
        native = native_decode(client, z[i:i + 1], seed, steps=2)
        assert np.abs(by_input["images"][i:i + 1].astype(int) - native.astype(int)).max() <= 1


def test_decode_without_seed_reports_the_random_seeds_it_used(client):
    z = latents_f32(1, side=1, seed=8)
    doc = infer_json(client, DECODER, {"inputs": [json_tensor("latents", z, "FP32")]})
    seed = int(doc["parameters"]["seeds"])
    assert np.abs(output(doc, "images").astype(int) - native_decode(client, z, seed).astype(int)).max() <= 1


def test_sample_mode_is_seeded_and_reported(client):
    img = image_u8(1, JSON_SIDE, seed=9)
    docs = [infer_json(client, ENCODER, {"inputs": [json_tensor("images", img, "UINT8")],
                                         "parameters": {"mode": "sample", "seed": s}}) for s in (3, 3, 4)]
    assert docs[0]["parameters"] == {"mode": "sample", "seeds": "3"}
    assert np.array_equal(output(docs[0], "latents"), output(docs[1], "latents"))
    assert not np.array_equal(output(docs[0], "latents"), output(docs[2], "latents"))


def test_nested_json_data_and_request_id(client):
    z = latents_f32(1, side=1, seed=10)
    doc = infer_json(client, DECODER, {"id": "req-1", "parameters": {"seed": 1},
                                       "inputs": [{**json_tensor("latents", z, "FP32"), "data": z.tolist()}]})
    assert doc["id"] == "req-1"
    assert np.abs(output(doc, "images").astype(int) - native_decode(client, z, 1).astype(int)).max() <= 1


def test_gzip_and_deflate_request_bodies(client):
    import zlib  # noqa: PLC0415

    z = latents_f32(1, side=1, seed=11)
    body, headers = binary_request([("latents", z, "FP32")], {"seed": 3})
    want = native_decode(client, z, 3)
    for encoding, packed in (("gzip", gzip.compress(body)), ("deflate", zlib.compress(body))):
        r = client.post(infer_path(DECODER), content=packed, headers={**AUTH, **headers, "Content-Encoding": encoding})
        assert r.status_code == 200, r.text
        assert np.abs(output(r.json(), "images").astype(int) - want.astype(int)).max() <= 1


def test_malformed_catalogue_is_large_and_distinct():
    assert sum(c.status == 400 for c in CASES) >= 40 and len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("bad", CASES, ids=[c.name for c in CASES])
def test_malformed_v2_request_gets_protocol_error(client, bad):
    assert_v2_error(send_v2(client, bad), bad.status, bad.needle)


def test_native_routes_keep_their_error_form(client):
    r = client.get("/nope")
    assert r.status_code == 404 and set(r.json()["error"]) == {"code", "message"}


@pytest.fixture()
def torch_backend(tiny_checkpoint):
    return TorchBackend.from_checkpoint(tiny_checkpoint)


def with_hook(backend: TorchBackend, hook) -> TorchBackend:
    """The backend with ``hook(op, tensor)`` run before each encode/decode (block, sleep or raise)."""
    encode, decode = backend.run_encode, backend.run_decode

    def hooked_encode(req):
        hook("encode", req.images)
        return encode(req)

    def hooked_decode(req):
        hook("decode", req.latents)
        return decode(req)

    backend.run_encode, backend.run_decode = hooked_encode, hooked_decode
    return backend


def v2_decode(c, z: np.ndarray):
    body, headers = binary_request([("latents", z, "FP32")], {"binary_data_output": True})
    return c.post(infer_path(DECODER), content=body, headers={**AUTH, **headers})


def test_not_ready_is_503_with_retry_after(torch_backend):
    gate = threading.Event()
    with make_client(backend=with_hook(torch_backend, lambda op, t: gate.wait(READY_WAIT_S))) as c:
        assert c.get("/v2/health/live").status_code == 200
        r = c.get("/v2/health/ready")
        assert r.status_code == 503 and r.json() == {"ready": False} and r.headers["retry-after"] == "1"
        r = c.get(f"/v2/models/{DECODER}/ready")
        assert r.status_code == 503 and r.json() == {"name": DECODER, "ready": False}
        r = v2_decode(c, latents_f32())
        assert_v2_error(r, 503, "loading")
        assert r.headers["retry-after"] == "1"
        gate.set()
        wait_ready(c)
        assert v2_decode(c, latents_f32()).status_code == 200


def test_worker_exception_is_400_in_protocol_form_and_service_keeps_serving(torch_backend):
    def hook(op, t):
        if op == "decode" and (t == POISON).any():
            raise RuntimeError("simulated kernel failure")

    with make_client(backend=with_hook(torch_backend, hook), warmup=False) as c:
        wait_ready(c)
        assert_v2_error(v2_decode(c, np.full((1, C, 2, 2), POISON, np.float32)), 400, "simulated kernel failure")
        assert v2_decode(c, latents_f32()).status_code == 200


def test_deadline_is_504_in_protocol_form(torch_backend):
    slow = with_hook(torch_backend, lambda op, t: time.sleep(SLOW_BATCH_S) if op == "decode" else None)
    with make_client(backend=slow, request_timeout_s=SLOW_BATCH_S / 5, warmup=False) as c:
        wait_ready(c)
        assert_v2_error(v2_decode(c, latents_f32()), 504, "did not finish")


def test_v2_requests_are_counted_in_the_service_metrics(client):
    text = client.get("/metrics").text
    assert 'route="/v2/models/{model_name}/infer",status="200"' in text
    assert 'route="/v2/models/{model_name}/infer",status="400"' in text
    assert not [line for line in text.splitlines()
                if line.startswith("dgae_requests_total") and 'status="5' in line and "/v2" in line]


def test_datatype_table_round_trips():
    for name, dtype in DATATYPES.items():
        assert datatype_of(np.zeros(1, dtype)) == name
    assert json.loads(json.dumps(list(DATATYPES)))  # plain names, as the metadata sends them
