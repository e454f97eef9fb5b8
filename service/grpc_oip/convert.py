"""Open Inference Protocol messages over gRPC (``inference.ModelInferRequest`` /
``ModelInferResponse``, the stubs ``tritonclient[grpc]`` ships) into and from the transport-free
requests and responses of :mod:`service.core.oip`.

Inputs come as ``raw_input_contents`` (one little-endian, row-major blob per input, in input
order: what tritonclient sends) or as typed ``contents``; outputs always go back as
``raw_output_contents``. Every malformed message raises InputError (INVALID_ARGUMENT) naming the
problem; sizes are bounded by the server's message limit (``max_body_bytes``) before any of this runs.
"""
from __future__ import annotations

import math

import numpy as np

from dgae.errors import InputError

from ..core.oip import DATATYPES, InferRequest, InferResponse, InputTensor, RequestedOutput, datatype_of

ERROR_PREVIEW_CHARS = 200
# Typed contents: which field of InferTensorContents holds each datatype (FP16 has none: raw only).
CONTENTS_FIELD = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
                  "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
                  "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
                  "FP32": "fp32_contents", "FP64": "fp64_contents"}
CONTENTS_FIELDS = frozenset(CONTENTS_FIELD.values()) | {"bytes_contents"}


def parameters_of(params) -> dict[str, bool | int | float | str]:
    """A protobuf ``map<string, InferParameter>`` -> plain values (an empty parameter is refused)."""
    out = {}
    for key, param in params.items():
        which = param.WhichOneof("parameter_choice")
        if which is None:
            raise InputError(f"parameter {key[:ERROR_PREVIEW_CHARS]!r} has no value")
        out[key] = getattr(param, which)
    return out


def set_parameters(target, values: dict[str, bool | int | float | str]) -> None:
    """Plain values -> a protobuf ``map<string, InferParameter>`` (bool before int: bool is an int)."""
    for key, value in values.items():
        param = target[key]
        if isinstance(value, bool):
            param.bool_param = value
        elif isinstance(value, int):
            param.int64_param = value
        elif isinstance(value, float):
            param.double_param = value
        else:
            param.string_param = str(value)


def _shape(tensor) -> tuple[int, ...]:
    shape = tuple(tensor.shape)
    if any(d < 0 for d in shape):
        raise InputError(f"input {tensor.name!r}: shape {list(shape)} has a negative size")
    return shape


def _raw_input(tensor, blob: bytes) -> InputTensor:
    shape, dtype = _shape(tensor), DATATYPES[tensor.datatype]
    need = math.prod(shape) * dtype.itemsize
    if len(blob) != need:
        raise InputError(f"input {tensor.name!r}: raw_input_contents holds {len(blob)} bytes but shape "
                         f"{list(shape)} of {tensor.datatype} needs {need}")
    return InputTensor(tensor.name, tensor.datatype, shape, np.frombuffer(blob, dtype=dtype).reshape(shape))


def _typed_input(tensor) -> InputTensor:
    shape, dtype = _shape(tensor), DATATYPES[tensor.datatype]
    field = CONTENTS_FIELD.get(tensor.datatype)
    if field is None:
        raise InputError(f"input {tensor.name!r}: {tensor.datatype} has no typed contents field; send it in "
                         "raw_input_contents")
    used = [f.name for f, _ in tensor.contents.ListFields()]
    if any(name != field for name in used):
        raise InputError(f"input {tensor.name!r} ({tensor.datatype}) carries {', '.join(used)}; expected {field}")
    values = getattr(tensor.contents, field)
    if len(values) != math.prod(shape):
        raise InputError(f"input {tensor.name!r}: shape {list(shape)} needs {math.prod(shape)} values, "
                         f"{field} has {len(values)}")
    if dtype.kind in "ui" and len(values):
        info = np.iinfo(dtype)
        if min(values) < info.min or max(values) > info.max:
            raise InputError(f"input {tensor.name!r}: values outside the {tensor.datatype} range "
                             f"[{info.min}, {info.max}]")
    with np.errstate(over="ignore"):  # float overflow becomes inf, which the models refuse by name
        return InputTensor(tensor.name, tensor.datatype, shape, np.array(values, dtype=dtype).reshape(shape))


def parse_request(pb) -> InferRequest:
    """A ``ModelInferRequest`` -> the transport-free request (every output raw)."""
    if not pb.inputs:
        raise InputError("the request has no inputs")
    raw = list(pb.raw_input_contents)
    if raw and len(raw) != len(pb.inputs):
        raise InputError(f"raw_input_contents has {len(raw)} entries for {len(pb.inputs)} inputs: send one per "
                         "input, or none and typed contents")
    inputs: dict[str, InputTensor] = {}
    for i, tensor in enumerate(pb.inputs):
        if not tensor.name:
            raise InputError(f"inputs[{i}] needs a name")
        if tensor.datatype not in DATATYPES:
            raise InputError(f"input {tensor.name!r}: unsupported datatype "
                             f"{tensor.datatype[:ERROR_PREVIEW_CHARS]!r} (one of {', '.join(DATATYPES)})")
        if raw and tensor.HasField("contents"):
            raise InputError(f"input {tensor.name!r} has typed contents and raw_input_contents: send one")
        if tensor.name in inputs:
            raise InputError(f"input {tensor.name!r} appears more than once")
        inputs[tensor.name] = _raw_input(tensor, raw[i]) if raw else _typed_input(tensor)
    outputs = [RequestedOutput(o.name, True) for o in pb.outputs] or None
    if outputs and len({o.name for o in outputs}) != len(outputs):
        raise InputError("an output is requested more than once")
    return InferRequest(inputs, parameters_of(pb.parameters), outputs, True, pb.id or None)


def fill_response(response: InferResponse, pb) -> None:
    """The transport-free response -> a ``ModelInferResponse`` (outputs in raw_output_contents)."""
    pb.model_name, pb.model_version = response.model_name, response.model_version
    if response.id:
        pb.id = response.id
    set_parameters(pb.parameters, response.parameters)
    for name, array, _ in response.outputs:
        array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        out = pb.outputs.add()
        out.name, out.datatype = name, datatype_of(array)
        out.shape.extend(array.shape)
        pb.raw_output_contents.append(array.tobytes())
