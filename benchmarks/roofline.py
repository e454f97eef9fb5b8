"""``dgae bench roofline``: the predicted decode throughput of each preset on H100 and H200, counted
(not guessed) before the first GPU run, so that run is read against a prediction.

Per decoder (U-Net) pass, traced on the meta device in bf16 (no memory, no compute), every aten op
is counted once: its FLOPs by the formulas of torch's ``FlopCounterMode`` (the counter
:func:`benchmarks.flops.decoder_pass_flops` uses: matmuls, convolutions, attention; 2 per
multiply-add) and its bytes from the sizes of its input, weight and output tensors (views move no
data and count 0). Each op's time is its roofline, ``max(FLOPs / peak, bytes / bandwidth)``, with
the datasheet's dense bf16 tensor-core peak and HBM bandwidth (:data:`GPUS`); ops are summed per
class (:func:`op_class`) and over the pass. A decode of ``steps`` steps makes
:func:`benchmarks.flops.denoiser_calls` passes, so the predicted images/s is
``batch / (passes x pass time)``.

What the prediction assumes: eager PyTorch's op boundaries (every op reads its inputs from and
writes its output to HBM: no fusion, no L2 reuse), every op at its own roofline (no launch gaps, no
tails, full tensor-core efficiency), and nothing outside the U-Net (the sampler update, the latent
upsample and the copies are < 1% of the bytes at these sizes). It is an upper bound on eager bf16.
"""
from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from . import flops
from .report import fmt

log = logging.getLogger(__name__)

PRESETS = ("f8c4-B", "f16c16-B", "small-f8c4")
SIZES = (256, 1024)
STEPS = (1, 2, 4)
# a batch that fills the GPU: 32 images at 256² (the suite searches 8/32/64), the same pixels per
# batch (2 megapixels) at larger sides, at least one image
PIXELS_PER_BATCH = 32 * 256 * 256


