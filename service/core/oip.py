"""The Open Inference Protocol (KServe v2) without its transport: the datatype table, inference
requests and responses as plain data, and the two models of one loaded DGAE checkpoint. The REST
adapter (service.v2) and the gRPC adapter (service.grpc_oip) parse their wire formats into these
and share everything else: checks, parameters, messages, admission by cost, the engine.

``dgae-encoder``: input ``images`` UINT8 [N, H, W, 3] (RGB pixels) or FP32 [N, 3, H, W] in
[-1, 1]; parameters ``mode`` (mean | sample), ``seed`` (sample: int s, image i uses s+i, or
"s0,s1,..."), ``dtype`` (FP32 | FP16 latents); output ``latents`` [N, c, H/f, W/f].

``dgae-decoder``: input ``latents`` FP32/FP16 [N, c, h, w], optional input ``seeds`` INT64 [N];
parameters ``steps``, ``seed`` (as for the encoder; random when neither is given); output
``images`` UINT8 [N, h*f, w*f, 3].

Both build their requests with :mod:`service.core.params` and run through the engine, so
batching, seeds, limits, messages and metrics are those of /encode and /decode: a decode with seed
s returns what ``/decode?seed=s`` returns. Admission is the transport's: each passes an ``admit``
callable that reserves the request's cost for as long as the exchange lasts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib import metadata
from typing import Awaitable, Callable

import numpy as np
import torch
from starlette.concurrency import run_in_threadpool

from dgae.errors import InputError
from formats.images import to_tensor, to_uint8

from . import cost
from .engine import DECODE, ENCODE, Engine, ModelSpec
from .errors import ParameterError
from .params import check_items, decode_request, encode_request, float_images

BINARY_DATA_SIZE = "binary_data_size"   # HTTP input / output parameter: bytes of this tensor after the JSON
BINARY_DATA = "binary_data"             # HTTP requested-output parameter: send this output as bytes
BINARY_DATA_OUTPUT = "binary_data_output"  # HTTP request parameter: default for every output
# The one datatype table: protocol name -> little-endian numpy dtype. BYTES and BF16 exist in the
# protocol but no model here takes or returns them, so they are refused like unknown names.
DATATYPES: dict[str, np.dtype] = {name: np.dtype(code) for name, code in (
    ("BOOL", "?"), ("UINT8", "u1"), ("UINT16", "<u2"), ("UINT32", "<u4"), ("UINT64", "<u8"),
    ("INT8", "i1"), ("INT16", "<i2"), ("INT32", "<i4"), ("INT64", "<i8"),
    ("FP16", "<f2"), ("FP32", "<f4"), ("FP64", "<f8"))}
_NAME_OF_DTYPE = {dtype: name for name, dtype in DATATYPES.items()}


def datatype_of(array: np.ndarray) -> str:
    """The protocol name of an array's dtype (byte order normalised to little-endian)."""
    name = _NAME_OF_DTYPE.get(array.dtype.newbyteorder("<"))
    if name is None:
        raise TypeError(f"no Open Inference Protocol datatype for numpy dtype {array.dtype}")
    return name


@dataclass(frozen=True)
class InputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    array: np.ndarray  # already shaped; read-only view of the body for binary inputs


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool


@dataclass(frozen=True)
class InferRequest:
    inputs: dict[str, InputTensor]
    parameters: dict[str, bool | int | float | str]
    outputs: list[RequestedOutput] | None  # None: every output of the model
    binary_output: bool                    # the request's binary_data_output (default for outputs)
    id: str | None = None


@dataclass
class InferResponse:
    model_name: str
    model_version: str
    outputs: list[tuple[str, np.ndarray, bool]]  # (name, array, as binary)
    parameters: dict[str, bool | int | float | str] = field(default_factory=dict)
    id: str | None = None


