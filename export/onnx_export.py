"""Export a DGAE checkpoint to ONNX: encoder, decoder denoiser, optionally an N-step unrolled decode.

Graphs (batch, height and width dynamic; H, W multiples of ``lcm(f, decoder_multiple)`` for the
U-Net graphs, of f for the encoder):

- ``encoder.onnx``: images [B, 3, H, W] in [-1, 1] -> mean, logvar [B, c, H/f, W/f] (raw
  posterior; a runtime applies sampling noise and ``to_public`` exactly as :class:`DGAE` does).
- ``denoiser.onnx``: x_t [B, 3, H, W], t [B] (fp32 always), z [B, c, H, W] (raw latent, already
  nearest-upsampled) -> v [B, 3, H, W]. A runtime drives it with the shared sampler loop.
- ``decode_unrolled.onnx`` (``unroll_steps=N``): noise [B, 3, H, W], z [B, c, H, W] -> image
  [B, 3, H, W]: the N-step sampler (solver and schedule of the checkpoint's config) composed from N
  copies of the denoiser graph that share one set of weights. The per-sample noise is an input, so
  the result is seed-reproducible and equals the shared sampler's.

Files are written to a staging folder inside the output dir, validated (export/validate.py), and
only then moved into place; a failed validation leaves the user's existing files untouched.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from dgae.checkpoint import load_checkpoint, resolve_checkpoint

from dgae.hashing import file_sha256
from dgae.config import IMAGE_CHANNELS
from dgae.errors import ExportError
from dgae.model import DGAE
from dgae.precision import NUMPY_PRECISIONS, get_precision
from dgae.sampler import SamplePlan, integrate

import kernels

from . import manifest as mf
from . import validate as val
from .graphs import DenoiserGraph, EncoderGraph, graph_specs

log = logging.getLogger(__name__)

DEFAULT_OPSET = 18
TRACE_BATCH = 2  # example batch used for tracing (>= 2 so the batch dim is not specialised to 1)
TRACE_SIDE_MULTIPLES = (2, 2)  # example H, W as multiples of the graph's size multiple
MAX_BATCH = 4096
MAX_SIDE = 16384
EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf's hard limit is 2 GiB; above this, weights go beside
NOISY_LOGGERS = ("onnxscript", "onnx_ir")  # the exporter's optimizer logs every rewrite at INFO
REJECTED_DIR = ".rejected"


def _rename_dims(model, specs: Sequence[mf.TensorSpec], values) -> None:
    """Give the exporter's symbolic dims (s0, 8*s1, ...) our names everywhere in the graph."""
    mapping: dict[str, str] = {}
    for spec, value in zip(specs, values):
        for want, dim in zip(spec.shape, value.type.tensor_type.shape.dim):
            if isinstance(want, str) and dim.dim_param:
                mapping.setdefault(dim.dim_param, want)
    g = model.graph
    for value in [*g.input, *g.output, *g.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in mapping:
                dim.dim_param = mapping[dim.dim_param]


@contextlib.contextmanager
def quiet_exporter_logs() -> Iterator[None]:
    saved = {name: logging.getLogger(name).level for name in NOISY_LOGGERS}
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def trace_graph(name: str, model: DGAE, precision: str, opset: int):
    """torch.export (dynamic batch/H/W) -> ONNX ModelProto with named dims."""
    import onnx  # noqa: PLC0415,F401 - fail early with ImportError if the export extra is missing

    cfg, dtype = model.config, get_precision(precision, ExportError, NUMPY_PRECISIONS).torch_dtype
    m = cfg.size_multiple
    b, h, w = TRACE_BATCH, TRACE_SIDE_MULTIPLES[0] * m, TRACE_SIDE_MULTIPLES[1] * m
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    hd, wd = torch.export.Dim("h", min=1, max=MAX_SIDE // m), torch.export.Dim("w", min=1, max=MAX_SIDE // m)
    img_dims = {0: batch, 2: m * hd, 3: m * wd}
    if name == mf.ENCODER:
        module = EncoderGraph(model)
        args = (torch.rand(b, IMAGE_CHANNELS, h, w, dtype=dtype) * 2 - 1,)
        dynamic = {"images": img_dims}
    elif name == mf.DENOISER:
        module = DenoiserGraph(model)
        args = (torch.randn(b, IMAGE_CHANNELS, h, w, dtype=dtype), torch.rand(b),
                torch.randn(b, cfg.latent_channels, h, w, dtype=dtype))
        dynamic = {"x_t": img_dims, "t": {0: batch}, "z": img_dims}
    else:
        raise ExportError(f"graph {name!r} is not traced (it is composed)")
    inputs, outputs = graph_specs(name, cfg, precision)
    with kernels.use_kernels("reference"), quiet_exporter_logs(), torch.no_grad():
        try:
            program = torch.onnx.export(module.eval(), args, dynamic_shapes=dynamic, dynamo=True,
                                        opset_version=opset, input_names=[s.name for s in inputs],
                                        output_names=[s.name for s in outputs], external_data=False,
                                        verbose=False)
        except Exception as exc:  # the exporter raises many types; name the graph and re-raise typed
            raise ExportError(f"exporting {name} failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
    proto = program.model_proto
    _rename_dims(proto, inputs, proto.graph.input)
    _rename_dims(proto, outputs, proto.graph.output)
    return proto


def save_graph(proto, path: Path) -> None:
    import onnx  # noqa: PLC0415

    external = proto.ByteSize() > EXTERNAL_DATA_BYTES
    onnx.save_model(proto, str(path), save_as_external_data=external,
                    location=path.name + ".data" if external else None)


# --- the unrolled decode -----------------------------------------------------------------------
def compose_unrolled(denoiser, plan: SamplePlan):
    """N-step decode graph from N (Heun: 2N - 1) inlined copies of the denoiser sharing weights.

    The sampler state stays fp32 between steps, as on every runtime (only the denoiser's inputs are
    cast to the graph's I/O dtype): x <- x + dt * fp32(v); Heun's corrector x <- x_pred + (dt / 2) *
    (fp32(v2) - fp32(v)); the last step clamps to [-1, 1] and the image is cast to the I/O dtype.
    ``t`` is the fp32 table value broadcast over the batch, as in run_sampler.
    """
    import onnx  # noqa: PLC0415
    from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415

    g = denoiser.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in g.node for a in n.attribute):
        raise ExportError("denoiser graph has control-flow subgraphs; cannot unroll it")
    if denoiser.functions:
        raise ExportError("denoiser graph uses local functions; cannot unroll it")
    io_type = g.input[0].type.tensor_type.elem_type
    f32 = TensorProto.FLOAT
    initializers = {i.name for i in g.initializer}
    nodes: list = []
    consts: list = []

    def const(name: str, value, dtype=np.float32) -> str:
        consts.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def node(op: str, inputs: list[str], out: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def to_f32(name: str) -> str:
        return name if io_type == f32 else node("Cast", [name], name + "/f32", to=f32)

    def to_io(name: str) -> str:
        return name if io_type == f32 else node("Cast", [name], name + "/io", to=io_type)

    shape = node("Shape", ["noise"], "u/noise_shape")
    batch = node("Slice", [shape, const("u/zero", [0], np.int64), const("u/one", [1], np.int64)], "u/batch")

    def denoise(prefix: str, x: str, t_value: float) -> str:
        t = node("Expand", [const(f"{prefix}/t1", [t_value]), batch], f"{prefix}/t")
        names = {"x_t": x, "t": t, "z": "z"}
        rename = lambda n: n if (not n or n in initializers) else names.get(n, f"{prefix}/{n}")  # noqa: E731
        for n in g.node:
            copy = onnx.NodeProto()
            copy.CopyFrom(n)
            copy.name = f"{prefix}/{n.name}"
            copy.input[:] = [rename(i) for i in n.input]
            copy.output[:] = [rename(o) for o in n.output]
            nodes.append(copy)
        return rename(g.output[0].name)

    state = {"x": to_f32("noise"), "calls": 0}  # x: the fp32 sampler state

    def denoise_at(i: int) -> str:  # the denoiser on the current state at time plan.ts[i]
        state["calls"] += 1
        return denoise(f"d{state['calls']}", to_io(state["x"]), plan.ts[i])

    def update(v: str, dt: float, clamp: bool, v_prev: str | None) -> None:
        prefix = f"u{state['calls']}" + ("c" if v_prev is not None else "")
        x = state["x"]
        delta = to_f32(v) if v_prev is None else node("Sub", [to_f32(v), to_f32(v_prev)], f"{prefix}/dv")
        coef = dt if v_prev is None else 0.5 * dt  # Heun's corrector averages the two velocities
        new = node("Add", [x, node("Mul", [delta, const(f"{prefix}/dt", coef)], f"{prefix}/step")], f"{prefix}/x")
        if clamp:
            new = node("Clip", [new, const(f"{prefix}/lo", -1.0), const(f"{prefix}/hi", 1.0)], f"{prefix}/clamped")
        state["x"] = new

    integrate(plan, denoise_at, update)  # the same Euler/Heun loop as run_sampler
    x = to_io(state["x"])
    nodes.append(helper.make_node("Identity", [x], ["image"], name="u/output"))

    by_name = {v.name: v for v in g.input}
    noise_in = onnx.ValueInfoProto()
    noise_in.CopyFrom(by_name["x_t"])
    noise_in.name = "noise"
    out = onnx.ValueInfoProto()
    out.CopyFrom(g.output[0])
    out.name = "image"
    graph = helper.make_graph(nodes, "dgae_decode_unrolled", [noise_in, by_name["z"]], [out],
                              initializer=[*g.initializer, *consts])
    return helper.make_model(graph, opset_imports=denoiser.opset_import, ir_version=denoiser.ir_version,
                             producer_name="dgae-export")


# --- the export as a whole ---------------------------------------------------------------------
def exporter_versions() -> dict[str, str]:
    import onnx  # noqa: PLC0415

    versions = {"torch": torch.__version__, "onnx": onnx.__version__}
    for pkg in ("onnxscript", "onnxruntime"):
        try:
            versions[pkg] = __import__(pkg).__version__
        except ImportError:
            versions[pkg] = "absent"
    return versions


def export_onnx(checkpoint: str | os.PathLike | None, out_dir: str | os.PathLike, opset: int = DEFAULT_OPSET,
                precision: str = "fp32", unroll_steps: int | None = None,
                graphs: Sequence[str] = (mf.ENCODER, mf.DENOISER), validate: bool = True,
                validation_sizes: Sequence[tuple[int, int]] | None = None) -> mf.Manifest:
    """Export, validate against PyTorch, then move the files and ``manifest.json`` into ``out_dir``."""
    if precision not in NUMPY_PRECISIONS:
        raise ExportError(f"ONNX export precision must be one of {sorted(NUMPY_PRECISIONS)}, got {precision!r} "
                          f"(bf16 is a TensorRT build flag: 'dgae export tensorrt --bf16')")
    path = resolve_checkpoint(checkpoint)
    model = load_checkpoint(path)  # fp32 reference for validation
    cfg = model.config
    names = list(dict.fromkeys([*graphs, *([mf.DENOISER, mf.UNROLLED] if unroll_steps else [])]))
    plan = SamplePlan.build(cfg.sampler, unroll_steps) if unroll_steps else None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out_dir))
    try:
        export_model = (
            model if precision == "fp32" else load_checkpoint(path, dtype=get_precision(precision).torch_dtype)
        )
        entries, protos = {}, {}
        for name in names:
            if name == mf.UNROLLED:
                log.info("composing %s: %d %s steps", name, plan.steps, plan.solver)
                protos[name] = compose_unrolled(protos[mf.DENOISER], plan)
            else:
                log.info("exporting %s (%s, opset %d)", name, precision, opset)
                protos[name] = trace_graph(name, export_model, precision, opset)
            file = staging / f"{name}.onnx"
            save_graph(protos[name], file)
            inputs, outputs = graph_specs(name, cfg, precision)
            extra = (
                {"steps": plan.steps, "solver": plan.solver, "timesteps": list(plan.ts)} if name == mf.UNROLLED else {}
            )
            entries[name] = mf.GraphEntry(file.name, file_sha256(file), inputs, outputs, extra)
        manifest = mf.Manifest(kind=mf.KIND_ONNX, checkpoint_sha256=file_sha256(path), preset=cfg.name,
                               config=cfg.to_dict(), opset=opset, precision=precision,
                               versions=exporter_versions(), graphs=entries)
        if validate:
            rows = val.validate_export(staging, manifest, model, sizes=validation_sizes)
            manifest = dataclasses.replace(manifest, validation=[r.to_dict() for r in rows])
        _commit(staging, out_dir, manifest)
    except BaseException:
        _reject(staging, out_dir)
        raise
    log.info("wrote %s (%s)", out_dir, ", ".join(f"{n}.onnx" for n in names))
    return manifest


def _commit(staging: Path, out_dir: Path, manifest: mf.Manifest) -> None:
    """Move validated files into place; the manifest goes last so readers never see a half export."""
    for item in staging.iterdir():
        os.replace(item, out_dir / item.name)
    mf.write_manifest(out_dir, manifest)
    staging.rmdir()


def _reject(staging: Path, out_dir: Path) -> None:
    """Keep a failed export for inspection under DIR/.rejected/<time>/ (never over the user's files)."""
    if not staging.exists():
        return
    if not any(staging.iterdir()):
        staging.rmdir()
        return
    target = out_dir / REJECTED_DIR / datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    target.parent.mkdir(exist_ok=True)
    shutil.move(str(staging), str(target))
    log.warning("failed export kept in %s", target)
