"""The one precision table: a precision's name and what it means to torch, numpy and ONNX.

``fp32``/``fp16`` exist on every runtime; ``bf16`` has no numpy dtype, so ONNX graphs and numpy
I/O use fp32 or fp16 (bf16 is a torch dtype and a TensorRT build flag).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .errors import ConfigError, DGAEError


@dataclass(frozen=True)
class Precision:
    name: str
    torch_dtype: torch.dtype
    numpy_dtype: np.dtype | None  # None: numpy has no such dtype (bf16)

    @property
    def numpy_name(self) -> str:
        """The dtype name in ONNX manifests and npy payloads ("float32", "float16")."""
        if self.numpy_dtype is None:
            raise ConfigError(f"{self.name} has no numpy/ONNX I/O dtype; use fp32 or fp16")
        return self.numpy_dtype.name


PRECISIONS: dict[str, Precision] = {
    "fp32": Precision("fp32", torch.float32, np.dtype(np.float32)),
    "fp16": Precision("fp16", torch.float16, np.dtype(np.float16)),
    "bf16": Precision("bf16", torch.bfloat16, None),
}
NUMPY_PRECISIONS = tuple(name for name, p in PRECISIONS.items() if p.numpy_dtype is not None)  # fp32, fp16


def get_precision(name: str, error: type[DGAEError] = ConfigError,
                  allowed: tuple[str, ...] = tuple(PRECISIONS)) -> Precision:
    """The :class:`Precision` called ``name``; ``error`` (naming the allowed ones) otherwise."""
    if name not in allowed:
        raise error(f"precision must be one of {', '.join(allowed)}, got {name!r}")
    return PRECISIONS[name]


def from_numpy_name(name: str) -> Precision:
    """The precision whose numpy dtype is called ``name`` ("float32" -> fp32)."""
    for p in PRECISIONS.values():
        if p.numpy_dtype is not None and p.numpy_dtype.name == name:
            return p
    raise ConfigError(f"no precision has the numpy dtype {name!r}")
