"""Create a backend by name: ``torch``, ``onnxruntime``, ``tensorrt`` or ``auto``.

``auto`` starts the fastest runtime that is available and verified on this machine, in the order
TensorRT > ONNX Runtime CUDA > torch CUDA > ONNX Runtime CPU > torch CPU (channels_last): a
runtime whose start fails (e.g. its export does not validate) is skipped like an unavailable one,
and the reason for the choice, naming every faster runtime skipped and why, is logged and kept
as ``backend.auto_reason`` and ``backend.auto_skipped`` (the service shows both in ``/v1/model``). ``device`` narrows
it: ``cpu`` considers only CPU runtimes, ``cuda[:N]`` only GPU ones,
``auto`` (or None) both.

Options (keyword arguments):
- torch: ``compile`` (bool, torch.compile the encoder and denoiser), ``cuda_graph`` (bool, replay
  each untiled decode as one captured CUDA graph, :mod:`backends.cuda_graph`; CUDA only),
  ``channels_last`` (bool; NHWC convolutions, faster on CPU; what ``auto`` uses there). ``auto``
  passes the torch-only options to the torch candidates only (and logs that it dropped them).
- onnxruntime: ``onnx_dir`` (an export from ``dgae export onnx``; when omitted the checkpoint is
  exported once into the cache, see :mod:`export.cache`), ``threads`` (intra-op threads, default
  all usable cores), ``use_unrolled`` (default True), ``tensorrt_ep`` (ORT's TensorRT provider).
- tensorrt: ``engine_dir`` (required, from ``dgae export tensorrt``).
"""
from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass

import torch

from dgae.checkpoint import resolve_checkpoint

from dgae.hashing import file_sha256
from dgae.errors import BackendError, DGAEError
from .base import Backend

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnxruntime", "tensorrt", "auto")
TORCH_ONLY_OPTIONS = ("compile", "cuda_graph", "channels_last")  # auto passes them to torch candidates only
CUDA_EP = "CUDAExecutionProvider"


@dataclass(frozen=True)
class Candidate:
    label: str  # e.g. "onnxruntime-cuda"
    kind: str  # backend kind passed to create_backend
    device: str
    available: bool
    reason: str


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _ort_providers() -> list[str]:
    if not _has("onnxruntime"):
        return []
    import onnxruntime  # noqa: PLC0415

    return list(onnxruntime.get_available_providers())


def auto_candidates(device: str | None = "auto", **options) -> list[Candidate]:
    """Every runtime in speed order with whether it can run here and why (or why not)."""
    want_gpu = device in (None, "auto") or str(device).startswith("cuda")
    want_cpu = device in (None, "auto", "cpu")
    gpu = str(device) if str(device).startswith("cuda") else "cuda"
    cuda = torch.cuda.is_available()
    no_cuda = "torch sees no CUDA device"
    providers = _ort_providers()
    out = []
    if want_gpu:
        if not _has("tensorrt"):
            out.append(Candidate("tensorrt", "tensorrt", gpu, False, "the tensorrt package is not installed"))
        elif not cuda:
            out.append(Candidate("tensorrt", "tensorrt", gpu, False, no_cuda))
        elif not options.get("engine_dir"):
            out.append(Candidate("tensorrt", "tensorrt", gpu, False, "no engine_dir given (build one with "
                                                                     "'dgae export tensorrt')"))
        else:
            out.append(Candidate("tensorrt", "tensorrt", gpu, True, "TensorRT and engines are available"))
        if CUDA_EP not in providers:
            out.append(Candidate("onnxruntime-cuda", "onnxruntime", gpu, False,
                                 f"onnxruntime has no {CUDA_EP} (providers: {providers or 'not installed'})"))
        elif not cuda:
            out.append(Candidate("onnxruntime-cuda", "onnxruntime", gpu, False, no_cuda))
        else:
            out.append(Candidate("onnxruntime-cuda", "onnxruntime", gpu, True, f"{CUDA_EP} and a GPU are available"))
        out.append(Candidate("torch-cuda", "torch", gpu, cuda, "CUDA is available" if cuda else no_cuda))
    if want_cpu:
        ort = "CPUExecutionProvider" in providers
        out.append(Candidate("onnxruntime-cpu", "onnxruntime", "cpu", ort,
                             "onnxruntime is installed" if ort else "onnxruntime is not installed"))
        out.append(Candidate("torch-cpu", "torch", "cpu", True, "always available"))
    if not out:
        raise BackendError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    return out


