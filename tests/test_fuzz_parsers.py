"""Property-based fuzzing (hypothesis) of every parser of untrusted bytes: npy, safetensors and its
``dgae`` metadata (and the code that acts on it), JSON latents, the Open Inference Protocol JSON and
binary framing (and model validation, Content-Encoding), image decoding, multipart bodies, query seeds
and the zip member names built from user file names.

The property everywhere: a parser returns a well-formed result or raises one of the project's typed
errors (dgae.errors.DGAEError: InputError 400, TooLargeError 413, the service's own); any other
exception is a finding (it would be a 500). CI runs a bounded number of examples per parser;
``DGAE_FUZZ_EXAMPLES=<n>`` runs longer (docs/fuzzing.md).
"""
from __future__ import annotations

import asyncio
import gzip
import io
import json
import re
import struct
import zipfile
import zlib

import numpy as np
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from starlette.requests import Request

from dgae.errors import DGAEError
from formats.latents import fit_infos, image_names, load_latents
from formats.images import decode_image, image_size
from fuzz_cases import (bytes_or_mutated, dumps, fuzz_settings, huge_int_text, image_seeds, json_values, mutated,
                        nested_numbers, npy_seed, numbers, safetensors_seed)
from service.core import codecs
from service.core.engine import ModelSpec
from service.core.params import parse_int, parse_seeds
from service.v2 import tensors
from service.core.oip import build_models
from service_cases import safetensors_from_header

MAX_PIXELS = 64 * 64
MAX_JSON_VALUES = 256
MAX_ITEMS = 4
MAX_BODY = 1 << 16
SPEC = ModelSpec("tiny", f=8, c=4, default_steps=1, max_steps=4)
MODELS = build_models(SPEC)
ZIP_NAME = re.compile(r"^\d{4}(_[^/\\]+)?\.png$")


def typed_or_ok(fn, *args):
    """``fn(*args)``, or None when it raised a typed project error; anything else propagates (a finding)."""
    try:
        return fn(*args)
    except DGAEError:
        return None


# --- npy and safetensors -------------------------------------------------------------------------
LATENT_SEEDS = [npy_seed(np.zeros((1, 4, 2, 2), np.float32)), npy_seed(np.ones((4, 2, 2), np.float16)),
                npy_seed(np.zeros((2, 3), "<f4")), npy_seed(np.zeros((1, 4, 2, 2), np.float32, order="F")),
                safetensors_seed(None), safetensors_seed('{"images": [{"orig_height": 16}]}'),
                safetensors_seed("[1, 2]"), safetensors_seed("{bad json")]


def npy_with_header(header: bytes) -> bytes:
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


# Findings of the fuzzer, kept as explicit examples (each was a 500 before its fix; docs/fuzzing.md).
UNTERMINATED_NPY_HEADER = npy_with_header(b"{'descr': '<f4', 'shape': (1,\n")  # tokenize.TokenError
EMPTY_TENSOR_OVERFLOWING_SHAPE = safetensors_from_header(  # TypeError in safetensors' torch.empty
    {"latents": {"dtype": "F32", "shape": [0, 2 ** 63], "data_offsets": [0, 0]}}, b"")
EMPTY_TENSOR_OVERFLOWING_STRIDES = safetensors_from_header(  # RuntimeError: Stride calculation overflowed
    {"latents": {"dtype": "F32", "shape": [0, 2 ** 40, 2 ** 40], "data_offsets": [0, 0]}}, b"")
EMPTY_V2_TENSOR_TOO_LARGE = dumps({"inputs": [{"name": "latents", "datatype": "BOOL", "shape": [2 ** 40, 0, 2 ** 40],
                                               "data": []}]})  # numpy: "array is too big" (ValueError)
NON_ASCII_DIGIT = "\u00b2"  # '²': str.isdigit() says yes, int() says no (ValueError)


def check_latents(result) -> None:
    if result is not None:
        latents, meta = result
        assert latents.dtype == torch.float32 and latents.dim() == 4 and latents.numel() > 0
        assert isinstance(meta, dict)


@fuzz_settings()
@given(data=bytes_or_mutated(LATENT_SEEDS))
@example(data=UNTERMINATED_NPY_HEADER)
@example(data=EMPTY_TENSOR_OVERFLOWING_SHAPE)
@example(data=EMPTY_TENSOR_OVERFLOWING_STRIDES)
def test_npy_and_safetensors_bytes(data):
    check_latents(typed_or_ok(load_latents, data, "body"))


DTYPES = st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "F64", "BOOL", "X"]) | st.text(max_size=4)
SHAPES = st.lists(st.integers(-2, 5) | st.sampled_from([2 ** 40, 2 ** 63]), max_size=5)
META_TEXT = st.one_of(json_values().map(json.dumps), st.text(max_size=40),
                      st.just('{"images": ' + huge_int_text().decode() + "}"),
                      st.builds(lambda v: json.dumps({"images": v}), json_values()))


