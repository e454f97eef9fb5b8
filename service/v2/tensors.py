"""Open Inference Protocol (KServe v2) tensors on the REST wire: request parsing (JSON tensors and
the binary tensor data extension) and response encoding, into and from the transport-free
requests and responses of :mod:`service.core.oip` (which holds the datatype table).

A request body is a JSON inference header, optionally followed by raw tensor bytes: the
``Inference-Header-Content-Length`` header gives the JSON part's length, and each input sent that
way carries ``parameters.binary_data_size``; the binary parts follow in input order and must
account for every byte after the JSON. JSON tensors carry ``data`` as a flat or nested row-major
list. Responses mirror this: an output asked for with ``binary_data`` (or the request parameter
``binary_data_output``) is appended as raw little-endian bytes after the JSON header.

Nothing here knows the models; every malformed request raises InputError (400) naming the
problem, and a JSON tensor over ``max_json_values`` raises TooLargeError (413) as on /decode.
"""
from __future__ import annotations

import json
import math
import zlib

import numpy as np

from dgae.errors import InputError, TooLargeError

from ..core.oip import (BINARY_DATA, BINARY_DATA_OUTPUT, BINARY_DATA_SIZE, DATATYPES, InferRequest, InferResponse,
                        InputTensor, RequestedOutput, datatype_of)
from ..core.params import ascii_digits

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_MEDIA = "application/octet-stream"
JSON_MEDIA = "application/json"
ERROR_PREVIEW_CHARS = 200
MAX_ARRAY_BYTES = np.iinfo(np.intp).max  # numpy refuses (ValueError) a shape whose non-zero dims pass this

# --- requests --------------------------------------------------------------------------------------
def header_length(value: str | None, body_size: int) -> int | None:
    """The JSON part's length from the Inference-Header-Content-Length header (None: all JSON)."""
    if value is None:
        return None
    text = value.strip()
    if not ascii_digits(text):
        raise InputError(f"{HEADER_LENGTH} must be a non-negative integer, got {value[:ERROR_PREVIEW_CHARS]!r}")
    length = int(text)
    if length == 0 or length > body_size:
        raise InputError(f"{HEADER_LENGTH} is {length} but the body has {body_size} bytes: the JSON header "
                         "must be non-empty and lie within the body")
    return length


def parse_request(body: bytes, json_length: int | None, max_json_values: int) -> InferRequest:
    """Split the body into the JSON header and binary tensor data and build every input tensor."""
    if not body:
        raise InputError("empty body: send an inference request {\"inputs\": [...]}")
    view = memoryview(body)  # binary inputs become views of the body, never copies of it
    head, binary = (view, view[:0]) if json_length is None else (view[:json_length], view[json_length:])
    doc = _load_json(head)
    if not isinstance(doc, dict):
        raise InputError("the inference request must be a JSON object {\"inputs\": [...]}")
    parameters = _parameters(doc.get("parameters"), "request")
    inputs_doc = doc.get("inputs")
    if not isinstance(inputs_doc, list) or not inputs_doc:
        raise InputError("'inputs' must be a non-empty list of tensors {\"name\", \"datatype\", \"shape\", \"data\"}")
    inputs: dict[str, InputTensor] = {}
    offset = 0
    for i, item in enumerate(inputs_doc):
        tensor, offset = _input(item, i, binary, offset, max_json_values)
        if tensor.name in inputs:
            raise InputError(f"input {tensor.name!r} appears more than once")
        inputs[tensor.name] = tensor
    if offset != len(binary):
        raise InputError(f"the inputs' {BINARY_DATA_SIZE} values add up to {offset} bytes but {len(binary)} bytes "
                         f"follow the JSON header ({HEADER_LENGTH})")
    binary_output = parameters.pop(BINARY_DATA_OUTPUT, False)
    if not isinstance(binary_output, bool):
        raise InputError(f"parameter {BINARY_DATA_OUTPUT!r} must be a boolean")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InputError("'id' must be a string")
    return InferRequest(inputs, parameters, _outputs(doc.get("outputs"), binary_output), binary_output, request_id)


