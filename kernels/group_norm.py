"""Fused GroupNorm + AdaGN scale/shift + SiLU and its PyTorch reference.

x: ``[B, C, *spatial]``; weight/bias: ``[C]``; scale/shift: ``[B, C]`` (optional, AdaGN:
``h = norm(x) * (1 + scale) + shift``); statistics in fp32; output in x's dtype.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._dispatch import record_launch, use_triton


def group_norm_silu_reference(x, weight, bias, num_groups: int, eps: float,
                              scale=None, shift=None, silu: bool = True) -> torch.Tensor:
    h = F.group_norm(x.float(), num_groups, weight.float(), bias.float(), eps)
    extra = (1,) * (x.dim() - 2)
    if scale is not None:
        h = h * (1 + scale.float().view(*scale.shape, *extra))
    if shift is not None:
        h = h + shift.float().view(*shift.shape, *extra)
    if silu:
        h = F.silu(h)
    return h.to(x.dtype)


def group_norm_silu(x, weight, bias, num_groups: int, eps: float,
                    scale=None, shift=None, silu: bool = True) -> torch.Tensor:
    """GroupNorm, then optional AdaGN ``(1 + scale) * h + shift``, then optional SiLU, in one pass."""
    record_launch("group_norm", lambda: _triton().gpu_launch(x, weight, bias, num_groups, eps, scale, shift, silu))
    if use_triton(x, weight, bias, scale, shift):
        from ._group_norm_triton import group_norm_silu_triton  # noqa: PLC0415

        return group_norm_silu_triton(x, weight, bias, num_groups, eps, scale, shift, silu)
    return group_norm_silu_reference(x, weight, bias, num_groups, eps, scale, shift, silu)


def _triton():
    from . import _group_norm_triton  # noqa: PLC0415 (needs triton)

    return _group_norm_triton
