"""scripts/gpu_run.sh: the prepared GPU run. --dry-run (as CI runs it) goes through every phase on
CPU at tiny sizes into one folder of at most 8 files and lists them first; usage errors; a real run
refuses to start without a CUDA device."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kernel_cases import requires_triton

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gpu_run.sh"
DRY_RUN_TIMEOUT_S = 1200   # the phases' limits x4 on CPU; about 2 minutes on an idle 2-core machine
MAX_FILES = 8        # what comes back from a lent GPU machine
EXPECTED = {"roofline.json", "gpu-suite.json", "distill_summary.json", "eval-student.json", "eval-teacher.json",
            "student-fp16.safetensors", "run.log", "manifest.json"}
GPU_RUN_LIMIT_S = 600


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=timeout)


@requires_triton
def test_dry_run_writes_the_listed_files_and_every_phase_passes(tmp_path):
    out = tmp_path / "run"
    proc = _run("--dry-run", str(out), timeout=DRY_RUN_TIMEOUT_S)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    listed = [line.removeprefix("  - ") for line in proc.stdout.split("\n") if line.startswith("  - ")]
    assert set(listed) == EXPECTED                                    # it says what it writes, first
    written = {p.name for p in out.iterdir()}
    assert written == EXPECTED and len(written) <= MAX_FILES and all((out / n).is_file() for n in written)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dry_run"] is True and manifest["failed"] == [] and manifest["missing"] == []
    assert set(manifest["phases"]) == {"roofline", "suite", "distill"}
    assert sum(p["limit_s"] for p in manifest["phases"].values()) / manifest["limit_factor"] < GPU_RUN_LIMIT_S
    assert all(p["exit"] == 0 for p in manifest["phases"].values())
    suite = json.loads((out / "gpu-suite.json").read_text())
    assert suite["dry_run"] is True and suite["decode"]["rows"]
    roofline = json.loads((out / "roofline.json").read_text())
    assert roofline["rows"] and roofline["rows"][0]["preset"] == "tiny"
    summary = json.loads((out / "distill_summary.json").read_text())
    assert set(summary) >= {"student", "teacher", "student_matches_bar"}
    for name in ("eval-student.json", "eval-teacher.json"):
        assert json.loads((out / name).read_text())["rows"]
    assert "=== distill: exit 0" in (out / "run.log").read_text()


@pytest.mark.parametrize("args", [(), ("--bogus", "x"), ("a", "b")])
def test_usage_errors(args):
    assert _run(*args).returncode == 2


def test_real_run_needs_a_cuda_device(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    proc = _run(str(tmp_path / "run"))
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr
