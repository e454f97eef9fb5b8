"""`dgae kernels compile`: the decoders' Triton launches compiled ahead of time for a GPU
architecture on this CPU machine (a subset here: the tiny decoder's launches in bf16, for sm_80 and
sm_90), the launch limits
it checks, the launches the meta-device trace records, and the triton pin."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

import kernels
from benchmarks import kernel_compile
from kernels import aot

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton (ptxas ships in it)")
COMPILE_TIMEOUT_S = 120


def _cli(*args: str, interpret: str = "0") -> subprocess.CompletedProcess:
    env = {**os.environ, "TRITON_INTERPRET": interpret}   # compiled, not interpreted, kernels
    return subprocess.run([sys.executable, "-m", "cli", "kernels", "compile", *args], capture_output=True,
                          text=True, env=env, timeout=COMPILE_TIMEOUT_S)


def test_compiles_the_tiny_decoders_launches_for_sm80_and_sm90(tmp_path):
    import triton

    proc = _cli("--out", str(tmp_path), "--presets", "tiny", "--sizes", "32", "--archs", "80,90", "--dtypes", "bf16")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / kernel_compile.RESULT_NAME).read_text())
    assert report["triton"] == triton.__version__ and report["triton_pinned"] == kernel_compile.pinned_triton()
    records = report["records"]
    assert {(r["kernel"], r["arch"]) for r in records} == {(k, a) for k in kernel_compile.KERNELS
                                                            for a in ("sm_80", "sm_90")}
    for r in records:
        assert (r["dtype"], r["ok"], r["spills"], r["error"]) == ("bf16", True, 0, None)
        assert 0 < r["num_regs"] <= aot.MAX_REGISTERS_PER_THREAD
        assert 0 <= r["shared_bytes"] <= aot.MAX_SHARED_BYTES[int(r["arch"].removeprefix("sm_"))]
        assert r["used_by"] == ["tiny@32"]
    attention = next(r for r in records if r["kernel"] == "attention" and r["arch"] == "sm_80")
    assert attention["shared_bytes"] > 0                     # the pipelined K/V tiles live in shared memory
    # q/k/v are views of the qkv convolution: the token stride is 1, as the model launches it
    assert {"sq_n", "sk_n", "sv_n"} <= set(attention["config"]["args_equal_1"])
    assert attention["signature"]["q_ptr"] == "*bf16"
    assert "kernel" in proc.stdout and "spills" in proc.stdout   # the table


def test_refuses_under_the_interpreter(tmp_path):
    proc = _cli("--out", str(tmp_path), "--presets", "tiny", "--sizes", "32", interpret="1")
    assert proc.returncode == 2 and "TRITON_INTERPRET" in proc.stderr
    assert not (tmp_path / kernel_compile.RESULT_NAME).exists()


def test_rejects_unknown_arch_and_dtype(tmp_path):
    assert _cli("--out", str(tmp_path), "--archs", "75").returncode == 2
    assert _cli("--out", str(tmp_path), "--dtypes", "fp8").returncode == 2


@pytest.mark.parametrize("arch,warps,regs,smem,problem", [
    (90, 4, 128, 64 * 1024, None),
    (80, 4, 128, 200 * 1024, "shared memory"),              # fits sm_90's 227 KB, not sm_80's 163 KB
    (90, 4, 128, 200 * 1024, None),
    (80, 8, 255, 0, None),                                  # 255 x 256 threads = 65,280 <= 64 K registers
    (80, 16, 255, 0, "registers x 512 threads"),            # 255 x 512 > 64 K registers per block
])
def test_resource_limits(arch, warps, regs, smem, problem):
    errors = aot.resource_errors(arch, warps, regs, smem)
    assert (problem is None and errors == []) or (problem is not None and problem in errors[0])


def test_trace_records_every_launch_of_a_sampled_decode():
    from dgae.presets import get_preset

    launches = kernel_compile.trace_launches("tiny", 32, torch.bfloat16)
    names = [k for k, _ in launches]
    config = get_preset("tiny")
    assert names.count("sampler_step") == kernel_compile.TRACE_STEPS * (1 if config.sampler.solver == "euler" else 2)
    assert names.count("attention") > 0 and names.count("group_norm") > 0
    steps = [launch for k, launch in launches if k == "sampler_step"]
    assert [s.constexprs["CLAMP"] for s in steps][-1] is True     # only the last step clamps
    assert steps[0].args[0].dtype == kernel_compile.STATE_DTYPE and steps[0].args[1].dtype == torch.bfloat16
    assert all(launch.args[0].device.type == "meta" for _, launch in launches)


def test_recording_runs_the_references_only():
    q = torch.randn(1, 2, 16, 16)
    with kernels.record_gpu_launches() as launches:
        out = kernels.flash_attention(q, q, q)
    torch.testing.assert_close(out, kernels.sdpa_attention(q, q, q))
    assert [k for k, _ in launches] == ["attention"]
    assert launches[0][1].options["num_warps"] == 8 and launches[0][1].constexprs["UPCAST"] is False


def test_gpu_extra_pins_triton_exactly():
    assert kernel_compile.pinned_triton() is not None
