"""Few-step distillation (what the Consistency Decoder and SSDD do): a ``student_steps``-step
student decoder learns to reproduce a ``teacher_steps``-step teacher's decode.

- The teacher is a DGAE checkpoint (``--init``); the student starts as a copy of it with the same
  architecture and config, except ``sampler.default_steps = student_steps``, so at inference
  nothing changes but the weights.
- The encoder is the teacher's and stays frozen: the latents are the teacher's posterior means.
- Target: the teacher's ``teacher_steps`` decode (:func:`dgae.pipeline.decode`, untiled) of the
  latent with per-sample seeds drawn from torch's RNG (saved in the resumable state). The student
  decodes the same latent with the same seeds, i.e. the same initial noise.
- The student's decode is :func:`unrolled_decode`: the shared sampler (the Euler/Heun loop
  :func:`dgae.sampler.integrate` with :func:`kernels.euler_step` as the update, exactly what
  :func:`dgae.sampler.run_sampler` runs) with autograd on, so gradients flow through every step
  (the kernels route to their references under autograd).
- Loss: ``alpha * MSE(student, target) + eta * LPIPS(student, target)``.
- ``distill_target="photo"`` replaces the teacher's decode by the image itself: the student's
  one-step decode is fine-tuned toward the photo (the bundled default's ``onestep`` recipe).

The loop, EMA, resumable state, metrics and checkpoints are :class:`training.trainer.Trainer`'s.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

import kernels
from dgae.checkpoint import load_checkpoint
from dgae.config import IMAGE_CHANNELS, DGAEConfig
from dgae.errors import ConfigError
from dgae.model import DGAE
from dgae.pipeline import decode_buffer
from dgae.request import DecodeRequest
from dgae.sampler import integrate
from training.config import TrainConfig
from training.metrics.image_quality import psnr
from training.trainer import Trainer

log = logging.getLogger(__name__)

SEED_HIGH = torch.iinfo(torch.int64).max  # training seeds are drawn in [0, SEED_HIGH)
PSNR_PEAK_SQ = 4.0  # squared data range of [-1, 1] images, for the PSNR logged from the MSE
MIN_MSE = 1e-12  # keeps the logged PSNR finite when student and target agree exactly
NO_TILING = "off"  # the target and the student's decode are both untiled (training crops are one tile)


def unrolled_decode(model: DGAE, latents: torch.Tensor, seeds: int | Sequence[int] | None,
                    steps: int, solver: str | None = None) -> torch.Tensor:
    """``model``'s ``steps``-step decode of public latents [N, c, h, w] -> images [N, 3, h*f, w*f],
    differentiable with respect to the decoder's weights.

    The same sequence as :func:`dgae.pipeline.decode` with ``tile="off"``: the same noise buffer,
    plan, loop and update, so under ``torch.no_grad()`` the result equals ``model.decode`` exactly.
    The only difference is that the denoiser reads a copy of the buffer, because the update writes
    into the buffer in place and autograd keeps the denoiser's input for the backward pass."""
    config = model.config
    req = DecodeRequest.resolve(config, latents, steps, seeds, NO_TILING, solver)
    plan = req.plan
    f = config.downsample_factor
    h, w = latents.shape[-2] * f, latents.shape[-1] * f
    buf = decode_buffer(config, req)
    t_table = torch.tensor(plan.ts, dtype=torch.float32, device=buf.device)
    b = buf.shape[0]

    def denoise_at(i: int) -> torch.Tensor:
        return model.decoder.forward_buffer(buf.clone(), t_table[i].expand(b))

    def update(v: torch.Tensor, dt: float, clamp: bool, v_prev: torch.Tensor | None) -> None:
        kernels.euler_step(buf, v, dt, clamp=clamp, v_prev=v_prev)

    integrate(plan, denoise_at, update)
    return buf[:, :IMAGE_CHANNELS, :h, :w]


def draw_seeds(n: int) -> list[int]:
    """Per-sample decode seeds from torch's global RNG (restored on resume)."""
    return torch.randint(0, SEED_HIGH, (n,)).tolist()


def quarters(x: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] -> [4N, C, H/2, W/2]: each image's four quarters, as crops of their own."""
    n, c, h, w = x.shape
    q = x.reshape(n, c, 2, h // 2, 2, w // 2).permute(0, 2, 4, 1, 3, 5)  # [N, 2, 2, C, H/2, W/2]
    return q.reshape(4 * n, c, h // 2, w // 2)


class DistillObjective(nn.Module):
    """``objective(student, x0) -> (loss, parts)`` for :class:`Trainer`; see the module docstring."""

    def __init__(self, cfg: TrainConfig, teacher: DGAE, lpips: nn.Module | None):
        super().__init__()
        self.cfg, self.teacher, self.lpips = cfg, teacher, lpips

    def forward(self, model: DGAE, x0: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        cfg, teacher = self.cfg, self.teacher
        if cfg.quarter_prob and torch.rand(()).item() < cfg.quarter_prob:
            x0 = quarters(x0)
        seeds = draw_seeds(len(x0))
        with torch.no_grad():
            latents = teacher.encode(x0).float()  # fp32 sampler state for teacher and student alike
            target = (x0.float() if cfg.distill_target == "photo" else
                      teacher.decode(latents, steps=cfg.teacher_steps, seeds=seeds, tile=NO_TILING).float())
        student = unrolled_decode(model, latents, seeds, cfg.student_steps).float()
        loss_mse = F.mse_loss(student, target)
        loss = cfg.alpha * loss_mse
        parts = {"loss_mse": loss_mse.item(),
                 f"psnr_vs_{cfg.distill_target}": 10 * math.log10(PSNR_PEAK_SQ / max(loss_mse.item(), MIN_MSE))}
        if self.lpips is not None and cfg.eta > 0:
            loss_lp = self.lpips(student, target).mean()
            loss = loss + cfg.eta * loss_lp
            parts["loss_lpips"] = loss_lp.item()
        parts["loss"] = loss.item()
        return loss, parts


def student_config(teacher: DGAE, cfg: TrainConfig) -> DGAEConfig:
    """The teacher's config with the student's step count as the sampler default (and the
    student's upsampling, when the recipe names one)."""
    sampler = teacher.config.sampler
    for label, steps in (("teacher_steps", cfg.teacher_steps), ("student_steps", cfg.student_steps)):
        if steps > sampler.max_steps:
            raise ConfigError(f"{label}={steps} exceeds the teacher's sampler.max_steps={sampler.max_steps}")
    decoder = teacher.config.decoder
    if cfg.student_upsample:
        decoder = dataclasses.replace(decoder, upsample=cfg.student_upsample)
    return teacher.config.replace(sampler=dataclasses.replace(sampler, default_steps=cfg.student_steps),
                                  decoder=decoder)


class DistillTrainer(Trainer):
    """:class:`Trainer` with a frozen teacher and :class:`DistillObjective`; the decoder trains."""

    def __init__(self, cfg: TrainConfig, data: str, out, device: str | None = None,
                 init_checkpoint: str | None = None):
        if cfg.objective != "distill":
            raise ConfigError(f"DistillTrainer needs objective='distill', got {cfg.objective!r}")
        if not init_checkpoint:
            raise ConfigError("distillation needs the teacher checkpoint: pass --init TEACHER.safetensors")
        self.teacher: DGAE | None = None
        super().__init__(cfg, data, out, device=device, init_checkpoint=init_checkpoint)

    def build_model(self, init_checkpoint: str | None) -> DGAE:
        teacher = load_checkpoint(init_checkpoint).requires_grad_(False)
        student = DGAE(student_config(teacher, self.cfg))
        student.load_state_dict(teacher.state_dict())
        student.encoder.requires_grad_(False)
        self.teacher = teacher
        # the preset is the teacher's, whatever the recipe names (recorded in the run's config)
        self.cfg = dataclasses.replace(self.cfg, preset=teacher.config.name)
        log.info("distilling %s: %d-step teacher -> %d-step student (encoder frozen)",
                 init_checkpoint, self.cfg.teacher_steps, self.cfg.student_steps)
        return student

    def build_objective(self, lpips: nn.Module | None) -> nn.Module:
        return DistillObjective(self.cfg, self.teacher.to(self.device).eval(), lpips)


@torch.no_grad()
def compare_decodes(teacher: DGAE, student: DGAE, images: torch.Tensor, teacher_steps: int,
                    student_steps: int, seed: int, lpips: nn.Module) -> dict[str, dict[str, float]]:
    """Mean PSNR (dB) and LPIPS of three decodes of ``images``' teacher latents, each with the
    seeds ``seed + i``: the teacher at ``teacher_steps`` (the target) and at ``student_steps``,
    and the student at ``student_steps``; each scored against the ground truth (``*_vs_gt``) and
    the two ``student_steps`` decodes also against the target (``*_vs_teacher``)."""
    latents = teacher.encode(images)
    target = teacher.decode(latents, steps=teacher_steps, seeds=seed, tile=NO_TILING)
    decodes = {f"teacher_{teacher_steps}": (target, ("gt",)),
               f"teacher_{student_steps}": (teacher.decode(latents, steps=student_steps, seeds=seed, tile=NO_TILING),
                                            ("gt", "teacher")),
               f"student_{student_steps}": (student.decode(latents, steps=student_steps, seeds=seed, tile=NO_TILING),
                                            ("gt", "teacher"))}
    refs = {"gt": images, "teacher": target}
    out: dict[str, dict[str, float]] = {}
    for name, (x, against) in decodes.items():
        out[name] = {}
        for ref_name in against:
            out[name][f"psnr_vs_{ref_name}"] = psnr(x, refs[ref_name]).mean().item()
            out[name][f"lpips_vs_{ref_name}"] = lpips(x, refs[ref_name]).mean().item()
    return out
