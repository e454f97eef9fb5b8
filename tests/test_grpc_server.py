"""The Open Inference Protocol over gRPC against a real `dgae serve --grpc-port`, with the real
`tritonclient.grpc`: live, ready, metadata, encode equal to /encode, decode equal to /decode with
the same seed, typed errors as gRPC status codes (the server stays up), the API key as
``authorization`` metadata, and SIGTERM draining an in-flight call."""
from __future__ import annotations

import re
import signal
import threading
import time

import httpx
import numpy as np
import pytest

from benchmarks.inputs import photo_arrays
from formats.images import encode_image
from formats.latents import dump_npy
from service.core.oip import DECODER, ENCODER
from service_cases import AUTH, C, F, Limits, free_port, level_diff, native, serve

grpcclient = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is a dev dependency")
grpc = pytest.importorskip("grpc")
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

pytestmark = pytest.mark.server

LIMITS = Limits()
PHOTO_SIDE = 64
STEPS = 2
SEED = 1234
MAX_LEVEL_DIFF = 1
LATENT_ATOL = 1e-5
TIMEOUT_S = 120.0
KEY = {"authorization": AUTH["Authorization"]}
SLOW_STEPS = 64  # the tiny preset's maximum: a decode that is still running when SIGTERM arrives
SLOW_SIDE = 32   # latent side of that decode (256 x 256 pixels)
INFLIGHT_POLL_S = 0.05


def _flags(grpc_port: int, *extra: str) -> list[str]:
    return ["--backend", "torch", "--grpc-port", str(grpc_port), "--api-keys", AUTH["Authorization"].split()[1],
            "--max-wait-ms", "20", "--torch-threads", "1", "--default-steps", "1", *extra]


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory):
    port = free_port()
    with serve(tiny_checkpoint, tmp_path_factory.mktemp("grpc"), *_flags(port, *LIMITS.flags())) as s:
        s.grpc_url = f"127.0.0.1:{port}"
        yield s


def client(server) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(server.grpc_url)


def tensor(name: str, array: np.ndarray, datatype: str) -> grpcclient.InferInput:
    t = grpcclient.InferInput(name, list(array.shape), datatype)
    t.set_data_from_numpy(array)
    return t


def photo() -> np.ndarray:
    arrays, _ = photo_arrays(1, PHOTO_SIDE)
    return np.stack(arrays)  # uint8 [1, H, W, 3]


def status_of(call) -> str:
    with pytest.raises(InferenceServerException) as err:
        call()
    return err.value.status(), err.value.message()


def test_live_ready_and_metadata(server):
    c = client(server)
    assert c.is_server_live() and c.is_server_ready()
    assert c.is_model_ready(ENCODER) and c.is_model_ready(DECODER, model_version="1")
    meta = c.get_server_metadata(as_json=True)
    assert meta["name"] == "dgae-serve" and meta["extensions"] == ["parameters"]
    enc = c.get_model_metadata(ENCODER, headers=KEY, as_json=True)
    assert enc["inputs"][0] == {"name": "images", "datatype": "UINT8", "shape": ["-1", "-1", "-1", "3"]}
    assert enc["platform"] == "dgae_torch" and enc["versions"] == ["1"]
    dec = c.get_model_metadata(DECODER, headers=KEY, as_json=True)
    assert [t["name"] for t in dec["inputs"]] == ["latents", "seeds"]
    assert status_of(lambda: c.get_model_metadata(ENCODER))[0] == "StatusCode.UNAUTHENTICATED"
    status, message = status_of(lambda: c.get_model_metadata("resnet50", headers=KEY))
    assert status == "StatusCode.INVALID_ARGUMENT" and "unknown model" in message


