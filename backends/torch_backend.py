"""PyTorch backend: eager (optionally torch.compile'd) model on CPU or CUDA, with the Triton kernels
selected by ``DGAE_KERNELS`` on CUDA, and optionally the whole decode replayed as a CUDA graph.

The networks run in the backend's precision; the sampler state (x_t and the upsampled latent)
stays fp32 whatever it is (``state_dtype``): rounding x_t to bf16 at every step would cost about
one 8-bit level per step. Only the denoiser's input is cast."""
from __future__ import annotations

import logging

import torch

from dgae.checkpoint import load_checkpoint

from dgae.hashing import file_sha256
from dgae.errors import BackendError
from dgae.model import DGAE
from dgae.precision import get_precision
from dgae.sampler import SamplePlan

from .base import Backend, BackendInfo

log = logging.getLogger(__name__)


class TorchBackend(Backend):
    def __init__(self, model: DGAE, device: str = "cpu", precision: str = "fp32",
                 compile: bool = False, checkpoint_sha256: str = "", max_batch_size: int = 0,
                 cuda_graph: bool = False, state_dtype: torch.dtype = torch.float32,
                 channels_last: bool = False):
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendError(f"device {device!r} requested but CUDA is not available")
        self.device, self.precision = torch.device(device), precision
        self.dtype = get_precision(precision, BackendError).torch_dtype
        self.state_dtype = state_dtype
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(device=self.device, dtype=self.dtype, memory_format=self.memory_format).eval()
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

            self._graphed = GraphedSampler(self.denoise, self.device)

    @classmethod
    def from_checkpoint(
        cls,
        path,
        device: str = "cpu",
        precision: str = "fp32",
        compile: bool = False,
        max_batch_size: int = 0,
        cuda_graph: bool = False,
        channels_last: bool = False,
    ) -> "TorchBackend":
        model = load_checkpoint(path, device="cpu")
        return cls(model, device, precision, compile, file_sha256(path), max_batch_size, cuda_graph,
                   channels_last=channels_last)

    def encoder_moments(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._encoder(images.contiguous(memory_format=self.memory_format))

    def denoise(self, buf: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # no copy when the state already has that dtype and layout
        return self._denoise(buf.to(self.dtype).contiguous(memory_format=self.memory_format), t)

    def fast_sample(self, buf: torch.Tensor, plan: SamplePlan) -> torch.Tensor | None:
        return self._graphed(buf, plan) if self._graphed is not None else None

    def info(self) -> BackendInfo:
        name = "torch-compile" if self.compiled else "torch"
        return BackendInfo(name=name, device=str(self.device), precision=self.precision,
                           max_batch_size=self.max_batch_size,
                           extra={"channels_last": self.memory_format == torch.channels_last,
                                  "cuda_graph": self._graphed is not None})

    def close(self) -> None:
        if self._graphed is not None:
            self._graphed.close()
