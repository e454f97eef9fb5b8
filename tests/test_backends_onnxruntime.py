"""ONNX Runtime backend vs torch: same latent + seed -> same image (1e-3, fp32, CPU), encode
parity, verified providers, typed errors for bad input."""
from __future__ import annotations

import pytest
import torch

from backends.onnxruntime_backend import CUDA_EP, OnnxRuntimeBackend
from backends.torch_backend import TorchBackend
from dgae.errors import BackendError, InputError
from tests.export_fixtures import EXPORT_TIMEOUT_S, UNROLL_STEPS, tiny_export

DECODE_TOL = 1e-3
ENCODE_REL_TOL = 1e-4

pytestmark = pytest.mark.timeout(EXPORT_TIMEOUT_S)  # the first test pays for the shared export


@pytest.fixture(scope="session")
def onnx_dir(tmp_path_factory, tiny_checkpoint):
    return tiny_export(tmp_path_factory, tiny_checkpoint)


@pytest.fixture(scope="module")
def backends(onnx_dir, tiny_checkpoint):
    return (TorchBackend.from_checkpoint(tiny_checkpoint), OnnxRuntimeBackend(onnx_dir),
            OnnxRuntimeBackend(onnx_dir, use_unrolled=False))


@pytest.mark.parametrize("mode", ["mean", "sample"])
@pytest.mark.parametrize("batch, size", [(1, (32, 32)), (3, (24, 40))])
def test_encode_matches_torch(backends, mode, batch, size):
    torch_b, ort_b, _ = backends
    images = torch.rand((batch, 3, *size), generator=torch.Generator().manual_seed(batch)) * 2 - 1
    ref, out = torch_b.encode(images, mode, seeds=7), ort_b.encode(images, mode, seeds=7)
    assert out.shape == ref.shape == (batch, 4, size[0] // 8, size[1] // 8)
    assert (out - ref).abs().max() / ref.abs().max() < ENCODE_REL_TOL


@pytest.mark.parametrize("steps", [None, 1, 3])  # None = default 2 = the unrolled graph
@pytest.mark.parametrize("batch, hw", [(1, (4, 4)), (3, (3, 5))])
def test_decode_same_seed_same_image(backends, steps, batch, hw):
    torch_b, ort_b, ort_loop = backends
    latents = torch.randn((batch, 4, *hw), generator=torch.Generator().manual_seed(11))
    ref = torch_b.decode(latents, steps, seeds=[100 + i for i in range(batch)])
    for b in (ort_b, ort_loop):
        out = b.decode(latents, steps, seeds=[100 + i for i in range(batch)])
        assert out.shape == ref.shape == (batch, 3, hw[0] * 8, hw[1] * 8)
        assert (out - ref).abs().max() < DECODE_TOL


def test_unrolled_graph_is_used_only_for_its_steps(backends):
    _, ort_b, ort_loop = backends
    assert ort_b.info().extra["unrolled_steps"] == UNROLL_STEPS and ort_loop.info().extra["unrolled_steps"] == 0
    latents = torch.randn(2, 4, 2, 2)
    calls = []
    session = ort_b.sessions["denoiser"]
    original = session.run
    session.run = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        ort_b.decode(latents, UNROLL_STEPS, seeds=0)
        assert calls == []
        ort_b.decode(latents, 3, seeds=0)
        assert len(calls) == 3
    finally:
        session.run = original


def test_item_decodes_the_same_alone_or_in_a_batch(backends):
    _, ort_b, _ = backends
    latents = torch.randn(3, 4, 2, 3)
    batch = ort_b.decode(latents, seeds=[5, 6, 7])
    alone = ort_b.decode(latents[1:2], seeds=[6])
    assert torch.equal(batch[1:2], alone)
    assert not torch.equal(batch[0], batch[1])


def test_info_reports_verified_providers(backends):
    info = backends[1].info()
    assert info.name == "onnxruntime" and info.providers == ("CPUExecutionProvider",)
    assert info.device == "cpu" and info.precision == "fp32" and info.extra["threads"] >= 1


def test_cuda_request_without_cuda_provider_is_refused(onnx_dir):
    import onnxruntime

    if CUDA_EP in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider; the refusal path needs a CPU-only build")
    with pytest.raises(BackendError, match="CUDAExecutionProvider requested .* only provides"):
        OnnxRuntimeBackend(onnx_dir, device="cuda")
    with pytest.raises(BackendError, match="device must be"):
        OnnxRuntimeBackend(onnx_dir, device="tpu")


@pytest.mark.parametrize("call, message", [
    (lambda b: b.encode(torch.zeros(1, 4, 16, 16)), r"images must be \[N, 3, H, W\]"),
    (lambda b: b.encode(torch.zeros(1, 3, 12, 16)), "not a multiple of f=8"),
    (lambda b: b.encode(torch.zeros(1, 3, 16, 16), mode="median"), "mode must be"),
    (lambda b: b.decode(torch.zeros(1, 3, 2, 2)), r"latents must be \[N, 4, h, w\]"),
    (lambda b: b.decode(torch.full((1, 4, 2, 2), float("nan"))), "NaN"),
    (lambda b: b.decode(torch.zeros(1, 4, 2, 2), steps=0), "steps must be in"),
    (lambda b: b.decode(torch.zeros(2, 4, 2, 2), seeds=[1]), "got 1 seeds for 2 items"),
])
def test_bad_input_is_a_typed_error(backends, call, message):
    with pytest.raises(InputError, match=message):
        call(backends[1])
