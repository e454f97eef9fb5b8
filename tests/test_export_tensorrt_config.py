"""TensorRT builder logic that runs without TensorRT: profiles from requested shapes, precision
flags, fp32-pinned layers, engine manifest, GPU/version compatibility; the CLI's dry run. The
engine build itself needs TensorRT and a GPU and is skipped here with the reason."""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from cli import main as cli
from dgae.errors import BackendError, ExportError
from export import manifest as mf
from export import tensorrt_build as tb
from tests.export_fixtures import EXPORT_TIMEOUT_S, tiny_export

HAS_TRT = importlib.util.find_spec("tensorrt") is not None

pytestmark = pytest.mark.timeout(EXPORT_TIMEOUT_S)  # the first test pays for the shared export


@pytest.fixture(scope="session")
def onnx_dir(tmp_path_factory, tiny_checkpoint):
    return tiny_export(tmp_path_factory, tiny_checkpoint)


SHAPES = tb.ShapeRange(1, 4, 8, (32, 32), (64, 96), (128, 256))


def test_parse_hw():
    assert tb.parse_hw("256") == (256, 256) and tb.parse_hw("128x384") == (128, 384)
    for bad in ("abc", "0", "1x2x3", "-8x8"):
        with pytest.raises(ExportError, match="must be N or HxW"):
            tb.parse_hw(bad)


@pytest.mark.parametrize("shapes, message", [
    (tb.ShapeRange(2, 1, 8), "batch range"),
    (tb.ShapeRange(0, 1, 8), "batch range"),
    (tb.ShapeRange(min_hw=(64, 64), opt_hw=(32, 32)), "height range"),
    (tb.ShapeRange(max_hw=(512, 500)), "width 500 is not a multiple of 8"),
])
def test_shape_range_validation(shapes, message):
    with pytest.raises(ExportError, match=message):
        shapes.validate(8)


def test_profiles_follow_the_manifest_dims(onnx_dir):
    m = mf.read_manifest(onnx_dir)
    den = tb.profile_shapes(m.graphs[mf.DENOISER], SHAPES, 8)
    assert den == {"x_t": ((1, 3, 32, 32), (4, 3, 64, 96), (8, 3, 128, 256)),
                   "t": ((1,), (4,), (8,)),
                   "z": ((1, 4, 32, 32), (4, 4, 64, 96), (8, 4, 128, 256))}
    enc = tb.profile_shapes(m.graphs[mf.ENCODER], SHAPES, 8)
    assert enc == {"images": ((1, 3, 32, 32), (4, 3, 64, 96), (8, 3, 128, 256))}
    odd = mf.GraphEntry("x.onnx", "", (mf.TensorSpec("q", ("batch", "depth"), "float32"),), ())
    with pytest.raises(ExportError, match="'depth' has no profile rule"):
        tb.profile_shapes(odd, SHAPES, 8)


def test_precision_flags_and_pinned_layers():
    assert tb.builder_flags("fp32", "fp32") == ()
    assert tb.builder_flags("fp16", "fp32") == ("FP16", "OBEY_PRECISION_CONSTRAINTS")
    assert tb.builder_flags("bf16", "fp32") == ("BF16", "OBEY_PRECISION_CONSTRAINTS")
    assert tb.builder_flags("fp16", "fp16") == ("FP16",)
    with pytest.raises(ExportError, match="needs an fp32 export"):
        tb.builder_flags("bf16", "fp16")
    with pytest.raises(ExportError, match="precision must be one of"):
        tb.builder_flags("int8", "fp32")
    types = ["CONVOLUTION", "NORMALIZATION", "ACTIVATION", "SOFTMAX", "REDUCE", "ELEMENTWISE"]
    assert tb.layers_to_pin(types, "fp16") == [1, 3, 4] and tb.layers_to_pin(types, "fp32") == []


def test_build_plan(onnx_dir, tmp_path):
    plan = tb.make_build_plan(onnx_dir, tmp_path / "eng", "fp16", SHAPES, workspace_gib=2)
    assert [e.graph for e in plan.engines] == list(mf.read_manifest(onnx_dir).graphs)
    assert {e.engine_file for e in plan.engines} == {"encoder.engine", "denoiser.engine", "decode_unrolled.engine"}
    assert plan.workspace_bytes == 2 * tb.GIB and plan.timing_cache == str(tmp_path / "eng" / tb.TIMING_CACHE_NAME)
    assert plan.command.startswith("dgae export tensorrt --onnx ") and "--fp16" in plan.command
    assert "--max-size 128x256" in plan.command
    sub = tb.make_build_plan(onnx_dir, tmp_path, "fp32", SHAPES, graphs=["denoiser"])
    assert [e.graph for e in sub.engines] == ["denoiser"] and sub.flags == ()
    with pytest.raises(BackendError, match="has no 'vae' graph"):
        tb.make_build_plan(onnx_dir, tmp_path, graphs=["vae"])
    with pytest.raises(ExportError, match="workspace"):
        tb.make_build_plan(onnx_dir, tmp_path, workspace_gib=0)


