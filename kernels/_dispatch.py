"""One switch between Triton kernels and their pure-PyTorch references.

``DGAE_KERNELS`` = ``triton`` | ``reference`` | ``auto`` (default). ``auto`` uses Triton on CUDA
tensors and the reference elsewhere; ``triton`` also runs Triton on CPU tensors, which only works
under ``TRITON_INTERPRET=1`` (how CI tests the kernels). The variable is read on every call, so
tests and benchmarks can flip it without re-importing.

The Triton kernels are forward-only (no backward). Whenever autograd would record a graph through
a call (grad mode on and any input requiring grad, e.g. training), the reference runs instead,
in every mode, so gradients are always correct.
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


def needs_autograd(*tensors: torch.Tensor | None) -> bool:
    """True when autograd would record a graph through an op on ``tensors``."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def use_triton(t: torch.Tensor, *others: torch.Tensor | None) -> bool:
    """True when the Triton kernel should handle ``t`` (and the op's other inputs ``others``)."""
    mode = kernel_mode()
    if mode == "reference" or needs_autograd(t, *others):
        return False
    if mode == "triton":
        return t.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"
    return t.is_cuda
