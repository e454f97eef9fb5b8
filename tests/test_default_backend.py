"""Fast by default (issue 14): with no backend setting the service serves with ONNX Runtime on CPU,
says which runtime and why in /v1/model, and decodes what the torch backend decodes (within one
8-bit level); the torch fallback runs channels_last."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from backends import factory
from backends.torch_backend import TorchBackend
from formats.images import to_uint8
from service.app import create_app
from service.core.settings import ServiceSettings
from service_cases import npy_bytes
from tests.export_fixtures import EXPORT_TIMEOUT_S, tiny_export

pytestmark = pytest.mark.timeout(EXPORT_TIMEOUT_S)
READY_WAIT_S = 600
ONE_LEVEL = 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU host auto picks a GPU runtime")
def test_the_default_service_backend_is_onnxruntime_and_matches_torch(tmp_path_factory, tiny_checkpoint):
    import time

    assert ServiceSettings().backend == "auto"
    settings = ServiceSettings(checkpoint=str(tiny_checkpoint), onnx_dir=str(tiny_export(tmp_path_factory,
                                                                                         tiny_checkpoint)),
                               max_wait_ms=5, default_steps=2)
    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + READY_WAIT_S
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, client.get("/readyz").json()
            time.sleep(0.05)
        info = client.get("/v1/model").json()
        assert info["backend"] == "onnxruntime"
        assert info["backend_reason"].startswith("backend=auto chose onnxruntime-cpu")
        assert "onnxruntime is installed" in info["backend_reason"]
        latents = np.random.default_rng(0).standard_normal((1, 4, 4, 6)).astype(np.float32)
        r = client.post("/decode?seed=5&steps=2", content=npy_bytes(latents),
                        headers={"Content-Type": "application/x-npy"})
        assert r.status_code == 200, r.text
        served = np.asarray(Image.open(io.BytesIO(r.content))).astype(int)
    ref = to_uint8(TorchBackend.from_checkpoint(tiny_checkpoint).decode(torch.from_numpy(latents), 2, [5]))[0]
    assert np.abs(served - ref.astype(int)).max() <= ONE_LEVEL


def test_the_torch_fallback_on_cpu_is_channels_last_and_matches_contiguous(tiny_checkpoint, monkeypatch):
    monkeypatch.setattr(factory, "_ort_providers", lambda: [])  # as if onnxruntime were absent
    b = factory.create_backend("auto", tiny_checkpoint, device="cpu")
    assert isinstance(b, TorchBackend) and b.info().extra["channels_last"]
    plain = TorchBackend.from_checkpoint(tiny_checkpoint)
    z = torch.randn(2, 4, 4, 4)
    assert (b.decode(z, 2, [1, 2]) - plain.decode(z, 2, [1, 2])).abs().max() < 1e-4
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    assert (b.encode(images) - plain.encode(images)).abs().max() < 1e-4


def test_a_runtime_that_fails_to_start_is_skipped_with_its_reason(tiny_checkpoint, tmp_path, monkeypatch):
    (tmp_path / "manifest.json").write_text("{}")  # an ONNX folder that does not verify
    b = factory.create_backend("auto", tiny_checkpoint, device="cpu", onnx_dir=str(tmp_path))
    assert isinstance(b, TorchBackend)
    assert any(s.startswith("onnxruntime-cpu (failed to start:") for s in b.auto_skipped)
