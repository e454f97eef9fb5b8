"""Validate an ONNX export against PyTorch: ``onnx.checker``, then ONNX Runtime vs the fp32 model
on fresh random inputs at two batch sizes x two (non-square, unseen at trace time) image sizes.

Error metric per output: ``rel = max|ort - torch| / max|torch|`` (relative to the output's
range, so near-zero elements do not blow it up). fp32 graphs must reach ``rel < 1e-4``; fp16
graphs are compared with the fp32 model on the same fp16-rounded inputs at ``rel < 2e-2``, plus a
stress case with inputs scaled up that must stay finite (no fp16 overflow -> NaN).
"""
from __future__ import annotations

import logging
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

import kernels
from dgae.config import IMAGE_CHANNELS
from dgae.errors import ExportError
from dgae.model import DGAE
from dgae.precision import from_numpy_name
from dgae.sampler import run_sampler

from . import manifest as mf
from .graphs import DenoiserGraph, EncoderGraph

log = logging.getLogger(__name__)

TOLERANCES = {"fp32": 1e-4, "fp16": 2e-2}
VALIDATION_BATCHES = (1, 3)
VALIDATION_SIDE_MULTIPLES = ((4, 4), (3, 5))  # (H, W) in units of size_multiple; trace used (2, 2)
FP16_STRESS_SCALE = 100.0
FP16_MAX = float(np.finfo(np.float16).max)
TINY = 1e-12
SEED_BITS = 31


@dataclass(frozen=True)
class ParityRow:
    graph: str
    output: str
    batch: int
    height: int
    width: int
    max_abs_error: float
    rel_error: float
    tolerance: float
    finite: bool
    ok: bool
    seed: int
    case: str = "random"

    def to_dict(self) -> dict:
        return asdict(self)


def rel_error(out: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    diff = float(np.abs(out.astype(np.float64) - ref.astype(np.float64)).max())
    return diff, diff / max(float(np.abs(ref).max()), TINY)


def check_onnx_file(path: str | Path) -> None:
    import onnx  # noqa: PLC0415

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, OSError) as exc:
        raise ExportError(f"{path}: onnx.checker failed: {str(exc).splitlines()[0]}") from exc


def make_session(path: str | Path, providers: Sequence = ("CPUExecutionProvider",)):
    import onnxruntime as ort  # noqa: PLC0415

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), opts, providers=list(providers))


def random_inputs(name: str, model: DGAE, b: int, h: int, w: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    c = model.config.latent_channels
    img = (b, IMAGE_CHANNELS, h, w)
    if name == mf.ENCODER:
        return {"images": torch.rand(img, generator=gen) * 2 - 1}
    z = torch.randn((b, c, h, w), generator=gen)
    if name == mf.DENOISER:
        return {"x_t": torch.randn(img, generator=gen), "t": torch.rand(b, generator=gen), "z": z}
    return {"noise": torch.randn(img, generator=gen), "z": z}


@torch.no_grad()
def torch_outputs(name: str, model: DGAE, inputs: dict[str, torch.Tensor], entry: mf.GraphEntry) -> list[np.ndarray]:
    """What the fp32 PyTorch model computes for the graph's inputs (unrolled: the shared sampler)."""
    with kernels.use_kernels("reference"):
        if name == mf.ENCODER:
            outs = EncoderGraph(model)(inputs["images"])
        elif name == mf.DENOISER:
            outs = (DenoiserGraph(model)(inputs["x_t"], inputs["t"], inputs["z"]),)
        else:
            plan = entry.plan()
            buf = torch.cat([inputs["noise"], inputs["z"]], dim=1)
            outs = (run_sampler(model.decoder.forward_buffer, buf, plan).clone(),)
    return [o.float().numpy() for o in outs]


def validate_graph(directory: Path, name: str, entry: mf.GraphEntry, model: DGAE, precision: str,
                   sizes: Sequence[tuple[int, int]], batches: Sequence[int], providers: Sequence) -> list[ParityRow]:
    path = directory / entry.file
    check_onnx_file(path)
    session = make_session(path, providers)
    dtypes = {s.name: np.dtype(s.dtype) for s in entry.inputs}
    tol = TOLERANCES[precision]
    cases = [("random", 1.0)] + ([("stress", FP16_STRESS_SCALE)] if precision == "fp16" else [])
    rows = []
    for case, scale in cases:
        for b in batches:
            for h, w in sizes:
                seed = secrets.randbits(SEED_BITS)
                inputs = random_inputs(name, model, b, h, w, torch.Generator().manual_seed(seed))
                inputs = {k: v * scale if k != "t" else v for k, v in inputs.items()}
                # Round to the graph's input dtype so the reference sees exactly what ORT sees.
                inputs = {k: v.to(from_numpy_name(dtypes[k].name).torch_dtype).float() for k, v in inputs.items()}
                feeds = {k: v.numpy().astype(dtypes[k]) for k, v in inputs.items()}
                outs = session.run([s.name for s in entry.outputs], feeds)
                refs = torch_outputs(name, model, inputs, entry)
                for spec, out, ref in zip(entry.outputs, outs, refs):
                    finite = bool(np.isfinite(out).all())
                    diff, rel = rel_error(out, ref) if finite else (float("inf"), float("inf"))
                    if case == "stress":  # only finiteness matters (unless fp32 itself leaves fp16 range)
                        ok = finite or float(np.abs(ref).max()) > FP16_MAX
                    else:
                        ok = finite and rel < tol and tuple(out.shape) == tuple(ref.shape)
                    rows.append(ParityRow(name, spec.name, b, h, w, diff, rel, tol, finite, ok, seed, case))
    return rows


def validate_export(directory: str | Path, manifest: mf.Manifest, model: DGAE,
                    sizes: Sequence[tuple[int, int]] | None = None, batches: Sequence[int] = VALIDATION_BATCHES,
                    providers: Sequence = ("CPUExecutionProvider",)) -> list[ParityRow]:
    """Check and compare every graph; raises :class:`ExportError` listing the failing numbers."""
    directory = Path(directory)
    m = model.config.size_multiple
    sizes = list(sizes) if sizes else [(hm * m, wm * m) for hm, wm in VALIDATION_SIDE_MULTIPLES]
    for h, w in sizes:
        if h <= 0 or w <= 0 or h % m or w % m:
            raise ExportError(f"validation size {h}x{w} must be positive multiples of {m}")
    rows: list[ParityRow] = []
    for name, entry in manifest.graphs.items():
        rows += validate_graph(directory, name, entry, model, manifest.precision, sizes, batches, providers)
    for line in format_rows(rows).splitlines():
        log.info("%s", line)
    bad = [r for r in rows if not r.ok]
    if bad:
        worst = max(bad, key=lambda r: r.rel_error)
        raise ExportError(f"validation failed for {len(bad)}/{len(rows)} comparisons; worst: {worst.graph}."
                          f"{worst.output} batch {worst.batch} {worst.height}x{worst.width} ({worst.case}): "
                          f"max abs {worst.max_abs_error:.3g}, rel {worst.rel_error:.3g} (tolerance "
                          f"{worst.tolerance:g}, finite={worst.finite}, seed {worst.seed})")
    return rows


def format_rows(rows: Sequence[ParityRow | dict]) -> str:
    lines = [f"{'graph':<16} {'output':<7} {'case':<7} {'batch':>5} {'size':>9} {'max_abs':>10} {'rel':>10}  ok"]
    for r in rows:
        r = r if isinstance(r, dict) else r.to_dict()
        lines.append(f"{r['graph']:<16} {r['output']:<7} {r['case']:<7} {r['batch']:>5} "
                     f"{str(r['height']) + 'x' + str(r['width']):>9} {r['max_abs_error']:>10.3g} "
                     f"{r['rel_error']:>10.3g}  {'yes' if r['ok'] else 'NO'}")
    return "\n".join(lines)
