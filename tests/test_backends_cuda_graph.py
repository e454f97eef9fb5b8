"""CUDA-graph decode: refused clearly without CUDA; on a GPU, graphed decode == eager decode."""
import pytest
import torch

from backends.torch_backend import TorchBackend
from dgae.errors import BackendError


def test_cuda_graph_needs_cuda(tiny_model):
    if torch.cuda.is_available():
        pytest.skip("CUDA present: the GPU test below covers this")
    with pytest.raises(BackendError, match="CUDA"):
        TorchBackend(tiny_model, device="cpu", cuda_graph=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_graphed_decode_matches_eager(tiny_checkpoint):
    eager = TorchBackend.from_checkpoint(tiny_checkpoint, device="cuda")
    graphed = TorchBackend.from_checkpoint(tiny_checkpoint, device="cuda", cuda_graph=True)
    lat = torch.randn(4, 4, 4, 4)
    ref = eager.decode(lat, steps=3, seeds=[1, 2, 3, 4])
    for _ in range(2):  # capture, then replay
        out = graphed.decode(lat, steps=3, seeds=[1, 2, 3, 4])
        assert (out - ref).abs().max() < 1e-4
