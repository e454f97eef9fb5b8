"""The GPU benchmark script runs end to end on CPU in --dry-run mode and writes its JSON."""
from __future__ import annotations

import json

import pytest
from kernel_cases import requires_triton

from benchmarks import gpu_kernels

pytestmark = requires_triton


def test_dry_run_writes_report(tmp_path, capsys):
    assert gpu_kernels.main(["--dry-run", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu_kernels.json").read_text())
    assert report["dry_run"] is True and report["gpu"] and report["presets"] == ["tiny"]
    kernels_checked = {p["kernel"] for p in report["parity"]}
    assert kernels_checked == {"attention", "group_norm", "sampler_step"}
    assert {p["dtype"] for p in report["parity"]} == {"fp32", "fp16", "bf16"}
    assert all(p["ok"] and p["max_rel_err"] is not None for p in report["parity"])
    timed = {r["kernel"] for r in report["timings"]}
    assert timed == kernels_checked
    for row in report["timings"]:
        assert row["triton_ms"] > 0 and row["eager_ms"] > 0 and row["calls_per_pass"] >= 1
    # "eager" is what the model runs without Triton: SDPA for attention, never the einsum oracle
    assert {r["eager"] for r in report["timings"] if r["kernel"] == "attention"} == {"sdpa"}
    assert all(r["tflops"] is not None for r in report["timings"] if r["kernel"] == "attention")
    assert set(report["per_pass"]) == kernels_checked
    out = capsys.readouterr().out
    assert "x eager" in out and "max rel err" in out and "per U-Net pass" in out


def test_shapes_are_the_decoders_own():
    """The tiny decoder at 32 px: one attention level (factor 8 -> 4x4 tokens, 32 channels / 16 per
    head) and AdaGN norms inside every ResBlock; counts add up to the decoder's module counts."""
    from dgae.decoder import Decoder
    from dgae.layers import AttnBlock, GroupNorm
    from dgae.presets import get_preset

    shapes = gpu_kernels.model_shapes("tiny", 32, 2)
    attn = [k for k in shapes if k.kernel == "attention"]
    assert {k.shape for k in attn} == {(2, 2, 16, 16)}
    decoder = Decoder(get_preset("tiny"))
    modules = list(decoder.modules())
    assert sum(k.calls for k in attn) == sum(isinstance(m, AttnBlock) for m in modules)
    norms = [k for k in shapes if k.kernel == "group_norm"]
    assert sum(k.calls for k in norms) == sum(isinstance(m, GroupNorm) for m in modules)
    assert any(k.adagn for k in norms) and all(k.groups == 8 and k.eps == get_preset("tiny").norm_eps for k in norms)
    assert [k.shape for k in shapes if k.kernel == "sampler_step"] == [(2, 7, 32, 32)]
    both = gpu_kernels.suite_shapes(("f8c4-B", "f16c16-B"), 64, 1)
    steps = sorted(k.shape[1] for k in both if k.kernel == "sampler_step")
    assert steps == [3 + 4, 3 + 16]                        # the decoders differ only in their input


def test_no_benchmark_times_the_einsum_reference_as_eager():
    import pathlib

    bench = pathlib.Path(gpu_kernels.__file__).parent
    for path in bench.glob("*.py"):
        text = path.read_text()
        if path.name == "gpu_kernels.py":    # the parity oracle, imported in run_parity only
            assert text.count("flash_attention_reference") == 2, path
        else:
            assert "flash_attention_reference" not in text, path


def test_refuses_full_run_without_cuda(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the full run would start (benchmarks/gpu_suite.sh runs it)")
    assert gpu_kernels.main(["--out", str(tmp_path)]) == 2
    assert not (tmp_path / "gpu_kernels.json").exists()
