"""The Triton kernels really compiled on CUDA, not interpreted (``pytest -m gpu``; skipped without a GPU).

The root conftest sets ``TRITON_INTERPRET=1`` (setdefault) before anything imports triton, and
Triton reads it when the kernels are decorated, so this process cannot switch it. Each test here
starts a fresh interpreter with ``TRITON_INTERPRET=0``: the parity modules (every kernel, dtype and
ragged shape, plus the tiny-model decode) re-run there with their tensors on the GPU
(``DGAE_KERNEL_TEST_DEVICE=cuda``, see tests/kernel_cases.py), and a probe checks that the kernels
are compiled ``JITFunction``s that ran on CUDA tensors.
"""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from kernel_cases import DEVICE_ENV

REPO = Path(__file__).resolve().parent.parent
PARITY_MODULES = ("test_kernels_attention.py", "test_kernels_group_norm.py", "test_kernels_sampler_step.py",
                  "test_kernels_model_parity.py")
PARITY_TIMEOUT_S = 480  # the first compile of every kernel specialisation; a few seconds each on an H200
PROBE_TIMEOUT_S = 120
OUTPUT_TAIL = 4000

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: the kernels compile for it"),
    pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs the triton package"),
]

_PROBE = textwrap.dedent("""
    import os, torch, triton
    from kernels import _triton_common as common, flash_attention, group_norm_silu, euler_step
    from kernels import _attention_triton as att, _group_norm_triton as gn, _sampler_step_triton as st
    assert os.environ["TRITON_INTERPRET"] == "0" and not common.interpreting()
    q = torch.randn(1, 2, 70, 64, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(2, 64, 9, 9, device="cuda")
    buf, v = torch.zeros(1, 7, 8, 8, device="cuda"), torch.ones(1, 3, 8, 8, device="cuda")
    flash_attention(q, q, q); group_norm_silu(x, torch.ones(64, device="cuda"), torch.zeros(64, device="cuda"),
                                              32, 1e-5); euler_step(buf, v, 0.5)
    torch.cuda.synchronize()
    jitted = (att._launch.kernel, gn._launch.kernel, st._sampler_step_kernel)
    kinds = {type(k).__name__ for k in jitted}
    assert all(isinstance(k, triton.runtime.JITFunction) for k in jitted), kinds
    assert torch.equal(buf[:, :3], torch.full_like(buf[:, :3], 0.5))
    print("COMPILED:" + ",".join(sorted(kinds)))
""")


def _compiled_env() -> dict[str, str]:
    return {**os.environ, "TRITON_INTERPRET": "0", DEVICE_ENV: "cuda", "DGAE_KERNELS": "auto",
            "DGAE_TRITON_AUTOTUNE": "0"}


def _tail(proc: subprocess.CompletedProcess) -> str:
    return (proc.stdout + proc.stderr)[-OUTPUT_TAIL:]


def test_kernels_are_compiled_jit_functions_on_cuda():
    proc = subprocess.run([sys.executable, "-c", _PROBE], cwd=REPO, env=_compiled_env(), capture_output=True,
                          text=True, timeout=PROBE_TIMEOUT_S, check=False)
    assert proc.returncode == 0, _tail(proc)
    assert "COMPILED:JITFunction" in proc.stdout, _tail(proc)


def test_parity_modules_pass_with_compiled_kernels():
    paths = [str(REPO / "tests" / m) for m in PARITY_MODULES]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *paths],
                          cwd=REPO, env=_compiled_env(), capture_output=True, text=True, timeout=PARITY_TIMEOUT_S,
                          check=False)
    assert proc.returncode == 0, _tail(proc)
    summary = proc.stdout.strip().splitlines()[-1]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) > 0 and "skipped" not in summary, summary
