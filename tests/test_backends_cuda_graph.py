"""CUDA-graph decode: refused clearly without CUDA (backend, factory, service settings); the graph
cache is bounded (LRU, evicted graphs released); on a GPU, graphed decode == eager decode, graphs
share one memory pool and eviction keeps memory bounded."""
import pytest
import torch

from backends import cuda_graph
from backends.factory import create_backend
from backends.torch_backend import TorchBackend
from dgae.errors import BackendError, ConfigError

MEMORY_SLACK = 1.1  # allocator rounding between rounds of identical captures
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_cuda_graph_needs_cuda(tiny_model):
    if torch.cuda.is_available():
        pytest.skip("CUDA present: the GPU tests below cover this")
    with pytest.raises(BackendError, match="CUDA"):
        TorchBackend(tiny_model, device="cpu", cuda_graph=True)


def test_factory_refuses_cuda_graph_for_other_runtimes(tiny_checkpoint):
    with pytest.raises(BackendError, match="cuda_graph applies to the torch backend only, not 'onnxruntime'"):
        create_backend("onnxruntime", tiny_checkpoint, cuda_graph=True)


def test_auto_passes_torch_only_options_to_torch_candidates_only(tiny_checkpoint, monkeypatch, caplog):
    """auto may start ONNX Runtime: cuda_graph/compile must not reach (and break) it."""
    from backends import factory

    seen = []
    real = factory.create_backend

    def spy(kind, checkpoint, device="cpu", precision="fp32", max_batch_size=0, **options):
        if kind == "auto":
            return real(kind, checkpoint, device, precision, max_batch_size, **options)
        seen.append((kind, options))
        raise BackendError("does not start here")

    monkeypatch.setattr(factory, "create_backend", spy)
    monkeypatch.setattr(factory, "auto_candidates", lambda device, **o: [
        factory.Candidate("onnxruntime-cuda", "onnxruntime", "cuda", True, "test"),
        factory.Candidate("torch-cuda", "torch", "cuda", True, "test")])
    with caplog.at_level("INFO", logger="backends.factory"), pytest.raises(BackendError, match="nothing could start"):
        real("auto", tiny_checkpoint, device="cuda", cuda_graph=True, compile=True, threads=1)
    assert seen == [("onnxruntime", {"threads": 1}),
                    ("torch", {"cuda_graph": True, "compile": True, "threads": 1})]
    assert "compile, cuda_graph apply to the torch backend only" in caplog.text


def test_service_refuses_cuda_graph_on_cpu_in_one_line():
    from cli.commands.serve import build_settings
    from cli.main import build_parser

    for argv, needle in ((["serve", "--cuda-graph"], "cuda_graph=true needs device cuda[:N], got device 'cpu'"),
                         (["serve", "--cuda-graph", "--device", "cuda", "--backend", "onnxruntime"],
                          "cuda_graph=true applies to backend torch or auto")):
        with pytest.raises(ConfigError) as err:
            build_settings(build_parser().parse_args(argv))
        assert needle in str(err.value) and "\n" not in str(err.value)
    ok = build_settings(build_parser().parse_args(["serve", "--cuda-graph", "--device", "cuda:1"]))
    assert ok.cuda_graph is True


def test_cuda_graph_setting_reaches_the_backend(monkeypatch, tiny_checkpoint):
    from backends import factory
    from service.core.settings import ServiceSettings
    from service.core import lifecycle
    from service.core.engine import Engine

    got = {}
    monkeypatch.setattr(factory, "create_backend", lambda kind, ckpt, **kw: got.update(kind=kind, **kw) or "b")
    state = Engine(ServiceSettings(checkpoint=str(tiny_checkpoint), backend="torch", device="cuda",
                                         cuda_graph=True, compile=True))
    assert lifecycle._create_backend(state) == "b"
    assert got["kind"] == "torch" and got["cuda_graph"] is True and got["compile"] is True and got["device"] == "cuda"


def test_graph_cache_is_bounded_lru_and_releases_what_leaves():
    released = []
    cache = cuda_graph.BoundedCache(2, released.append)
    made = []

    def make(key):
        return lambda: made.append(key) or f"graph-{key}"

    assert cache.get("a", make("a")) == "graph-a" and cache.get("b", make("b")) == "graph-b"
    assert cache.get("a", make("a")) == "graph-a"          # a hit: not captured again, now most recent
    cache.get("c", make("c"))                               # evicts b, the least recently used
    assert made == ["a", "b", "c"] and released == ["graph-b"] and cache.keys() == ["a", "c"]
    cache.clear()
    assert sorted(released) == ["graph-a", "graph-b", "graph-c"] and len(cache) == 0
    with pytest.raises(BackendError, match="at least one graph"):
        cuda_graph.BoundedCache(0, released.append)


@pytest.mark.gpu
@needs_cuda
def test_graphed_decode_matches_eager(tiny_checkpoint):
    eager = TorchBackend.from_checkpoint(tiny_checkpoint, device="cuda")
    graphed = TorchBackend.from_checkpoint(tiny_checkpoint, device="cuda", cuda_graph=True)
    lat = torch.randn(4, 4, 4, 4)
    ref = eager.decode(lat, steps=3, seeds=[1, 2, 3, 4])
    for _ in range(2):  # capture, then replay
        out = graphed.decode(lat, steps=3, seeds=[1, 2, 3, 4])
        assert (out - ref).abs().max() < 1e-4
    assert graphed.info().extra["cuda_graph"] is True
    graphed.close()


@pytest.mark.gpu
@needs_cuda
def test_graphs_share_one_pool_and_eviction_bounds_memory(tiny_checkpoint):
    """Capturing many shapes through a cache of 2 must not grow reserved memory per shape, and a
    recaptured evicted shape still decodes right."""
    eager = TorchBackend.from_checkpoint(tiny_checkpoint, device="cuda")
    graphed = TorchBackend.from_checkpoint(tiny_checkpoint, device="cuda", cuda_graph=True)
    graphed._graphed = cuda_graph.GraphedSampler(graphed.denoise, graphed.device, max_graphs=2)
    rounds, sides = 3, (10, 8, 6, 4)                       # a cache of 2: every decode below recaptures
    reserved = []
    for _ in range(rounds):
        for side in sides:
            lat = torch.randn(2, 4, side, side, generator=torch.Generator().manual_seed(side))
            out = graphed.decode(lat, steps=2, seeds=[5, 6])
            assert (out - eager.decode(lat, steps=2, seeds=[5, 6])).abs().max() < 1e-4
            assert graphed._graphed.captured <= 2
        torch.cuda.synchronize()
        reserved.append(torch.cuda.memory_reserved())
    # the first round reserved what the captures need; later rounds reuse it instead of growing
    assert reserved[-1] <= reserved[0] * MEMORY_SLACK, reserved
    graphed.close()
