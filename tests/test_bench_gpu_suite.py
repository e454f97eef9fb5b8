"""benchmarks/gpu_suite.sh --dry-run: the whole GPU suite's code paths on CPU (Triton interpreter,
tiny preset, tiny shapes), as CI runs it; plus its usage errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kernel_cases import requires_triton

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_suite.sh"
SUITE_TIMEOUT_S = 400


def _run(*args: str, timeout: float = SUITE_TIMEOUT_S) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=timeout)


@requires_triton
def test_dry_run_runs_every_step_and_writes_results(tmp_path):
    proc = _run("--dry-run", str(tmp_path / "gpu"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "gpu"
    kernels = json.loads((out / "gpu_kernels.json").read_text())
    assert kernels["dry_run"] is True and all(p["ok"] for p in kernels["parity"])
    backends = json.loads((out / "backends-cpu.json").read_text())
    assert backends["machine"]["checkpoint"]["preset"] == "tiny"
    assert backends["machine"]["checkpoint"]["trained"] is False
    assert any(r["op"] == "decode" and r["flops"] > 0 for r in backends["rows"])
    assert all("reason" not in b or b["skipped"] for b in backends["backends"].values())
    anchors = json.loads((out / "anchors-cpu.json").read_text())
    labels = [r["label"] for r in anchors["rows"]]
    assert {"dgae 1 step", "dgae 2 steps"} <= set(labels)
    for name in ("backends-cpu.png", "anchors-cpu.png", "kernels.log", "engines.log", "backends.log", "anchors.log"):
        assert (out / name).stat().st_size > 0
    assert "gpu suite: all steps passed" in proc.stdout


def test_usage_errors_exit_2():
    assert _run(timeout=30).returncode == 2                        # no OUT_DIR
    bad = _run("--bogus", "x", timeout=30)
    assert bad.returncode == 2 and "unknown option" in bad.stderr


def test_full_run_without_cuda_refuses(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the full suite would run")
    proc = _run(str(tmp_path / "x"), timeout=120)
    assert proc.returncode == 2 and "--dry-run" in proc.stderr
    assert not (tmp_path / "x" / "backends-cpu.json").exists()
