"""The backend interface between callers (CLI, service, benchmarks) and a runtime.

HTTP code never touches model internals: it calls ``encode(images, mode, seeds)`` and
``decode(latents, steps, seeds)`` on a :class:`Backend`. All backends share the sampler loop in
:mod:`dgae.sampler` and only differ in how they run the encoder and the denoiser, so a seed means
the same image on every backend.
"""
from __future__ import annotations

import abc
from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch

from ..config import DGAEConfig


@dataclass(frozen=True)
class BackendInfo:
    name: str
    device: str
    precision: str
    providers: tuple[str, ...] = ()
    max_batch_size: int = 0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


class Backend(abc.ABC):
    """images: float [N, 3, H, W] in [-1, 1] (CPU tensors); latents: float [N, c, H/f, W/f]."""

    config: DGAEConfig
    checkpoint_sha256: str = ""

    @abc.abstractmethod
    def encode(self, images: torch.Tensor, mode: str = "mean",
               seeds: int | Sequence[int] | None = None) -> torch.Tensor: ...

    @abc.abstractmethod
    def decode(self, latents: torch.Tensor, steps: int | None = None,
               seeds: int | Sequence[int] | None = None) -> torch.Tensor: ...

    @abc.abstractmethod
    def info(self) -> BackendInfo: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release runtime resources (sessions, engines, streams)."""
