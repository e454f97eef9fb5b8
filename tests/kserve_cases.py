"""Open Inference Protocol (KServe v2) request builders and the catalogue of malformed v2
requests, run in-process (test_kserve_app) and against a real server (test_kserve_server)."""
from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field

import numpy as np

from service.core.oip import DECODER, ENCODER
from service.v2.tensors import DATATYPES, HEADER_LENGTH
from service_cases import AUTH, C, F, HUGE_INT, Limits


def infer_path(model: str) -> str:
    return f"/v2/models/{model}/infer"


def json_tensor(name: str, array: np.ndarray, datatype: str) -> dict:
    return {"name": name, "datatype": datatype, "shape": list(array.shape), "data": array.ravel().tolist()}


def binary_request(inputs: list[tuple[str, np.ndarray, str]], parameters: dict | None = None,
                   outputs: list[dict] | None = None) -> tuple[bytes, dict[str, str]]:
    """(body, headers) of a request whose inputs all travel as binary tensor data."""
    doc: dict = {"inputs": [{"name": n, "datatype": d, "shape": list(a.shape),
                             "parameters": {"binary_data_size": a.nbytes}} for n, a, d in inputs]}
    if parameters:
        doc["parameters"] = parameters
    if outputs is not None:
        doc["outputs"] = outputs
    head = json.dumps(doc).encode()
    return head + b"".join(np.ascontiguousarray(a).tobytes() for _, a, _ in inputs), {HEADER_LENGTH: str(len(head))}


def read_binary_response(body: bytes, header_length: int) -> tuple[dict, dict[str, np.ndarray]]:
    """(JSON header, {output name: array}) of a response carrying binary outputs."""
    doc, offset, arrays = json.loads(body[:header_length]), header_length, {}
    for out in doc["outputs"]:
        size = out["parameters"]["binary_data_size"]
        data = np.frombuffer(body[offset:offset + size], DATATYPES[out["datatype"]])
        arrays[out["name"]] = data.reshape(out["shape"])
        offset += size
    assert offset == len(body)
    return doc, arrays


def image_u8(n: int = 1, side: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, side, side, 3), dtype=np.uint8)


def latents_f32(n: int = 1, side: int = 2, c: int = C, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, c, side, side)).astype(np.float32)


@dataclass(frozen=True)
class BadV2:
    """One malformed v2 request; it must get ``status`` with ``{"error": "<message containing needle>"}``."""

    name: str
    path: str
    kwargs: dict = field(default_factory=dict)
    needle: str = ""
    status: int = 400
    method: str = "POST"
    auth: bool = True


def _json(doc) -> dict:
    return {"content": json.dumps(doc).encode(), "headers": {"Content-Type": "application/json"}}


def _binary(head: dict, data: bytes, header_length: int | str | None = None) -> dict:
    raw = json.dumps(head).encode()
    length = len(raw) if header_length is None else header_length
    return {"content": raw + data, "headers": {HEADER_LENGTH: str(length)}}