def test_encode_and_decode_equal_the_native_routes(server):
    """Must show: encode equals /encode, decode equals /decode with the same seed within one level."""
    c, rgb = client(server), photo()
    enc = c.infer(ENCODER, [tensor("images", rgb, "UINT8")], headers=KEY)
    latents = enc.as_numpy("latents")
    assert latents.shape == (1, C, PHOTO_SIDE // F, PHOTO_SIDE // F) and latents.dtype == np.float32
    reference_z = native(server, "/encode?format=npy", encode_image(rgb[0]), {"Content-Type": "image/png"})
    np.testing.assert_allclose(latents, reference_z, atol=LATENT_ATOL)
    dec = c.infer(DECODER, [tensor("latents", latents, "FP32")], parameters={"seed": SEED, "steps": STEPS},
                  headers=KEY)
    images = dec.as_numpy("images")
    params = dec.get_response(as_json=True)["parameters"]
    assert params["steps"] == {"int64_param": str(STEPS)} and params["seeds"] == {"string_param": str(SEED)}
    reference = native(server, f"/decode?seed={SEED}&steps={STEPS}&format=npy", dump_npy(latents))
    assert level_diff(images, reference) <= MAX_LEVEL_DIFF
    # INT64 seeds input and FP16 latents, as over HTTP
    z16 = c.infer(ENCODER, [tensor("images", rgb, "UINT8")], parameters={"dtype": "FP16"},
                  headers=KEY).as_numpy("latents")
    assert z16.dtype == np.float16
    by_input = c.infer(DECODER, [tensor("latents", z16, "FP16"), tensor("seeds", np.array([SEED], np.int64), "INT64")],
                       parameters={"steps": STEPS}, headers=KEY).as_numpy("images")
    reference16 = native(server, f"/decode?seed={SEED}&steps={STEPS}&format=npy", dump_npy(z16.astype(np.float32)))
    assert level_diff(by_input, reference16) <= MAX_LEVEL_DIFF


def test_typed_contents_equal_raw_contents(server):
    """A request with typed fp32_contents (no raw_input_contents) decodes like the raw one."""
    z = np.random.default_rng(0).standard_normal((1, C, 2, 2)).astype(np.float32)
    raw = client(server).infer(DECODER, [tensor("latents", z, "FP32")], parameters={"seed": SEED},
                               headers=KEY).as_numpy("images")
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name=DECODER)
        request.parameters["seed"].int64_param = SEED
        request.inputs.add(name="latents", datatype="FP32", shape=list(z.shape)).contents.fp32_contents.extend(
            z.ravel().tolist())
        response = stub.ModelInfer(request, metadata=tuple(KEY.items()), timeout=TIMEOUT_S)
    out = response.outputs[0]
    typed = np.frombuffer(response.raw_output_contents[0], np.uint8).reshape(tuple(out.shape))
    assert out.datatype == "UINT8" and level_diff(typed, raw) <= MAX_LEVEL_DIFF


@pytest.mark.parametrize("model, inputs, params, code, needle", [
    (DECODER, lambda: [tensor("latents", np.zeros((1, C, 2, 2), np.int32), "INT32")], {}, "INVALID_ARGUMENT",
     "datatype INT32"),
    (DECODER, lambda: [tensor("latents", np.zeros((1, 2, 2, C), np.float32), "FP32")], {}, "INVALID_ARGUMENT",
     "shape"),
    (DECODER, lambda: [tensor("latents", np.full((1, C, 2, 2), np.nan, np.float32), "FP32")], {},
     "INVALID_ARGUMENT", "NaN"),
    (DECODER, lambda: [tensor("latents", np.zeros((1, C, 2, 2), np.float32), "FP32")], {"step": 3},
     "INVALID_ARGUMENT", "step"),
    (DECODER, lambda: [tensor("latents", np.zeros((1, C, 2, 2), np.float32), "FP32")], {"steps": 10 ** 6},
     "INVALID_ARGUMENT", "steps must be in"),
    (DECODER, lambda: [tensor("latents", np.zeros((LIMITS.max_items + 1, C, 2, 2), np.float32), "FP32")], {},
     "RESOURCE_EXHAUSTED", "limit"),
    (ENCODER, lambda: [tensor("images", np.zeros((1, F + 1, F + 1, 3), np.uint8), "UINT8")], {},
     "INVALID_ARGUMENT", "multiple"),
    (ENCODER, lambda: [tensor("images", np.full((1, 3, F, F), 3.0, np.float32), "FP32")], {}, "INVALID_ARGUMENT",
     "[-1, 1]"),
    ("dgae-vae", lambda: [tensor("latents", np.zeros((1, C, 2, 2), np.float32), "FP32")], {}, "INVALID_ARGUMENT",
     "unknown model"),
], ids=["datatype", "shape", "nan", "unknown parameter", "steps", "too many items", "not a multiple of f",
        "float range", "unknown model"])
def test_bad_requests_get_their_status_codes(server, model, inputs, params, code, needle):
    status, message = status_of(lambda: client(server).infer(model, inputs(), parameters=params, headers=KEY))
    assert status == f"StatusCode.{code}" and needle in message


