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
    assert report["dry_run"] is True and report["gpu"]
    kernels_checked = {p["kernel"] for p in report["parity"]}
    assert kernels_checked == {"attention", "group_norm", "sampler_step"}
    assert {p["dtype"] for p in report["parity"]} == {"fp32", "fp16", "bf16"}
    assert all(p["ok"] and p["max_rel_err"] is not None for p in report["parity"])
    timed = {r["kernel"] for r in report["timings"]}
    assert timed == kernels_checked
    for row in report["timings"]:
        assert row["triton_ms"] > 0 and row["reference_ms"] > 0
    attn = [r for r in report["timings"] if r["kernel"] == "attention"]
    assert all(r["sdpa_ms"] > 0 and r["tflops"] is not None for r in attn)
    out = capsys.readouterr().out
    assert "x eager" in out and "max rel err" in out


def test_refuses_full_run_without_cuda(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the full run would start (benchmarks/gpu_suite.sh runs it)")
    assert gpu_kernels.main(["--out", str(tmp_path)]) == 2
    assert not (tmp_path / "gpu_kernels.json").exists()
