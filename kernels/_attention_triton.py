"""Triton flash-attention forward (see ``attention`` for the contract).

Design: grid ``(cdiv(N, BLOCK_M), B * H)``; each program owns ``BLOCK_M`` query rows of one
(batch, head) and streams K/V in ``BLOCK_N`` blocks with the online softmax (running max ``m``,
running denominator ``l``, un-normalised accumulator ``acc``), all fp32, so the ``N x N`` score
matrix never exists. Scores use base 2: ``scale * log2(e)`` is folded into the logits and
``exp2`` replaces ``exp``. Ragged N: query rows >= N are masked on load/store, key columns >= N
get ``-inf`` logits (every K block holds at least one valid column, so the running max stays
finite). Inputs may be non-contiguous: every tensor is addressed through its own strides.

Precision: fp32 inputs use ``input_precision="ieee"`` in ``tl.dot`` (TF32 would miss the 1e-4
parity target); fp16/bf16 tiles go to the tensor cores with fp32 accumulation and the
probabilities are rounded to V's dtype for the ``P @ V`` product (standard flash-attention).
Under the interpreter, tiles are upcast to fp32 before ``tl.dot`` (its bf16 dot is wrong).
Block sizes: autotuned on CUDA; fixed ``INTERPRET_BLOCK_M/N`` under the interpreter.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._triton_common import FixedLaunch, Launcher, check_same_device, interpreting

LOG2E = 1.4426950408889634
MIN_HEAD_DIM, MAX_HEAD_DIM = 16, 128
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INTERPRET_BLOCK_M = 32
INTERPRET_BLOCK_N = 32
INTERPRET_WARPS = 4


@triton.jit
def _flash_attention_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr,
    num_heads, n_q, n_kv, qk_scale,                               # qk_scale = scale * log2(e)
    sq_b, sq_h, sq_n, sq_d,
    sk_b, sk_h, sk_n, sk_d,
    sv_b, sv_h, sv_n, sv_d,
    so_b, so_h, so_n, so_d,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    UPCAST: tl.constexpr, IEEE: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // num_heads).to(tl.int64)
    h = (pid_bh % num_heads).to(tl.int64)
    q_base = q_ptr + b * sq_b + h * sq_h
    k_base = k_ptr + b * sk_b + h * sk_h
    v_base = v_ptr + b * sv_b + h * sv_h
    o_base = o_ptr + b * so_b + h * so_h

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)                # [BLOCK_M]
    dims = tl.arange(0, HEAD_DIM)                                 # [D]
    row_mask = rows < n_q
    q = tl.load(q_base + rows[:, None] * sq_n + dims[None, :] * sq_d,
                mask=row_mask[:, None], other=0.0)                # [BLOCK_M, D]
    if UPCAST:
        q = q.to(tl.float32)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    for start_n in range(0, n_kv, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)                    # [BLOCK_N]
        col_mask = cols < n_kv
        k = tl.load(k_base + cols[:, None] * sk_n + dims[None, :] * sk_d,
                    mask=col_mask[:, None], other=0.0)            # [BLOCK_N, D]
        v = tl.load(v_base + cols[:, None] * sv_n + dims[None, :] * sv_d,
                    mask=col_mask[:, None], other=0.0)            # [BLOCK_N, D]
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        if IEEE:
            s = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))                            # [BLOCK_M, BLOCK_N] fp32
        s = tl.where(col_mask[None, :], s * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if IEEE:
            acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new

    out = acc / l_i[:, None]
    tl.store(o_base + rows[:, None] * so_n + dims[None, :] * so_d,
             out.to(o_ptr.dtype.element_ty), mask=row_mask[:, None])


# (BLOCK_M, BLOCK_N, num_warps, num_stages): a short list, since every new (N, D, dtype) tunes
# anew; configs that exceed shared memory/registers (fp32 IEEE tiles) are skipped by the autotuner.
# Fixed launch configs (no autotuning unless asked), checked by `dgae kernels compile` for sm_80 and
# sm_90 at the decoders' shapes: with 4 warps, (128, 64) 16-bit tiles at head dim 64 spilled ~250 B
# on sm_80 (255 registers), and (64, 32) fp32 IEEE tiles spilled ~15 KB on both; 8 warps halve the
# rows per warp and spill nothing (docs/gpu.md).
GPU_DEFAULT_16BIT = (128, 64, 8, 3)
GPU_DEFAULT_FP32 = (64, 32, 8, 2)
_GPU_CONFIGS = [(64, 32, 8, 2), (64, 64, 4, 3), (64, 64, 4, 4), (128, 32, 4, 3),
                (128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (64, 128, 4, 3)]


def _gpu_configs():
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=warps, num_stages=stages)
            for bm, bn, warps, stages in _GPU_CONFIGS]


def _pick(interpret: bool, ieee: bool) -> dict:
    """Fixed launch config: fp32 (IEEE) tiles are twice as large, so smaller blocks."""
    if interpret:
        return {"BLOCK_M": INTERPRET_BLOCK_M, "BLOCK_N": INTERPRET_BLOCK_N, "num_warps": INTERPRET_WARPS}
    bm, bn, warps, stages = GPU_DEFAULT_FP32 if ieee else GPU_DEFAULT_16BIT
    return {"BLOCK_M": bm, "BLOCK_N": bn, "num_warps": warps, "num_stages": stages}


_launch = Launcher(_flash_attention_kernel, _pick, _gpu_configs, key=["n_q", "n_kv", "HEAD_DIM", "IEEE"])


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"flash_attention: {name} must be [B, H, N, D], got {tuple(t.shape)}")
        if t.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"flash_attention: {name} dtype {t.dtype} unsupported "
                             f"(expected fp32, fp16 or bf16)")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"flash_attention: q/k/v dtypes differ ({q.dtype}, {k.dtype}, {v.dtype})")
    if k.shape != v.shape:
        raise ValueError(f"flash_attention: k {tuple(k.shape)} and v {tuple(v.shape)} differ")
    if q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"flash_attention: q {tuple(q.shape)} and k {tuple(k.shape)} disagree on B, H or D")
    d = q.shape[3]
    if d < MIN_HEAD_DIM or d > MAX_HEAD_DIM or d & (d - 1):
        raise ValueError(f"flash_attention: head dim {d} unsupported; need a power of two in "
                         f"[{MIN_HEAD_DIM}, {MAX_HEAD_DIM}]")
    check_same_device("flash_attention", q, k, v)


def _arguments(q, k, v, out, scale: float | None, interpret: bool) -> tuple[tuple, dict]:
    """The kernel's runtime arguments and flags (shared by the launch and :func:`gpu_launch`)."""
    heads, n_q, head_dim = q.shape[1], q.shape[2], q.shape[3]
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    args = (q, k, v, out, heads, n_q, k.shape[2], scale * LOG2E,
            *q.stride(), *k.stride(), *v.stride(), *out.stride())
    return args, dict(HEAD_DIM=head_dim, UPCAST=interpret, IEEE=q.dtype == torch.float32)


