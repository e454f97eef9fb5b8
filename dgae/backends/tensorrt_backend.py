"""TensorRT backend: native engines from ``dgae export tensorrt`` via the TensorRT Python API.

One execution context per engine on one CUDA stream; I/O buffers are allocated once per engine at
its optimization profile's maximum shapes and reused (each call views a prefix of them). The
shared sampler loop runs on CUDA tensors around the denoiser engine (or the unrolled engine when
steps match), so seeds mean what they mean on torch. Batches larger than the profile's max batch
are split; per-sample seeds make that invisible. Engines load only on the GPU model and TensorRT
version that built them (see :func:`export.tensorrt_build.check_engine_compat`).

Needs TensorRT 10 and a CUDA build of torch; not exercised by CPU CI.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import torch

from export import manifest as mf
from export.tensorrt_build import check_engine_compat, gpu_identity, import_tensorrt

from ..config import IMAGE_CHANNELS
from ..errors import BackendError
from ..sampler import SamplePlan, per_sample_noise, prepare_decode_buffer, resolve_seeds, run_sampler
from ..checks import check_images, check_latents, check_mode, from_public, to_public
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
        unrolled = manifest.graphs.get(mf.UNROLLED)
        self._unrolled_key = (tuple(unrolled.extra["timesteps"]), unrolled.extra["solver"]) if unrolled else None
        self.trt_version, self.gpu_name = trt.__version__, gpu["name"]

    def _chunks(self, n: int) -> list[slice]:
        return [slice(i, min(i + self.max_batch_size, n)) for i in range(0, n, self.max_batch_size)]

    @torch.no_grad()
    def encode(self, images: torch.Tensor, mode: str = "mean", seeds: int | Sequence[int] | None = None) -> torch.Tensor:
        check_images(self.config, images)
        check_mode(mode)
        seeds = resolve_seeds(seeds, len(images)) if mode == "sample" else None
        engine, parts = self.engines[mf.ENCODER], []
        with torch.cuda.stream(self.stream):
            for sl in self._chunks(len(images)):
                x = images[sl].to(self.device, engine.dtypes["images"], non_blocking=True)
                mean, logvar = (o.float() for o in engine.run({"images": x}))
                z = mean
                if seeds is not None:
                    noise = per_sample_noise(seeds[sl], tuple(mean.shape[1:]), device=self.device)
                    z = mean + torch.exp(0.5 * logvar) * noise
                parts.append(to_public(self.config, z).cpu())
        return torch.cat(parts)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, steps: int | None = None,
               seeds: int | Sequence[int] | None = None) -> torch.Tensor:
        check_latents(self.config, latents)
        plan = SamplePlan.build(self.config.sampler, steps)
        seeds = resolve_seeds(seeds, len(latents))
        unrolled = self._unrolled_key == (plan.ts, plan.solver)
        parts = []
        with torch.cuda.stream(self.stream):
            for sl in self._chunks(len(latents)):
                raw = from_public(self.config, latents[sl].to(self.device, torch.float32))
                buf, (h, w) = prepare_decode_buffer(raw, self.config.downsample_factor,
                                                    self.config.decoder_multiple, seeds[sl])
                z = buf[:, IMAGE_CHANNELS:].contiguous()
                if unrolled:
                    (out,) = self.engines[mf.UNROLLED].run({"noise": buf[:, :IMAGE_CHANNELS], "z": z})
                else:
                    engine, heun = self.engines[mf.DENOISER], plan.solver == "heun"

                    def denoise(b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                        v = engine.run({"x_t": b[:, :IMAGE_CHANNELS], "t": t, "z": z})[0]
                        return v.clone() if heun else v  # Heun keeps v while the engine reuses its buffer

                    out = run_sampler(denoise, buf, plan)
                parts.append(out[..., :h, :w].float().cpu())
        return torch.cat(parts)

    def info(self) -> BackendInfo:
        return BackendInfo(name="tensorrt", device=str(self.device), precision=self.precision,
                           providers=("TensorRT",), max_batch_size=self.max_batch_size,
                           extra={"engine_dir": str(self.engine_dir), "tensorrt": self.trt_version,
                                  "gpu": self.gpu_name})
