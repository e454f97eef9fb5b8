"""ONNX export of the tiny preset: manifest, checker, ORT-vs-torch parity at unseen shapes,
unrolled decode, failed validation keeps the user's files, the CLI."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import pytest
import torch

from cli import main as cli
from dgae.checkpoint import BUNDLED_CHECKPOINT, load_checkpoint
from dgae.hashing import file_sha256
from dgae.errors import ExportError
from dgae.sampler import SamplePlan, make_buffer, run_sampler
from export import manifest as mf
from export import onnx_export, validate
from tests.export_fixtures import EXPORT_TIMEOUT_S, UNROLL_STEPS, tiny_export

pytestmark = pytest.mark.timeout(EXPORT_TIMEOUT_S)  # the first test pays for the shared export


@pytest.fixture(scope="session")
def onnx_dir(tmp_path_factory, tiny_checkpoint):
    return tiny_export(tmp_path_factory, tiny_checkpoint)


def test_manifest_describes_the_export(onnx_dir, tiny_checkpoint):
    raw = json.loads((onnx_dir / mf.MANIFEST_NAME).read_text())
    assert raw["checkpoint_sha256"] == file_sha256(tiny_checkpoint)
    assert raw["preset"] == "tiny" and raw["opset"] == onnx_export.DEFAULT_OPSET and raw["precision"] == "fp32"
    assert {"torch", "onnx", "onnxscript", "onnxruntime"} <= set(raw["versions"])
    g = raw["graphs"]
    assert set(g) == {mf.ENCODER, mf.DENOISER, mf.UNROLLED}
    assert [i["name"] for i in g[mf.DENOISER]["inputs"]] == ["x_t", "t", "z"]
    assert g[mf.DENOISER]["inputs"][0]["shape"] == ["batch", 3, "height", "width"]
    assert g[mf.DENOISER]["inputs"][1] == {"name": "t", "shape": ["batch"], "dtype": "float32"}
    assert g[mf.ENCODER]["outputs"][0]["shape"] == ["batch", 4, "latent_height", "latent_width"]
    assert g[mf.UNROLLED]["extra"]["steps"] == UNROLL_STEPS and g[mf.UNROLLED]["extra"]["timesteps"] == [1.0, 0.5, 0.0]
    for entry in g.values():
        assert file_sha256(onnx_dir / entry["file"]) == entry["sha256"]
    # Validation ran: every graph at 2 batch sizes x 2 image sizes, all within the fp32 tolerance.
    rows = raw["validation"]
    assert {(r["batch"], r["height"], r["width"]) for r in rows if r["graph"] == mf.DENOISER} == \
        {(1, 32, 32), (1, 24, 40), (3, 32, 32), (3, 24, 40)}
    assert all(r["ok"] and r["rel_error"] < 1e-4 for r in rows)
    assert mf.read_manifest(onnx_dir).graphs[mf.ENCODER].input_names() == ["images"]


def test_files_pass_checker_and_dims_are_named(onnx_dir):
    for name in mf.GRAPH_NAMES:
        path = onnx_dir / f"{name}.onnx"
        onnx.checker.check_model(str(path))
        dims = [d.dim_param or d.dim_value for d in onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim]
        assert dims == ["batch", 3, "height", "width"]


def test_denoiser_runs_at_unseen_batch_and_size(onnx_dir, tiny_model):
    """Traced at batch 2, 16x16: batch 5 at 16x56 must work and match torch."""
    sess = validate.make_session(onnx_dir / "denoiser.onnx")
    g = torch.Generator().manual_seed(3)
    x, t, z = torch.randn(5, 3, 16, 56, generator=g), torch.rand(5, generator=g), torch.randn(5, 4, 16, 56, generator=g)
    (v,) = sess.run(["v"], {"x_t": x.numpy(), "t": t.numpy(), "z": z.numpy()})
    ref = onnx_export.DenoiserGraph(tiny_model)(x, t, z).detach().numpy()
    assert v.shape == (5, 3, 16, 56)
    assert validate.rel_error(v, ref)[1] < 1e-4


def test_unrolled_graph_equals_shared_sampler(onnx_dir, tiny_model):
    sess = validate.make_session(onnx_dir / "decode_unrolled.onnx")
    g = torch.Generator().manual_seed(4)
    noise, z = torch.randn(2, 3, 24, 32, generator=g), torch.randn(2, 4, 24, 32, generator=g)
    (img,) = sess.run(["image"], {"noise": noise.numpy(), "z": z.numpy()})
    plan = SamplePlan.build(tiny_model.config.sampler, UNROLL_STEPS)
    ref = run_sampler(tiny_model.decoder.forward_buffer, make_buffer(noise, z), plan)
    assert np.abs(img - ref.numpy()).max() < 1e-5
    assert img.min() >= -1.0 and img.max() <= 1.0  # the last step clamps


def test_validation_reports_mismatch_with_numbers(onnx_dir, tiny_checkpoint):
    other = load_checkpoint(tiny_checkpoint)
    with torch.no_grad():
        other.decoder.conv_out.bias.add_(0.5)  # the files no longer match this model
    manifest = mf.read_manifest(onnx_dir)
    manifest = dataclasses.replace(manifest, graphs={mf.DENOISER: manifest.graphs[mf.DENOISER]})
    with pytest.raises(ExportError, match=r"validation failed for 4/4 .*denoiser\.v .*rel .*tolerance 0\.0001"):
        validate.validate_export(onnx_dir, manifest, other)


@pytest.fixture()
def fast_trace(monkeypatch, onnx_dir):
    """Reuse the session's traced graphs so tests of the export flow skip the slow tracing."""
    monkeypatch.setattr(onnx_export, "trace_graph", lambda name, *a, **k: onnx.load(str(onnx_dir / f"{name}.onnx")))


