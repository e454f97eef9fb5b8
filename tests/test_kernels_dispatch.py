"""The DGAE_KERNELS switch: reference never touches Triton, triton routes to the kernels."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from kernel_cases import requires_triton

import kernels
from kernels import _dispatch

REPO = Path(__file__).resolve().parents[1]

_REFERENCE_ONLY = textwrap.dedent("""
    import os, sys
    os.environ["DGAE_KERNELS"] = "reference"
    os.environ["TRITON_INTERPRET"] = "1"
    import torch, kernels
    q = torch.randn(1, 2, 5, 16)
    kernels.flash_attention(q, q, q)
    kernels.group_norm_silu(torch.randn(1, 8, 3, 3), torch.ones(8), torch.zeros(8), 4, 1e-5)
    kernels.euler_step(torch.zeros(1, 5, 2, 2), torch.ones(1, 3, 2, 2), 0.5)
    loaded = sorted(m for m in sys.modules if m == "triton" or m.startswith("triton.")
                    or m.endswith("_triton"))
    print("LOADED:" + ",".join(loaded))
""")


def test_reference_mode_never_imports_triton():
    """Fresh interpreter, so modules imported by other tests cannot mask an import."""
    proc = subprocess.run([sys.executable, "-c", _REFERENCE_ONLY], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("LOADED:"), proc.stdout


def test_invalid_mode_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(_dispatch.ENV_VAR, "cuda-please")
    with pytest.raises(ValueError, match="DGAE_KERNELS='cuda-please'.*auto, triton, reference"):
        kernels.flash_attention(torch.zeros(1, 1, 2, 16), torch.zeros(1, 1, 2, 16), torch.zeros(1, 1, 2, 16))


def _recording(fn, name, calls):
    def wrapper(*args, **kwargs):
        calls.append(name)
        return fn(*args, **kwargs)
    return wrapper


@pytest.mark.parametrize("mode,expect_triton", [("reference", False), ("auto", False), ("triton", True)])
@requires_triton
def test_routing_on_cpu(monkeypatch, mode, expect_triton):
    """auto on CPU tensors -> reference; triton (with the interpreter) -> the Triton entry points."""
    from kernels import _attention_triton, _group_norm_triton, _sampler_step_triton

    calls = []
    for mod, name in ((_attention_triton, "flash_attention_triton"),
                      (_group_norm_triton, "group_norm_silu_triton"),
                      (_sampler_step_triton, "euler_step_triton")):
        monkeypatch.setattr(mod, name, _recording(getattr(mod, name), name, calls))
    monkeypatch.setenv(_dispatch.ENV_VAR, mode)
    q = torch.randn(1, 1, 4, 16)
    out = kernels.flash_attention(q, q, q)
    torch.testing.assert_close(out, kernels.flash_attention_reference(q, q, q), rtol=1e-4, atol=1e-5)
    kernels.group_norm_silu(torch.randn(1, 8, 3, 3), torch.ones(8), torch.zeros(8), 4, 1e-5)
    kernels.euler_step(torch.zeros(1, 5, 2, 2), torch.ones(1, 3, 2, 2), 0.5)
    expected = ["flash_attention_triton", "group_norm_silu_triton", "euler_step_triton"]
    assert calls == (expected if expect_triton else [])