SERVER_NAME = "dgae-serve"
DISTRIBUTION = "dgae-serve"
UNKNOWN_VERSION = "unknown"
ENCODER, DECODER = "dgae-encoder", "dgae-decoder"
VERSION = "1"
DYNAMIC = -1
RGB = 3
LATENT_DATATYPES = {"FP32": np.float32, "FP16": np.float16}
MAX_NAME_CHARS = 100  # of an unknown model name or version echoed in an error


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: accepted datatypes, each with its shape (-1 = any size)."""

    name: str
    shapes: dict[str, tuple[int, ...]]
    optional: bool = False

    def metadata(self) -> dict:
        """The protocol's metadata tensor (name, datatype, shape of the first, preferred layout; one entry
        per name, so clients that build one tensor per entry keep working) plus ``accepted``: every
        datatype this tensor takes or can return, each with its shape."""
        datatype, shape = next(iter(self.shapes.items()))
        return {"name": self.name, "datatype": datatype, "shape": list(shape),
                "accepted": [{"datatype": d, "shape": list(s)} for d, s in self.shapes.items()]}

    def check(self, datatype: str, shape: tuple[int, ...]) -> None:
        if datatype not in self.shapes:
            raise InputError(f"input {self.name!r} has datatype {datatype}; expected {' or '.join(self.shapes)}")
        want = self.shapes[datatype]
        if len(shape) != len(want) or any(w != DYNAMIC and w != d for w, d in zip(want, shape)):
            raise InputError(f"input {self.name!r} ({datatype}) has shape {list(shape)}; expected {list(want)} "
                             "(-1 = any size)")
        if 0 in shape:
            raise InputError(f"input {self.name!r} has an empty dimension {list(shape)}")


# admit(operation, pixels): reserve the request's cost until the transport's exchange ends (or refuse)
Admit = Callable[[str, int], None]
# run(service, admit, parsed request, {output: binary}) -> (arrays, parameters)
Infer = Callable[[Engine, Admit, InferRequest, dict[str, bool]],
                 Awaitable[tuple[dict[str, np.ndarray], dict]]]


@dataclass(frozen=True)
class V2Model:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    parameters: tuple[str, ...]
    run: Infer

    def metadata(self, platform: str) -> dict:
        return {"name": self.name, "versions": [VERSION], "platform": platform,
                "inputs": [t.metadata() for t in self.inputs], "outputs": [t.metadata() for t in self.outputs]}

    def validate(self, req: InferRequest) -> dict[str, bool]:
        """Check inputs, parameters and requested outputs; returns {output name: as binary}."""
        known = {t.name: t for t in self.inputs}
        for name in req.inputs:
            if name not in known:
                raise InputError(f"{self.name} has no input {name!r} (inputs: {', '.join(known)})")
        for spec in self.inputs:
            tensor = req.inputs.get(spec.name)
            if tensor is None:
                if not spec.optional:
                    raise InputError(f"{self.name} needs input {spec.name!r}")
                continue
            spec.check(tensor.datatype, tensor.shape)
        unknown = sorted(set(req.parameters) - set(self.parameters))
        if unknown:
            raise InputError(f"{self.name} does not take parameter(s) {', '.join(unknown)} (parameters: "
                             f"{', '.join((*self.parameters, BINARY_DATA_OUTPUT))})")
        names = [t.name for t in self.outputs]
        wanted = req.outputs or [RequestedOutput(n, req.binary_output) for n in names]
        for out in wanted:
            if out.name not in names:
                raise InputError(f"{self.name} has no output {out.name!r} (outputs: {', '.join(names)})")
        return {o.name: o.binary for o in wanted}

    async def infer(self, svc: Engine, admit: Admit, req: InferRequest) -> InferResponse:
        binary = self.validate(req)
        arrays, parameters = await self.run(svc, admit, req, binary)
        return InferResponse(self.name, VERSION, [(name, arrays[name], b) for name, b in binary.items()],
                             parameters, req.id)


def server_version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return UNKNOWN_VERSION


def platform(svc: Engine) -> str:
    """The models' ``platform`` in their metadata: the backend that runs them."""
    return f"dgae_{svc.settings.backend}"


class UnknownModel(InputError):
    code = "unknown_model"


def lookup(models: dict[str, V2Model], name: str, version: str | None) -> V2Model:
    """The model called ``name`` (400 otherwise); ``version``, when given, must be its only version."""
    model = models.get(name)
    if model is None:
        raise UnknownModel(f"unknown model {name[:MAX_NAME_CHARS]!r}; this server has {', '.join(models)}")
    if version is not None and version != VERSION:
        raise UnknownModel(f"model {name!r} has no version {version[:MAX_NAME_CHARS]!r} (versions: {VERSION})")
    return model


def check_json_output(name: str, values: int, binary: bool, max_values: int) -> None:
    """Refuse (before computing) a JSON output larger than the service's JSON limit."""
    if not binary and values > max_values:
        raise InputError(f"output {name!r} has {values} values, over the JSON limit of {max_values}; ask for it "
                         f"as binary data (outputs[].parameters.{BINARY_DATA} or {BINARY_DATA_OUTPUT})")


# --- parameters ------------------------------------------------------------------------------------
def _text(params: dict, name: str, default: str) -> str:
    """A string parameter (checked against its choices by :mod:`dgae.request`)."""
    value = params.get(name, default)
    if not isinstance(value, str):
        raise ParameterError(f"parameter {name!r} must be a string, got a {type(value).__name__}")
    return value


def _seeds_param(seeds) -> str:
    return ",".join(map(str, seeds))