def test_malformed_messages_keep_the_server_up(server):
    """Raw stub requests no client library would build: INVALID_ARGUMENT each, then a valid call
    is served and no 5xx was counted."""
    z = np.zeros((1, C, 2, 2), np.float32)

    def request(**fields):
        r = service_pb2.ModelInferRequest(model_name=DECODER, **fields)
        return r

    mismatched = request(raw_input_contents=[z.tobytes()[:-4]])
    mismatched.inputs.add(name="latents", datatype="FP32", shape=list(z.shape))
    extra = request(raw_input_contents=[z.tobytes(), b"x"])
    extra.inputs.add(name="latents", datatype="FP32", shape=list(z.shape))
    bogus_type = request(raw_input_contents=[z.tobytes()])
    bogus_type.inputs.add(name="latents", datatype="COMPLEX", shape=list(z.shape))
    negative = request(raw_input_contents=[z.tobytes()])
    negative.inputs.add(name="latents", datatype="FP32", shape=[-1, C, 2, 2])
    empty_param = request(raw_input_contents=[z.tobytes()])
    empty_param.inputs.add(name="latents", datatype="FP32", shape=list(z.shape))
    empty_param.parameters["seed"].SetInParent()
    fp16_typed = request()
    fp16_typed.inputs.add(name="latents", datatype="FP16", shape=list(z.shape))
    cases = {"bytes": (mismatched, "needs 64"), "count": (extra, "2 entries for 1 inputs"),
             "datatype": (bogus_type, "unsupported datatype"), "negative": (negative, "negative"),
             "empty parameter": (empty_param, "no value"), "fp16 typed": (fp16_typed, "raw_input_contents"),
             "no inputs": (request(), "no inputs")}
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for name, (req, needle) in cases.items():
            with pytest.raises(grpc.RpcError) as err:
                stub.ModelInfer(req, metadata=tuple(KEY.items()), timeout=TIMEOUT_S)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
            assert needle in err.value.details(), (name, err.value.details())
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(mismatched, metadata=(("authorization", "Bearer wrong"),), timeout=TIMEOUT_S)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    images = client(server).infer(DECODER, [tensor("latents", z, "FP32")], headers=KEY).as_numpy("images")
    assert images.shape == (1, 2 * F, 2 * F, 3)
    text = httpx.get(server.url + "/metrics").text
    assert 'route="/inference.GRPCInferenceService/ModelInfer",status="200"' in text
    assert 'route="/inference.GRPCInferenceService/ModelInfer",status="400"' in text
    assert not re.search(r'^dgae_requests_total\{route="/inference[^"]*",status="5\d\d"\}', text, re.M)
    assert server.proc.poll() is None


def _inflight(server) -> float:
    text = httpx.get(server.url + "/metrics", timeout=TIMEOUT_S).text
    return sum(float(v) for v in re.findall(r'^dgae_inflight_pixels\{[^}]*\} (\S+)', text, re.M))


def _refused_while_busy(s) -> None:
    """The in-flight pixel budget is shared by both transports: with the slow decode holding all of
    it, a gRPC call gets UNAVAILABLE with retry-after and an HTTP one 503 budget_full."""
    small = np.zeros((1, C, 2, 2), np.float32)
    with grpc.insecure_channel(s.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name=DECODER, raw_input_contents=[small.tobytes()])
        request.inputs.add(name="latents", datatype="FP32", shape=list(small.shape))
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(request, metadata=tuple(KEY.items()), timeout=TIMEOUT_S)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "busy" in err.value.details()
    assert ("retry-after", "1") in tuple(err.value.trailing_metadata())
    r = httpx.post(s.url + "/decode", content=dump_npy(small), headers=AUTH, timeout=TIMEOUT_S)
    assert r.status_code == 503 and r.json()["error"]["code"] == "budget_full"


def test_sigterm_drains_an_inflight_call(tiny_checkpoint, tmp_path):
    """Must show: SIGTERM while a gRPC decode is computing: the call completes with its images and
    the process exits 0. Meanwhile the decode holds the whole in-flight budget, refused on both
    transports alike."""
    port = free_port()
    budget = str((SLOW_SIDE * F) ** 2)  # exactly the slow decode's pixels
    with serve(tiny_checkpoint, tmp_path, *_flags(port, "--shutdown-timeout-s", "120", "--inflight-pixels",
                                                  budget)) as s:
        s.grpc_url = f"127.0.0.1:{port}"
        z = np.random.default_rng(1).standard_normal((1, C, SLOW_SIDE, SLOW_SIDE)).astype(np.float32)
        result: dict = {}

        def call():
            try:
                result["images"] = client(s).infer(DECODER, [tensor("latents", z, "FP32")], headers=KEY,
                                                   parameters={"steps": SLOW_STEPS, "seed": SEED}).as_numpy("images")
            except InferenceServerException as exc:  # reported by the assertion below
                result["error"] = exc

        worker = threading.Thread(target=call)
        worker.start()
        deadline = time.monotonic() + TIMEOUT_S
        while _inflight(s) == 0 and worker.is_alive() and time.monotonic() < deadline:
            time.sleep(INFLIGHT_POLL_S)
        assert worker.is_alive(), f"the decode finished before SIGTERM could be sent: {result}"
        _refused_while_busy(s)
        assert worker.is_alive(), f"the decode finished before SIGTERM could be sent: {result}"
        s.proc.send_signal(signal.SIGTERM)
        worker.join(TIMEOUT_S)
        assert s.proc.wait(TIMEOUT_S) == 0, s.log_text()[-3000:]
    assert "error" not in result, result.get("error")
    assert result["images"].shape == (1, SLOW_SIDE * F, SLOW_SIDE * F, 3)
