"""The sampler state stays fp32 when the networks run in bf16 (issue 14): rounding x_t to bf16 at
every step costs accuracy that an fp32 state keeps."""
from __future__ import annotations

import torch

from backends.torch_backend import TorchBackend
from dgae.checkpoint import load_checkpoint

STEPS = 8  # enough steps for per-step rounding of the state to add up


def test_bf16_networks_with_an_fp32_state_stay_closer_to_fp32(tiny_checkpoint):
    latents = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(0))
    seeds = [3, 4]
    ref = TorchBackend(load_checkpoint(tiny_checkpoint)).decode(latents, STEPS, seeds)
    fp32_state = TorchBackend(load_checkpoint(tiny_checkpoint), precision="bf16")
    bf16_state = TorchBackend(load_checkpoint(tiny_checkpoint), precision="bf16", state_dtype=torch.bfloat16)
    assert fp32_state.state_dtype == torch.float32  # the default
    err_fp32_state = (fp32_state.decode(latents, STEPS, seeds) - ref).abs().mean()
    err_bf16_state = (bf16_state.decode(latents, STEPS, seeds) - ref).abs().mean()
    assert err_fp32_state < err_bf16_state, (float(err_fp32_state), float(err_bf16_state))
