"""Parity metric and per-dtype tolerances shared by the kernel tests and the GPU benchmark.

Metric: ``max |out - ref| / max |ref|`` over the whole tensor (relative to the output's scale, so
elements that happen to be near zero do not blow it up). Non-finite outputs count as infinite error.

Tolerances (max relative error):
- attention / group norm: fp32 ``1e-4`` (hard acceptance criterion); fp16 ``5e-3`` (10-bit
  mantissa; on GPU the softmax probabilities are rounded to fp16 before ``P @ V``); bf16 ``3e-2``
  (7-bit mantissa, ``2^-8`` rounding ~ 4e-3 per op; the Triton interpreter also truncates rather
  than rounds when casting fp32 -> bf16).
- sampler step: fp32 ``1e-6`` (same fp32 ops; a GPU may contract ``x + dt*v`` into an FMA);
  fp16 / bf16 one unit in the last place of the stored dtype (``2^-10`` / ``2^-7`` relative).
"""
from __future__ import annotations

import torch

TOLERANCES: dict[str, dict[torch.dtype, float]] = {
    "attention": {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2},
    "group_norm": {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2},
    "sampler_step": {torch.float32: 1e-6, torch.float16: 2.0 ** -10, torch.bfloat16: 2.0 ** -7},
}
_TINY = 1e-12


def max_rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``max |out - ref| / max |ref|`` in fp64; ``inf`` if out has NaN/inf or shapes differ."""
    if out.shape != ref.shape:
        return float("inf")
    out64, ref64 = out.detach().double(), ref.detach().double()
    if not torch.isfinite(out64).all():
        return float("inf")
    if out64.numel() == 0:
        return 0.0
    scale = ref64.abs().max().clamp_min(_TINY)
    return float((out64 - ref64).abs().max() / scale)


def tolerance(kernel: str, dtype: torch.dtype) -> float:
    if kernel not in TOLERANCES or dtype not in TOLERANCES[kernel]:
        raise ValueError(f"no tolerance for kernel {kernel!r} dtype {dtype}")
    return TOLERANCES[kernel][dtype]
