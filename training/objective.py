"""The DGAE training objective: flow-matching velocity MSE + KL + LPIPS on the one-step estimate.

x_t = (1 - t) x0 + t eps,  target v = eps - x0,  one-step estimate x0' = x_t - t v_pred.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from dgae.model import DGAE
from training.config import TrainConfig


def sample_t(cfg: TrainConfig, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Training timesteps [n] in (0, 1]."""
    if cfg.t_sampling == "logit_normal":
        t = torch.sigmoid(torch.randn(n, generator=generator) * cfg.t_std + cfg.t_mean)
    else:
        t = torch.rand(n, generator=generator)
    if cfg.t_one_prob > 0:
        ones = torch.rand(n, generator=generator) < cfg.t_one_prob
        t = torch.where(ones, torch.ones_like(t), t)
    return t


def kl_per_element(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)) averaged over every latent element."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()


class DGAEObjective(nn.Module):
    def __init__(self, cfg: TrainConfig, lpips: nn.Module | None):
        super().__init__()
        self.cfg, self.lpips = cfg, lpips

    def forward(self, model: DGAE, x0: torch.Tensor, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        mean, logvar = model.encoder(x0)  # [B, c, h, w]
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
        t = sample_t(cfg, x0.shape[0], generator).to(x0.device)
        tb = t.view(-1, 1, 1, 1)
        eps = torch.randn_like(x0)
        x_t = (1 - tb) * x0 + tb * eps
        v = model.decoder(x_t, t, z)  # [B, 3, H, W]
        loss_v = F.mse_loss(v.float(), (eps - x0).float())
        loss_kl = kl_per_element(mean.float(), logvar.float())
        loss = cfg.alpha * loss_v + cfg.beta * loss_kl
        parts = {"loss_v": loss_v.item(), "loss_kl": loss_kl.item()}
        if self.lpips is not None and cfg.eta > 0:
            x0_hat = x_t - tb * v
            loss_lp = self.lpips(x0_hat.float(), x0.float()).mean()
            loss = loss + cfg.eta * loss_lp
            parts["loss_lpips"] = loss_lp.item()
        with torch.no_grad():
            x0_hat = (x_t - tb * v).clamp(-1, 1)
            mse = F.mse_loss(x0_hat.float(), x0.float()).item()
            parts["psnr_x0hat"] = 10 * math.log10(4.0 / max(mse, 1e-12))  # data range 2 ([-1, 1])
        parts["loss"] = loss.item()
        return loss, parts


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up to cfg.lr, then cosine decay to cfg.lr_min at max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * progress))
