"""TensorRT backend: native engines from ``dgae export tensorrt`` via the TensorRT Python API.

One execution context per engine on one CUDA stream; I/O buffers are allocated once per engine at
its optimization profile's maximum shapes and reused (each call views a prefix of them). The
runtime supplies only the primitives of :class:`backends.base.Backend` (encoder moments, one
denoiser call, the unrolled engine as the fast path when the plan matches); seeds, scaling, the
sampler loop in fp32 and the split of batches above the profile's max batch are the shared ones. Engines load only on the GPU model and TensorRT
version that built them (see :func:`export.tensorrt_build.check_engine_compat`).

Needs TensorRT 10 and a CUDA build of torch; not exercised by CPU CI.
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Iterator, Sequence

import torch

from export import manifest as mf
from export.tensorrt_build import check_engine_compat, gpu_identity, import_tensorrt

from dgae.config import IMAGE_CHANNELS
from dgae.errors import BackendError
from dgae.sampler import SamplePlan

from .base import Backend, BackendInfo

log = logging.getLogger(__name__)

PROFILE_INDEX = 0
MAX_SHAPE = 2  # index of the max shape in get_tensor_profile_shape's (min, opt, max)


class _Engine:  # pragma: no cover - needs TensorRT + GPU
    """A deserialized engine, its context and per-tensor buffers sized for the profile maximum."""

    def __init__(self, trt, runtime, path: Path, device: torch.device, stream: torch.cuda.Stream):
        engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise BackendError(f"{path}: TensorRT could not deserialize the engine (built by another "
                               f"TensorRT version?); rebuild with 'dgae export tensorrt'")
        self.engine, self.context, self.stream = engine, engine.create_execution_context(), stream
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.dtypes = {n: _torch_dtype(trt, engine.get_tensor_dtype(n)) for n in names}
        self.max_shapes = {n: tuple(engine.get_tensor_profile_shape(n, PROFILE_INDEX)[MAX_SHAPE]) for n in self.inputs}
        self.max_batch = min(s[0] for s in self.max_shapes.values())
        for n, shape in self.max_shapes.items():
            self.context.set_input_shape(n, shape)
        out_max = {n: tuple(self.context.get_tensor_shape(n)) for n in self.outputs}
        self.buffers = {n: torch.empty(_numel(s), dtype=self.dtypes[n], device=device)
                        for n, s in {**self.max_shapes, **out_max}.items()}

    def run(self, feeds: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Outputs are views into this engine's buffers, valid until its next run."""
        for name in self.inputs:
            t = feeds[name]
            if any(a > b for a, b in zip(t.shape, self.max_shapes[name])):
                raise BackendError(f"input {name} {tuple(t.shape)} exceeds the engine profile's max "
                                   f"{self.max_shapes[name]}; rebuild with larger --max-batch/--max-size")
            view = self.buffers[name][: t.numel()].view(t.shape)
            view.copy_(t)
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, view.data_ptr())
        outs = []
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            view = self.buffers[name][: _numel(shape)].view(shape)
            self.context.set_tensor_address(name, view.data_ptr())
            outs.append(view)
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise BackendError("TensorRT execute_async_v3 failed (see the TensorRT log)")
        return outs


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _torch_dtype(trt, dtype) -> torch.dtype:  # pragma: no cover - needs TensorRT
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.bfloat16: torch.bfloat16}
    if dtype not in table:
        raise BackendError(f"unsupported engine I/O dtype {dtype}")
    return table[dtype]


class TensorRTBackend(Backend):  # pragma: no cover - needs TensorRT + GPU
    def __init__(self, engine_dir: str | os.PathLike, device: str = "cuda", max_batch_size: int = 0,
                 checkpoint_sha256: str = ""):
        trt = import_tensorrt()
        if not torch.cuda.is_available():
            raise BackendError("the TensorRT backend needs a CUDA GPU, and torch sees none")
        self.engine_dir = Path(engine_dir)
        manifest = mf.read_manifest(self.engine_dir, kind=mf.KIND_TENSORRT)
        mf.check_checkpoint(manifest, checkpoint_sha256, self.engine_dir)
        mf.verify_files(self.engine_dir, manifest)
        self.device = torch.device(device)
        gpu = gpu_identity(self.device.index or 0)
        check_engine_compat(manifest, trt.__version__, gpu["name"], gpu["compute_capability"], self.engine_dir)
        self.manifest, self.config = manifest, manifest.model_config()
        self.checkpoint_sha256, self.precision = manifest.checkpoint_sha256, manifest.tensorrt.get("precision", "")
        self.stream = torch.cuda.Stream(self.device)
        self._logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self._logger)
        self.engines = {name: _Engine(trt, runtime, self.engine_dir / e.file, self.device, self.stream)
                        for name, e in manifest.graphs.items()}
        if mf.ENCODER not in self.engines or mf.DENOISER not in self.engines:
            raise BackendError(f"{self.engine_dir}: needs encoder and denoiser engines, has {sorted(self.engines)}")
        engine_max = min(e.max_batch for e in self.engines.values())
        self.max_batch_size = min(max_batch_size, engine_max) if max_batch_size else engine_max
        self.unrolled_plan = manifest.graphs[mf.UNROLLED].plan() if mf.UNROLLED in self.engines else None
        self.dtype = self.engines[mf.ENCODER].dtypes["images"]
        self.state_dtype = torch.float32  # the sampler state stays fp32 whatever the engines' precision
        self.trt_version, self.gpu_name = trt.__version__, gpu["name"]

    @contextlib.contextmanager
    def _on_stream(self) -> Iterator[None]:
        with torch.cuda.stream(self.stream):
            yield

    def encoder_moments(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with self._on_stream():
            mean, logvar = (o.float() for o in self.engines[mf.ENCODER].run({"images": images}))
        return mean, logvar

    def denoise(self, buf: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        engine = self.engines[mf.DENOISER]
        feeds = {"x_t": buf[:, :IMAGE_CHANNELS], "t": t, "z": buf[:, IMAGE_CHANNELS:]}
        with self._on_stream():
            return engine.run(feeds)[0].clone()  # the engine reuses its output buffer (Heun keeps v)

    def fast_sample(self, buf: torch.Tensor, plan: SamplePlan) -> torch.Tensor | None:
        if plan != self.unrolled_plan:
            return None
        with self._on_stream():
            return self.engines[mf.UNROLLED].run({"noise": buf[:, :IMAGE_CHANNELS], "z": buf[:, IMAGE_CHANNELS:]})[0]

    def info(self) -> BackendInfo:
        return BackendInfo(name="tensorrt", device=str(self.device), precision=self.precision,
                           providers=("TensorRT",), max_batch_size=self.max_batch_size,
                           extra={"engine_dir": str(self.engine_dir), "tensorrt": self.trt_version,
                                  "gpu": self.gpu_name})
