"""Triton kernel for fused GroupNorm + AdaGN scale/shift + SiLU (see ``group_norm`` for the maths).

Design: one program per (batch, group), grid ``(B * G,)``. x is made contiguous as ``[B, C, S]``
(S = prod(spatial)), so a group is ``C/G * S`` contiguous elements, walked in chunks of ``BLOCK``:

1. statistics: per-lane Welford (count, mean, M2) over the chunks, merged across lanes with the
   parallel-variance formula at the end. fp32 throughout and free of the ``E[x^2] - E[x]^2``
   cancellation, so fp16 activations of ~1e4 stay finite and accurate.
2. normalise: second read of the group, per-element channel ``c = g*C/G + off // S`` picks
   weight/bias/scale/shift (gathers that hit cache), ``h = ((x - mean) * rstd * w + b)``,
   ``h = h * (1 + scale) + shift``, SiLU as ``h / (1 + exp(-h))``, cast, store.

Channels per group and S need not be powers of two (all accesses are masked). scale/shift are
``[B, C]`` with arbitrary strides (e.g. the two halves of ``emb.chunk(2, dim=1)``).
Block size: autotuned on CUDA; fixed ``INTERPRET_BLOCK`` under the interpreter.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._triton_common import FixedLaunch, Launcher, check_same_device

INTERPRET_BLOCK = 1024
INTERPRET_WARPS = 4
GPU_DEFAULT = (2048, 8)  # (BLOCK, num_warps): the fixed launch config (no autotuning unless asked)
_GPU_BLOCKS = (1024, 2048, 4096)
_GPU_WARPS = (4, 8, 16)


@triton.jit
def _group_norm_silu_kernel(
    x_ptr, y_ptr, w_ptr, b_ptr, scale_ptr, shift_ptr,
    num_channels, num_groups, spatial, group_numel,          # C, G, S, C/G * S
    s_scale_b, s_scale_c, s_shift_b, s_shift_c,
    eps,
    HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, SILU: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    batch = pid // num_groups
    group = pid - batch * num_groups
    ch_per_group = num_channels // num_groups
    base = batch.to(tl.int64) * num_channels * spatial + group.to(tl.int64) * group_numel
    lanes = tl.arange(0, BLOCK)                                      # [BLOCK]

    # ---- pass 1: per-lane Welford over chunks of the group ----
    count = tl.zeros([BLOCK], dtype=tl.float32)
    mean = tl.zeros([BLOCK], dtype=tl.float32)
    m2 = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, group_numel, BLOCK):
        offs = start + lanes
        mask = offs < group_numel
        x = tl.load(x_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
        new_count = count + mask.to(tl.float32)
        delta = x - mean
        mean_upd = mean + delta / tl.maximum(new_count, 1.0)
        mean = tl.where(mask, mean_upd, mean)
        m2 = tl.where(mask, m2 + delta * (x - mean_upd), m2)
        count = new_count
    total = tl.sum(count, axis=0)
    g_mean = tl.sum(count * mean, axis=0) / total
    dev = mean - g_mean
    g_var = (tl.sum(m2, axis=0) + tl.sum(count * dev * dev, axis=0)) / total   # biased, as torch
    rstd = 1.0 / tl.sqrt(g_var + eps)

    # ---- pass 2: normalise + affine + AdaGN + SiLU ----
    for start in range(0, group_numel, BLOCK):
        offs = start + lanes
        mask = offs < group_numel
        chan = group * ch_per_group + offs // spatial                # [BLOCK] channel index
        x = tl.load(x_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + chan, mask=mask, other=0.0).to(tl.float32)
        bias = tl.load(b_ptr + chan, mask=mask, other=0.0).to(tl.float32)
        h = (x - g_mean) * rstd * w + bias
        if HAS_SCALE:
            sc = tl.load(scale_ptr + batch * s_scale_b + chan * s_scale_c,
                         mask=mask, other=0.0).to(tl.float32)
            h = h * (1.0 + sc)
        if HAS_SHIFT:
            sh = tl.load(shift_ptr + batch * s_shift_b + chan * s_shift_c,
                         mask=mask, other=0.0).to(tl.float32)
            h = h + sh
        if SILU:
            h = h / (1.0 + tl.exp(-h))
        tl.store(y_ptr + base + offs, h.to(y_ptr.dtype.element_ty), mask=mask)


def _gpu_configs():
    return [triton.Config({"BLOCK": blk}, num_warps=warps)
            for blk in _GPU_BLOCKS for warps in _GPU_WARPS if blk // (32 * warps) >= 2]


def _pick(interpret: bool) -> dict:
    if interpret:
        return {"BLOCK": INTERPRET_BLOCK, "num_warps": INTERPRET_WARPS}
    block, warps = GPU_DEFAULT
    return {"BLOCK": block, "num_warps": warps}


_launch = Launcher(_group_norm_silu_kernel, _pick, _gpu_configs,
                   key=["group_numel", "HAS_SCALE", "HAS_SHIFT", "SILU"])


def _check(x, weight, bias, num_groups, scale, shift) -> None:
    if x.dim() < 2:
        raise ValueError(f"group_norm_silu: x must be [B, C, *spatial], got {tuple(x.shape)}")
    batch, channels = x.shape[0], x.shape[1]
    if num_groups <= 0 or channels % num_groups:
        raise ValueError(f"group_norm_silu: {channels} channels not divisible into {num_groups} groups")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is None or tuple(t.shape) != (channels,):
            raise ValueError(f"group_norm_silu: {name} must be [{channels}], got "
                             f"{None if t is None else tuple(t.shape)}")
    for name, t in (("scale", scale), ("shift", shift)):
        if t is not None and tuple(t.shape) != (batch, channels):
            raise ValueError(f"group_norm_silu: {name} must be [{batch}, {channels}], got {tuple(t.shape)}")
    check_same_device("group_norm_silu", x, weight, bias, scale, shift)


def _arguments(x_c, y, weight, bias, num_groups: int, eps: float, scale, shift, silu: bool) -> tuple[tuple, dict]:
    """The kernel's runtime arguments and flags for contiguous ``x_c`` (shared with :func:`gpu_launch`)."""
    channels = x_c.shape[1]
    spatial = math.prod(x_c.shape[2:])
    group_numel = channels // num_groups * spatial
    sc = scale if scale is not None else weight                       # dummies, never read
    sh = shift if shift is not None else weight
    s_scale = scale.stride() if scale is not None else (0, 0)
    s_shift = shift.stride() if shift is not None else (0, 0)
    args = (x_c, y, weight, bias, sc, sh, channels, num_groups, spatial, group_numel,
            *s_scale, *s_shift, float(eps))
    return args, dict(HAS_SCALE=scale is not None, HAS_SHIFT=shift is not None, SILU=bool(silu))