def test_failed_validation_keeps_existing_files(fast_trace, monkeypatch, tmp_path, tiny_checkpoint):
    out = tmp_path / "out"
    small = [(8, 8), (8, 16)]
    onnx_export.export_onnx(tiny_checkpoint, out, graphs=[mf.ENCODER], validation_sizes=small)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    monkeypatch.setitem(validate.TOLERANCES, "fp32", 0.0)  # nothing can pass
    with pytest.raises(ExportError, match="validation failed"):
        onnx_export.export_onnx(tiny_checkpoint, out, graphs=[mf.ENCODER, mf.DENOISER], validation_sizes=small)
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert after == before  # the previous export is untouched, no denoiser.onnx appeared
    rejected = list((out / onnx_export.REJECTED_DIR).iterdir())
    assert len(rejected) == 1 and (rejected[0] / "denoiser.onnx").is_file()
    assert not [p for p in out.iterdir() if p.name.startswith(".staging")]


def test_cli_export_and_errors(fast_trace, tmp_path, tiny_checkpoint, capsys, monkeypatch):
    out = tmp_path / "cli"
    assert cli.main(["export", "onnx", "-c", str(tiny_checkpoint), "-o", str(out), "--unroll-steps", "1",
                     "--validate-sizes", "16x16,8x24"]) == 0
    text = capsys.readouterr().out
    assert "decode_unrolled.onnx" in text and "8x24" in text
    assert mf.read_manifest(out).graphs[mf.UNROLLED].extra["steps"] == 1
    assert cli.main(["export", "onnx", "-c", str(tmp_path / "missing.safetensors"), "-o", str(out)]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert cli.main(["export", "onnx", "-c", str(tiny_checkpoint), "-o", str(out), "--validate-sizes", "12x12"]) == 2
    assert "multiples of 8" in capsys.readouterr().err
    monkeypatch.setitem(validate.TOLERANCES, "fp32", 0.0)
    assert cli.main(["export", "onnx", "-c", str(tiny_checkpoint), "-o", str(out), "--no-encoder"]) == 2
    assert "validation failed" in capsys.readouterr().err


def assert_norms_in_fp32(path) -> None:
    """Every normalisation node of an fp16 graph takes an fp32 input (statistics in fp32)."""
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(path))).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input]}
    norms = [n for n in graph.node if n.op_type in ("InstanceNormalization", "GroupNormalization")]
    assert norms and all(types.get(n.input[0]) == onnx.TensorProto.FLOAT for n in norms)


