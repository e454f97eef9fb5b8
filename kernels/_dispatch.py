"""One switch between Triton kernels and their pure-PyTorch references.

``DGAE_KERNELS`` = ``triton`` | ``reference`` | ``auto`` (default). ``auto`` uses Triton on CUDA
tensors and the reference elsewhere; ``triton`` also runs Triton on CPU tensors, which only works
under ``TRITON_INTERPRET=1`` (how CI tests the kernels). The variable is read on every call.

``with use_kernels("reference"):`` overrides the variable for the calling thread (or asyncio task)
only, through a context variable: an in-process ONNX export tracing the references never changes
the kernels a serving thread runs, and the process environment is never rewritten.

Under ``torch.compile`` the references are traced in every mode (see :func:`use_triton`).

``with record_gpu_launches() as launches:`` (for ``dgae kernels compile``): every kernel call appends
``(kernel name, FixedLaunch)``, the launch a GPU would make for its inputs by default, then runs the
PyTorch reference, so a model traced on the meta device lists the exact launches it needs.

The Triton kernels are forward-only (no backward). Whenever autograd would record a graph through
a call (grad mode on and any input requiring grad, e.g. training), the reference runs instead,
in every mode, so gradients are always correct.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
from typing import Callable, Iterator

import torch

ENV_VAR = "DGAE_KERNELS"
_MODES = ("auto", "triton", "reference")
_OVERRIDE: contextvars.ContextVar[str | None] = contextvars.ContextVar("dgae_kernels", default=None)
_RECORDER: contextvars.ContextVar[list | None] = contextvars.ContextVar("dgae_kernel_launches", default=None)


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


@contextlib.contextmanager
def record_gpu_launches() -> Iterator[list]:
    """Record ``(kernel, FixedLaunch)`` per kernel call in this thread / task; the references run."""
    launches: list = []
    token = _RECORDER.set(launches)
    try:
        yield launches
    finally:
        _RECORDER.reset(token)


def record_launch(kernel: str, make_launch: Callable[[], object]) -> None:
    """While :func:`record_gpu_launches` is active, append ``(kernel, make_launch())``. Never while
    ``torch.compile`` traces (Dynamo cannot read a ContextVar; see :func:`use_triton`)."""
    if torch.compiler.is_compiling():
        return
    launches = _RECORDER.get()
    if launches is not None:
        launches.append((kernel, make_launch()))


def needs_autograd(*tensors: torch.Tensor | None) -> bool:
    """True when autograd would record a graph through an op on ``tensors``."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def use_triton(t: torch.Tensor, *others: torch.Tensor | None) -> bool:
    """True when the Triton kernel should handle ``t`` (and the op's other inputs ``others``).

    Never while ``torch.compile`` traces: Inductor fuses the PyTorch references itself, and reading
    the selection (a ContextVar, which Dynamo cannot trace) would break the graph at every norm and
    attention, leaving a compiled decoder that mostly runs eager."""
    if torch.compiler.is_compiling():
        return False
    mode = kernel_mode()
    if mode == "reference" or _RECORDER.get() is not None or needs_autograd(t, *others):
        return False
    if mode == "triton":
        return t.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"
    return t.is_cuda
