"""PyTorch backend: eager (optionally torch.compile'd) model on CPU or CUDA, with the Triton kernels
selected by ``DGAE_KERNELS`` on CUDA."""
from __future__ import annotations

import logging
from typing import Sequence

import torch

from ..checkpoint import file_sha256, load_checkpoint
from ..errors import BackendError
from ..model import DGAE
from ..sampler import SamplePlan, run_sampler
from .base import Backend, BackendInfo

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class TorchBackend(Backend):
    def __init__(self, model: DGAE, device: str = "cpu", precision: str = "fp32",
                 compile: bool = False, checkpoint_sha256: str = "", max_batch_size: int = 0,
                 cuda_graph: bool = False):
        if precision not in PRECISIONS:
            raise BackendError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendError(f"device {device!r} requested but CUDA is not available")
        self.device, self.precision = torch.device(device), precision
        self.dtype = PRECISIONS[precision]
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        self.config = model.config
        self.checkpoint_sha256 = checkpoint_sha256
        self.max_batch_size = max_batch_size
        self._denoise = self.model.decoder.forward_buffer
        self._encoder = self.model.encoder
        if compile:
            self._denoise = torch.compile(self._denoise, dynamic=True)
            self._encoder = torch.compile(self._encoder, dynamic=True)
        self.compiled = compile
        self._graphed = None
        if cuda_graph:
            from .cuda_graph import GraphedSampler  # noqa: PLC0415

            self._graphed = GraphedSampler(self._denoise, self.device)

    @classmethod
    def from_checkpoint(cls, path, device: str = "cpu", precision: str = "fp32", compile: bool = False,
                        max_batch_size: int = 0, cuda_graph: bool = False) -> "TorchBackend":
        model = load_checkpoint(path, device="cpu")
        return cls(model, device, precision, compile, file_sha256(path), max_batch_size, cuda_graph)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, mode: str = "mean",
               seeds: int | Sequence[int] | None = None) -> torch.Tensor:
        self.model.check_images(images)
        if self.compiled and mode == "mean":
            mean, _ = self._encoder(images.to(self.device, self.dtype))
            return self.model.to_public(mean).float().cpu()
        return self.model.encode(images.to(self.device, self.dtype), mode, seeds).float().cpu()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, steps: int | None = None,
               seeds: int | Sequence[int] | None = None) -> torch.Tensor:
        self.model.check_latents(latents)  # before the device copy: a clear error, not a CUDA one
        sample = self._graphed if self._graphed is not None else self._sample_eager
        return self.model.decode(latents.to(self.device, self.dtype), steps, seeds, sample=sample).float().cpu()

    def _sample_eager(self, buf: torch.Tensor, plan: SamplePlan) -> torch.Tensor:
        return run_sampler(self._denoise, buf, plan)

    def info(self) -> BackendInfo:
        name = "torch-compile" if self.compiled else "torch"
        return BackendInfo(name=name, device=str(self.device), precision=self.precision,
                           max_batch_size=self.max_batch_size)
