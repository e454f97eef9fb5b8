"""`dgae bench roofline`: the counted FLOPs of a decoder pass agree with torch's FlopCounterMode and
with an independent count from the tiny decoder's own modules (every convolution, linear layer and
attention, from their shapes), the bytes of the convolutions and attentions are their tensors', and
the prediction follows the roofline formula."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from benchmarks import flops, roofline
from dgae.layers import AttnBlock
from dgae.presets import get_preset

PRESET, SIZE, BATCH = "tiny", 32, 2
BF16_BYTES = 2


def _numel_bytes(*shapes) -> int:
    return sum(math.prod(s) for s in shapes) * BF16_BYTES


def module_counts() -> dict[str, float]:
    """FLOPs and bytes from the modules' shapes: a forward of the tiny decoder on the meta device,
    with hooks on every Conv2d / Linear / AttnBlock (no dispatch mode, no FlopCounterMode)."""
    run = flops.meta_decoder_pass(get_preset(PRESET), SIZE, SIZE, BATCH, roofline.DTYPE)
    totals = {"flops": 0.0, "conv_bytes": 0.0, "attention_bytes": 0.0}

    def conv(mod, args, out):
        k = math.prod(mod.kernel_size) * mod.in_channels // mod.groups
        totals["flops"] += 2.0 * out.numel() * k
        params = [mod.weight.shape] + ([mod.bias.shape] if mod.bias is not None else [])
        totals["conv_bytes"] += _numel_bytes(args[0].shape, out.shape, *params)

    def linear(mod, args, out):
        totals["flops"] += 2.0 * out.numel() * mod.in_features

    def attention(mod, args, out):
        b, c, h, w = args[0].shape
        totals["flops"] += 4.0 * b * (h * w) ** 2 * c          # q k^T and p v over all heads
        totals["attention_bytes"] += 4 * _numel_bytes((b, c, h * w))   # q, k, v, out

    for m in run.decoder.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(conv)
        elif isinstance(m, torch.nn.Linear):
            m.register_forward_hook(linear)
        elif isinstance(m, AttnBlock):
            m.register_forward_hook(attention)
    run()
    return totals


@pytest.fixture(scope="module")
def independent():
    return module_counts()


@pytest.mark.parametrize("variant", roofline.VARIANTS)
def test_pass_flops_match_flop_counter_and_the_modules(variant, independent):
    ops = roofline.count_pass(PRESET, SIZE, BATCH, variant)
    counted = sum(o.flops for o in ops)
    assert counted == flops.decoder_pass_flops(get_preset(PRESET), SIZE, SIZE, BATCH)
    assert counted == pytest.approx(independent["flops"], rel=1e-9)
    assert counted > 0


def test_conv_and_attention_bytes_are_their_tensors(independent):
    ops = roofline.count_pass(PRESET, SIZE, BATCH, "eager")
    by_class = {c: sum(o.bytes for o in ops if o.cls == c) for c in {o.cls for o in ops}}
    assert by_class["conv"] == independent["conv_bytes"]
    assert by_class[roofline.ATTENTION] == independent["attention_bytes"]
    assert all(o.bytes == 0 for o in ops if o.op.startswith(("view", "permute", "expand")))


def test_fused_norms_move_fewer_bytes_and_the_same_flops():
    eager = roofline.predict(PRESET, SIZE, BATCH, "eager", steps=(1, 2))
    fused = roofline.predict(PRESET, SIZE, BATCH, "triton", steps=(1, 2))
    assert fused["pass"]["flops"] == eager["pass"]["flops"]
    assert fused["pass"]["bytes"] < eager["pass"]["bytes"]
    norm = roofline.NORM
    assert fused["classes"][norm]["ops"] == eager["classes"][norm]["ops"]   # one fused op per GroupNorm


def test_prediction_is_the_roofline_of_each_op():
    report = roofline.predict(PRESET, SIZE, BATCH, "eager", steps=(1, 2, 4))
    ops = roofline.count_pass(PRESET, SIZE, BATCH, "eager")
    for name, gpu in roofline.GPUS.items():
        want_ms = sum(max(o.flops / (gpu.bf16_tflops * 1e12), o.bytes / (gpu.hbm_tb_s * 1e12)) for o in ops) * 1e3
        assert report["pass"][f"{name}_ms"] == pytest.approx(want_ms, rel=1e-9)
        config = get_preset(PRESET)
        for steps, row in report["steps"].items():
            passes = flops.denoiser_calls(config, int(steps))
            assert row["passes"] == passes
            assert row[f"{name}_img_s"] == pytest.approx(BATCH / (passes * want_ms / 1e3), rel=1e-9)
    assert report["steps"]["1"]["H200_img_s"] > report["steps"]["1"]["H100_img_s"]   # same peak, more bandwidth


def test_cli_writes_json_and_markdown(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "cli", "bench", "roofline", "--out", str(tmp_path),
                           "--presets", PRESET, "--sizes", str(SIZE), "--steps", "1,2", "--batch", str(BATCH)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / roofline.RESULT_NAME).read_text())
    assert [(r["preset"], r["size"], r["variant"]) for r in report["rows"]] == [
        (PRESET, SIZE, v) for v in roofline.VARIANTS]
    assert report["rows"][0]["pass"]["flops"] == flops.decoder_pass_flops(get_preset(PRESET), SIZE, SIZE, BATCH)
    md = (tmp_path / roofline.MARKDOWN_NAME).read_text()
    assert "| tiny | 32 | eager |" in md and "H200 img/s @2" in md
