"""Few-step flow-matching sampler shared by every backend.

Rectified-flow convention: x_t = (1 - t) x0 + t eps, v = eps - x0, so dx/dt = v and decoding
integrates t: 1 -> 0 from Gaussian noise. A backend only supplies ``denoise(buf, t) -> v`` where
``buf`` is the U-Net input [B, 3 + c, H, W] (x_t next to the upsampled latent) and ``t`` is [B];
seeds therefore mean the same thing on torch, ONNX Runtime and TensorRT.

Per-sample seeds: item i's initial noise comes from its own ``torch.Generator`` seeded with
``seeds[i]`` (drawn on the CPU in fp32, then moved), so an item decodes to the same image alone or
inside any batch, on any device.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

import kernels

from .config import IMAGE_CHANNELS, SOLVERS, SamplerConfig
from .errors import InputError

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
SEED_BITS = 63  # seeds are non-negative int64


def resolve_seeds(seeds: int | Sequence[int] | None, n: int) -> list[int]:
    """None -> n fresh random seeds; one int s -> [s, s+1, ..., s+n-1]; a list -> itself (len n)."""
    if seeds is None:
        return [secrets.randbits(SEED_BITS) for _ in range(n)]
    if isinstance(seeds, int):
        out = [seeds + i for i in range(n)]
    else:
        out = [int(s) for s in seeds]
        if len(out) != n:
            raise InputError(f"got {len(out)} seeds for {n} items")
    for s in out:
        if not 0 <= s < 2 ** SEED_BITS:
            raise InputError(f"seed {s} out of range [0, 2**{SEED_BITS})")
    return out


def per_sample_noise(seeds: Sequence[int], shape: tuple[int, ...], device=None,
                     dtype: torch.dtype = torch.float32, out: torch.Tensor | None = None) -> torch.Tensor:
    """Standard normal noise [len(seeds), *shape], item i drawn (on the CPU, in fp32) from a
    generator seeded seeds[i]. ``out``: write it there instead (a copy only when ``out`` is not
    a CPU fp32 tensor, e.g. a view into the U-Net buffer)."""
    direct = out is not None and out.device.type == "cpu" and out.dtype == torch.float32
    noise = out if direct else torch.empty((len(seeds), *shape), dtype=torch.float32)
    for i, s in enumerate(seeds):
        torch.randn(shape, generator=torch.Generator().manual_seed(int(s)), out=noise[i])
    if out is None:
        return noise.to(device=device, dtype=dtype)
    if not direct:
        out.copy_(noise)
    return out


def timesteps(steps: int, schedule: str = "uniform", shift: float = 1.0) -> list[float]:
    """steps + 1 times from 1 down to 0. ``shifted``: t' = s t / (1 + (s - 1) t) (s > 1 spends
    more steps at high noise)."""
    if steps < 1:
        raise InputError(f"steps must be >= 1, got {steps}")
    ts = [1.0 - i / steps for i in range(steps + 1)]
    if schedule == "shifted":
        ts = [shift * t / (1.0 + (shift - 1.0) * t) for t in ts]
    elif schedule != "uniform":
        raise InputError(f"unknown schedule {schedule!r}")
    ts[-1] = 0.0
    return ts


@dataclass(frozen=True)
class SamplePlan:
    """Precomputed host-side tables for one (steps, solver, schedule) decode."""

    ts: tuple[float, ...]
    solver: str

    @classmethod
    def build(cls, cfg: SamplerConfig, steps: int | None = None, solver: str | None = None) -> "SamplePlan":
        steps = cfg.default_steps if steps is None else int(steps)
        if not 1 <= steps <= cfg.max_steps:
            raise InputError(f"steps must be in [1, {cfg.max_steps}], got {steps}")
        solver = solver or cfg.solver
        if solver not in SOLVERS:
            raise InputError(f"solver must be one of {', '.join(SOLVERS)}, got {str(solver)[:40]!r}")
        return cls(tuple(timesteps(steps, cfg.schedule, cfg.shift)), solver)

    @property
    def steps(self) -> int:
        return len(self.ts) - 1

    @property
    def evaluations(self) -> int:
        """Denoiser calls :func:`integrate` makes: one per step, two per Heun step that does not end
        at t = 0."""
        heun = self.solver == "heun"
        return sum(2 if heun and self.ts[i + 1] > 0.0 else 1 for i in range(self.steps))


Update = Callable[[torch.Tensor, float, bool, "torch.Tensor | None"], None]


def integrate(plan: SamplePlan, denoise_at: Callable[[int], torch.Tensor], update: Update) -> None:
    """The Euler/Heun loop, written once for every runtime and for the unrolled ONNX graph.

    ``denoise_at(i)`` returns the velocity at the current state and time ``plan.ts[i]``;
    ``update(v, dt, clamp, v_prev)`` advances the state as :func:`kernels.euler_step` does
    (``v_prev`` given: Heun's corrector x_pred + dt/2 (v - v_prev)). The last step clamps to [-1, 1].
    """
    n = plan.steps
    for i in range(n):
        t_next = plan.ts[i + 1]
        dt, last = t_next - plan.ts[i], i == n - 1
        v = denoise_at(i)
        if plan.solver == "heun" and t_next > 0.0:
            update(v, dt, False, None)  # predictor: the state holds x_pred
            update(denoise_at(i + 1), dt, last, v)  # corrector
        else:
            update(v, dt, last, None)


def pad_latents(raw_latents: torch.Tensor, f: int, multiple: int) -> torch.Tensor:
    """Replicate-pad raw latents [N, c, h, w] right/bottom so the pixel sides are multiples of the
    U-Net's ``multiple``."""
    lm = max(1, multiple // f)  # latent-side multiple
    ph, pw = (-raw_latents.shape[-2]) % lm, (-raw_latents.shape[-1]) % lm
    return F.pad(raw_latents, (0, pw, 0, ph), mode="replicate") if ph or pw else raw_latents


def prepare_decode_buffer(raw_latents: torch.Tensor, f: int, multiple: int, seeds: Sequence[int],
                          dtype: torch.dtype | None = None) -> torch.Tensor:
    """U-Net input for raw latents [N, c, h, w]: per-seed noise next to the latent upsampled once
    (nearest) to pixel size, padded to the U-Net's multiple (see :func:`pad_latents`). ``dtype``:
    the sampler state's dtype (default the latents')."""
    z = pad_latents(raw_latents, f, multiple)
    size = (z.shape[-2] * f, z.shape[-1] * f)
    dtype = dtype or z.dtype
    buf = torch.empty((len(seeds), IMAGE_CHANNELS + z.shape[1], *size), dtype=dtype, device=z.device)
    buf[:, IMAGE_CHANNELS:] = F.interpolate(z, size=size, mode="nearest")
    per_sample_noise(seeds, (IMAGE_CHANNELS, *size), out=buf[:, :IMAGE_CHANNELS])
    return buf


def make_buffer(noise: torch.Tensor, cond_up: torch.Tensor) -> torch.Tensor:
    """The U-Net input [B, 3 + c, H, W]: noise in channels [0, 3), upsampled latent after it."""
    b, _, h, w = noise.shape
    buf = torch.empty((b, IMAGE_CHANNELS + cond_up.shape[1], h, w), dtype=noise.dtype, device=noise.device)
    buf[:, :IMAGE_CHANNELS] = noise
    buf[:, IMAGE_CHANNELS:] = cond_up
    return buf


@torch.no_grad()
def run_sampler(denoise: Denoiser, buf: torch.Tensor, plan: SamplePlan,
                t_table: torch.Tensor | None = None) -> torch.Tensor:
    """Integrate buf's image channels from t=1 to t=0 in place; returns buf[:, :3] (a view).
    ``t_table`` (plan.ts on buf's device) may be passed in, e.g. to keep host copies out of a
    CUDA-graph capture."""
    b = buf.shape[0]
    if t_table is None:
        t_table = torch.tensor(plan.ts, dtype=torch.float32, device=buf.device)  # built once per decode

    def update(v: torch.Tensor, dt: float, clamp: bool, v_prev: torch.Tensor | None) -> None:
        kernels.euler_step(buf, v, dt, clamp=clamp, v_prev=v_prev)

    integrate(plan, lambda i: denoise(buf, t_table[i].expand(b)), update)
    return buf[:, :IMAGE_CHANNELS]