@pytest.mark.slow
def test_fp16_encoder_export(tmp_path, tiny_checkpoint):
    """fp16 graph: fp16 I/O, normalisation statistics in fp32, finite under large inputs, close to fp32."""
    manifest = onnx_export.export_onnx(tiny_checkpoint, tmp_path, precision="fp16", graphs=[mf.ENCODER])
    assert manifest.precision == "fp16" and manifest.graphs[mf.ENCODER].inputs[0].dtype == "float16"
    rows = manifest.validation
    assert {r["case"] for r in rows} == {"random", "stress"} and all(r["ok"] and r["finite"] for r in rows)
    assert max(r["rel_error"] for r in rows if r["case"] == "random") < validate.TOLERANCES["fp16"]
    assert_norms_in_fp32(tmp_path / "encoder.onnx")


@pytest.mark.slow
def test_fp16_denoiser_and_unrolled_decode_export(tmp_path, tiny_checkpoint):
    """The fp16 decoder graphs (what a TensorRT fp16 engine is built from): fp16 I/O, finite under
    stress inputs, within the fp16 tolerance of the fp32 torch model, norms in fp32."""
    manifest = onnx_export.export_onnx(tiny_checkpoint, tmp_path, precision="fp16",
                                       graphs=[mf.DENOISER, mf.UNROLLED], unroll_steps=2)
    assert manifest.precision == "fp16"
    for name in (mf.DENOISER, mf.UNROLLED):
        assert all(spec.dtype == "float16" for spec in manifest.graphs[name].inputs if spec.name != "t")
    rows = manifest.validation
    assert {r["graph"] for r in rows} == {mf.DENOISER, mf.UNROLLED}
    assert all(r["ok"] and r["finite"] for r in rows)
    assert max(r["rel_error"] for r in rows if r["case"] == "random") < validate.TOLERANCES["fp16"]
    assert_norms_in_fp32(tmp_path / "denoiser.onnx")


@pytest.mark.slow
@pytest.mark.skipif(not BUNDLED_CHECKPOINT.is_file(), reason="bundled default checkpoint not trained yet")
def test_bundled_default_exports(tmp_path):
    manifest = onnx_export.export_onnx(None, tmp_path)
    assert manifest.checkpoint_sha256 == file_sha256(BUNDLED_CHECKPOINT)
    assert manifest.validation and all(r["ok"] for r in manifest.validation)


@pytest.mark.parametrize("solver, schedule", [("heun", "uniform"), ("euler", "shifted")])
def test_unrolled_composition_other_solvers(onnx_dir, tiny_model, tmp_path, solver, schedule):
    """Heun's 2N-1 denoiser calls and a shifted schedule, composed from the exported denoiser."""
    cfg = dataclasses.replace(tiny_model.config.sampler, solver=solver, schedule=schedule, shift=3.0)
    plan = SamplePlan.build(cfg, 2)
    proto = onnx_export.compose_unrolled(onnx.load(str(onnx_dir / "denoiser.onnx")), plan)
    onnx.checker.check_model(proto)
    calls = sum(n.name.endswith("/t") for n in proto.graph.node)
    assert calls == (2 * 2 - 1 if solver == "heun" else 2)
    onnx_export.save_graph(proto, tmp_path / "u.onnx")
    g = torch.Generator().manual_seed(5)
    noise, z = torch.randn(2, 3, 16, 24, generator=g), torch.randn(2, 4, 16, 24, generator=g)
    (img,) = validate.make_session(tmp_path / "u.onnx").run(["image"], {"noise": noise.numpy(), "z": z.numpy()})
    ref = run_sampler(tiny_model.decoder.forward_buffer, make_buffer(noise, z), plan)
    assert np.abs(img - ref.numpy()).max() < 1e-5
