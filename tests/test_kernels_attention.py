"""Parity of the Triton flash-attention forward with its PyTorch reference (CPU interpreter)."""
from __future__ import annotations

import math

import pytest
import torch
from kernel_cases import DTYPE_IDS, DTYPES, gen, poison_like, randn, requires_triton

from kernels.attention import flash_attention_reference
from kernels.parity import max_rel_err, tolerance

pytestmark = requires_triton

# (B, H, N, D): N = 1, ragged (not a multiple of the 32-row blocks), several K/V blocks.
SHAPES = [(1, 2, 1, 32), (2, 1, 17, 64), (1, 2, 100, 32), (1, 1, 130, 64)]


def _run(q, k, v, scale=None):
    from kernels._attention_triton import flash_attention_triton

    out = poison_like(q.new_empty(q.shape))
    result = flash_attention_triton(q, k, v, scale, out=out)
    assert result.data_ptr() == out.data_ptr()
    return result


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_parity(shape, dtype):
    g = gen(hash(shape) % 2**31)
    q, k, v = (randn(*shape, g=g, dtype=dtype) for _ in range(3))
    out = _run(q, k, v)
    ref = flash_attention_reference(q, k, v)
    assert out.dtype == dtype and out.shape == ref.shape
    err = max_rel_err(out, ref)
    assert err < tolerance("attention", dtype), f"max rel err {err:.3e}"


def test_fp32_hard_criterion_and_sanity():
    """fp32 must meet 1e-4 and the output must really depend on the inputs (not a constant)."""
    g = gen(1)
    q, k, v = (randn(2, 2, 65, 64, g=g) for _ in range(3))
    out = _run(q, k, v)
    assert max_rel_err(out, flash_attention_reference(q, k, v)) < 1e-4
    v2 = v.clone()
    v2[:, :, -1] += 10.0   # the last (tail-block) key must influence every query
    assert (_run(q, k, v2) - out).abs().min() > 0


@pytest.mark.parametrize("head_dim", [16, 128])
def test_other_head_dims(head_dim):
    g = gen(head_dim)
    q, k, v = (randn(1, 1, 40, head_dim, g=g) for _ in range(3))
    assert max_rel_err(_run(q, k, v), flash_attention_reference(q, k, v)) < 1e-4


def test_non_contiguous_inputs_and_explicit_scale():
    """q/k/v as views of a packed qkv tensor laid out [B, N, 3, H, D] (the usual projection)."""
    g = gen(2)
    b, h, n, d = 2, 2, 33, 32
    qkv = randn(b, n, 3, h, d, g=g).permute(2, 0, 3, 1, 4)      # [3, B, H, N, D], strided
    q, k, v = qkv[0], qkv[1], qkv[2]
    assert not q.is_contiguous()
    scale = 0.3
    out = _run(q, k, v, scale)
    assert max_rel_err(out, flash_attention_reference(q, k, v, scale)) < 1e-4


def test_cross_attention_lengths():
    g = gen(3)
    q = randn(1, 2, 20, 32, g=g)
    k, v = randn(1, 2, 45, 32, g=g), randn(1, 2, 45, 32, g=g)
    assert max_rel_err(_run(q, k, v), flash_attention_reference(q, k, v)) < 1e-4


def test_large_logits_fp16_stay_finite():
    """Logits of ~1e4 overflow fp16 if the softmax were not fp32 with max subtraction."""
    g = gen(4)
    q = randn(1, 2, 50, 64, g=g, dtype=torch.float16, scale=30.0)
    k = randn(1, 2, 50, 64, g=g, dtype=torch.float16, scale=30.0)
    v = randn(1, 2, 50, 64, g=g, dtype=torch.float16)
    logits = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(64)
    assert logits.abs().max() > 1e3
    out = _run(q, k, v)
    assert torch.isfinite(out).all()
    assert max_rel_err(out, flash_attention_reference(q, k, v)) < tolerance("attention", torch.float16)


@pytest.mark.parametrize("bad", [
    dict(shape=(1, 1, 8, 24)),                 # not a power of two
    dict(shape=(1, 1, 8, 8)),                  # below 16
    dict(shape=(1, 1, 8, 256)),                # above 128
    dict(shape=(1, 8, 32)),                    # not 4-D
    dict(shape=(1, 1, 8, 32), dtype=torch.float64),
])
def test_invalid_inputs_raise_value_error(bad):
    from kernels._attention_triton import flash_attention_triton

    t = torch.zeros(bad["shape"], dtype=bad.get("dtype", torch.float32))
    with pytest.raises(ValueError, match="flash_attention"):
        flash_attention_triton(t, t, t)


def test_mismatched_dtypes_raise():
    from kernels._attention_triton import flash_attention_triton

    q = torch.zeros(1, 1, 8, 32)
    with pytest.raises(ValueError, match="dtypes differ"):
        flash_attention_triton(q, q.half(), q)
