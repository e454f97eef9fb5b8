"""Fused flow-matching sampler step, written in place into the U-Net's input buffer.

``buf`` is the decoder input ``[B, 3 + c, H, W]``: channels ``[0, 3)`` hold the noisy image x_t,
channels ``[3, 3 + c)`` the already-upsampled latent (never touched here). ``v`` is ``[B, 3, H, W]``.

- Euler (and Heun's predictor): ``x <- x + dt * v``.
- Heun's corrector, given the predictor's velocity ``v_prev`` and buf holding the predicted x:
  ``x <- x_pred + dt * (v - v_prev) / 2``, which equals ``x_prev + dt * (v_prev + v) / 2``
  without keeping ``x_prev``.
- ``clamp=True`` (the last step) clamps the result to [-1, 1].
Arithmetic is fp32 whatever buf's dtype.
"""
from __future__ import annotations

import torch

from ._dispatch import record_launch, use_triton

IMAGE_CHANNELS = 3


def euler_step_reference(buf: torch.Tensor, v: torch.Tensor, dt: float, clamp: bool = False,
                         v_prev: torch.Tensor | None = None) -> torch.Tensor:
    x = buf[:, :IMAGE_CHANNELS]
    if v_prev is None:
        new = x.float() + dt * v.float()
    else:
        new = x.float() + (0.5 * dt) * (v.float() - v_prev.float())
    if clamp:
        new = new.clamp(-1.0, 1.0)
    x.copy_(new.to(buf.dtype))
    return buf


def euler_step(buf: torch.Tensor, v: torch.Tensor, dt: float, clamp: bool = False,
               v_prev: torch.Tensor | None = None) -> torch.Tensor:
    """Update ``buf[:, :3]`` in place (Euler, or Heun's corrector when ``v_prev`` is given); returns buf."""
    record_launch("sampler_step", lambda: _triton().gpu_launch(buf, v, dt, clamp, v_prev))
    if use_triton(buf, v, v_prev):
        from ._sampler_step_triton import euler_step_triton  # noqa: PLC0415

        return euler_step_triton(buf, v, dt, clamp, v_prev)
    return euler_step_reference(buf, v, dt, clamp, v_prev)


def _triton():
    from . import _sampler_step_triton  # noqa: PLC0415 (needs triton)

    return _sampler_step_triton
