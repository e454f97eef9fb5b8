"""Helpers for the kernel parity tests: Triton availability guard, seeded inputs, poisoning.

The parity modules run on CPU under the Triton interpreter (``TRITON_INTERPRET=1``, what CI does)
or, with ``DGAE_KERNEL_TEST_DEVICE=cuda`` and ``TRITON_INTERPRET=0``, on a GPU with the kernels
really compiled (``tests/test_kernels_gpu.py`` starts that run). Inputs are drawn on the CPU from
seeded generators and moved to the device, so both runs check the same values."""
from __future__ import annotations

import importlib.util
import os

import pytest
import torch

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
DTYPE_IDS = ("fp32", "fp16", "bf16")

DEVICE_ENV = "DGAE_KERNEL_TEST_DEVICE"
DEVICE = torch.device(os.environ.get(DEVICE_ENV, "cpu"))

_HAS_TRITON = importlib.util.find_spec("triton") is not None
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_COMPILED_ON_CUDA = DEVICE.type == "cuda" and torch.cuda.is_available() and not _INTERPRET

requires_triton = pytest.mark.skipif(
    not (_HAS_TRITON and (_INTERPRET or _COMPILED_ON_CUDA)),
    reason=f"kernel parity tests need triton and either TRITON_INTERPRET=1 (CPU interpreter) or "
           f"{DEVICE_ENV}=cuda with TRITON_INTERPRET=0 on a GPU (see tests/test_kernels_gpu.py)",
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape: int, g: torch.Generator, dtype=torch.float32, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, generator=g) * scale).to(device=DEVICE, dtype=dtype)


def poison_like(t: torch.Tensor) -> torch.Tensor:
    """A tensor the kernel must overwrite completely (NaN marks anything left unwritten)."""
    return torch.full_like(t, float("nan"))
