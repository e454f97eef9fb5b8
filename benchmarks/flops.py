"""FLOPs of one decoder (denoiser) pass, counted by torch's FlopCounterMode on the meta device (no
memory, no compute), and the dense bf16 tensor-core peak of known GPUs: the physical ceiling a
decode could reach. Achieved fraction = counted FLOPs / measured time / peak."""
from __future__ import annotations

from dataclasses import dataclass

import torch

import kernels
from dgae.config import IMAGE_CHANNELS, DGAEConfig

TERA = 1e12
# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA datasheets, TFLOP/s. Matched as
# substrings of torch.cuda.get_device_name(), most specific first.
BF16_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H200", 989.4), ("GH200", 989.4),
    ("B200", 2250.0), ("A100", 312.0), ("A10G", 70.0), ("A10", 125.0), ("L40S", 362.0),
    ("L40", 181.0), ("L4", 121.0), ("A6000", 154.8), ("V100", 0.0), ("T4", 0.0),
)


def bf16_peak_tflops(gpu_name: str | None) -> float | None:
    """The card's dense bf16 peak, None when unknown or the card has no bf16 tensor cores."""
    if not gpu_name:
        return None
    for key, peak in BF16_PEAK_TFLOPS:
        if key in gpu_name:
            return peak or None
    return None


@dataclass
class MetaPass:
    """One ``Decoder.forward_buffer`` on the meta device, called under counting modes. The PyTorch
    reference ops run (a Triton kernel cannot run on meta tensors)."""

    decoder: torch.nn.Module
    buf: torch.Tensor
    t: torch.Tensor

    def __call__(self) -> torch.Tensor:
        with torch.no_grad(), kernels.use_kernels("reference"):
            return self.decoder.forward_buffer(self.buf, self.t)


def meta_decoder_pass(config: DGAEConfig, height: int, width: int, batch: int = 1,
                      dtype: torch.dtype = torch.float32) -> MetaPass:
    """The pass at the U-Net input size (padded like decode) in ``dtype`` (weights and U-Net
    input; the time steps stay fp32)."""
    from dgae.decoder import Decoder  # noqa: PLC0415

    multiple = config.decoder_multiple
    h, w = -(-height // multiple) * multiple, -(-width // multiple) * multiple  # padded like decode
    with torch.device("meta"):
        decoder = Decoder(config).to(dtype)
        buf = torch.empty(batch, IMAGE_CHANNELS + config.latent_channels, h, w, dtype=dtype)
        t = torch.empty(batch)
    return MetaPass(decoder, buf, t)


def decoder_pass_flops(config: DGAEConfig, height: int, width: int, batch: int = 1) -> float:
    """FLOPs (2 per multiply-add) of one ``Decoder.forward_buffer`` at the U-Net input size."""
    from torch.utils.flop_counter import FlopCounterMode  # noqa: PLC0415

    run = meta_decoder_pass(config, height, width, batch)
    with FlopCounterMode(display=False) as counter:
        run()
    return float(counter.get_total_flops())


def denoiser_calls(config: DGAEConfig, steps: int) -> int:
    """Decoder passes in one decode: Euler = steps, Heun = 2 * steps - 1 (no corrector at t=0)."""
    return steps if config.sampler.solver == "euler" else 2 * steps - 1
