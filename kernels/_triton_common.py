"""Helpers shared by the Triton kernel modules (imported only once Triton has been selected).

- :func:`interpreting`: True under ``TRITON_INTERPRET=1`` (CPU tensors, numpy-backed interpreter).
- :func:`maybe_autotune`: wraps a ``@triton.jit`` kernel in ``triton.autotune`` only where a real
  GPU driver exists; under the interpreter the caller passes fixed block sizes instead.
"""
from __future__ import annotations

import os
from typing import Callable, Sequence

import torch
import triton

INTERPRET_ENV = "TRITON_INTERPRET"


def interpreting() -> bool:
    return os.environ.get(INTERPRET_ENV, "0") == "1"


def can_autotune() -> bool:
    """Autotuning benchmarks configs on the device: only meaningful with a CUDA driver."""
    return torch.cuda.is_available() and not interpreting()


def maybe_autotune(kernel, configs: Callable[[], Sequence[triton.Config]], key: list[str]):
    """Return ``(launchable, autotuned)``; ``configs`` is only evaluated when autotuning."""
    if can_autotune():
        return triton.autotune(configs=list(configs()), key=key)(kernel), True
    return kernel, False


def check_same_device(name: str, *tensors: torch.Tensor | None) -> None:
    devices = {t.device for t in tensors if t is not None}
    if len(devices) > 1:
        raise ValueError(f"{name}: all tensors must be on one device, got {sorted(map(str, devices))}")
