"""The one orchestration (backends.base.Backend): a runtime that supplies only its primitives
encodes and decodes exactly as the torch backend, and inputs above its batch limit are split
invisibly (per-item seeds)."""
from __future__ import annotations

import pytest
import torch

from backends.base import Backend, BackendInfo
from backends.torch_backend import TorchBackend
from dgae.sampler import SamplePlan


class PrimitivesOnly(Backend):
    """A whole runtime in a dozen lines: the networks of a torch model, nothing else."""

    def __init__(self, model, max_batch_size: int = 0):
        self.model, self.config, self.max_batch_size = model, model.config, max_batch_size
        self.calls: list[int] = []

    def encoder_moments(self, images):
        self.calls.append(len(images))
        return self.model.encoder(images)

    def denoise(self, buf, t):
        self.calls.append(len(buf))
        return self.model.decoder.forward_buffer(buf, t)

    def info(self):
        return BackendInfo("primitives", "cpu", "fp32", max_batch_size=self.max_batch_size)


@pytest.fixture()
def torch_backend(tiny_model):
    return TorchBackend(tiny_model)


def test_a_runtime_of_primitives_matches_the_torch_backend(tiny_model, torch_backend):
    runtime = PrimitivesOnly(tiny_model)
    images = torch.rand(3, 3, 24, 40) * 2 - 1
    for mode in ("mean", "sample"):
        assert torch.equal(runtime.encode(images, mode, seeds=[1, 2, 3]), torch_backend.encode(images, mode, [1, 2, 3]))
    latents = torch.randn(3, 4, 3, 5)
    assert torch.equal(runtime.decode(latents, steps=2, seeds=7), torch_backend.decode(latents, steps=2, seeds=7))


@pytest.mark.parametrize("limit", [1, 2])
def test_inputs_above_the_batch_limit_are_split_invisibly(tiny_model, torch_backend, limit):
    runtime = PrimitivesOnly(tiny_model, max_batch_size=limit)
    latents = torch.randn(5, 4, 2, 2)
    out = runtime.decode(latents, steps=1, seeds=[10, 11, 12, 13, 14])
    assert max(runtime.calls) == limit
    assert (out - torch_backend.decode(latents, steps=1, seeds=[10, 11, 12, 13, 14])).abs().max() < 1e-5
    runtime.calls.clear()
    images = torch.rand(5, 3, 16, 16) * 2 - 1
    enc = runtime.encode(images, "sample", seeds=3)
    assert max(runtime.calls) == limit
    assert (enc - torch_backend.encode(images, "sample", seeds=3)).abs().max() < 1e-5


def test_the_fast_path_is_used_only_for_its_plan(tiny_model):
    class WithFastPath(PrimitivesOnly):
        plan = SamplePlan.build(tiny_model.config.sampler, 2)

        def fast_sample(self, buf, plan):
            return torch.full_like(buf[:, :3], 0.5) if plan == self.plan else None

    runtime = WithFastPath(tiny_model)
    latents = torch.randn(1, 4, 2, 2)
    assert torch.equal(runtime.decode(latents, steps=2, seeds=0), torch.full((1, 3, 16, 16), 0.5))
    assert not torch.equal(runtime.decode(latents, steps=1, seeds=0), torch.full((1, 3, 16, 16), 0.5))