def _load_json(head: memoryview) -> object:
    try:
        return json.loads(bytes(head))
    except (ValueError, RecursionError) as exc:  # ValueError: syntax, encoding, an int over 4300 digits
        raise InputError(f"the inference header is not valid JSON ({str(exc)[:ERROR_PREVIEW_CHARS]}); binary "
                         f"tensor data needs the {HEADER_LENGTH} header") from None


def _parameters(value: object, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, (bool, int, float, str)) for v in value.values()):
        raise InputError(f"{where} 'parameters' must be an object of booleans, numbers and strings")
    return dict(value)


def _input(item: object, index: int, binary: memoryview, offset: int,
           max_json_values: int) -> tuple[InputTensor, int]:
    if not isinstance(item, dict):
        raise InputError(f"inputs[{index}] must be an object")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise InputError(f"inputs[{index}] needs a string 'name'")
    datatype = item.get("datatype")
    if datatype not in DATATYPES:
        raise InputError(f"input {name!r}: unsupported datatype {str(datatype)[:ERROR_PREVIEW_CHARS]!r} "
                         f"(one of {', '.join(DATATYPES)})")
    shape = item.get("shape")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise InputError(f"input {name!r}: 'shape' must be a list of non-negative integers")
    shape, dtype = tuple(shape), DATATYPES[datatype]
    if math.prod(d for d in shape if d) * dtype.itemsize > MAX_ARRAY_BYTES:  # numpy cannot even shape it
        raise InputError(f"input {name!r}: shape {list(shape)[:8]} is too large for any tensor")
    count = math.prod(shape)
    size = _parameters(item.get("parameters"), f"input {name!r}").get(BINARY_DATA_SIZE)
    has_data = "data" in item
    if size is not None:
        if has_data:
            raise InputError(f"input {name!r} has both 'data' and {BINARY_DATA_SIZE}: send one")
        if type(size) is not int or size < 0:
            raise InputError(f"input {name!r}: {BINARY_DATA_SIZE} must be a non-negative integer")
        if size != count * dtype.itemsize:
            raise InputError(f"input {name!r}: {BINARY_DATA_SIZE} is {size} bytes but shape {list(shape)} of "
                             f"{datatype} needs {count * dtype.itemsize}")
        if offset + size > len(binary):
            raise InputError(f"input {name!r}: {BINARY_DATA_SIZE} {size} runs past the end of the body "
                             f"({len(binary) - offset} bytes left)")
        array = np.frombuffer(binary, dtype=dtype, count=count, offset=offset).reshape(shape)
        return InputTensor(name, datatype, shape, array), offset + size
    if not has_data:
        raise InputError(f"input {name!r} has neither 'data' nor parameters.{BINARY_DATA_SIZE}")
    return InputTensor(name, datatype, shape, _json_data(item["data"], name, datatype, shape, max_json_values)), offset


def _json_data(data: object, name: str, datatype: str, shape: tuple[int, ...], max_values: int) -> np.ndarray:
    """A JSON tensor (flat or nested row-major list) -> array of ``shape``, values checked by kind."""
    if not isinstance(data, list):
        raise InputError(f"input {name!r}: 'data' must be a list (flat or nested, row-major)")
    try:
        values = np.array(data, dtype=object).ravel()
    except (ValueError, RecursionError) as exc:
        raise InputError(f"input {name!r}: 'data' is not a list of numbers "
                         f"({str(exc)[:ERROR_PREVIEW_CHARS]})") from None
    if values.size > max_values:
        raise TooLargeError(f"input {name!r}: {values.size} JSON values exceed the limit of {max_values}; "
                            f"send the tensor as binary data ({BINARY_DATA_SIZE})")
    if values.size != math.prod(shape):
        raise InputError(f"input {name!r}: shape {list(shape)} needs {math.prod(shape)} values, 'data' has "
                         f"{values.size}")
    dtype = DATATYPES[datatype]
    flat = values.tolist()
    kinds = {type(v) for v in flat}
    allowed = {"b": {bool}, "u": {int}, "i": {int}, "f": {int, float}}[dtype.kind]
    if not kinds <= allowed:
        raise InputError(f"input {name!r}: {datatype} 'data' must hold only "
                         f"{'booleans' if dtype.kind == 'b' else 'integers' if dtype.kind in 'ui' else 'numbers'}")
    if dtype.kind in "ui" and flat:
        info = np.iinfo(dtype)
        if min(flat) < info.min or max(flat) > info.max:
            raise InputError(f"input {name!r}: values outside the {datatype} range [{info.min}, {info.max}]")
    try:
        with np.errstate(over="ignore"):  # float overflow becomes inf, which the models refuse by name
            return np.array(flat, dtype=dtype).reshape(shape)
    except OverflowError:  # a Python int beyond any float (10**400)
        raise InputError(f"input {name!r}: a value is too large for {datatype}") from None


