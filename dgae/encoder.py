"""SD-VAE convolutional KL encoder: images [B, 3, H, W] in [-1, 1] -> posterior mean, logvar
[B, c, H/f, W/f] each."""
from __future__ import annotations

import torch
import torch.nn as nn

from .config import IMAGE_CHANNELS, DGAEConfig
from .layers import AttnBlock, Downsample, GroupNorm, ResBlock


class Encoder(nn.Module):
    def __init__(self, cfg: DGAEConfig):
        super().__init__()
        ec, eps = cfg.encoder, cfg.norm_eps
        chans = [ec.base_channels * m for m in ec.channel_mult]
        self.conv_in = nn.Conv2d(IMAGE_CHANNELS, ec.base_channels, 3, padding=1)
        self.down = nn.ModuleList()
        ch = ec.base_channels
        for level, out_ch in enumerate(chans):
            stage = nn.Module()
            stage.blocks = nn.ModuleList()
            for _ in range(ec.num_res_blocks):
                stage.blocks.append(ResBlock(ch, out_ch, ec.norm_groups, eps))
                ch = out_ch
            stage.downsample = Downsample(ch) if level < len(chans) - 1 else nn.Identity()
            self.down.append(stage)
        self.mid1 = ResBlock(ch, ch, ec.norm_groups, eps)
        # SD-VAE's mid attention is single-head over all channels.
        self.mid_attn = AttnBlock(ch, ch, ec.norm_groups, eps) if ec.mid_attention else nn.Identity()
        self.mid2 = ResBlock(ch, ch, ec.norm_groups, eps)
        self.norm_out = GroupNorm(ec.norm_groups, ch, eps=eps)
        self.conv_out = nn.Conv2d(ch, 2 * cfg.latent_channels, 3, padding=1)
        self.quant_conv = nn.Conv2d(2 * cfg.latent_channels, 2 * cfg.latent_channels, 1)
        self.logvar_range = (cfg.logvar_min, cfg.logvar_max)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.conv_in(x)
        for stage in self.down:
            for block in stage.blocks:
                h = block(h)
            h = stage.downsample(h)
        h = self.mid2(self.mid_attn(self.mid1(h)))
        moments = self.quant_conv(self.conv_out(self.norm_out(h, silu=True)))  # [B, 2c, h, w]
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(*self.logvar_range)
