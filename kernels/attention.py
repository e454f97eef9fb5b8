"""Fused self-attention (flash-attention forward) and its PyTorch reference.

Shapes: q, k, v are ``[B, H, N, D]``; output ``[B, H, N, D]`` in q's dtype. Softmax and
accumulation are fp32 whatever the input dtype.
"""
from __future__ import annotations

import math

import torch

from ._dispatch import use_triton


def flash_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                              scale: float | None = None) -> torch.Tensor:
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    attn = torch.einsum("bhnd,bhmd->bhnm", q.float(), k.float()) * scale  # [B, H, N, N]
    attn = attn.softmax(dim=-1)
    return torch.einsum("bhnm,bhmd->bhnd", attn, v.float()).to(q.dtype)


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    scale: float | None = None) -> torch.Tensor:
    """Attention ``softmax(q k^T * scale) v`` over ``[B, H, N, D]`` tensors (scale: 1/sqrt(D)).

    The Triton path takes fp32/fp16/bf16 q/k/v of one dtype with any strides and D a power of
    two in [16, 128] (ValueError otherwise); k/v may have a different token count than q.
    """
    if use_triton(q, k, v):
        from ._attention_triton import flash_attention_triton  # noqa: PLC0415 (needs triton)

        return flash_attention_triton(q, k, v, scale)
    return flash_attention_reference(q, k, v, scale)