def _fake_engines(plan):
    """Placeholder engine files so the manifest logic can hash them (no TensorRT involved)."""
    for e in plan.engines:
        (tb.Path(plan.out_dir) / e.engine_file).write_bytes(f"not an engine: {e.graph}".encode())


def test_engine_manifest_and_compat(onnx_dir, tmp_path):
    out = tmp_path / "eng"
    out.mkdir()
    plan = tb.make_build_plan(onnx_dir, out, "fp16", SHAPES, graphs=["encoder", "denoiser"])
    _fake_engines(plan)
    gpu = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    m = tb.engine_manifest(mf.read_manifest(onnx_dir), plan, "10.7.0", gpu)
    mf.write_manifest(out, m)
    back = mf.read_manifest(out, kind=mf.KIND_TENSORRT)
    mf.verify_files(out, back)
    assert back.tensorrt["version"] == "10.7.0" and back.tensorrt["gpu_name"] == gpu["name"]
    assert back.tensorrt["flags"] == ["FP16", "OBEY_PRECISION_CONSTRAINTS"] and back.versions["tensorrt"] == "10.7.0"
    assert back.tensorrt["profiles"]["denoiser"]["t"] == [[1], [4], [8]]
    assert (
        back.graphs["encoder"].file == "encoder.engine" and back.graphs["encoder"].extra["onnx_file"] == "encoder.onnx"
    )
    with pytest.raises(BackendError, match="expected 'dgae-onnx'"):
        mf.read_manifest(out)
    tb.check_engine_compat(back, "10.7.0", gpu["name"], "9.0", out)  # same machine: fine
    with pytest.raises(
        BackendError, match=r"TensorRT '10.7.0' built them, this process has '10.9.0'.*Rebuild .*dgae export tensorrt"
    ):
        tb.check_engine_compat(back, "10.9.0", gpu["name"], "9.0", out)
    with pytest.raises(
        BackendError, match=r"built on 'NVIDIA H100 80GB HBM3' \(sm 9.0\), this GPU is 'NVIDIA L4' \(sm 8.9\)"
    ):
        tb.check_engine_compat(back, "10.7.0", "NVIDIA L4", "8.9", out)


def test_cli_dry_run_prints_the_plan(onnx_dir, tmp_path, capsys):
    rc = cli.main(["export", "tensorrt", "--onnx", str(onnx_dir), "-o", str(tmp_path), "--bf16", "--dry-run",
                   "--min-batch", "1", "--opt-batch", "2", "--max-batch", "4", "--max-size", "128x64",
                   "--opt-size", "64"])
    assert rc == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["precision"] == "bf16" and plan["flags"][0] == "BF16"
    assert plan["engines"]["encoder"]["profile"]["images"] == ["1x3x64x64", "2x3x64x64", "4x3x128x64"]
    assert cli.main(["export", "tensorrt", "--onnx", str(tmp_path / "none"), "-o", str(tmp_path), "--dry-run"]) == 2
    assert "not a directory" in capsys.readouterr().err


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed: the build path is exercised instead")
def test_build_without_tensorrt_is_a_clear_error(onnx_dir, tmp_path, capsys):
    assert cli.main(["export", "tensorrt", "--onnx", str(onnx_dir), "-o", str(tmp_path)]) == 2
    assert "TensorRT is not installed" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TRT or not torch.cuda.is_available(),
                    reason="building and running engines needs the tensorrt package and a CUDA GPU")
def test_engines_build_load_and_match_torch(onnx_dir, tiny_checkpoint, tmp_path):  # pragma: no cover
    from backends.tensorrt_backend import TensorRTBackend
    from backends.torch_backend import TorchBackend

    plan = tb.make_build_plan(onnx_dir, tmp_path, "fp32", tb.ShapeRange(1, 2, 4, (16, 16), (32, 32), (64, 64)))
    tb.build_engines(plan)
    trt_b, torch_b = TensorRTBackend(tmp_path), TorchBackend.from_checkpoint(tiny_checkpoint)
    latents = torch.randn(3, 4, 4, 4)
    assert (trt_b.decode(latents, seeds=1) - torch_b.decode(latents, seeds=1)).abs().max() < 1e-3
