"""Helpers for the kernel parity tests: Triton availability guard, seeded inputs, poisoning."""
from __future__ import annotations

import importlib.util
import os

import pytest
import torch

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
DTYPE_IDS = ("fp32", "fp16", "bf16")

_HAS_TRITON = importlib.util.find_spec("triton") is not None
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

requires_triton = pytest.mark.skipif(
    not (_HAS_TRITON and _INTERPRET),
    reason="kernel parity tests need triton installed and TRITON_INTERPRET=1 (CPU interpreter)",
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape: int, g: torch.Generator, dtype=torch.float32, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, generator=g) * scale).to(dtype)


def poison_like(t: torch.Tensor) -> torch.Tensor:
    """A tensor the kernel must overwrite completely (NaN marks anything left unwritten)."""
    return torch.full_like(t, float("nan"))
