"""The non-Triton attention path (SDPA) against the explicit-math reference, and that it does not
materialise the N x N score matrix (the reason it replaced the einsum in the model)."""
from __future__ import annotations

import pytest
import torch

import kernels
from kernels.attention import flash_attention_reference, sdpa_attention
from kernels.parity import max_rel_err

SDPA_FP32_TOLERANCE = 1e-5  # both compute fp32 softmax; they differ only in summation order
BIG_N = 16384  # tokens of a 1024^2 decode at f=8: the explicit form needs 1 GiB per head


@pytest.mark.parametrize("shape", [(1, 2, 1, 32), (2, 4, 97, 32), (1, 1, 1024, 64)])
def test_sdpa_matches_the_reference(shape):
    g = torch.Generator().manual_seed(sum(shape))
    q, k, v = (torch.randn(*shape, generator=g) for _ in range(3))
    assert max_rel_err(sdpa_attention(q, k, v), flash_attention_reference(q, k, v)) < SDPA_FP32_TOLERANCE
    assert max_rel_err(sdpa_attention(q, k, v, 0.3), flash_attention_reference(q, k, v, 0.3)) < SDPA_FP32_TOLERANCE


def test_the_model_path_off_triton_is_sdpa(monkeypatch):
    monkeypatch.setenv("DGAE_KERNELS", "reference")
    q = torch.randn(1, 1, 8, 16)
    calls = []
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(1) or torch.zeros_like(q))
    kernels.flash_attention(q, q, q)
    assert calls == [1]


MEASURE = """
import resource, sys, torch
from kernels.attention import sdpa_attention
heads, n, d = map(int, sys.argv[1:4])
q, k, v = (torch.randn(1, heads, n, d) for _ in range(3))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = sdpa_attention(q, k, v)
assert torch.isfinite(out).all()
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


def test_sdpa_memory_stays_linear_in_tokens():
    """8k tokens x 2 heads: the N x N fp32 scores alone would be 512 MiB; SDPA needs a few MB.
    Measured in a fresh process so an earlier test's peak cannot hide the growth."""
    import subprocess
    import sys
    from pathlib import Path

    heads, n, d = 2, BIG_N // 2, 32
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(heads), str(n), str(d)], capture_output=True,
                          text=True, timeout=300, cwd=Path(__file__).resolve().parents[1], check=False)
    assert proc.returncode == 0, proc.stderr
    grown, scores_bytes = int(proc.stdout.strip()), heads * n * n * 4
    assert grown < scores_bytes / 8, (
        f"peak RSS grew by {grown / 2**20:.0f} MiB (scores: {scores_bytes / 2**20:.0f} MiB)"
    )