def gpu_launch(x, weight, bias, num_groups: int, eps: float, scale=None, shift=None,
               silu: bool = True) -> FixedLaunch:
    """The launch a GPU makes for these inputs by default (tensors may be on the meta device)."""
    _check(x, weight, bias, num_groups, scale, shift)
    x_c = x.contiguous()
    return _launch.fixed(*_arguments(x_c, torch.empty_like(x_c), weight, bias, num_groups, eps, scale, shift, silu))


def group_norm_silu_triton(x, weight, bias, num_groups: int, eps: float,
                           scale=None, shift=None, silu: bool = True, *,
                           out: torch.Tensor | None = None) -> torch.Tensor:
    """Fused GroupNorm(+AdaGN)(+SiLU); output is contiguous, same shape/dtype as x.

    ``out``: optional preallocated contiguous tensor of x's shape and dtype to write into.
    """
    _check(x, weight, bias, num_groups, scale, shift)
    x_c = x.contiguous()                                              # [B, C, *spatial]
    if out is None:
        y = torch.empty_like(x_c)
    elif (out.shape != x.shape or out.dtype != x.dtype or out.device != x.device
          or not out.is_contiguous()):
        raise ValueError(f"group_norm_silu: out must be contiguous {tuple(x.shape)} {x.dtype} on "
                         f"{x.device}, got {tuple(out.shape)} {out.dtype} on {out.device}")
    else:
        y = out
    if y.numel() == 0:
        return y
    args, flags = _arguments(x_c, y, weight, bias, num_groups, eps, scale, shift, silu)
    _launch(lambda meta: (x.shape[0] * num_groups,), args, flags)
    return y
