"""Fused self-attention (flash-attention forward) and its PyTorch reference.

Shapes: q, k, v are ``[B, H, N, D]``; output ``[B, H, N, D]`` in q's dtype. Softmax and
accumulation are fp32 whatever the input dtype.

Off the Triton path attention is PyTorch's ``scaled_dot_product_attention`` (flash /
memory-efficient kernels on CPU and CUDA), which never materialises the ``[B, H, N, N]`` score
matrix: memory stays linear in N, so a 1024² decode (16k tokens at f=8) fits where the explicit
softmax would need gigabytes. The explicit-math :func:`flash_attention_reference` is kept for
parity tests only.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._dispatch import record_launch, use_triton


def flash_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                              scale: float | None = None) -> torch.Tensor:
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    attn = torch.einsum("bhnd,bhmd->bhnm", q.float(), k.float()) * scale  # [B, H, N, N]
    attn = attn.softmax(dim=-1)
    return torch.einsum("bhnm,bhmd->bhnd", attn, v.float()).to(q.dtype)


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """The same attention through ``F.scaled_dot_product_attention`` (no N x N buffer)."""
    return F.scaled_dot_product_attention(q, k, v, scale=scale)


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    scale: float | None = None) -> torch.Tensor:
    """Attention ``softmax(q k^T * scale) v`` over ``[B, H, N, D]`` tensors (scale: 1/sqrt(D)).

    The Triton path takes fp32/fp16/bf16 q/k/v of one dtype with any strides and D a power of
    two in [16, 128] (ValueError otherwise); k/v may have a different token count than q.
    """
    record_launch("attention", lambda: _triton().gpu_launch(q, k, v))
    if use_triton(q, k, v):
        from ._attention_triton import flash_attention_triton  # noqa: PLC0415 (needs triton)

        return flash_attention_triton(q, k, v, scale)
    return sdpa_attention(q, k, v, scale)


def _triton():
    from . import _attention_triton  # noqa: PLC0415 (needs triton)

    return _attention_triton
