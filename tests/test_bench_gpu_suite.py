"""benchmarks/gpu_suite.sh --dry-run: the GPU suite's Python entry points on CPU at tiny sizes (tiny
presets, Triton interpreter), as CI runs it, into one gpu-suite.json; its usage errors; and the
decode step's logic (best batch, step counts at it, time budget, fractions of the peak) with a
fake backend."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kernel_cases import requires_triton

from benchmarks import gpu_suite

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_suite.sh"
SUITE_TIMEOUT_S = 400
DRY_PRESETS = ("tiny", "tiny-f16c16")


def _run(*args: str, timeout: float = SUITE_TIMEOUT_S) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=timeout)


@requires_triton
def test_dry_run_runs_every_step_into_one_json(tmp_path):
    out = tmp_path / "gpu"
    proc = _run("--dry-run", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu-suite.json", "logs"]      # one JSON
    report = json.loads((out / "gpu-suite.json").read_text())
    assert report["dry_run"] is True and report["failed"] == []
    assert set(report["steps"]) == {"peak", "kernels", "anchors", *(f"{s}-{p}" for s in ("decode", "compile")
                                                                    for p in DRY_PRESETS)}
    assert all(s["exit"] == 0 and s["seconds"] <= s["limit_s"] for s in report["steps"].values())
    assert report["peak"]["measured_tflops"] > 0

    decode = report["decode"]
    measured = {(r["preset"], r["variant"], r["steps"]) for r in decode["rows"]}
    for preset in DRY_PRESETS:
        for variant in ("eager", "triton"):
            assert {(preset, variant, s) for s in gpu_suite.DRY_GRID.steps} <= measured
        assert "CUDA graphs need a CUDA device" in decode["variants"][f"{preset}/cuda-graph"]["skipped"]
        assert "traces as one graph" in decode["variants"][f"{preset}/compile"]["check"]
    assert all(r["flops"] > 0 and 0 < r["fraction_of_measured_peak"] for r in decode["rows"])
    assert all(r["ratio_vs_eager"] == 1.0 for r in decode["best"] if r["variant"] == "eager")
    assert {p["checkpoint"]["preset"] for p in decode["parts"]} == set(DRY_PRESETS)
    assert not any(p["checkpoint"]["trained"] for p in decode["parts"])

    kernels = report["kernels"]
    assert kernels["dry_run"] is True and kernels["presets"] == list(DRY_PRESETS)
    assert all(p["ok"] for p in kernels["parity"]) and kernels["eager"]["attention"] == "sdpa"
    labels = {r["label"] for r in report["anchors"]["rows"]}
    assert {"dgae 1 step", "dgae 2 steps"} <= labels
    for name in ("peak", "kernels", "anchors", "merge", "decode-tiny"):
        assert (out / "logs" / f"{name}.log").stat().st_size > 0
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
    assert not (tmp_path / "x" / "gpu-suite.json").exists()


def test_suite_limits_fit_in_eight_minutes():
    limits = {}   # the defaults: NAME=${NAME:-seconds} (the environment may set shorter ones)
    for match in re.finditer(r"^(\w+_LIMIT_S)=\$\{\1:-(\d+)\}$", SCRIPT.read_text(), re.MULTILINE):
        limits[match.group(1)] = int(match.group(2))
    presets = 2
    total = (limits["PEAK_LIMIT_S"] + limits["KERNELS_LIMIT_S"] + presets * limits["DECODE_LIMIT_S"]
             + presets * limits["COMPILE_LIMIT_S"] + limits["ANCHORS_LIMIT_S"] + limits["MERGE_LIMIT_S"])
    assert total <= 8 * 60, limits


# --- the decode step's logic, with a fake backend ----------------------------------------------
class FakeBackend:
    """Decodes instantly except for a per-image cost that falls with batch up to 2 (so 2 is best)."""

    def __init__(self, config, seconds_per_image: dict[int, float]):
        self.config, self.cost, self.calls = config, seconds_per_image, []

    def decode(self, latents, steps=None, seeds=None):
        self.calls.append((len(latents), steps))
        time.sleep(self.cost[len(latents)] * len(latents) * steps)

    def info(self):
        from backends.base import BackendInfo

        return BackendInfo("fake", "cpu", "bf16")

    def close(self):
        self.closed = True


def _fake_run(monkeypatch, tiny_model, grid, deadline_s=60.0):
    from backends import factory

    fake = FakeBackend(tiny_model.config, {1: 0.004, 2: 0.001, 4: 0.003})
    monkeypatch.setattr(factory, "create_backend", lambda *a, **k: fake)
    rows = []
    out = gpu_suite.run_variant(gpu_suite.VARIANTS["eager"], Path("unused"), "tiny", "cpu", grid,
                                time.monotonic() + deadline_s, False, rows.append)
    return fake, out, rows


def test_best_batch_then_every_step_count_at_it(monkeypatch, tiny_model):
    grid = gpu_suite.DecodeGrid(size=16, batches=(1, 2, 4), steps=(1, 2, 3), warmup=0, repeats=1,
                                min_seconds=0.0, max_repeats=0)
    fake, out, rows = _fake_run(monkeypatch, tiny_model, grid)
    assert out["best_batch"] == 2 and fake.closed
    assert [(r["batch"], r["steps"]) for r in rows] == [(1, 1), (2, 1), (4, 1), (2, 2), (2, 3)]
    assert fake.calls == [(1, 1), (2, 1), (4, 1), (2, 2), (2, 3)]
    per_pass = rows[0]["flops"]
    assert rows[-1]["flops"] == per_pass * 2 * 3                  # batch x Euler steps x one pass
    gpu_suite.add_fractions(rows, measured=2 * rows[0]["achieved_tflops"], datasheet=None)
    assert rows[0]["fraction_of_measured_peak"] == pytest.approx(0.5)
    best = gpu_suite.best_rows(rows)
    assert [(r["batch"], r["steps"]) for r in best] == [(2, 1), (2, 2), (2, 3)]


def test_budget_cuts_cases_instead_of_overrunning(monkeypatch, tiny_model):
    grid = gpu_suite.DecodeGrid(size=16, batches=(1, 2), steps=(1, 2), warmup=0, repeats=1,
                                min_seconds=0.0, max_repeats=0)
    fake, out, rows = _fake_run(monkeypatch, tiny_model, grid, deadline_s=-1.0)
    assert rows == [] and fake.calls == [] and out["cut"] == [{"batch": 1, "steps": 1}, {"batch": 2, "steps": 1}]
