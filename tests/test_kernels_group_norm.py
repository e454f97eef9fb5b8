"""Parity of the fused GroupNorm + AdaGN + SiLU Triton kernel with its reference (CPU interpreter)."""
from __future__ import annotations

import pytest
import torch
from kernel_cases import DTYPE_IDS, DTYPES, gen, poison_like, randn, requires_triton

from kernels.group_norm import group_norm_silu_reference
from kernels.parity import max_rel_err, tolerance

pytestmark = requires_triton

EPS = 1e-5
# (x shape, groups): non-power-of-two channels per group (3, 5) and groups (3), odd spatial sizes,
# groups larger than the kernel's 1024-element block, and a 1-D sequence and 0-D spatial input.
CASES = [
    ((2, 48, 7, 9), 16),      # 3 channels / group
    ((1, 96, 5, 5), 32),      # 3 channels / group, 32 groups
    ((2, 15, 20, 20), 3),     # 5 channels / group, 2000 elements > 1 block
    ((1, 64, 33), 32),        # 1-D spatial
    ((3, 12), 4),             # no spatial dims
]


def _inputs(shape, seed, dtype, x_scale=1.0, x_offset=0.0):
    g = gen(seed)
    c = shape[1]
    x = (randn(*shape, g=g, scale=x_scale) + x_offset).to(dtype)
    weight = randn(c, g=g) * 0.5 + 1.0
    bias = randn(c, g=g) * 0.1
    emb = randn(shape[0], 2 * c, g=g) * 0.5
    scale, shift = emb.chunk(2, dim=1)      # strided [B, C] views, as AdaGN produces them
    return x, weight, bias, scale, shift


def _run(x, *args, **kwargs):
    from kernels._group_norm_triton import group_norm_silu_triton

    out = poison_like(x.contiguous())
    result = group_norm_silu_triton(x, *args, out=out, **kwargs)
    assert result.data_ptr() == out.data_ptr()
    return result


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape,groups", CASES, ids=lambda c: str(c))
def test_parity_adagn_silu(shape, groups, dtype):
    x, w, b, sc, sh = _inputs(shape, hash(shape) % 2**31, dtype)
    assert sc.stride(0) == 2 * shape[1]      # strided view into emb
    out = _run(x, w, b, groups, EPS, sc, sh, True)
    ref = group_norm_silu_reference(x, w, b, groups, EPS, sc, sh, True)
    assert out.dtype == dtype
    err = max_rel_err(out, ref)
    assert err < tolerance("group_norm", dtype), f"max rel err {err:.3e}"


@pytest.mark.parametrize("variant", ["plain_silu", "no_silu", "scale_only", "shift_only", "adagn_no_silu"])
def test_variants_fp32(variant):
    x, w, b, sc, sh = _inputs((2, 48, 6, 10), 7, torch.float32)
    kw = {
        "plain_silu": dict(scale=None, shift=None, silu=True),
        "no_silu": dict(scale=None, shift=None, silu=False),
        "scale_only": dict(scale=sc, shift=None, silu=True),
        "shift_only": dict(scale=None, shift=sh, silu=True),
        "adagn_no_silu": dict(scale=sc, shift=sh, silu=False),
    }[variant]
    out = _run(x, w, b, 16, EPS, **kw)
    ref = group_norm_silu_reference(x, w, b, 16, EPS, **kw)
    assert max_rel_err(out, ref) < 1e-4
    if not kw["silu"]:
        assert (out < -0.5).any()    # SiLU really skipped: its output is never below -0.279


def test_matches_torch_group_norm_exactly_defined():
    """No AdaGN, no SiLU: must equal torch.nn.functional.group_norm (the definition)."""
    x, w, b, _, _ = _inputs((2, 30, 9, 9), 8, torch.float32, x_scale=3.0, x_offset=2.0)
    out = _run(x, w, b, 5, EPS, silu=False)
    ref = torch.nn.functional.group_norm(x, 5, w, b, EPS)
    assert max_rel_err(out, ref) < 1e-4


def test_non_contiguous_input():
    x, w, b, sc, sh = _inputs((2, 32, 6, 7), 9, torch.float32)
    x_nc = x.transpose(2, 3)                                    # [2, 32, 7, 6], strided
    assert not x_nc.is_contiguous()
    from kernels._group_norm_triton import group_norm_silu_triton

    out = group_norm_silu_triton(x_nc, w, b, 8, EPS, sc, sh, True)
    ref = group_norm_silu_reference(x_nc, w, b, 8, EPS, sc, sh, True)
    assert max_rel_err(out, ref) < 1e-4


@pytest.mark.parametrize("offset", [0.0, 2e4])
def test_large_fp16_activations_stay_finite(offset):
    """fp16 activations of magnitude 1e3..3e4: squares overflow fp16 and a one-pass E[x^2]-E[x]^2
    would cancel catastrophically when the mean dominates (offset 2e4); stats are fp32 Welford."""
    x, w, b, sc, sh = _inputs((2, 48, 12, 12), 10, torch.float16, x_scale=3e3, x_offset=offset)
    assert x.float().abs().max() > 1e3 and torch.isfinite(x).all()
    out = _run(x, w, b, 16, EPS, sc, sh, True)
    assert torch.isfinite(out).all()
    ref = group_norm_silu_reference(x, w, b, 16, EPS, sc, sh, True)
    assert max_rel_err(out, ref) < tolerance("group_norm", torch.float16)


@pytest.mark.parametrize("bad", ["groups", "weight", "scale", "dims"])
def test_invalid_inputs_raise_value_error(bad):
    from kernels._group_norm_triton import group_norm_silu_triton

    x, w, b, sc, sh = _inputs((2, 48, 4, 4), 11, torch.float32)
    args = dict(x=x, weight=w, bias=b, num_groups=16, eps=EPS, scale=sc, shift=sh)
    if bad == "groups":
        args["num_groups"] = 5
    elif bad == "weight":
        args["weight"] = w[:10]
    elif bad == "scale":
        args["scale"] = sc[:, :, None, None]
    else:
        args["x"] = x.flatten()
    with pytest.raises(ValueError, match="group_norm_silu"):
        group_norm_silu_triton(**args)
