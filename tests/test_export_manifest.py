"""Corrupt or mismatched exports give one clear BackendError, never a crash or a silent run."""
from __future__ import annotations

import dataclasses
import json

import pytest

from dgae.hashing import file_sha256

from backends.onnxruntime_backend import OnnxRuntimeBackend
from dgae.errors import BackendError
from export import manifest as mf
from tests.export_fixtures import EXPORT_TIMEOUT_S, copy_export, tiny_export

pytestmark = pytest.mark.timeout(EXPORT_TIMEOUT_S)  # the first test pays for the shared export


@pytest.fixture(scope="session")
def onnx_dir(tmp_path_factory, tiny_checkpoint):
    return tiny_export(tmp_path_factory, tiny_checkpoint)


@pytest.fixture()
def export_copy(onnx_dir, tmp_path):
    return copy_export(onnx_dir, tmp_path / "copy")


def _edit_manifest(directory, **changes):
    path = directory / mf.MANIFEST_NAME
    raw = json.loads(path.read_text())
    raw.update(changes)
    path.write_text(json.dumps(raw))


def test_round_trip(onnx_dir, tmp_path):
    m = mf.read_manifest(onnx_dir)
    mf.write_manifest(tmp_path, m)
    assert mf.read_manifest(tmp_path) == m
    assert m.model_config().name == "tiny"


@pytest.mark.parametrize("breakage, message", [
    (lambda d: (d / mf.MANIFEST_NAME).unlink(), "manifest.json missing"),
    (lambda d: (d / mf.MANIFEST_NAME).write_text("{not json"), "not valid JSON"),
    (lambda d: (d / mf.MANIFEST_NAME).write_text("[1, 2]"), "expected a JSON object"),
    (lambda d: _edit_manifest(d, graphs=None), "malformed manifest"),
    (lambda d: _edit_manifest(d, kind="dgae-tensorrt"), "expected 'dgae-onnx'"),
    (lambda d: _edit_manifest(d, manifest_version=99), "newer than this build"),
    (lambda d: _edit_manifest(d, precision="int3"), "unknown precision"),
    (lambda d: _edit_manifest(d, config={"latent_channels": 0}), "config is invalid"),
])
def test_broken_manifest_is_a_clear_error(export_copy, breakage, message):
    breakage(export_copy)
    with pytest.raises(BackendError, match=message):
        mf.read_manifest(export_copy)
    with pytest.raises(BackendError, match=message):
        OnnxRuntimeBackend(export_copy)


def test_not_a_directory(tmp_path):
    with pytest.raises(BackendError, match="not a directory"):
        mf.read_manifest(tmp_path / "nope")


def test_truncated_onnx_file_is_detected(export_copy):
    path = export_copy / "denoiser.onnx"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(BackendError, match=r"denoiser\.onnx: sha256 .* does not match"):
        OnnxRuntimeBackend(export_copy)


def test_missing_onnx_file_is_detected(export_copy):
    (export_copy / "encoder.onnx").unlink()
    with pytest.raises(BackendError, match=r"encoder\.onnx missing"):
        OnnxRuntimeBackend(export_copy)


def test_garbage_onnx_with_matching_hash_is_refused_by_ort(export_copy):
    """Even a file the manifest vouches for must load; ORT's failure becomes a BackendError."""
    path = export_copy / "encoder.onnx"
    path.write_bytes(b"this is not a protobuf")
    m = mf.read_manifest(export_copy)
    graphs = dict(m.graphs)
    graphs[mf.ENCODER] = dataclasses.replace(graphs[mf.ENCODER], sha256=file_sha256(path))
    mf.write_manifest(export_copy, dataclasses.replace(m, graphs=graphs))
    with pytest.raises(BackendError, match="ONNX Runtime cannot load it"):
        OnnxRuntimeBackend(export_copy)


def test_export_of_another_checkpoint_is_refused(onnx_dir):
    with pytest.raises(BackendError, match="exported from checkpoint sha256 .* not the requested"):
        OnnxRuntimeBackend(onnx_dir, checkpoint_sha256="0" * 64)