def choose_auto(device: str | None = "auto", **options) -> Candidate:
    """The fastest available candidate (without starting it)."""
    candidates = auto_candidates(device, **options)
    chosen = next((c for c in candidates if c.available), None)
    if chosen is None:  # pragma: no cover - torch-cpu is always available when the CPU is allowed
        raise BackendError(
            "backend=auto: nothing can run here: " + "; ".join(f"{c.label}: {c.reason}" for c in candidates)
        )
    return chosen


def _without_torch_only(options: dict, label: str) -> dict:
    dropped = [k for k in TORCH_ONLY_OPTIONS if options.get(k)]
    if dropped:
        log.info("backend=auto: %s apply to the torch backend only and are not passed to %s", ", ".join(dropped), label)
    return {k: v for k, v in options.items() if k not in TORCH_ONLY_OPTIONS}


def create_auto(checkpoint, device: str | None, precision: str, max_batch_size: int, **options) -> Backend:
    """Start the fastest candidate that starts; a failed start falls through to the next one."""
    skipped: list[str] = []
    for c in auto_candidates(device, **options):
        if not c.available:
            skipped.append(f"{c.label} ({c.reason})")
            continue
        extra = {"channels_last": True} if c.kind == "torch" and c.device == "cpu" else {}
        opts = options if c.kind == "torch" else _without_torch_only(options, c.label)
        try:
            backend = create_backend(c.kind, checkpoint, c.device, precision, max_batch_size, **{**opts, **extra})
        except DGAEError as exc:
            log.warning("backend=auto: %s did not start: %s", c.label, exc)
            skipped.append(f"{c.label} (failed to start: {exc})")
            continue
        backend.auto_reason, backend.auto_skipped = f"{c.label}: {c.reason}", skipped
        log.info("backend=auto chose %s on %s: %s%s", c.label, c.device, c.reason,
                 f"; faster ones skipped: {', '.join(skipped)}" if skipped else "")
        return backend
    raise BackendError("backend=auto: nothing could start here: " + "; ".join(skipped))


def create_backend(kind: str, checkpoint: str | os.PathLike | None, device: str = "cpu", precision: str = "fp32",
                   max_batch_size: int = 0, **options) -> Backend:
    if kind == "auto":
        return create_auto(checkpoint, device, precision, max_batch_size, **options)
    if kind in BACKENDS and kind != "torch" and options.get("cuda_graph"):
        raise BackendError(f"cuda_graph applies to the torch backend only, not {kind!r}")
    if kind == "torch":
        from backends.torch_backend import TorchBackend  # noqa: PLC0415

        return TorchBackend.from_checkpoint(resolve_checkpoint(checkpoint), device=device, precision=precision,
                                            compile=bool(options.get("compile", False)),
                                            max_batch_size=max_batch_size,
                                            cuda_graph=bool(options.get("cuda_graph", False)),
                                            channels_last=bool(options.get("channels_last", False)))
    if kind == "onnxruntime":
        from backends.onnxruntime_backend import OnnxRuntimeBackend  # noqa: PLC0415

        onnx_dir = options.get("onnx_dir")
        sha = file_sha256(resolve_checkpoint(checkpoint)) if checkpoint or not onnx_dir else ""
        if not onnx_dir:
            from export.cache import cached_onnx_dir  # noqa: PLC0415

            onnx_dir = cached_onnx_dir(checkpoint, precision)
        backend = OnnxRuntimeBackend(onnx_dir, device=device, threads=int(options.get("threads", 0)),
                                     use_unrolled=bool(options.get("use_unrolled", True)),
                                     tensorrt_ep=bool(options.get("tensorrt_ep", False)),
                                     max_batch_size=max_batch_size, checkpoint_sha256=sha)
        if backend.precision != precision:
            raise BackendError(f"{onnx_dir} is a {backend.precision} export but precision={precision!r} was "
                               f"requested; export with 'dgae export onnx{' --fp16' if precision == 'fp16' else ''}'")
        return backend
    if kind == "tensorrt":
        from backends.tensorrt_backend import TensorRTBackend  # noqa: PLC0415

        if not options.get("engine_dir"):
            raise BackendError("backend 'tensorrt' needs engine_dir= (build engines with 'dgae export tensorrt')")
        sha = file_sha256(resolve_checkpoint(checkpoint)) if checkpoint else ""
        return TensorRTBackend(options["engine_dir"], device=device if device.startswith("cuda") else "cuda",
                               max_batch_size=max_batch_size, checkpoint_sha256=sha)
    raise BackendError(f"unknown backend {kind!r}; available: {', '.join(BACKENDS)}")
