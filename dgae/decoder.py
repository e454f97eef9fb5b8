"""ADM-style conditional U-Net denoiser v(x_t, t, z).

The latent z is nearest-upsampled to pixel resolution and concatenated with the noisy image, so the
U-Net input is a buffer ``[B, 3 + c, H, W]`` (channels [0, 3) = x_t, [3, 3 + c) = upsampled z). The
sampler keeps that buffer for a whole decode and updates only x_t in place. The timestep enters
every ResBlock through AdaGN (scale/shift of the second GroupNorm). No cross-attention, no class.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import IMAGE_CHANNELS, DGAEConfig
from .layers import AttnBlock, Downsample, GroupNorm, ResBlock, Upsample, timestep_embedding, zero_module


class Decoder(nn.Module):
    def __init__(self, cfg: DGAEConfig):
        super().__init__()
        dc, eps = cfg.decoder, cfg.norm_eps
        self.timestep_scale = dc.timestep_scale
        self.base_channels = dc.base_channels
        self.latent_channels = cfg.latent_channels
        self.temb = nn.Sequential(nn.Linear(dc.base_channels, dc.temb_channels), nn.SiLU(),
                                  nn.Linear(dc.temb_channels, dc.temb_channels))
        res = dict(groups=dc.norm_groups, eps=eps, temb_channels=dc.temb_channels,
                   dropout=dc.dropout, zero_out=True)
        attn = dict(head_channels=dc.head_channels, groups=dc.norm_groups, eps=eps, zero_out=True)

        self.conv_in = nn.Conv2d(IMAGE_CHANNELS + cfg.latent_channels, dc.base_channels, 3, padding=1)
        self.down = nn.ModuleList()
        skip_chans, ch = [dc.base_channels], dc.base_channels
        last = len(dc.channel_mult) - 1
        for level, mult in enumerate(dc.channel_mult):
            use_attn = 2 ** level in dc.attention_factors
            for _ in range(dc.num_res_blocks):
                out_ch = dc.base_channels * mult
                self.down.append(_Stage(ResBlock(ch, out_ch, **res), AttnBlock(out_ch, **attn) if use_attn else None))
                ch = out_ch
                skip_chans.append(ch)
            if level < last:
                self.down.append(_Stage(Downsample(ch)))
                skip_chans.append(ch)

        self.mid1 = ResBlock(ch, ch, **res)
        self.mid_attn = AttnBlock(ch, **attn)
        self.mid2 = ResBlock(ch, ch, **res)

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(dc.channel_mult))):
            use_attn = 2 ** level in dc.attention_factors
            for i in range(dc.num_res_blocks + 1):
                out_ch = dc.base_channels * mult
                block = ResBlock(ch + skip_chans.pop(), out_ch, **res)
                ch = out_ch
                upsample = (Upsample(ch, conv_first=dc.upsample == "conv-nearest")
                            if level > 0 and i == dc.num_res_blocks else None)
                self.up.append(_Stage(block, AttnBlock(ch, **attn) if use_attn else None, upsample))

        self.norm_out = GroupNorm(dc.norm_groups, ch, eps=eps)
        self.conv_out = zero_module(nn.Conv2d(ch, IMAGE_CHANNELS, 3, padding=1))

    @staticmethod
    def upsample_latent(z: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Nearest-neighbour upsampling of raw latents [B, c, h, w] to pixel size [B, c, H, W]."""
        return F.interpolate(z, size=size, mode="nearest")

    def forward_buffer(self, buf: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Velocity for the concatenated input ``buf`` [B, 3 + c, H, W] at times ``t`` [B] in [0, 1]."""
        temb = self.temb(timestep_embedding(t * self.timestep_scale, self.base_channels).to(buf.dtype))
        h = self.conv_in(buf)
        skips = [h]
        for stage in self.down:
            h = stage(h, temb)
            skips.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, temb)), temb)
        for stage in self.up:
            h = stage(torch.cat([h, skips.pop()], dim=1), temb)
        return self.conv_out(self.norm_out(h, silu=True))  # [B, 3, H, W]

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """v(x_t, t, z): x_t [B, 3, H, W], t [B], z raw latents at low resolution [B, c, h, w] or
        already upsampled [B, c, H, W]."""
        if z.shape[-2:] != x_t.shape[-2:]:
            z = self.upsample_latent(z, x_t.shape[-2:])
        return self.forward_buffer(torch.cat([x_t, z.to(x_t.dtype)], dim=1), t)


class _Stage(nn.Module):
    """One U-Net step: a ResBlock (or a Downsample), optional attention, optional Upsample."""

    def __init__(self, block: nn.Module, attn: nn.Module | None = None, upsample: nn.Module | None = None):
        super().__init__()
        self.block, self.attn, self.upsample = block, attn, upsample

    def forward(self, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.block(h, temb) if isinstance(self.block, ResBlock) else self.block(h)
        if self.attn is not None:
            h = self.attn(h)
        if self.upsample is not None:
            h = self.upsample(h)
        return h
