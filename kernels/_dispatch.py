"""One switch between Triton kernels and their pure-PyTorch references.

``DGAE_KERNELS`` = ``triton`` | ``reference`` | ``auto`` (default). ``auto`` uses Triton on CUDA
tensors and the reference elsewhere; ``triton`` also runs Triton on CPU tensors, which only works
under ``TRITON_INTERPRET=1`` (how CI tests the kernels). The variable is read on every call, so
tests and benchmarks can flip it without re-importing.
"""
from __future__ import annotations

import os

import torch

ENV_VAR = "DGAE_KERNELS"
_MODES = ("auto", "triton", "reference")


def kernel_mode() -> str:
    mode = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if mode not in _MODES:
        raise ValueError(f"{ENV_VAR}={mode!r}: expected one of {', '.join(_MODES)}")
    return mode


def use_triton(t: torch.Tensor) -> bool:
    """True when the Triton kernel should handle tensor ``t``."""
    mode = kernel_mode()
    if mode == "reference":
        return False
    if mode == "triton":
        return t.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"
    return t.is_cuda