def _outputs(value: object, binary_default: bool) -> list[RequestedOutput] | None:
    if value is None or value == []:
        return None
    if not isinstance(value, list):
        raise InputError("'outputs' must be a list of {\"name\": ...} objects")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InputError(f"outputs[{i}] must be an object with a string 'name'")
        params = _parameters(item.get("parameters"), f"output {item['name']!r}")
        binary = params.get(BINARY_DATA, binary_default)
        if not isinstance(binary, bool):
            raise InputError(f"output {item['name']!r}: parameter {BINARY_DATA!r} must be a boolean")
        out.append(RequestedOutput(item["name"], binary))
    if len({o.name for o in out}) != len(out):
        raise InputError("an output is requested more than once")
    return out


# --- responses -------------------------------------------------------------------------------------
def encode_response(response: InferResponse) -> tuple[bytes, dict[str, str], str]:
    """(body, headers, media type): JSON alone, or the JSON header followed by binary outputs."""
    doc: dict = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id is not None:
        doc["id"] = response.id
    if response.parameters:
        doc["parameters"] = response.parameters
    outputs, blobs = [], []
    for name, array, binary in response.outputs:
        array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        tensor = {"name": name, "datatype": datatype_of(array), "shape": list(array.shape)}
        if binary:
            data = array.tobytes()
            tensor["parameters"] = {BINARY_DATA_SIZE: len(data)}
            blobs.append(data)
        else:
            tensor["data"] = array.ravel().tolist()
        outputs.append(tensor)
    doc["outputs"] = outputs
    head = json.dumps(doc, separators=(",", ":")).encode()
    if not blobs:
        return head, {}, JSON_MEDIA
    return b"".join([head, *blobs]), {HEADER_LENGTH: str(len(head))}, BINARY_MEDIA


# --- content encoding --------------------------------------------------------------------------------
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}  # deflate = zlib stream (RFC 9110)
IDENTITY = "identity"


def decompress(body: bytes, encoding: str | None, max_bytes: int) -> bytes:
    """Undo a request ``Content-Encoding`` (gzip, deflate), refusing output past ``max_bytes`` (413)."""
    encoding = (encoding or IDENTITY).strip().lower()
    if encoding == IDENTITY:
        return body
    if encoding not in _WBITS:
        raise InputError(f"unsupported Content-Encoding {encoding[:ERROR_PREVIEW_CHARS]!r} "
                         "(gzip, deflate or identity)")
    inflater = zlib.decompressobj(_WBITS[encoding])
    try:
        out = inflater.decompress(body, max_bytes + 1)
    except zlib.error as exc:
        raise InputError(f"body is not valid {encoding} data ({exc})") from None
    if len(out) > max_bytes:
        raise TooLargeError(f"decompressed body exceeds the limit of {max_bytes} bytes")
    if not inflater.eof:
        raise InputError(f"truncated {encoding} body")
    if inflater.unused_data:
        raise InputError(f"{len(inflater.unused_data)} bytes follow the end of the {encoding} stream")
    return out
