"""Building blocks shared by the encoder and the decoder U-Net.

All normalisation goes through :func:`kernels.group_norm_silu` and all attention through
:func:`kernels.flash_attention`, so the Triton kernels replace them on GPU with one switch.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import kernels


class GroupNorm(nn.GroupNorm):
    """GroupNorm with optional fused AdaGN scale/shift and SiLU (one kernel on GPU)."""

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None,
                shift: torch.Tensor | None = None, silu: bool = False) -> torch.Tensor:
        return kernels.group_norm_silu(x, self.weight, self.bias, self.num_groups, self.eps,
                                       scale=scale, shift=shift, silu=silu)


def zero_module(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GN-SiLU-conv, GN(AdaGN when temb_channels)-SiLU-conv, plus skip (1x1 when channels change)."""

    def __init__(self, in_ch: int, out_ch: int, groups: int, eps: float,
                 temb_channels: int = 0, dropout: float = 0.0, zero_out: bool = False):
        super().__init__()
        self.norm1 = GroupNorm(groups, in_ch, eps=eps)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(temb_channels, 2 * out_ch) if temb_channels else None
        self.norm2 = GroupNorm(groups, out_ch, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        if zero_out:
            zero_module(self.conv2)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(self.norm1(x, silu=True))
        scale = shift = None
        if self.emb is not None:
            scale, shift = self.emb(F.silu(temb)).chunk(2, dim=1)  # [B, out_ch] each
        h = self.conv2(self.dropout(self.norm2(h, scale=scale, shift=shift, silu=True)))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Multi-head self-attention over the H*W positions, residual. heads = channels // head_channels."""

    def __init__(self, channels: int, head_channels: int, groups: int, eps: float,
                 zero_out: bool = False):
        super().__init__()
        self.heads = max(1, channels // head_channels)
        self.norm = GroupNorm(groups, channels, eps=eps)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        if zero_out:
            zero_module(self.proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x))  # [B, 3C, H, W]
        qkv = qkv.reshape(b, 3, self.heads, c // self.heads, h * w).permute(1, 0, 2, 4, 3)
        q, k, v = qkv.unbind(0)  # each [B, heads, N, D]
        out = kernels.flash_attention(q, k, v)  # [B, heads, N, D]
        out = out.permute(0, 1, 3, 2).reshape(b, c, h, w)
        return x + self.proj(out)


class Downsample(nn.Module):
    """Stride-2 3x3 conv (asymmetric pad as in SD-VAE so odd sizes are never produced)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest x2 then 3x3 conv (ADM), or with ``conv_first`` the conv before the nearest x2: the
    same weights at a quarter of the pixels (``DecoderConfig.upsample``)."""

    def __init__(self, channels: int, conv_first: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv_first = conv_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv_first:
            return F.interpolate(self.conv(x), scale_factor=2.0, mode="nearest")
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (already scaled) timesteps t: [B] -> [B, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb
