"""Training configuration (frozen dataclass) and named recipes.

``paper`` is the DGAE paper's recipe (arXiv 2506.09644): batch 96, AdamW(0.9, 0.95, eps 1e-8),
lr 1e-4 with 10K linear warm-up and cosine decay to 1e-5, weight decay 0.1, grad clip 1.0, bf16
on GPU, 256 px crops. The paper leaves the loss weights, the timestep distribution and the step
count open: they are fields here with the defaults documented below.

``cpu-default`` is how the bundled ``small-f8c4`` model was trained on a 2-core CPU in a few
hours: small crops, small batches, a shorter warm-up and a larger lr for the short run.

``gpu-default`` continues that model on one GPU for minutes (``--init`` the bundled weights): the
same preset, loss weights and t sampling as that run (eta 0.05, half the samples at t = 1)
with 128 px crops, batch 128, many loader workers and bf16; set
``--max-steps`` from a throughput probe (``scripts/gpu_train_default.sh`` does).

``distill`` (``objective="distill"``, :mod:`training.distill`) trains a ``student_steps``-step
student decoder from a ``teacher_steps``-step teacher (``--init``, the student's starting point
and frozen encoder): the target is the teacher's decode of the same latent with the same
per-sample seeds; ``alpha`` weights the MSE and ``eta`` the LPIPS to it (``beta`` and the
``t_*`` fields do not apply). Sized for the bundled model on one GPU
(``scripts/gpu_distill_default.sh``); ``distill-tiny`` is the tests' version.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from dgae.config import UPSAMPLES
from dgae.errors import ConfigError

T_SAMPLING = ("uniform", "logit_normal")
OBJECTIVES = ("dgae", "distill")  # flow matching + KL + LPIPS | few-step distillation
DISTILL_TARGETS = ("teacher", "photo")  # distill: the teacher's decode, or the original image itself
QUARTER_MULTIPLE = 16  # a quartered crop's side must stay a multiple of every preset's size multiple


@dataclass(frozen=True)
class TrainConfig:
    preset: str = "f16c16-B"
    crop_size: int = 256
    max_side: int = 1024  # photos are pre-resized so the short side is at most this
    batch_size: int = 96  # global batch (divided across ranks)
    workers: int = 4
    max_steps: int = 400_000
    max_minutes: float = 0.0  # stop (and checkpoint) after this wall time; 0 = no limit
    lr: float = 1e-4
    lr_min: float = 1e-5  # cosine floor
    warmup_steps: int = 10_000
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    adam_eps: float = 1e-8
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    # loss = alpha * velocity MSE + beta * KL (mean per latent element) + eta * LPIPS(x0', x0)
    alpha: float = 1.0
    beta: float = 1e-4
    eta: float = 0.5
    lpips_net: str = "vgg"  # the paper's choice; "alex" is ~4x cheaper on CPU
    t_sampling: str = "logit_normal"  # SD3-style logit-normal; "uniform" = U(0, 1)
    t_mean: float = 0.0
    t_std: float = 1.0
    t_one_prob: float = 0.0  # fraction of samples at t = 1 exactly (the first decode step)
    bf16: bool = True  # autocast on CUDA only; CPU trains in fp32
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 500
    sample_every: int = 500
    objective: str = "dgae"  # one of OBJECTIVES
    teacher_steps: int = 8  # distill: the teacher's decode steps (the target)
    student_steps: int = 1  # distill: the student's decode steps (its checkpoint's default_steps)
    distill_target: str = "teacher"  # distill: one of DISTILL_TARGETS (photo: fine-tune toward the image)
    # distill: probability that a batch trains as its crops' four quarters (4x the crops at half the
    # side, each encoded whole): keeps a decoder tuned on large crops good on small images
    quarter_prob: float = 0.0
    # distill: the student decoder's DecoderConfig.upsample ("" keeps the teacher's); the weights
    # carry over, the function changes, so the stage retrains what the change moved
    student_upsample: str = ""

    def validate(self) -> "TrainConfig":
        if self.t_sampling not in T_SAMPLING:
            raise ConfigError(f"t_sampling must be one of {T_SAMPLING}")
        if self.lpips_net not in ("alex", "vgg"):
            raise ConfigError("lpips_net must be 'alex' or 'vgg'")
        if min(self.batch_size, self.crop_size, self.max_steps) <= 0:
            raise ConfigError("batch_size, crop_size and max_steps must be positive")
        if not 0 <= self.t_one_prob <= 1 or not 0 <= self.ema_decay < 1:
            raise ConfigError("t_one_prob must lie in [0, 1] and ema_decay in [0, 1)")
        if self.lr_min > self.lr:
            raise ConfigError("lr_min must be <= lr")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if not 0.0 <= self.quarter_prob <= 1.0:
            raise ConfigError(f"quarter_prob must be in [0, 1], got {self.quarter_prob}")
        if self.quarter_prob and self.crop_size % (2 * QUARTER_MULTIPLE):
            raise ConfigError(f"quarter_prob needs crop_size divisible by {2 * QUARTER_MULTIPLE}, got {self.crop_size}")
        if self.distill_target not in DISTILL_TARGETS:
            raise ConfigError(f"distill_target must be one of {DISTILL_TARGETS}, got {self.distill_target!r}")
        if self.student_upsample and self.student_upsample not in UPSAMPLES:
            raise ConfigError(f"student_upsample must be one of {UPSAMPLES} or empty, got {self.student_upsample!r}")
        if not 1 <= self.student_steps < self.teacher_steps:
            raise ConfigError(f"need 1 <= student_steps < teacher_steps, got {self.student_steps} and "
                              f"{self.teacher_steps}")
        return self

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        d = json.loads(text)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names}).validate()


RECIPES = {
    "paper": TrainConfig(),
    "cpu-default": TrainConfig(
        preset="small-f8c4", crop_size=64, max_side=512, batch_size=8, workers=1, max_steps=4500,
        lr=3e-4, lr_min=3e-5, warmup_steps=200, ema_decay=0.999, eta=0.2, lpips_net="alex",
        t_sampling="uniform", t_one_prob=0.2, log_every=10, ckpt_every=200, sample_every=500),
    "gpu-default": TrainConfig(
        preset="small-f8c4", crop_size=128, max_side=512, batch_size=128, workers=12, max_steps=8000,
        lr=5e-4, lr_min=1e-5, warmup_steps=200, ema_decay=0.9995, eta=0.05, lpips_net="alex",
        t_sampling="uniform", t_one_prob=0.5, log_every=20, ckpt_every=2000, sample_every=4000),
    "tiny": TrainConfig(
        preset="tiny", crop_size=32, max_side=128, batch_size=2, workers=0, max_steps=20,
        lr=1e-3, lr_min=1e-4, warmup_steps=5, ema_decay=0.9, eta=0.1, lpips_net="alex",
        t_sampling="uniform", log_every=5, ckpt_every=10, sample_every=10),
}
# The bundled model's 4-step decode is its best by LPIPS and within 0.06 dB of its best PSNR
# (weights/MODEL_CARD.md), hence the 4-step target; max_steps is sized by the GPU script's probe.
RECIPES["distill"] = TrainConfig(
    preset="small-f8c4", crop_size=128, max_side=512, batch_size=64, workers=12, max_steps=2000,
    lr=1e-4, lr_min=1e-5, warmup_steps=100, ema_decay=0.999, alpha=1.0, eta=0.2, lpips_net="alex",
    objective="distill", teacher_steps=4, student_steps=1, log_every=20, ckpt_every=500, sample_every=1000)
# The bundled default's one-step decoder (issue 24): the 2-step model's decoder fine-tuned at one
# step directly against the photos (MSE + LPIPS to the image, not to the teacher's decode; encoder
# frozen, so latents made by the 2-step model stay valid). Sized for a 2-core CPU in resumable
# chunks (--max-minutes); measured before choosing: 20 CPU minutes closed a third of the
# 1-step/2-step gap on held-out photos while distilling toward the teacher only matched its 1 step.
RECIPES["onestep"] = TrainConfig(
    preset="small-f8c4", crop_size=128, max_side=512, batch_size=8, workers=1, max_steps=900,
    lr=1e-4, lr_min=1e-5, warmup_steps=20, ema_decay=0.99, alpha=1.0, eta=0.05, lpips_net="alex",
    objective="distill", distill_target="photo", teacher_steps=2, student_steps=1, log_every=10,
    ckpt_every=25, sample_every=200)
# stage 2 of the one-step default: the same objective on 256² crops (the size that is scored and
# served most), from stage 1's EMA weights; same pixels per step as stage 1 (2 x 256² = 8 x 128²)
RECIPES["onestep-256"] = dataclasses.replace(
    RECIPES["onestep"], crop_size=256, batch_size=2, max_steps=1200, lr=5e-5, lr_min=5e-6, sample_every=400)
# stage 3 of the one-step default: stage 2's 256² crops half of the time, their four 128² quarters
# the other half, at a lower lr: 256² training alone cost 0.4-2 dB on 64-128 px images
RECIPES["onestep-mixed"] = dataclasses.replace(
    RECIPES["onestep-256"], quarter_prob=0.5, max_steps=500, lr=3e-5, lr_min=3e-6, warmup_steps=10)
# stages 4-5 of the one-step default: the decoder's upsampling conv moved before the nearest x2
# (DecoderConfig.upsample = "conv-nearest"; its pass is ~12% cheaper on a CPU), retrained from
# stage 3's weights with stage 3's objective and crops, then a second, gentler stage
RECIPES["onestep-conv-first"] = dataclasses.replace(
    RECIPES["onestep-mixed"], student_upsample="conv-nearest", max_steps=600, lr=1e-4, lr_min=1e-5, warmup_steps=20)
RECIPES["onestep-conv-first-2"] = dataclasses.replace(
    RECIPES["onestep-mixed"], max_steps=900, lr=5e-5, lr_min=5e-6, warmup_steps=10)
RECIPES["onestep-tiny"] = dataclasses.replace(
    RECIPES["tiny"], objective="distill", distill_target="photo", teacher_steps=2, student_steps=1, eta=0.05)
RECIPES["onestep-256-tiny"] = dataclasses.replace(
    RECIPES["onestep-tiny"], crop_size=64, batch_size=1, lr=RECIPES["tiny"].lr / 2)
RECIPES["onestep-mixed-tiny"] = dataclasses.replace(RECIPES["onestep-256-tiny"], quarter_prob=0.5)
RECIPES["onestep-conv-first-tiny"] = dataclasses.replace(RECIPES["onestep-mixed-tiny"], student_upsample="conv-nearest")
RECIPES["onestep-conv-first-2-tiny"] = dataclasses.replace(RECIPES["onestep-mixed-tiny"], lr=RECIPES["tiny"].lr / 4)
RECIPES["distill-tiny"] = dataclasses.replace(
    RECIPES["tiny"], objective="distill", teacher_steps=8, student_steps=1, lr=3e-4, lr_min=3e-5, eta=0.2)


def get_recipe(name: str) -> TrainConfig:
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; choose one of {sorted(RECIPES)}")
    return RECIPES[name]
