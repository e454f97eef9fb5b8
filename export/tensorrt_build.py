"""Build TensorRT engines from an ONNX export (``dgae export tensorrt``).

Split in two so the logic is testable on machines without TensorRT:

- pure configuration (no TensorRT import): :func:`make_build_plan` turns the requested batch and
  image-size ranges into one optimization profile per graph input (min/opt/max shapes from the
  manifest's symbolic dims), the precision flags, the layers pinned to fp32, the timing-cache path;
  :func:`engine_manifest` writes the ONNX manifest plus TensorRT version, GPU and profiles;
  :func:`check_engine_compat` refuses engines built for another GPU or TensorRT version with a
  rebuild hint.
- :func:`build_engines`: the TensorRT Python API (``trt.Builder``, ``OnnxParser``,
  ``IOptimizationProfile``, ``ITimingCache``, ``build_serialized_network``); needs TensorRT and a
  CUDA GPU.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from dgae.hashing import file_sha256
from dgae.errors import BackendError, ExportError

from . import manifest as mf

log = logging.getLogger(__name__)

PRECISION_FLAGS = {"fp32": (), "fp16": ("FP16",), "bf16": ("BF16",)}
# Layer types kept in fp32 under FP16/BF16 (statistics and softmax overflow in half precision).
FP32_LAYER_TYPES = ("NORMALIZATION", "SOFTMAX", "REDUCE")
PIN_FLAG = "OBEY_PRECISION_CONSTRAINTS"
DEFAULT_WORKSPACE_GIB = 8
GIB = 1 << 30
DEFAULT_OPT_LEVEL = 3  # TensorRT's builder_optimization_level default
TIMING_CACHE_NAME = "timing.cache"
LATENT_DIMS = ("latent_height", "latent_width")


@dataclass(frozen=True)
class ShapeRange:
    """Batch and image-size (pixels) ranges every engine must accept, and the size to tune for."""

    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 16
    min_hw: tuple[int, int] = (64, 64)
    opt_hw: tuple[int, int] = (256, 256)
    max_hw: tuple[int, int] = (512, 512)

    def validate(self, multiple: int) -> "ShapeRange":
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ExportError(f"batch range must satisfy 1 <= min <= opt <= max, got "
                              f"{self.min_batch}/{self.opt_batch}/{self.max_batch}")
        for axis, label in ((0, "height"), (1, "width")):
            lo, opt, hi = self.min_hw[axis], self.opt_hw[axis], self.max_hw[axis]
            if not 0 < lo <= opt <= hi:
                raise ExportError(f"{label} range must satisfy 0 < min <= opt <= max, got {lo}/{opt}/{hi}")
            for v in (lo, opt, hi):
                if v % multiple:
                    raise ExportError(f"{label} {v} is not a multiple of {multiple} (the model's size multiple)")
        return self


def parse_hw(text: str) -> tuple[int, int]:
    """'256' -> (256, 256); '256x384' -> (256, 384) (height x width)."""
    parts = str(text).lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError as exc:
        raise ExportError(f"size {text!r} must be N or HxW (e.g. 256 or 256x384)") from exc
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or min(values) <= 0:
        raise ExportError(f"size {text!r} must be N or HxW with positive sides")
    return values[0], values[1]


def profile_shapes(
    entry: mf.GraphEntry, shapes: ShapeRange, downsample_factor: int
) -> dict[str, tuple[tuple[int, ...], ...]]:
    """input name -> (min, opt, max) concrete shapes, from the manifest's symbolic dims."""
    def concrete(dims, which: int) -> tuple[int, ...]:
        batch = (shapes.min_batch, shapes.opt_batch, shapes.max_batch)[which]
        h, w = (shapes.min_hw, shapes.opt_hw, shapes.max_hw)[which]
        table = {"batch": batch, "height": h, "width": w,
                 "latent_height": h // downsample_factor, "latent_width": w // downsample_factor}
        out = []
        for d in dims:
            if isinstance(d, int):
                out.append(d)
            elif d in table:
                out.append(table[d])
            else:
                raise ExportError(f"input dim {d!r} has no profile rule (known: {sorted(table)})")
        return tuple(out)

    return {s.name: tuple(concrete(s.shape, i) for i in range(3)) for s in entry.inputs}


def builder_flags(precision: str, onnx_precision: str) -> tuple[str, ...]:
    """TensorRT BuilderFlag names for a build; fp16 ONNX graphs can only become fp16 engines."""
    if precision not in PRECISION_FLAGS:
        raise ExportError(f"TensorRT precision must be one of {sorted(PRECISION_FLAGS)}, got {precision!r}")
    if onnx_precision == "fp16" and precision != "fp16":
        raise ExportError(f"the ONNX export is fp16; a {precision} engine needs an fp32 export "
                          f"('dgae export onnx' without --fp16)")
    flags = PRECISION_FLAGS[precision]
    return flags + ((PIN_FLAG,) if flags and onnx_precision == "fp32" else ())


def layers_to_pin(layer_types: list[str], precision: str) -> list[int]:
    """Indices of layers to keep in fp32 (normalisation, softmax, reductions) in a half build."""
    if precision == "fp32":
        return []
    return [i for i, t in enumerate(layer_types) if t in FP32_LAYER_TYPES]


@dataclass(frozen=True)
class EngineSpec:
    graph: str
    onnx_file: str
    engine_file: str
    profile: dict  # input name -> (min, opt, max) shapes


@dataclass(frozen=True)
class BuildPlan:
    onnx_dir: str
    out_dir: str
    precision: str
    flags: tuple[str, ...]
    workspace_bytes: int
    timing_cache: str
    optimization_level: int
    shapes: ShapeRange
    engines: tuple[EngineSpec, ...]
    command: str = ""
    extra: dict = field(default_factory=dict)


def make_build_plan(onnx_dir: str | os.PathLike, out_dir: str | os.PathLike, precision: str = "fp16",
                    shapes: ShapeRange | None = None, workspace_gib: float = DEFAULT_WORKSPACE_GIB,
                    timing_cache: str | os.PathLike | None = None, graphs: list[str] | None = None,
                    optimization_level: int = DEFAULT_OPT_LEVEL, command: str = "") -> BuildPlan:
    """Everything a build needs, validated, without importing TensorRT."""

    onnx_dir, out_dir = Path(onnx_dir), Path(out_dir)
    manifest = mf.read_manifest(onnx_dir)
    names = graphs or list(manifest.graphs)
    mf.verify_files(onnx_dir, manifest, names)
    config = manifest.model_config()
    shapes = (shapes or ShapeRange()).validate(config.size_multiple)
    if workspace_gib <= 0:
        raise ExportError(f"workspace must be > 0 GiB, got {workspace_gib}")
    engines = tuple(EngineSpec(n, manifest.graphs[n].file, f"{n}.engine",
                               profile_shapes(manifest.graphs[n], shapes, config.downsample_factor)) for n in names)
    return BuildPlan(
        str(onnx_dir),
        str(out_dir),
        precision,
        builder_flags(precision, manifest.precision),
        int(workspace_gib * GIB),
        str(timing_cache or out_dir / TIMING_CACHE_NAME),
        optimization_level,
        shapes,
        engines,
        command or rebuild_command(onnx_dir, out_dir, precision, shapes),
    )


def rebuild_command(onnx_dir, out_dir, precision: str, shapes: ShapeRange) -> str:
    """The CLI line that reproduces a build (stored in the manifest for the rebuild hint)."""
    hw = lambda s: f"{s[0]}x{s[1]}"  # noqa: E731
    args = ["dgae", "export", "tensorrt", "--onnx", str(onnx_dir), "-o", str(out_dir)]
    args += [f"--{precision}"] if precision != "fp32" else []
    args += ["--min-batch", str(shapes.min_batch), "--opt-batch", str(shapes.opt_batch),
             "--max-batch", str(shapes.max_batch), "--min-size", hw(shapes.min_hw),
             "--opt-size", hw(shapes.opt_hw), "--max-size", hw(shapes.max_hw)]
    return shlex.join(args)


def engine_manifest(onnx_manifest: mf.Manifest, plan: BuildPlan, trt_version: str, gpu: dict) -> mf.Manifest:
    """The ONNX manifest with graphs pointing at engines and a ``tensorrt`` section."""
    out = Path(plan.out_dir)
    graphs = {}
    for spec in plan.engines:
        entry = onnx_manifest.graphs[spec.graph]
        graphs[spec.graph] = dataclasses.replace(
            entry,
            file=spec.engine_file,
            sha256=file_sha256(out / spec.engine_file),
            extra={**entry.extra, "onnx_file": spec.onnx_file, "onnx_sha256": entry.sha256},
        )
    trt = {
        "version": trt_version,
        "gpu_name": gpu.get("name", ""),
        "compute_capability": gpu.get("compute_capability", ""),
        "precision": plan.precision,
        "flags": list(plan.flags),
        "workspace_bytes": plan.workspace_bytes,
        "optimization_level": plan.optimization_level,
        "shapes": dataclasses.asdict(plan.shapes),
        "profiles": {s.graph: {k: [list(x) for x in v] for k, v in s.profile.items()} for s in plan.engines},
        "command": plan.command,
    }
    return dataclasses.replace(onnx_manifest, kind=mf.KIND_TENSORRT, graphs=graphs, tensorrt=trt,
                               versions={**onnx_manifest.versions, "tensorrt": trt_version})


def check_engine_compat(manifest: mf.Manifest, trt_version: str, gpu_name: str, compute_capability: str,
                        directory: str | os.PathLike = "") -> None:
    """Engines only run on the GPU model and TensorRT version that built them."""
    built = manifest.tensorrt
    problems = []
    if built.get("version") != trt_version:
        problems.append(f"TensorRT {built.get('version')!r} built them, this process has {trt_version!r}")
    if built.get("gpu_name") != gpu_name or built.get("compute_capability") != compute_capability:
        problems.append(f"built on {built.get('gpu_name')!r} (sm {built.get('compute_capability')}), "
                        f"this GPU is {gpu_name!r} (sm {compute_capability})")
    if problems:
        raise BackendError(
            f"TensorRT engines in {directory or 'the engine dir'} cannot be loaded here: "
            f"{'; '.join(problems)}. Rebuild them on this machine: "
            f"{built.get('command') or 'dgae export tensorrt --onnx ONNX_DIR -o ENGINE_DIR'}"
        )


# --- the part that needs TensorRT ----------------------------------------------------------------
def import_tensorrt():
    try:
        import tensorrt  # noqa: PLC0415
    except ImportError as exc:
        raise BackendError("TensorRT is not installed: on a CUDA host 'pip install tensorrt' (10.x), then rerun; "
                           "'--dry-run' prints the build plan without it") from exc
    return tensorrt


def gpu_identity(device: int = 0) -> dict:
    import torch  # noqa: PLC0415

    if not torch.cuda.is_available():
        raise BackendError("building or loading TensorRT engines needs a CUDA GPU, and torch sees none")
    major, minor = torch.cuda.get_device_capability(device)
    return {"name": torch.cuda.get_device_name(device), "compute_capability": f"{major}.{minor}"}


def build_engines(plan: BuildPlan) -> mf.Manifest:  # pragma: no cover - needs TensorRT + GPU
    trt = import_tensorrt()
    gpu = gpu_identity()
    onnx_manifest = mf.read_manifest(plan.onnx_dir)
    out = Path(plan.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    cache_path = Path(plan.timing_cache)
    cache_bytes = cache_path.read_bytes() if cache_path.is_file() else b""
    for spec in plan.engines:
        network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(Path(plan.onnx_dir) / spec.onnx_file)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BackendError(f"TensorRT cannot parse {spec.onnx_file}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_bytes)
        config.builder_optimization_level = plan.optimization_level
        for flag in plan.flags:
            config.set_flag(getattr(trt.BuilderFlag, flag))
        layers = [network.get_layer(i) for i in range(network.num_layers)]
        for i in layers_to_pin([layer.type.name for layer in layers], plan.precision):
            layers[i].precision = trt.float32
            for k in range(layers[i].num_outputs):
                layers[i].set_output_type(k, trt.float32)
        cache = config.create_timing_cache(cache_bytes)
        config.set_timing_cache(cache, ignore_mismatch=False)
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in spec.profile.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
        log.info("building %s (%s, flags %s)", spec.engine_file, plan.precision, ",".join(plan.flags) or "none")
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise BackendError(f"TensorRT failed to build {spec.engine_file} (see the TensorRT log above)")
        tmp = out / (spec.engine_file + ".tmp")
        tmp.write_bytes(bytes(serialized))
        os.replace(tmp, out / spec.engine_file)
        cache_bytes = bytes(config.get_timing_cache().serialize())
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    cache_path.write_bytes(cache_bytes)
    manifest = engine_manifest(onnx_manifest, plan, trt.__version__, gpu)
    mf.write_manifest(out, manifest)
    return manifest
