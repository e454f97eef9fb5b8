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


@requires_triton
def test_autograd_routes_to_reference_and_no_grad_to_triton(monkeypatch):
    """The kernels are forward-only: a call autograd records must take the reference (correct
    gradients, e.g. training on CUDA with the default ``auto``); under no_grad Triton runs."""
    from kernels import _group_norm_triton

    calls = []
    monkeypatch.setattr(_group_norm_triton, "group_norm_silu_triton",
                        _recording(_group_norm_triton.group_norm_silu_triton, "gn", calls))
    monkeypatch.setenv(_dispatch.ENV_VAR, "triton")
    x = torch.randn(2, 8, 3, 3)
    weight = torch.randn(8, requires_grad=True)
    out = kernels.group_norm_silu(x, weight, torch.zeros(8), 4, 1e-5)
    out.square().sum().backward()
    assert calls == [] and out.grad_fn is not None
    ref_weight = weight.detach().clone().requires_grad_(True)
    kernels.group_norm_silu_reference(x, ref_weight, torch.zeros(8), 4, 1e-5).square().sum().backward()
    torch.testing.assert_close(weight.grad, ref_weight.grad)
    with torch.no_grad():
        kernels.group_norm_silu(x, weight, torch.zeros(8), 4, 1e-5)
    assert calls == ["gn"]


@requires_triton
def test_training_step_gradients_match_reference_in_triton_mode(monkeypatch):
    """The DGAE objective's gradients in ``triton`` mode equal those in ``reference`` mode for
    every parameter (attention, fused norms and all: nothing silently detached)."""
    from dgae.model import DGAE
    from dgae.presets import get_preset
    from training.config import get_recipe
    from training.objective import DGAEObjective

    torch.manual_seed(0)
    model = DGAE(get_preset("tiny"))
    objective = DGAEObjective(get_recipe("tiny"), lpips=None)
    x0 = torch.rand(2, 3, 16, 16) * 2 - 1

    def grads(mode):
        monkeypatch.setenv(_dispatch.ENV_VAR, mode)
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # the objective draws z and the noise from the global RNG
        loss, _ = objective(model, x0, generator=torch.Generator().manual_seed(1))
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    ref, tri = grads("reference"), grads("triton")
    assert set(tri) == set(ref) and len(ref) == len(list(model.parameters()))
    for name in ref:
        torch.testing.assert_close(tri[name], ref[name], msg=name)


@requires_triton
def test_fixed_launch_configs_without_autotuning(monkeypatch):
    """Default: one fixed config per kernel (compile once, no tuning on a new shape); the GPU
    defaults are members of the autotune lists; autotuning needs the switch *and* a GPU."""
    from kernels import _attention_triton as att
    from kernels import _group_norm_triton as gn
    from kernels import _triton_common as common

    assert att._launch.meta(ieee=True) == {"BLOCK_M": att.INTERPRET_BLOCK_M, "BLOCK_N": att.INTERPRET_BLOCK_N,
                                           "num_warps": att.INTERPRET_WARPS}
    for ieee, default in ((True, att.GPU_DEFAULT_FP32), (False, att.GPU_DEFAULT_16BIT)):
        meta = att._pick(interpret=False, ieee=ieee)
        assert (meta["BLOCK_M"], meta["BLOCK_N"], meta["num_warps"], meta["num_stages"]) == default
        assert default in att._GPU_CONFIGS
    gpu = gn._pick(interpret=False)
    assert (gpu["BLOCK"], gpu["num_warps"]) in [(c.kwargs["BLOCK"], c.num_warps) for c in gn._gpu_configs()]
    monkeypatch.setenv(common.AUTOTUNE_ENV, "1")
    assert common.autotune_enabled() is torch.cuda.is_available()
    monkeypatch.setenv(common.AUTOTUNE_ENV, "0")
    assert not common.autotune_enabled()


def test_use_kernels_is_local_to_the_thread_and_leaves_the_environment_alone(monkeypatch):
    """An in-process export traces the references; a serving thread must keep its own selection."""
    import os
    import threading

    monkeypatch.setenv(_dispatch.ENV_VAR, "triton")
    inside, other = threading.Event(), {}
    release = threading.Event()

    def exporter():
        with kernels.use_kernels("reference"):
            other["exporter"] = kernels.kernel_mode()
            inside.set()
            release.wait(10)

    t = threading.Thread(target=exporter)
    t.start()
    assert inside.wait(10)
    other["server"] = kernels.kernel_mode()  # while the exporter's override is active
    release.set()
    t.join(10)
    assert other == {"exporter": "reference", "server": "triton"}
    assert os.environ[_dispatch.ENV_VAR] == "triton"
    with kernels.use_kernels("reference"):
        assert kernels.kernel_mode() == "reference"
    assert kernels.kernel_mode() == "triton"
    with pytest.raises(ValueError, match="use_kernels"):
        with kernels.use_kernels("fastest"):
            pass
