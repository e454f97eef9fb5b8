"""Helpers shared by the Triton kernel modules (imported only once Triton has been selected).

- :func:`interpreting`: True under ``TRITON_INTERPRET=1`` (CPU tensors, numpy-backed interpreter).
- :class:`FixedLaunch`: one launch with the fixed GPU config (what ``dgae kernels compile`` compiles
  ahead of time for sm_80 / sm_90, from the same argument code the kernel wrappers run).
- :class:`Launcher`: launches a ``@triton.jit`` kernel with a fixed launch config (block sizes,
  warps, stages), chosen per call by a small heuristic, so each specialization compiles exactly
  once. ``DGAE_TRITON_AUTOTUNE=1`` on a GPU instead autotunes over a config list (for
  benchmarks). On an H200, autotuning by default meant tens of seconds of compiling on the first
  call of every new shape, a latency spike no service can afford.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import triton

INTERPRET_ENV = "TRITON_INTERPRET"
AUTOTUNE_ENV = "DGAE_TRITON_AUTOTUNE"


def interpreting() -> bool:
    return os.environ.get(INTERPRET_ENV, "0") == "1"


def can_autotune() -> bool:
    """Autotuning benchmarks configs on the device: only meaningful with a CUDA driver."""
    return torch.cuda.is_available() and not interpreting()


def autotune_enabled() -> bool:
    """``DGAE_TRITON_AUTOTUNE=1`` and a real GPU driver (read on every launch)."""
    return os.environ.get(AUTOTUNE_ENV, "0").strip() == "1" and can_autotune()


LAUNCH_OPTIONS = ("num_warps", "num_stages")


@dataclass(frozen=True)
class FixedLaunch:
    """A kernel launch as a GPU makes it by default: the ``@triton.jit`` function, its runtime
    arguments (tensors may live on the meta device: only dtype, strides and alignment matter for
    compiling), its constexprs (flags and block sizes) and the launch options (warps, stages)."""

    kernel: object
    args: tuple
    constexprs: dict
    options: dict


def fixed_launch(kernel, args: tuple, flags: dict, meta: dict) -> FixedLaunch:
    """Split a launch config ``meta`` (block sizes + warps/stages) into constexprs and options."""
    options = {k: v for k, v in meta.items() if k in LAUNCH_OPTIONS}
    constexprs = {**flags, **{k: v for k, v in meta.items() if k not in LAUNCH_OPTIONS}}
    return FixedLaunch(kernel, args, constexprs, options)


class Launcher:
    """One kernel, launched with ``meta`` = block sizes + ``num_warps`` (+ ``num_stages``).

    ``pick(**shape_info) -> meta`` chooses the fixed config (under the interpreter and by
    default on a GPU); with :func:`autotune_enabled`, ``triton.autotune`` over ``configs()``
    keyed by ``key`` decides instead (built on first use). ``grid(meta)`` gives the launch grid.
    """

    def __init__(self, kernel, pick: Callable[..., dict], configs: Callable[[], Sequence[triton.Config]],
                 key: list[str]):
        self.kernel, self.pick, self.configs, self.key = kernel, pick, configs, key
        self._tuned = None

    def meta(self, **shape_info) -> dict:
        return self.pick(interpret=interpreting(), **shape_info)

    def fixed(self, args: tuple, flags: dict, **shape_info) -> FixedLaunch:
        """The launch a GPU makes without autotuning (the compiled, not interpreted, config)."""
        return fixed_launch(self.kernel, args, flags, self.pick(interpret=False, **shape_info))

    def __call__(self, grid: Callable[[dict], tuple], args: tuple, flags: dict, **shape_info) -> None:
        if autotune_enabled():
            if self._tuned is None:
                self._tuned = triton.autotune(configs=list(self.configs()), key=self.key)(self.kernel)
            self._tuned[grid](*args, **flags)
            return
        meta = self.meta(**shape_info)
        self.kernel[grid(meta)](*args, **flags, **meta)


def check_same_device(name: str, *tensors: torch.Tensor | None) -> None:
    devices = {t.device for t in tensors if t is not None}
    if len(devices) > 1:
        raise ValueError(f"{name}: all tensors must be on one device, got {sorted(map(str, devices))}")
