"""create_backend: onnxruntime (explicit dir and the export cache), tensorrt errors, auto choice."""
from __future__ import annotations

import logging

import pytest
import torch

from backends import factory
from backends.onnxruntime_backend import OnnxRuntimeBackend
from backends.torch_backend import TorchBackend
from dgae.hashing import file_sha256
from dgae.errors import BackendError
from export import cache
from tests.export_fixtures import EXPORT_TIMEOUT_S, copy_export, tiny_export

pytestmark = pytest.mark.timeout(EXPORT_TIMEOUT_S)  # the first test pays for the shared export


@pytest.fixture(scope="session")
def onnx_dir(tmp_path_factory, tiny_checkpoint):
    return tiny_export(tmp_path_factory, tiny_checkpoint)


def test_onnxruntime_from_dir(onnx_dir, tiny_checkpoint):
    b = factory.create_backend("onnxruntime", tiny_checkpoint, onnx_dir=onnx_dir, threads=1, max_batch_size=4)
    assert isinstance(b, OnnxRuntimeBackend)
    info = b.info()
    assert info.extra["threads"] == 1 and info.max_batch_size == 4
    # Without a checkpoint the manifest's config is enough.
    assert factory.create_backend("onnxruntime", None, onnx_dir=onnx_dir).config.name == "tiny"


def test_onnxruntime_precision_mismatch(onnx_dir, tiny_checkpoint):
    with pytest.raises(BackendError, match="is a fp32 export but precision='fp16'"):
        factory.create_backend("onnxruntime", tiny_checkpoint, precision="fp16", onnx_dir=onnx_dir)


def test_onnxruntime_uses_the_export_cache(onnx_dir, tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path))
    parts = {"checkpoint_sha256": file_sha256(tiny_checkpoint), "precision": "fp32", "unroll_steps": "2",
             "torch": torch.__version__, "exporter": cache.exporter_digest()}
    target = tmp_path / "onnx" / cache.entry_name(cache.ONNX_KIND, parts)  # one entry per checkpoint + options
    exports = []

    def fake_export(path, directory, **kwargs):  # stands in for the slow tracing; copies the real export
        exports.append(kwargs)
        copy_export(onnx_dir, directory)

    monkeypatch.setattr("export.onnx_export.export_onnx", fake_export)
    b = factory.create_backend("onnxruntime", tiny_checkpoint)
    assert b.onnx_dir == target and exports == [{"precision": "fp32", "unroll_steps": 2}]
    factory.create_backend("onnxruntime", tiny_checkpoint)  # verified cache hit: no second export
    assert len(exports) == 1
    (target / "denoiser.onnx").write_bytes(b"corrupt")
    import shutil

    monkeypatch.setattr("export.onnx_export.export_onnx",
                        lambda p, d, **k: (exports.append(k), shutil.rmtree(d), copy_export(onnx_dir, d)))
    factory.create_backend("onnxruntime", tiny_checkpoint)  # corrupt cache -> re-exported
    assert len(exports) == 2


def test_tensorrt_needs_engine_dir(tiny_checkpoint):
    with pytest.raises(BackendError, match="needs engine_dir"):
        factory.create_backend("tensorrt", tiny_checkpoint)


def test_unknown_backend(tiny_checkpoint):
    with pytest.raises(BackendError, match="unknown backend 'tvm'.*onnxruntime"):
        factory.create_backend("tvm", tiny_checkpoint)


def test_torch_compile_option(tiny_checkpoint):
    b = factory.create_backend("torch", tiny_checkpoint, compile=True)
    assert isinstance(b, TorchBackend) and b.info().name == "torch-compile"


def test_auto_candidates_explain_themselves():
    cands = factory.auto_candidates("auto")
    labels = [c.label for c in cands]
    assert labels == ["tensorrt", "onnxruntime-cuda", "torch-cuda", "onnxruntime-cpu", "torch-cpu"]
    assert all(c.reason for c in cands)
    assert [c.label for c in factory.auto_candidates("cpu")] == ["onnxruntime-cpu", "torch-cpu"]
    assert [c.label for c in factory.auto_candidates("cuda:1")][:3] == ["tensorrt", "onnxruntime-cuda", "torch-cuda"]
    if not torch.cuda.is_available():
        assert not any(c.available for c in cands[:3])
    with pytest.raises(BackendError, match="device must be"):
        factory.auto_candidates("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU host auto picks a GPU runtime")
def test_auto_picks_onnxruntime_on_cpu_and_logs_why(onnx_dir, tiny_checkpoint, caplog):
    with caplog.at_level(logging.INFO, logger="backends.factory"):
        b = factory.create_backend("auto", tiny_checkpoint, device="auto", onnx_dir=onnx_dir)
    assert isinstance(b, OnnxRuntimeBackend)
    assert b.auto_reason.startswith("onnxruntime-cpu")
    text = caplog.text
    assert "backend=auto chose onnxruntime-cpu" in text and "faster ones skipped: tensorrt (" in text


def test_auto_falls_back_to_torch_without_onnxruntime(tiny_checkpoint, monkeypatch):
    monkeypatch.setattr(factory, "_ort_providers", lambda: [])
    b = factory.create_backend("auto", tiny_checkpoint, device="cpu")
    assert isinstance(b, TorchBackend) and b.auto_reason == "torch-cpu: always available"
