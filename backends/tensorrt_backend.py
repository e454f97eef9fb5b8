"""TensorRT backend: native engines from ``dgae export tensorrt`` via the TensorRT 10 Python API.

One execution context per engine on one CUDA stream; I/O buffers are allocated once per engine at
its optimization profile's maximum shapes and reused (each call views a prefix of them). The
runtime supplies only the primitives of :class:`backends.base.Backend` (encoder moments, one
denoiser call, the unrolled engine as the fast path when the plan and shape match); seeds,
scaling, the sampler loop in fp32 and the split of batches above the profile's max batch are the
shared ones. Engines load only on the GPU model and TensorRT version that built them (see
:func:`export.tensorrt_build.check_engine_compat`).

Shapes: every engine accepts only its optimization profile's range (:class:`SizeProfile`). A
request is checked against it before any engine runs: an image larger than the profile is split
by the shared tiling (:mod:`dgae.tiling`, fixed tile shapes) when the profile covers the model's
tile (``covers_decode_tile`` / ``covers_encode_tile``, reported in :meth:`info`), and refused
with a 4xx error naming the profile otherwise; the service warms up at a size inside the
profiles (:meth:`warmup_side`). ``set_input_shape`` returning False raises
:class:`EngineShapeError`, never a silent wrong-shape run.

Loading needs TensorRT 10 and a CUDA build of torch (not exercised by CPU CI); the profile logic
runs on CPU with fake engine objects (``tests/test_backends_tensorrt_profile.py``).
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch

from export import manifest as mf
from export.tensorrt_build import check_engine_compat, gpu_identity, import_tensorrt

from dgae import pipeline
from dgae.config import IMAGE_CHANNELS, DGAEConfig
from dgae.errors import BackendError, InputError, TooLargeError
from dgae.sampler import SamplePlan
from dgae.request import DecodeRequest, EncodeRequest

from .base import Backend, BackendInfo, PassHook

log = logging.getLogger(__name__)

PROFILE_INDEX = 0
MIN_SHAPE, OPT_SHAPE, MAX_SHAPE = 0, 1, 2  # indices into get_tensor_profile_shape's (min, opt, max)
IMAGE_RANK = 4  # [B, C, H, W]: the input whose profile gives an engine's pixel range
ENCODE, DECODE = "encode", "decode"

Shape = tuple[int, ...]


class EngineShapeError(BackendError):
    """An engine cannot take an input shape: outside its optimization profile, or refused by TensorRT."""

    code = "engine_shape_error"


def _hw(hw: tuple[int, int]) -> str:
    return f"{hw[0]}x{hw[1]}"


@dataclass(frozen=True)
class SizeProfile:
    """Batch and pixel ranges (min, opt, max) of one engine's optimization profile, read from its
    image input [B, C, H, W] (``images``, ``x_t`` or ``noise``: all in pixels)."""

    graph: str
    batch: tuple[int, int, int]
    hw: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]

    @classmethod
    def from_shapes(cls, graph: str, shapes: Sequence[Sequence[int]]) -> "SizeProfile":
        if len(shapes) != len((MIN_SHAPE, OPT_SHAPE, MAX_SHAPE)) or any(len(s) != IMAGE_RANK for s in shapes):
            raise BackendError(f"{graph} engine: expected (min, opt, max) shapes of a [B, C, H, W] input, "
                               f"got {[tuple(s) for s in shapes]}")
        lo, opt, hi = (tuple(int(d) for d in s) for s in shapes)
        return cls(graph, (lo[0], opt[0], hi[0]), ((lo[2], lo[3]), (opt[2], opt[3]), (hi[2], hi[3])))

    @property
    def min_hw(self) -> tuple[int, int]:
        return self.hw[MIN_SHAPE]

    @property
    def max_hw(self) -> tuple[int, int]:
        return self.hw[MAX_SHAPE]

    @property
    def max_batch(self) -> int:
        return self.batch[MAX_SHAPE]

    def below_min(self, height: int, width: int) -> bool:
        return height < self.min_hw[0] or width < self.min_hw[1]

    def accepts(self, height: int, width: int) -> bool:
        return not self.below_min(height, width) and height <= self.max_hw[0] and width <= self.max_hw[1]

    def __str__(self) -> str:
        return (f"the {self.graph} engine's profile (batch {self.batch[MIN_SHAPE]}..{self.max_batch}, "
                f"{_hw(self.min_hw)}..{_hw(self.max_hw)} px)")


def runnable_tile_mode(profile: SizeProfile, op: str, size: tuple[int, int], tile_shape: tuple[int, int] | None,
                       tile_mode: str, model_tile: int) -> str:
    """The tile mode to run a request with on an engine of ``profile``, or a 4xx error naming it.

    ``size``: the network input's (H, W) in pixels; ``tile_shape``: the shared tiling's tile for it
    under ``tile_mode`` (None: one untiled pass); ``model_tile``: the config's tile side for ``op``.
    Returns ``tile_mode``, or ``"off"`` when the model's tiles are below the profile's minimum but
    the whole image fits. Below the minimum: :class:`InputError` (400); above the maximum:
    :class:`TooLargeError` (413), saying whether ``tile=auto`` would fit or how to rebuild."""
    h, w = size
    if profile.below_min(h, w):
        raise InputError(f"a {h}x{w} {op} is smaller than {profile} accepts; send at least "
                         f"{_hw(profile.min_hw)} or rebuild the engines with a smaller --min-size")
    if profile.accepts(*(tile_shape or size)):
        return tile_mode
    if tile_shape is not None and profile.accepts(h, w):
        return "off"
    tiles = (min(h, model_tile), min(w, model_tile))
    if tile_shape is None and tile_mode == "off" and profile.accepts(*tiles):
        raise TooLargeError(f"a {h}x{w} {op} with tile=off exceeds {profile}; send tile=auto (its "
                            f"{_hw(tiles)} tiles fit) or rebuild the engines with --max-size {h}x{w}")
    need = (h, w) if tile_mode == "off" else (model_tile, model_tile)
    raise TooLargeError(f"a {h}x{w} {op} does not fit {profile}, which does not cover the model's {model_tile} px "
                        f"{op} tile either; rebuild the engines with a profile that covers {_hw(need)} "
                        f"(--min-size/--max-size)")


def decode_input_size(config: DGAEConfig, latent_hw: Sequence[int]) -> tuple[int, int]:
    """(H, W) of the U-Net buffer a decode of latents ``latent_hw`` runs on (see
    :func:`dgae.pipeline.decode_buffer_size`)."""
    return pipeline.decode_buffer_size(config, *latent_hw)


class _Engine:
    """A deserialized engine, its context and per-tensor buffers sized for the profile maximum.

    ``engine`` is a TensorRT ``ICudaEngine`` (or any object with its methods: the CPU tests pass a
    fake); ``trt`` the tensorrt module (for ``TensorIOMode`` and the dtypes)."""

    def __init__(self, trt, engine, graph: str, device: torch.device, stream):
        self.graph, self.engine, self.stream = graph, engine, stream
        self.context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.dtypes = {n: _torch_dtype(trt, engine.get_tensor_dtype(n)) for n in names}
        self.shapes = {n: tuple(tuple(int(d) for d in s) for s in engine.get_tensor_profile_shape(n, PROFILE_INDEX))
                       for n in self.inputs}
        image = next((n for n in self.inputs if len(self.shapes[n][MIN_SHAPE]) == IMAGE_RANK), None)
        if image is None:
            raise BackendError(f"{graph} engine has no [B, C, H, W] input (inputs: {self.inputs})")
        self.profile = SizeProfile.from_shapes(graph, self.shapes[image])
        self.max_batch = min(s[MAX_SHAPE][0] for s in self.shapes.values())
        for n in self.inputs:
            self._set_shape(n, self.shapes[n][MAX_SHAPE])
        out_max = {n: tuple(self.context.get_tensor_shape(n)) for n in self.outputs}
        self.buffers = {n: torch.empty(_numel(s), dtype=self.dtypes[n], device=device)
                        for n, s in {**{n: s[MAX_SHAPE] for n, s in self.shapes.items()}, **out_max}.items()}

    def _set_shape(self, name: str, shape: Shape) -> None:
        lo, _, hi = self.shapes[name]
        if len(shape) != len(lo) or any(s < a or s > b for s, a, b in zip(shape, lo, hi)):
            raise EngineShapeError(f"input {name} {shape} is outside {self.profile} ({name}: {lo}..{hi})")
        if not self.context.set_input_shape(name, shape):
            raise EngineShapeError(f"TensorRT refused input {name} {shape} for {self.profile} ({name}: {lo}..{hi})")

    def run(self, feeds: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Outputs are views into this engine's buffers, valid until its next run."""
        for name in self.inputs:
            t = feeds[name]
            shape = tuple(t.shape)
            self._set_shape(name, shape)
            view = self.buffers[name][: t.numel()].view(shape)
            view.copy_(t)
            self.context.set_tensor_address(name, view.data_ptr())
        outs = []
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            view = self.buffers[name][: _numel(shape)].view(shape)
            self.context.set_tensor_address(name, view.data_ptr())
            outs.append(view)
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise BackendError(f"TensorRT execute_async_v3 failed for the {self.graph} engine (see the TensorRT log)")
        return outs


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _torch_dtype(trt, dtype) -> torch.dtype:
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.bfloat16: torch.bfloat16}
    if dtype not in table:
        raise BackendError(f"unsupported engine I/O dtype {dtype}")
    return table[dtype]


