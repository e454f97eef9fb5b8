"""One switch between Triton kernels and their pure-PyTorch references.

``DGAE_KERNELS`` = ``triton`` | ``reference`` | ``auto`` (default). ``auto`` uses Triton on CUDA
tensors and the reference elsewhere; ``triton`` also runs Triton on CPU tensors, which only works
under ``TRITON_INTERPRET=1`` (how CI tests the kernels). The variable is read on every call.

``with use_kernels("reference"):`` overrides the variable for the calling thread (or asyncio task)
only, through a context variable: an in-process ONNX export tracing the references never changes
the kernels a serving thread runs, and the process environment is never rewritten.

The Triton kernels are forward-only (no backward). Whenever autograd would record a graph through
a call (grad mode on and any input requiring grad, e.g. training), the reference runs instead,
in every mode, so gradients are always correct.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
from typing import Iterator

import torch

ENV_VAR = "DGAE_KERNELS"
_MODES = ("auto", "triton", "reference")
_OVERRIDE: contextvars.ContextVar[str | None] = contextvars.ContextVar("dgae_kernels", default=None)


def _checked(mode: str, source: str) -> str:
    mode = mode.strip().lower() or "auto"
    if mode not in _MODES:
        raise ValueError(f"{source}={mode!r}: expected one of {', '.join(_MODES)}")
    return mode


def kernel_mode() -> str:
    override = _OVERRIDE.get()
    return override if override is not None else _checked(os.environ.get(ENV_VAR, "auto"), ENV_VAR)


@contextlib.contextmanager
def use_kernels(mode: str) -> Iterator[None]:
    """Select the kernels for this thread / task only, for the duration of the block."""
    token = _OVERRIDE.set(_checked(mode, "use_kernels"))
    try:
        yield
    finally:
        _OVERRIDE.reset(token)


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
