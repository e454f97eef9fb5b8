"""Raw tensors as the Remote VAE protocol (diffusers' ``remote_utils``, SD.Next) carries them: the
body is the tensor's bytes (little-endian, row-major) and the ``shape`` / ``dtype`` query
parameters describe it; a tensor response carries the same two as headers (``shape`` a JSON list,
``dtype`` a torch dtype name). Every malformed tensor raises a typed error naming the problem.
"""
from __future__ import annotations

import json
import math

import torch

from dgae.errors import InputError

from ..core.errors import ParameterError

TENSOR_MEDIA = "tensor/binary"
H_SHAPE, H_DTYPE = "shape", "dtype"
# The dtypes diffusers' DTYPE_MAP knows (request and response).
DTYPES = {"float16": torch.float16, "float32": torch.float32, "bfloat16": torch.bfloat16, "uint8": torch.uint8}
FLOAT_DTYPES = ("float16", "float32", "bfloat16")
MAX_RANK = 5  # video latents are rank 5; anything larger is refused before any arithmetic


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def parse_tensor(body: bytes, shape: list[int] | None, dtype: str | None) -> torch.Tensor:
    """The body's bytes as a tensor of ``shape`` and ``dtype`` (both required, sizes must agree)."""
    if shape is None or dtype is None:
        raise InputError("a tensor body needs the 'shape' and 'dtype' query parameters "
                         "(diffusers' remote_decode / remote_encode send both)")
    if dtype not in FLOAT_DTYPES:
        raise ParameterError(f"dtype must be one of {', '.join(FLOAT_DTYPES)}, got {dtype[:40]!r}")
    if not 0 < len(shape) <= MAX_RANK or any(d <= 0 for d in shape):
        raise InputError(f"shape must list 1 to {MAX_RANK} positive sizes, got {shape[:MAX_RANK + 1]}")
    torch_dtype = DTYPES[dtype]
    expected = math.prod(shape) * torch_dtype.itemsize
    if len(body) != expected:
        raise InputError(f"the body has {len(body)} bytes but shape {shape} of {dtype} needs {expected}")
    buffer = bytearray(body)  # writable; frombuffer does not keep it alive, so copy out while it is
    return torch.frombuffer(buffer, dtype=torch_dtype).reshape(shape).clone()


def tensor_response(tensor: torch.Tensor) -> tuple[bytes, dict[str, str]]:
    """(bytes, headers) of a tensor response: raw little-endian bytes plus ``shape`` / ``dtype``."""
    t = tensor.detach().cpu().contiguous()
    data = t.view(torch.uint8).numpy().tobytes()
    return data, {H_SHAPE: json.dumps(list(t.shape)), H_DTYPE: dtype_name(t.dtype)}