@st.composite
def safetensors_payloads(draw) -> bytes:
    shape = draw(SHAPES)
    payload = draw(st.binary(max_size=128))
    start = draw(st.integers(0, 8))
    end = draw(st.integers(0, 160) | st.just(len(payload)))
    tensor = {"dtype": draw(DTYPES), "shape": shape, "data_offsets": [start, end]}
    header = {draw(st.sampled_from(["latents", "x", "images"])): tensor}
    if draw(st.booleans()):
        header["__metadata__"] = {"dgae": draw(META_TEXT)}
    return safetensors_from_header(header, payload)


@fuzz_settings()
@given(data=safetensors_payloads())
def test_safetensors_headers_and_dgae_metadata(data):
    result = typed_or_ok(load_latents, data, "body")
    check_latents(result)
    if result is not None:  # what the service does with the metadata next
        latents, meta = result
        typed_or_ok(fit_infos, meta, len(latents), MAX_PIXELS)
        typed_or_ok(image_names, meta)


@fuzz_settings()
@given(meta=st.dictionaries(st.sampled_from(["images", "model", "seeds"]), json_values()), n=st.integers(1, 3))
def test_metadata_consumers(meta, n):
    infos = typed_or_ok(fit_infos, meta, n, MAX_PIXELS)
    if infos is not None:
        assert len(infos) == n
        names = image_names(meta)
        assert isinstance(names, list)


# --- JSON latents ---------------------------------------------------------------------------------------
JSON_LATENT_SEEDS = [dumps({"latents": np.zeros((4, 2, 2)).tolist()}), dumps({"latents": [[[1.5]]], "metadata": {}}),
                     b'{"latents": [[[' + huge_int_text() + b"]]]}", b'{"latents": [[[1e999]]]}']


@st.composite
def json_latent_bodies(draw) -> bytes:
    kind = draw(st.integers(0, 2))
    if kind == 0:
        doc = {"latents": draw(nested_numbers(draw(st.integers(0, 5))))}
        if draw(st.booleans()):
            doc["metadata"] = draw(json_values())
        return dumps(doc)
    if kind == 1:
        return dumps(draw(json_values()))
    return draw(mutated(JSON_LATENT_SEEDS))


@fuzz_settings()
@given(body=json_latent_bodies())
def test_json_latents(body):
    check_latents(typed_or_ok(codecs.parse_latents, body, codecs.JSON, MAX_JSON_VALUES))


# --- Open Inference Protocol ----------------------------------------------------------------------------
V2_DATATYPES = st.sampled_from(list(tensors.DATATYPES) + ["BYTES", "BF16", "fp32"]) | st.text(max_size=5)


@st.composite
def v2_tensor(draw) -> tuple[dict, bytes]:
    name = draw(st.sampled_from(["latents", "images", "seeds", "x"]) | st.text(max_size=5))
    datatype = draw(V2_DATATYPES)
    shape = draw(st.lists(st.integers(-1, 4) | st.sampled_from([2 ** 40]), max_size=4) | json_values(3))
    tensor: dict = {"name": name, "datatype": datatype, "shape": shape}
    blob = b""
    if draw(st.booleans()):
        blob = draw(st.binary(max_size=96))
        size = draw(st.just(len(blob)) | st.integers(-1, 200) | numbers())
        tensor["parameters"] = {"binary_data_size": size}
    else:
        tensor["data"] = draw(nested_numbers(draw(st.integers(0, 3)), side=3) | json_values(4))
    return tensor, blob


@st.composite
def v2_bodies(draw) -> tuple[bytes, int | None]:
    parts = draw(st.lists(v2_tensor(), max_size=3))
    doc: dict = {"inputs": [t for t, _ in parts]}
    if draw(st.booleans()):
        doc["parameters"] = draw(st.dictionaries(st.sampled_from(["binary_data_output", "seed", "steps", "mode", "x"]),
                                                 numbers() | st.text(max_size=6), max_size=3))
    if draw(st.booleans()):
        doc["outputs"] = draw(st.lists(st.fixed_dictionaries({"name": st.sampled_from(["latents", "images", "y"])},
                                                             optional={"parameters": json_values(3)}), max_size=3))
    if draw(st.booleans()):
        doc["id"] = draw(json_values(2))
    head = dumps(doc)
    tail = b"".join(blob for _, blob in parts)
    if draw(st.booleans()):
        return head + tail, len(head) if tail else None
    body = draw(mutated([head + tail]))
    return body, draw(st.none() | st.integers(0, len(body) + 2))


