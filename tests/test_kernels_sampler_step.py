"""Parity of the in-place Triton sampler step with its reference (CPU interpreter).

The latent channels ``buf[:, 3:]`` must come back bit-for-bit untouched; they are filled with NaN
beforehand so any stray write or read-modify-write with arithmetic would show up.
"""
from __future__ import annotations

import pytest
import torch
from kernel_cases import DTYPE_IDS, DTYPES, gen, randn, requires_triton

from kernels.parity import max_rel_err, tolerance
from kernels.sampler_step import IMAGE_CHANNELS, euler_step_reference

pytestmark = requires_triton

# (B, latent channels, H, W): 3*H*W below, equal-ish and above the 1024-element block.
SHAPES = [(1, 4, 1, 2), (2, 4, 9, 11), (2, 16, 20, 19), (3, 8, 32, 32)]
DT = 0.0625


def _buffers(shape, seed, dtype):
    g = gen(seed)
    b, c, h, w = shape
    buf = randn(b, IMAGE_CHANNELS + c, h, w, g=g, dtype=dtype)
    buf[:, IMAGE_CHANNELS:] = float("nan")            # poison: latents must stay NaN, bit for bit
    v = randn(b, IMAGE_CHANNELS, h, w, g=g, dtype=dtype)
    v_prev = randn(b, IMAGE_CHANNELS, h, w, g=g, dtype=dtype)
    return buf, v, v_prev


def _bits(t: torch.Tensor) -> torch.Tensor:
    """Raw bit pattern (NaN != NaN, so compare integers)."""
    return t.contiguous().view({4: torch.int32, 2: torch.int16}[t.element_size()])


def _step(buf, v, dt, clamp, v_prev):
    from kernels._sampler_step_triton import euler_step_triton

    latents_before = buf[:, IMAGE_CHANNELS:].clone()
    result = euler_step_triton(buf, v, dt, clamp, v_prev)
    assert result is buf
    assert _bits(buf[:, IMAGE_CHANNELS:]).equal(_bits(latents_before))
    return buf


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("mode", ["euler", "heun", "euler_clamp", "heun_clamp"])
def test_parity(shape, dtype, mode):
    buf, v, v_prev = _buffers(shape, hash((shape, mode)) % 2**31, dtype)
    heun, clamp = mode.startswith("heun"), mode.endswith("clamp")
    vp = v_prev if heun else None
    ref = euler_step_reference(buf.clone(), v, DT * 8, clamp, vp)   # large dt so clamping bites
    unclamped = euler_step_reference(buf.clone(), v, DT * 8, False, vp)[:, :IMAGE_CHANNELS]
    out = _step(buf, v, DT * 8, clamp, vp)
    x_out, x_ref = out[:, :IMAGE_CHANNELS], ref[:, :IMAGE_CHANNELS]
    err = max_rel_err(x_out, x_ref)
    assert err <= tolerance("sampler_step", dtype), f"max rel err {err:.3e}"
    if clamp:
        beyond = unclamped.float().abs() > 1.0
        assert x_out.abs().max() <= 1.0
        assert (x_out[beyond].abs() == 1.0).all()


def test_update_really_applied_fp32():
    buf, v, _ = _buffers((1, 4, 5, 6), 3, torch.float32)
    x0 = buf[:, :IMAGE_CHANNELS].clone()
    _step(buf, v, DT, False, None)
    torch.testing.assert_close(buf[:, :IMAGE_CHANNELS], x0 + DT * v, rtol=0, atol=1e-6)


def test_heun_equals_trapezoid():
    """Predictor then corrector equals x_prev + dt * (v_prev + v) / 2."""
    buf, v, v_prev = _buffers((2, 4, 7, 7), 4, torch.float32)
    x_prev = buf[:, :IMAGE_CHANNELS].clone()
    _step(buf, v_prev, DT, False, None)       # predictor
    _step(buf, v, DT, False, v_prev)          # corrector
    torch.testing.assert_close(buf[:, :IMAGE_CHANNELS], x_prev + DT * (v_prev + v) / 2,
                               rtol=0, atol=1e-6)


def test_strided_velocity():
    buf, v, _ = _buffers((2, 4, 8, 6), 5, torch.float32)
    v_t = v.transpose(2, 3).contiguous().transpose(2, 3)         # same values, strided
    assert not v_t.is_contiguous()
    ref = euler_step_reference(buf.clone(), v, DT)
    out = _step(buf, v_t, DT, False, None)
    assert max_rel_err(out[:, :IMAGE_CHANNELS], ref[:, :IMAGE_CHANNELS]) <= 1e-6


@pytest.mark.parametrize("bad", ["v_channels", "v_size", "buf_dims"])
def test_invalid_shapes_raise(bad):
    from kernels._sampler_step_triton import euler_step_triton

    buf = torch.zeros(2, 7, 4, 4)
    v = torch.zeros(2, 3, 4, 4)
    if bad == "v_channels":
        v = torch.zeros(2, 4, 4, 4)
    elif bad == "v_size":
        v = torch.zeros(2, 3, 4, 5)
    else:
        buf = torch.zeros(2, 7, 16)
    with pytest.raises(ValueError, match="euler_step"):
        euler_step_triton(buf, v, DT)