def malformed_v2_requests(lim: Limits) -> list[BadV2]:
    """Every kind of bad v2 request we refuse, each with the 4xx it gets (400 unless noted)."""
    z, img = latents_f32(side=1), image_u8(1, F)  # small enough for JSON inputs and outputs under the limits
    lat = json_tensor("latents", z, "FP32")
    enc, dec = infer_path(ENCODER), infer_path(DECODER)
    zbin = {"name": "latents", "datatype": "FP32", "shape": list(z.shape), "parameters": {"binary_data_size": z.nbytes}}
    nan = z.copy()
    nan[0, 0, 0, 0] = np.nan
    over_items = latents_f32(lim.max_items + 1)
    over_json = latents_f32(1, side=int(np.sqrt(lim.max_json_values / C)) + 1)
    too_big_image = image_u8(1, side=int(np.sqrt(lim.max_pixels)) + F)
    return [
        BadV2("wrong datatype (INT32 latents)", dec,
              _json({"inputs": [json_tensor("latents", z.astype(np.int32), "INT32")]}), "datatype INT32"),
        BadV2("wrong datatype (FP32 images with UINT8 layout)", enc,
              _json({"inputs": [json_tensor("images", img.astype(np.float32), "FP32")]}), "expected"),
        BadV2("unknown datatype", dec, _json({"inputs": [{**lat, "datatype": "FP33"}]}), "unsupported datatype"),
        BadV2("BYTES datatype", dec, _json({"inputs": [{**lat, "datatype": "BYTES"}]}), "unsupported datatype"),
        BadV2("wrong shape (channels last latents)", dec,
              _json({"inputs": [json_tensor("latents", z.transpose(0, 2, 3, 1), "FP32")]}), "shape"),
        BadV2("wrong rank", dec, _json({"inputs": [json_tensor("latents", z[0], "FP32")]}), "shape"),
        BadV2("wrong channel count", dec, _json({"inputs": [json_tensor("latents", latents_f32(c=C + 1), "FP32")]}),
              "shape"),
        BadV2("image not RGB", enc, _json({"inputs": [json_tensor("images", img[..., :2].copy(), "UINT8")]}), "shape"),
        BadV2("empty dimension", dec, _json({"inputs": [{**lat, "shape": [0, C, 1, 1], "data": []}]}), "empty"),
        BadV2("negative dimension", dec, _json({"inputs": [{**lat, "shape": [-1, C, 1, 1]}]}), "non-negative"),
        BadV2("shape not a list", dec, _json({"inputs": [{**lat, "shape": "1x4x2x2"}]}), "shape"),
        BadV2("missing input", dec, _json({"inputs": [json_tensor("seeds", np.array([1]), "INT64")]}),
              "needs input 'latents'"),
        BadV2("unknown input", dec, _json({"inputs": [lat, json_tensor("noise", z, "FP32")]}), "no input 'noise'"),
        BadV2("duplicate input", dec, _json({"inputs": [lat, lat]}), "more than once"),
        BadV2("unknown model", infer_path("dgae-vae"), _json({"inputs": [lat]}), "unknown model"),
        BadV2("unknown model version", f"/v2/models/{DECODER}/versions/7/infer", _json({"inputs": [lat]}),
              "no version"),
        BadV2("metadata of unknown model", "/v2/models/resnet50", {}, "unknown model", method="GET"),
        BadV2("readiness of unknown model", "/v2/models/resnet50/ready", {}, "unknown model", method="GET"),
        BadV2("binary size disagrees with shape", dec, _binary({"inputs": [{**zbin, "parameters": {
            "binary_data_size": z.nbytes - 4}}]}, z.tobytes()[:-4]), "needs"),
        BadV2("binary size disagrees with the body", dec, _binary({"inputs": [zbin]}, z.tobytes() + b"\0" * 8),
              "add up to"),
        BadV2("binary size past the end of the body", dec, _binary({"inputs": [zbin]}, z.tobytes()[:-8]),
              "runs past the end"),
        BadV2("header length past the body", dec, _binary({"inputs": [zbin]}, z.tobytes(), header_length=10 ** 6),
              HEADER_LENGTH),
        BadV2("header length not a number", dec, _binary({"inputs": [zbin]}, z.tobytes(), header_length="abc"),
              HEADER_LENGTH),
        BadV2("header length cuts the JSON", dec, _binary({"inputs": [zbin]}, z.tobytes(), header_length=12),
              "not valid JSON"),
        BadV2("binary data without header length", dec,
              {"content": json.dumps({"inputs": [zbin]}).encode() + z.tobytes()}, "not valid JSON"),
        BadV2("both data and binary_data_size", dec, _json({"inputs": [{**lat, "parameters": zbin["parameters"]}]}),
              "both"),
        BadV2("neither data nor binary_data_size", dec,
              _json({"inputs": [{k: v for k, v in lat.items() if k != "data"}]}), "neither"),
        BadV2("JSON data count disagrees with shape", dec, _json({"inputs": [{**lat, "data": lat["data"][:-1]}]}),
              "needs"),
        BadV2("JSON data of strings", dec, _json({"inputs": [{**lat, "data": ["a"] * z.size}]}), "numbers"),
        BadV2("JSON data not a list", dec, _json({"inputs": [{**lat, "data": 1.5}]}), "list"),
        BadV2("JSON float in UINT8 tensor", enc, _json({"inputs": [{**json_tensor("images", img, "UINT8"),
                                                                      "data": [0.5] * img.size}]}), "integers"),
        BadV2("UINT8 value out of range", enc, _json({"inputs": [{**json_tensor("images", img, "UINT8"),
                                                                    "data": [300] * img.size}]}), "range"),
        BadV2("FP32 images outside [-1, 1]", enc,
              _json({"inputs": [json_tensor("images", np.full((1, 3, F, F), 2.0, np.float32), "FP32")]}), "[-1, 1]"),
        BadV2("image side not a multiple of f", enc,
              _json({"inputs": [json_tensor("images", image_u8(1, F + 1), "UINT8")]}), "multiple"),
        BadV2("NaN latents", dec, _binary({"inputs": [zbin]}, nan.tobytes()), "NaN"),
        BadV2("not JSON at all", dec, {"content": b"\x00\x01garbage", "headers": {"Content-Type": "application/json"}},
              "not valid JSON"),
        BadV2("empty body", dec, {"content": b""}, "empty"),
        BadV2("request not an object", dec, _json([lat]), "object"),
        BadV2("no inputs", dec, _json({"inputs": []}), "non-empty"),
        BadV2("unknown parameter", dec, _json({"inputs": [lat], "parameters": {"temperature": 0.7}}), "temperature"),
        BadV2("parameters not an object", dec, _json({"inputs": [lat], "parameters": [1, 2]}), "parameters"),
        BadV2("steps 0", dec, _json({"inputs": [lat], "parameters": {"steps": 0}}), "steps"),
        BadV2("steps not an integer", dec, _json({"inputs": [lat], "parameters": {"steps": "two"}}), "steps"),
        BadV2("unknown encode mode", enc, _json({"inputs": [json_tensor("images", img, "UINT8")],
                                                 "parameters": {"mode": "median"}}), "mode"),
        BadV2("unknown latent dtype", enc, _json({"inputs": [json_tensor("images", img, "UINT8")],
                                                  "parameters": {"dtype": "BF16"}}), "dtype"),
        BadV2("negative seed", dec, _json({"inputs": [lat], "parameters": {"seed": -1}}), "seed"),
        BadV2("seed count disagrees with the batch", dec, _json({"inputs": [lat], "parameters": {"seed": "1,2"}}),
              "seed"),
        BadV2("seeds input and seed parameter", dec,
              _json({"inputs": [lat, json_tensor("seeds", np.array([1]), "INT64")], "parameters": {"seed": 1}}),
              "not both"),
        BadV2("seeds input of the wrong length", dec,
              _json({"inputs": [lat, json_tensor("seeds", np.array([1, 2]), "INT64")]}), "one per latent"),
        BadV2("negative seeds input", dec, _json({"inputs": [lat, json_tensor("seeds", np.array([-3]), "INT64")]}),
              "seed must be an integer in [0, 2**63)"),
        BadV2("unknown requested output", dec, _json({"inputs": [lat], "outputs": [{"name": "pixels"}]}),
              "no output 'pixels'"),
        BadV2("binary_data not a boolean", dec, _json({"inputs": [lat], "outputs": [{"name": "images", "parameters": {
            "binary_data": "yes"}}]}), "boolean"),
        BadV2("JSON output over the JSON limit", dec,
              _json({"inputs": [json_tensor("latents", latents_f32(1, side=4), "FP32")],
                     "outputs": [{"name": "images", "parameters": {"binary_data": False}}]}), "binary"),
        BadV2("unsupported Content-Encoding", dec, {**_json({"inputs": [lat]}), "headers": {
            "Content-Type": "application/json", "Content-Encoding": "br"}}, "Content-Encoding"),
        BadV2("corrupt gzip body", dec, {"content": gzip.compress(b'{"inputs": []}')[:-6], "headers": {
            "Content-Encoding": "gzip"}}, "gzip"),
        BadV2("bytes after the gzip stream", dec,
              {"content": gzip.compress(json.dumps({"inputs": [lat]}).encode()) + b"junk",
               "headers": {"Content-Encoding": "gzip"}}, "follow the end"),
        BadV2("id not a string", dec, _json({"id": 5, "inputs": [lat]}), "'id'"),
        # not 400: the same limits and auth as the native routes
        BadV2("too many latents", dec, _binary({"inputs": [{**zbin, "shape": list(over_items.shape), "parameters": {
            "binary_data_size": over_items.nbytes}}]}, over_items.tobytes()), "limit", status=413),
        BadV2("image over the pixel limit", enc, _binary({"inputs": [
            {"name": "images", "datatype": "UINT8", "shape": list(too_big_image.shape),
             "parameters": {"binary_data_size": too_big_image.nbytes}}]}, too_big_image.tobytes()),
              "limit", status=413),
        BadV2("JSON tensor over the JSON limit", dec, _json({"inputs": [json_tensor("latents", over_json, "FP32")]}),
              "limit", status=413),
        BadV2("body over the byte limit", dec, {"content": b" " * (lim.max_body_bytes + 1)}, "limit", status=413),
        BadV2("missing API key", dec, _json({"inputs": [lat]}), "API key", status=401, auth=False),
        BadV2("a 5000-digit integer in JSON data", dec,
              {"content": b'{"inputs": [{"name": "latents", "datatype": "FP32", "shape": [1, %d, 1, 1], "data": [%s]}]}'
                          % (C, b", ".join([HUGE_INT] + [b"1"] * (C - 1))),
               "headers": {"Content-Type": "application/json"}},
              "not valid JSON"),
        BadV2("an integer beyond any float in FP32 data", dec,
              _json({"inputs": [{**lat, "data": [10 ** 400] + [1] * (C - 1)}]}), "too large for FP32"),
        BadV2("steps of a non-ASCII digit", dec, _json({"inputs": [lat], "parameters": {"steps": "\u00b2"}}),
              "steps must be an integer"),
        BadV2("empty tensor too large for numpy", dec,
              _json({"inputs": [{**lat, "shape": [2 ** 40, 0, 2 ** 40, 1], "data": []}]}), "too large for any tensor"),
        BadV2("unknown v2 route", "/v2/models/dgae-decoder/explain", _json({"inputs": [lat]}), "Not Found",
              status=404),
        BadV2("GET on infer", dec, {}, "Method Not Allowed", status=405, method="GET"),
    ]


def send_v2(client, bad: BadV2):
    kwargs = dict(bad.kwargs)
    headers = {**(AUTH if bad.auth else {}), **kwargs.pop("headers", {})}
    return client.request(bad.method, bad.path, headers=headers, **kwargs)


def assert_v2_error(response, status: int, needle: str = "") -> str:
    """The protocol's error form: exactly ``{"error": "<message>"}``."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], body
    assert needle in body["error"], body
    return body["error"]
