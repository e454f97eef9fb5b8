"""Triton kernel for the fused flow-matching sampler step (see ``sampler_step`` for the maths).

Design: a 1-D elementwise kernel over the ``3 * H * W`` image elements of each sample.
Grid ``(B, cdiv(3 * H * W, BLOCK))``; each lane decomposes its flat offset into
``(channel, row, col)`` and addresses buf / v / v_prev through their own strides, so only
``buf[:, :3]`` is ever written and the latent channels ``buf[:, 3:]`` are never read or written.
No autotuning: the kernel updates ``buf`` in place, and an autotuner's benchmark runs would apply
the step several times. Arithmetic is fp32; the result is cast back to buf's dtype.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._triton_common import FixedLaunch, check_same_device, fixed_launch

IMAGE_CHANNELS = 3
BLOCK = 1024        # elements per program (power of two)
NUM_WARPS = 4
LAUNCH_META = {"BLOCK": BLOCK, "num_warps": NUM_WARPS}  # the one launch config (no autotuning)
# read inside the kernel: compiled Triton only accepts globals that are tl.constexpr (the
# interpreter accepts plain floats, so only a GPU run caught this)
CLAMP_MIN, CLAMP_MAX = tl.constexpr(-1.0), tl.constexpr(1.0)


@triton.jit
def _sampler_step_kernel(
    buf_ptr, v_ptr, vp_ptr,
    n_per_sample, hw, width,                      # 3*H*W, H*W, W
    sb_b, sb_c, sb_h, sb_w,                       # buf strides (elements)
    sv_b, sv_c, sv_h, sv_w,                       # v strides
    sp_b, sp_c, sp_h, sp_w,                       # v_prev strides (ignored unless HEUN)
    step,                                         # dt (Euler) or dt/2 (Heun corrector), fp32
    HEUN: tl.constexpr, CLAMP: tl.constexpr, BLOCK: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)           # [BLOCK] flat in [0, 3HW)
    mask = offs < n_per_sample
    c = offs // hw
    rem = offs - c * hw
    row = rem // width
    col = rem - row * width

    buf_off = b * sb_b + c * sb_c + row * sb_h + col * sb_w
    x = tl.load(buf_ptr + buf_off, mask=mask, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + b * sv_b + c * sv_c + row * sv_h + col * sv_w,
                mask=mask, other=0.0).to(tl.float32)
    if HEUN:
        vp = tl.load(vp_ptr + b * sp_b + c * sp_c + row * sp_h + col * sp_w,
                     mask=mask, other=0.0).to(tl.float32)
        v = v - vp
    new = x + step * v
    if CLAMP:
        new = tl.minimum(tl.maximum(new, CLAMP_MIN), CLAMP_MAX)
    tl.store(buf_ptr + buf_off, new.to(buf_ptr.dtype.element_ty), mask=mask)


def _check(buf: torch.Tensor, v: torch.Tensor, v_prev: torch.Tensor | None) -> None:
    if buf.dim() != 4 or buf.shape[1] < IMAGE_CHANNELS:
        raise ValueError(f"euler_step: buf must be [B, {IMAGE_CHANNELS} + c, H, W], got {tuple(buf.shape)}")
    want = (buf.shape[0], IMAGE_CHANNELS, buf.shape[2], buf.shape[3])
    for name, t in (("v", v), ("v_prev", v_prev)):
        if t is not None and tuple(t.shape) != want:
            raise ValueError(f"euler_step: {name} must be {list(want)}, got {list(t.shape)}")
    check_same_device("euler_step", buf, v, v_prev)


def _arguments(buf, v, dt: float, clamp: bool, v_prev) -> tuple[tuple, dict]:
    """The kernel's runtime arguments and flags (shared by the launch and :func:`gpu_launch`)."""
    height, width = buf.shape[2], buf.shape[3]
    heun = v_prev is not None
    vp = v_prev if heun else v                    # dummy pointer, never read when HEUN=False
    step = 0.5 * float(dt) if heun else float(dt)
    args = (buf, v, vp, IMAGE_CHANNELS * height * width, height * width, width,
            *buf.stride(), *v.stride(), *vp.stride(), step)
    return args, dict(HEUN=heun, CLAMP=bool(clamp))


def gpu_launch(buf: torch.Tensor, v: torch.Tensor, dt: float, clamp: bool = False,
               v_prev: torch.Tensor | None = None) -> FixedLaunch:
    """The launch a GPU makes for these inputs (tensors may be on the meta device)."""
    _check(buf, v, v_prev)
    return fixed_launch(_sampler_step_kernel, *_arguments(buf, v, dt, clamp, v_prev), LAUNCH_META)


def euler_step_triton(buf: torch.Tensor, v: torch.Tensor, dt: float, clamp: bool = False,
                      v_prev: torch.Tensor | None = None) -> torch.Tensor:
    """In-place ``buf[:, :3] += dt * v`` (or the Heun corrector); returns ``buf``."""
    _check(buf, v, v_prev)
    batch, _, height, width = buf.shape
    n_per_sample = IMAGE_CHANNELS * height * width
    if batch == 0 or n_per_sample == 0:
        return buf
    args, flags = _arguments(buf, v, dt, clamp, v_prev)
    _sampler_step_kernel[(batch, triton.cdiv(n_per_sample, BLOCK))](*args, **flags, **LAUNCH_META)
    return buf