@fuzz_settings()
@given(case=v2_bodies())
@example(case=(EMPTY_V2_TENSOR_TOO_LARGE, None))
@example(case=(EMPTY_V2_TENSOR_TOO_LARGE.replace(b'"data": []', b'"parameters": {"binary_data_size": 0}'), None))
def test_v2_json_and_binary_framing_and_model_validation(case):
    body, length = case
    req = typed_or_ok(tensors.parse_request, body, length, MAX_JSON_VALUES)
    if req is not None:
        for tensor in req.inputs.values():
            assert tensor.array.shape == tensor.shape
        for model in MODELS.values():
            typed_or_ok(model.validate, req)


@fuzz_settings()
@given(value=st.none() | st.text(max_size=12), size=st.integers(0, 100))
@example(value=NON_ASCII_DIGIT, size=5)
def test_v2_header_length(value, size):
    length = typed_or_ok(tensors.header_length, value, size)
    assert length is None or 0 < length <= size


GZIP_SEEDS = [gzip.compress(b'{"inputs": []}'), zlib.compress(b"x" * 1000), gzip.compress(b"\0" * (MAX_BODY + 1))]


@fuzz_settings()
@given(body=bytes_or_mutated(GZIP_SEEDS), encoding=st.sampled_from(["gzip", "deflate", "identity", "br", " GZIP "]))
def test_v2_content_encoding(body, encoding):
    out = typed_or_ok(tensors.decompress, body, encoding, MAX_BODY)
    assert out is None or len(out) <= MAX_BODY


# --- images -------------------------------------------------------------------------------------------------
IMAGES = image_seeds()


@fuzz_settings()
@given(data=bytes_or_mutated(IMAGES))
def test_image_decoding(data):
    size = typed_or_ok(image_size, data, "image", MAX_PIXELS)
    rgb = typed_or_ok(decode_image, data, "image", MAX_PIXELS)
    if rgb is not None:
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
        assert rgb.shape[0] * rgb.shape[1] <= MAX_PIXELS
        assert size is not None


# --- multipart ---------------------------------------------------------------------------------------------
BOUNDARY = "fuzzboundary"


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = BOUNDARY) -> bytes:
    out = b""
    for field, filename, data in parts:
        disposition = f'form-data; name="{field}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: image/png\r\n\r\n".encode()
        out += data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


MULTIPART_SEEDS = [multipart([("image", "a.png", IMAGES[0])]),
                   multipart([("image", "a.png", b"x"), ("image", "b.png", b"y"), ("note", None, b"hi")]),
                   multipart([("image", f"{i}.png", b"z") for i in range(MAX_ITEMS + 2)])]


def run_image_files(content_type: str, body: bytes):
    scope = {"type": "http", "method": "POST", "path": "/encode", "headers": [(b"content-type", content_type.encode())]}
    return asyncio.run(codecs.image_files(Request(scope), body, MAX_ITEMS))


@fuzz_settings()
@given(body=bytes_or_mutated(MULTIPART_SEEDS),
       content_type=st.sampled_from([f"multipart/form-data; boundary={BOUNDARY}", "multipart/form-data",
                                     "multipart/form-data; boundary=", "image/gif", "text/plain"])
       | st.text(max_size=30).filter(lambda t: t.isascii() and "\n" not in t and "\r" not in t))
def test_multipart_bodies(body, content_type):
    files = typed_or_ok(run_image_files, content_type, body)
    if files is not None:
        assert 1 <= len(files) <= MAX_ITEMS and all(isinstance(d, bytes) for _, d in files)


# --- query parameters and zip member names ---------------------------------------------------------------------------
@fuzz_settings()
@given(value=st.text(max_size=30) | st.integers() | st.lists(numbers(), max_size=4) | json_values(3))
@example(value=NON_ASCII_DIGIT)
def test_seed_and_integer_parameters(value):
    seeds = typed_or_ok(parse_seeds, value)
    assert seeds is None or isinstance(seeds, (int, list))
    typed_or_ok(parse_int, "steps", value, 1)


@fuzz_settings()
@given(meta=st.fixed_dictionaries({"images": st.lists(st.fixed_dictionaries({}, optional={"name": json_values(2)})
                                                       | json_values(2), max_size=4)}),
       n=st.integers(1, 4))
def test_zip_member_names_are_safe(meta, n):
    names = zip_names_checked(image_names(meta), n)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in names:
            zf.writestr(name, b"x")
    assert zipfile.ZipFile(buf).namelist() == names


@fuzz_settings()
@given(names=st.lists(st.text(max_size=80), max_size=4), n=st.integers(1, 4))
def test_zip_member_names_from_any_text(names, n):
    zip_names_checked(names, n)


def zip_names_checked(names: list, n: int) -> list[str]:
    out = codecs.zip_names(names, n, "png")
    assert len(out) == n and len(set(out)) == n
    for name in out:
        assert ZIP_NAME.match(name) and ".." not in name.split("/") and "\0" not in name, name
    return out