# --- encoder ----------------------------------------------------------------------------------------
def _image_tensor(req: InferRequest, svc: Engine) -> torch.Tensor:
    """UINT8 [N, H, W, 3] or FP32 [N, 3, H, W] in [-1, 1] -> float [N, 3, H, W] in [-1, 1]."""
    tensor = req.inputs["images"]
    arr = tensor.array
    h, w = arr.shape[1:3] if tensor.datatype == "UINT8" else arr.shape[2:4]
    check_items(svc, len(arr), h, w, "images")
    if tensor.datatype == "UINT8":
        return to_tensor(arr)
    return float_images(torch.from_numpy(np.array(arr, dtype=np.float32)), "FP32 images")


def _encoder(spec: ModelSpec) -> V2Model:
    async def run(svc: Engine, admit: Admit, req: InferRequest, binary: dict[str, bool]):
        s, p = svc.settings, req.parameters
        dtype_name = _text(p, "dtype", "FP32")
        if dtype_name not in LATENT_DATATYPES:
            raise ParameterError(f"parameter 'dtype' must be one of {', '.join(LATENT_DATATYPES)}, got {dtype_name!r}")
        images = await run_in_threadpool(_image_tensor, req, svc)
        mode = _text(p, "mode", "mean")
        enc = encode_request(svc, images, mode, p.get("seed") if mode == "sample" else None, _text(p, "tile", "auto"))
        n, _, h, w = images.shape
        admit(ENCODE, cost.encode_charge(svc.config, enc))  # the same cost admission as /encode
        check_json_output("latents", n * spec.c * (h // spec.f) * (w // spec.f), binary["latents"], s.max_json_values)
        latents = await svc.encode(enc)
        params = {"mode": mode, **({"seeds": _seeds_param(enc.seeds)} if mode == "sample" else {})}
        return {"latents": latents.to(torch.float32).numpy().astype(LATENT_DATATYPES[dtype_name])}, params

    latent = (DYNAMIC, spec.c, DYNAMIC, DYNAMIC)
    return V2Model(ENCODER,
                   inputs=(TensorSpec("images", {"UINT8": (DYNAMIC, DYNAMIC, DYNAMIC, RGB),
                                                 "FP32": (DYNAMIC, RGB, DYNAMIC, DYNAMIC)}),),
                   outputs=(TensorSpec("latents", {name: latent for name in LATENT_DATATYPES}),),
                   parameters=("mode", "seed", "dtype", "tile"), run=run)


# --- decoder ----------------------------------------------------------------------------------------
def _decode_seeds(req: InferRequest, n: int):
    """The INT64 ``seeds`` input (one per latent), else the ``seed`` parameter (random when neither)."""
    tensor, seed = req.inputs.get("seeds"), req.parameters.get("seed")
    if tensor is None:
        return seed
    if seed is not None:
        raise InputError("give either the 'seeds' input or the 'seed' parameter, not both")
    if tensor.shape != (n,):
        raise InputError(f"input 'seeds' has shape {list(tensor.shape)}; expected [{n}], one per latent")
    return [int(s) for s in tensor.array]


def _decoder(spec: ModelSpec) -> V2Model:
    async def run(svc: Engine, admit: Admit, req: InferRequest, binary: dict[str, bool]):
        s, p = svc.settings, req.parameters
        latents = torch.from_numpy(np.array(req.inputs["latents"].array, dtype=np.float32))
        dec = await run_in_threadpool(decode_request, svc, latents, p.get("steps"), _decode_seeds(req, len(latents)),
                                      _text(p, "tile", "auto"))
        n, _, h, w = latents.shape
        admit(DECODE, cost.decode_charge(svc.config, dec))
        check_json_output("images", n * h * spec.f * w * spec.f * RGB, binary["images"], s.max_json_values)
        images = await svc.decode(dec)
        rgbs = await run_in_threadpool(to_uint8, images)
        return {"images": rgbs}, {"steps": dec.steps, "seeds": _seeds_param(dec.seeds)}

    latent = (DYNAMIC, spec.c, DYNAMIC, DYNAMIC)
    return V2Model(DECODER,
                   inputs=(TensorSpec("latents", {name: latent for name in LATENT_DATATYPES}),
                           TensorSpec("seeds", {"INT64": (DYNAMIC,)}, optional=True)),
                   outputs=(TensorSpec("images", {"UINT8": (DYNAMIC, DYNAMIC, DYNAMIC, RGB)}),),
                   parameters=("steps", "seed", "tile"), run=run)


def build_models(spec: ModelSpec) -> dict[str, V2Model]:
    return {m.name: m for m in (_encoder(spec), _decoder(spec))}