def gpu_launch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> FixedLaunch:
    """The launch a GPU makes for these inputs by default (tensors may be on the meta device)."""
    _check(q, k, v)
    args, flags = _arguments(q, k, v, torch.empty_like(q), None, interpret=False)
    return _launch.fixed(args, flags, ieee=flags["IEEE"])


def flash_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           scale: float | None = None, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """``softmax(q k^T * scale) v`` for ``[B, H, N, D]`` tensors, in q's dtype.

    ``out``: optional preallocated ``[B, H, N, D]`` tensor of q's dtype (any strides) to write into.
    """
    _check(q, k, v)
    batch, heads, n_q, head_dim = q.shape
    n_kv = k.shape[2]
    if out is None:
        out = torch.empty((batch, heads, n_q, head_dim), dtype=q.dtype, device=q.device)
    elif out.shape != q.shape or out.dtype != q.dtype or out.device != q.device:
        raise ValueError(f"flash_attention: out must be {tuple(q.shape)} {q.dtype} on {q.device}, "
                         f"got {tuple(out.shape)} {out.dtype} on {out.device}")
    if out.numel() == 0:
        return out
    if n_kv == 0:
        raise ValueError("flash_attention: k/v have zero tokens")
    args, flags = _arguments(q, k, v, out, scale, interpreting())
    grid = lambda meta: (triton.cdiv(n_q, meta["BLOCK_M"]), batch * heads)  # noqa: E731
    _launch(grid, args, flags, ieee=flags["IEEE"])
    return out