def _deserialize(runtime, path: Path):  # pragma: no cover - needs TensorRT + GPU
    engine = runtime.deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise BackendError(f"{path}: TensorRT could not deserialize the engine (built by another "
                           f"TensorRT version?); rebuild with 'dgae export tensorrt'")
    return engine


class TensorRTBackend(Backend):
    def __init__(self, engine_dir: str | os.PathLike, device: str = "cuda", max_batch_size: int = 0,
                 checkpoint_sha256: str = ""):  # pragma: no cover - needs TensorRT + GPU
        trt = import_tensorrt()
        if not torch.cuda.is_available():
            raise BackendError("the TensorRT backend needs a CUDA GPU, and torch sees none")
        self.engine_dir = Path(engine_dir)
        manifest = mf.read_manifest(self.engine_dir, kind=mf.KIND_TENSORRT)
        mf.check_checkpoint(manifest, checkpoint_sha256, self.engine_dir)
        mf.verify_files(self.engine_dir, manifest)
        device = torch.device(device)
        gpu = gpu_identity(device.index or 0)
        check_engine_compat(manifest, trt.__version__, gpu["name"], gpu["compute_capability"], self.engine_dir)
        self.manifest = manifest
        self.checkpoint_sha256, self.precision = manifest.checkpoint_sha256, manifest.tensorrt.get("precision", "")
        self.stream = torch.cuda.Stream(device)
        self._logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self._logger)
        engines = {name: _Engine(trt, _deserialize(runtime, self.engine_dir / e.file), name, device, self.stream)
                   for name, e in manifest.graphs.items()}
        unrolled = manifest.graphs[mf.UNROLLED].plan() if mf.UNROLLED in engines else None
        self._setup(manifest.model_config(), engines, device, max_batch_size, unrolled)
        self.trt_version, self.gpu_name = trt.__version__, gpu["name"]

    @classmethod
    def from_engines(cls, config: DGAEConfig, engines: dict, device: str = "cpu", max_batch_size: int = 0,
                     unrolled_plan: SamplePlan | None = None) -> "TensorRTBackend":
        """A backend over already-loaded engines (objects with ``run``, ``profile``, ``max_batch``
        and ``dtypes``), without TensorRT: how the CPU tests drive the shape logic."""
        backend = cls.__new__(cls)
        backend.engine_dir, backend.precision, backend.trt_version, backend.gpu_name = Path(), "", "", ""
        backend.stream = None
        backend._setup(config, engines, torch.device(device), max_batch_size, unrolled_plan)
        return backend

    def _setup(self, config: DGAEConfig, engines: dict, device: torch.device, max_batch_size: int,
               unrolled_plan: SamplePlan | None) -> None:
        if mf.ENCODER not in engines or mf.DENOISER not in engines:
            raise BackendError(f"{self.engine_dir}: needs encoder and denoiser engines, has {sorted(engines)}")
        self.config, self.engines, self.device, self.unrolled_plan = config, engines, device, unrolled_plan
        self.profiles = {name: e.profile for name, e in engines.items()}
        if any(p.batch[MIN_SHAPE] > 1 for p in self.profiles.values()):
            raise BackendError(f"{self.engine_dir}: every engine must accept batch 1 (split batches end smaller); "
                               f"rebuild with --min-batch 1 ({'; '.join(map(str, self.profiles.values()))})")
        engine_max = min(e.max_batch for e in engines.values())
        self.max_batch_size = min(max_batch_size, engine_max) if max_batch_size else engine_max
        self.dtype = engines[mf.ENCODER].dtypes["images"]
        self.state_dtype = torch.float32  # the sampler state stays fp32 whatever the engines' precision
        tiling = config.tiling
        self.covers_decode_tile = self.profiles[mf.DENOISER].accepts(tiling.decode_tile, tiling.decode_tile)
        self.covers_encode_tile = self.profiles[mf.ENCODER].accepts(tiling.encode_tile, tiling.encode_tile)
        for op, covered, tile, graph in ((DECODE, self.covers_decode_tile, tiling.decode_tile, mf.DENOISER),
                                         (ENCODE, self.covers_encode_tile, tiling.encode_tile, mf.ENCODER)):
            if not covered:
                log.warning("%s does not cover the model's %d px %s tile: %ss larger than the profile will be "
                            "refused (rebuild with --max-size %d to tile them)", self.profiles[graph], tile, op, op,
                            tile)

    # --- profile fit: before any engine runs, so a checked request never meets an engine error -----
    def run_encode(self, req: EncodeRequest, on_pass: PassHook | None = None) -> torch.Tensor:
        h, w = req.images.shape[-2:]
        grid = pipeline.encode_grid(self.config, h, w, req.tile)
        tile_shape = None if grid is None else (grid.tile_h * self.config.downsample_factor,
                                                grid.tile_w * self.config.downsample_factor)
        tile = runnable_tile_mode(self.profiles[mf.ENCODER], ENCODE, (h, w), tile_shape, req.tile,
                                  self.config.tiling.encode_tile)
        return super().run_encode(req.with_tile(tile), on_pass)

    def run_decode(self, req: DecodeRequest, on_pass: PassHook | None = None) -> torch.Tensor:
        h, w = decode_input_size(self.config, req.latents.shape[-2:])
        grid = pipeline.decode_grid(self.config, h, w, req.tile)
        tile_shape = None if grid is None else (grid.tile_h, grid.tile_w)
        tile = runnable_tile_mode(self.profiles[mf.DENOISER], DECODE, (h, w), tile_shape, req.tile,
                                  self.config.tiling.decode_tile)
        return super().run_decode(req.with_tile(tile), on_pass)

    def warmup_side(self) -> int:
        """The smallest square every engine's profile accepts (a multiple of the model's size multiple)."""
        m = self.config.size_multiple
        side = max(max(p.min_hw) for p in self.profiles.values())
        side = -(-side // m) * m
        if not all(p.accepts(side, side) for p in self.profiles.values()):
            raise BackendError(f"the engines share no square size to warm up with: "
                               f"{'; '.join(map(str, self.profiles.values()))}; rebuild them with one --min-size")
        return side

    # --- primitives ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _on_stream(self) -> Iterator[None]:  # pragma: no cover - needs a CUDA stream
        with torch.cuda.stream(self.stream):
            yield

    def encoder_moments(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        with self._on_stream():
            mean, logvar = (o.float() for o in self.engines[mf.ENCODER].run({"images": images}))
        return mean, logvar

    def denoise(self, buf: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # pragma: no cover - needs TensorRT
        engine = self.engines[mf.DENOISER]
        feeds = {"x_t": buf[:, :IMAGE_CHANNELS], "t": t, "z": buf[:, IMAGE_CHANNELS:]}
        with self._on_stream():
            return engine.run(feeds)[0].clone()  # the engine reuses its output buffer (Heun keeps v)

    def fast_sample(self, buf: torch.Tensor, plan: SamplePlan) -> torch.Tensor | None:
        """The unrolled engine when it integrates ``plan`` and its profile takes this shape."""
        if plan != self.unrolled_plan or not self.profiles[mf.UNROLLED].accepts(*buf.shape[-2:]):
            return None
        with self._on_stream():  # pragma: no cover - needs TensorRT
            return self.engines[mf.UNROLLED].run({"noise": buf[:, :IMAGE_CHANNELS], "z": buf[:, IMAGE_CHANNELS:]})[0]

    def info(self) -> BackendInfo:
        return BackendInfo(name="tensorrt", device=str(self.device), precision=self.precision,
                           providers=("TensorRT",), max_batch_size=self.max_batch_size,
                           extra={"engine_dir": str(self.engine_dir), "tensorrt": self.trt_version,
                                  "gpu": self.gpu_name, "profiles": {g: str(p) for g, p in self.profiles.items()},
                                  "covers_decode_tile": self.covers_decode_tile,
                                  "covers_encode_tile": self.covers_encode_tile})