def default_batch(size: int) -> int:
    return max(1, PIXELS_PER_BATCH // (size * size))
DTYPE = torch.bfloat16          # the GPU suite's precision
RESULT_NAME, MARKDOWN_NAME = "roofline.json", "roofline.md"
GIGA, MEGA, MS_PER_S = 1e9, 1e6, 1e3


@dataclass(frozen=True)
class Gpu:
    name: str
    bf16_tflops: float          # dense (no sparsity) bf16 tensor-core peak
    hbm_tb_s: float             # HBM bandwidth, TB/s
    source: str


# NVIDIA datasheets (SXM parts). The bf16 peaks are benchmarks.flops' table (one source of truth).
GPUS: dict[str, Gpu] = {
    "H100": Gpu("H100 SXM5 80 GB", flops.bf16_peak_tflops("H100"), 3.35,
                "NVIDIA H100 Tensor Core GPU datasheet: 989.4 TFLOPS bf16 dense (1,979 with sparsity), "
                "3.35 TB/s HBM3"),
    "H200": Gpu("H200 SXM 141 GB", flops.bf16_peak_tflops("H200"), 4.8,
                "NVIDIA H200 Tensor Core GPU datasheet: 989 TFLOPS bf16 dense (1,979 with sparsity), "
                "4.8 TB/s HBM3e"),
}

ATTENTION, NORM, OTHER = "attention", "group_norm(+adagn+silu)", "elementwise/other"
# aten op (name before the overload) -> op class; everything else is OTHER
OP_CLASSES: dict[str, str] = {
    "convolution": "conv", "addmm": "matmul", "mm": "matmul", "bmm": "matmul", "linear": "matmul",
    "native_group_norm": NORM,
}
VARIANTS = ("eager", "triton")  # eager: the PyTorch ops; triton: GroupNorm + AdaGN + SiLU fused (kernels/)


def op_class(op_name: str) -> str:
    return OP_CLASSES.get(op_name.split(".")[0], OTHER)


def _tensor_bytes(tree) -> int:
    leaves, _ = tree_flatten(tree)
    return sum(t.numel() * t.element_size() for t in leaves if isinstance(t, torch.Tensor))


@dataclass
class OpCount:
    op: str
    cls: str
    flops: float
    bytes: float


class OpCostMode(TorchDispatchMode):
    """Counts every aten op: FLOPs by FlopCounterMode's formulas, bytes of inputs + outputs.
    ``paused`` ops are not counted (their cost was recorded as one fused op)."""

    def __init__(self):
        super().__init__()
        from torch.utils.flop_counter import flop_registry  # noqa: PLC0415

        self.registry = flop_registry
        self.ops: list[OpCount] = []
        self.paused = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.paused:
            return out
        packet = func._overloadpacket
        n_flops = self.registry[packet](*args, **kwargs, out_val=out) if packet in self.registry else 0
        n_bytes = 0 if func.is_view else _tensor_bytes((args, kwargs)) + _tensor_bytes(out)
        name = func.name().removeprefix("aten::")
        self.ops.append(OpCount(name, op_class(name), float(n_flops), float(n_bytes)))
        return out


class FusedAttentionMode(TorchFunctionMode):
    """``F.scaled_dot_product_attention`` as one fused op (flash attention on a GPU, SDPA's or the
    Triton kernel): its FLOPs by FlopCounterMode's SDPA formula, bytes = q, k, v and the output. On
    the meta device SDPA would otherwise decompose into bmm + softmax over the N x N scores."""

    def __init__(self, cost: OpCostMode):
        super().__init__()
        self.cost = cost

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        from torch.utils.flop_counter import sdpa_flop_count  # noqa: PLC0415

        q, k, v = args[:3]
        self.cost.paused += 1
        try:
            out = func(*args, **kwargs)
        finally:
            self.cost.paused -= 1
        self.cost.ops.append(OpCount("scaled_dot_product_attention", ATTENTION,
                                     float(sdpa_flop_count(q.shape, k.shape, v.shape)),
                                     float(_tensor_bytes((q, k, v, out)))))
        return out


@contextlib.contextmanager
def fused_group_norms(module: torch.nn.Module, cost: OpCostMode):
    """Every dgae GroupNorm (``kernels.group_norm_silu``) as one op, as the Triton kernel runs it:
    bytes = x, weight, bias, scale, shift and the output."""
    from dgae.layers import GroupNorm  # noqa: PLC0415

    def pre(mod, args, kwargs):
        cost.paused += 1

    def post(mod, args, kwargs, out):
        cost.paused -= 1
        cost.ops.append(OpCount("group_norm_silu (fused)", NORM, 0.0,
                                float(_tensor_bytes((args, kwargs, mod.weight, mod.bias, out)))))

    handles = [h for m in module.modules() if isinstance(m, GroupNorm)
               for h in (m.register_forward_pre_hook(pre, with_kwargs=True),
                         m.register_forward_hook(post, with_kwargs=True))]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def count_pass(preset: str, size: int, batch: int, variant: str = "eager", dtype: torch.dtype = DTYPE) -> list[OpCount]:
    """Every op of one decoder pass of ``preset`` at ``size``², batch ``batch``."""
    from dgae.presets import get_preset  # noqa: PLC0415

    run = flops.meta_decoder_pass(get_preset(preset), size, size, batch, dtype)
    cost = OpCostMode()
    fuse_norms = fused_group_norms(run.decoder, cost) if variant == "triton" else contextlib.nullcontext()
    with cost, FusedAttentionMode(cost), fuse_norms:
        run()
    return cost.ops


def op_seconds(op: OpCount, gpu: Gpu) -> tuple[float, float]:
    """(compute seconds, memory seconds) of one op at the GPU's peaks."""
    return op.flops / (gpu.bf16_tflops * 1e12), op.bytes / (gpu.hbm_tb_s * 1e12)


def predict(preset: str, size: int, batch: int, variant: str = "eager", steps=STEPS, gpus=GPUS) -> dict:
    """Counts per op class and pass, the predicted ms per pass and img/s per step count per GPU."""
    from dgae.presets import get_preset  # noqa: PLC0415

    ops = count_pass(preset, size, batch, variant)
    classes: dict[str, dict] = defaultdict(lambda: {"ops": 0, "flops": 0.0, "bytes": 0.0})
    for op in ops:
        c = classes[op.cls]
        c["ops"] += 1
        c["flops"] += op.flops
        c["bytes"] += op.bytes
    for name, gpu in gpus.items():
        for cls, c in classes.items():
            times = [op_seconds(op, gpu) for op in ops if op.cls == cls]
            c[f"{name}_ms"] = sum(max(t) for t in times) * MS_PER_S
            c[f"{name}_bound"] = "compute" if sum(t[0] for t in times) > sum(t[1] for t in times) else "memory"
    total_flops, total_bytes = sum(o.flops for o in ops), sum(o.bytes for o in ops)
    config = get_preset(preset)
    pass_ms = {name: sum(c[f"{name}_ms"] for c in classes.values()) for name in gpus}
    return {
        "preset": preset, "size": size, "batch": batch, "variant": variant, "dtype": str(DTYPE).removeprefix("torch."),
        "pass": {"ops": len(ops), "flops": total_flops, "bytes": total_bytes,
                 "flops_per_image": total_flops / batch, "bytes_per_image": total_bytes / batch,
                 "intensity_flop_per_byte": total_flops / total_bytes if total_bytes else None,
                 **{f"{name}_ms": ms for name, ms in pass_ms.items()}},
        "classes": dict(sorted(classes.items())),
        "steps": {str(s): {"passes": flops.denoiser_calls(config, s),
                           **{f"{name}_img_s": batch / (flops.denoiser_calls(config, s) * pass_ms[name] / MS_PER_S)
                              for name in gpus}} for s in steps},
    }


def run(presets=PRESETS, sizes=SIZES, batch: int | None = None, steps=STEPS) -> dict:
    rows = [predict(p, s, batch or default_batch(s), v, steps) for p in presets for s in sizes for v in VARIANTS]
    return {"benchmark": "roofline", "gpus": {k: vars(g) for k, g in GPUS.items()}, "steps": list(steps),
            "torch": torch.__version__, "rows": rows}


def prediction_table(report: dict) -> str:
    gpus, steps = list(report["gpus"]), report["steps"]
    headers = ["preset", "size", "variant", "batch", "GFLOP/img/pass", "MB/img/pass", "FLOP/B",
               *(f"{g} ms/pass" for g in gpus), *(f"{g} img/s @{s}" for g in gpus for s in steps)]
    return _markdown(headers, [
        [r["preset"], str(r["size"]), r["variant"], str(r["batch"]), fmt(r["pass"]["flops_per_image"] / GIGA, ".1f"),
         fmt(r["pass"]["bytes_per_image"] / MEGA, ".0f"), fmt(r["pass"]["intensity_flop_per_byte"], ".0f"),
         *(fmt(r["pass"][f"{g}_ms"], ".2f") for g in gpus),
         *(fmt(r["steps"][str(s)][f"{g}_img_s"], ".0f") for g in gpus for s in steps)] for r in report["rows"]])


def class_table(report: dict) -> str:
    gpus = list(report["gpus"])
    headers = ["preset", "size", "variant", "op class", "ops", "GFLOP/pass", "MB/pass", *(f"{g} ms/pass" for g in gpus),
               "bound"]
    rows = []
    for r in report["rows"]:
        for cls, c in r["classes"].items():
            rows.append([r["preset"], str(r["size"]), r["variant"], cls, str(c["ops"]), fmt(c["flops"] / GIGA, ".1f"),
                         fmt(c["bytes"] / MEGA, ".0f"), *(fmt(c[f"{g}_ms"], ".3f") for g in gpus),
                         c[f"{gpus[0]}_bound"]])
    return _markdown(headers, rows)


def _markdown(headers: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers),
                      *("| " + " | ".join(r) + " |" for r in rows)])


def markdown(report: dict) -> str:
    """The prediction table, the per-op-class table and the peaks they assume."""
    notes = "\n".join(f"- {k}: {g['bf16_tflops']} TFLOP/s bf16 dense, {g['hbm_tb_s']} TB/s ({g['source']})"
                      for k, g in report["gpus"].items())
    return (f"Predicted decode throughput (bf16, roofline per op; img/s @N = N-step decode):\n\n"
            f"{prediction_table(report)}\n\nPer op class, one decoder pass:\n\n{class_table(report)}\n\n"
            f"Peaks:\n{notes}")
