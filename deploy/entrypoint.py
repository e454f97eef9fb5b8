"""Container entrypoint, also run outside Docker (CI runs it on a CPU machine).

It picks the backend for the machine it finds, builds the runtime files that backend needs into
the engine cache (once per checkpoint + GPU + TensorRT version, see :mod:`export.cache`),
then replaces itself with ``python -m cli serve`` (which reads every other ``DGAE_*`` variable)::

    GPU and TensorRT   export ONNX, build TensorRT engines (cached)  -> tensorrt on cuda
    GPU, no TensorRT   nothing to build                              -> torch on cuda
    no GPU             nothing to build here                         -> auto on cpu

On the CPU the service's own ``backend=auto`` decides (:mod:`backends.factory`, the same choice
as ``make serve``): ONNX Runtime with the validated export from the cache under
``DGAE_CACHE_DIR`` (built once at the first start, reused by later ones and by replicas sharing
the volume), torch with channels_last if that cannot start; ``/v1/model`` says which and why.

``DGAE_BACKEND`` other than ``auto`` forces a backend (``onnxruntime`` exports ONNX into the cache
first). If a TensorRT build fails the service falls back to torch on the GPU with an error logged,
unless ``DGAE_ENGINE_FALLBACK=fail``.

Usage: ``python -m deploy.entrypoint [serve|prepare|plan]`` (default ``serve``); ``prepare`` builds
and prints the resulting environment, ``plan`` only prints what would be done.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Mapping, Sequence

from dgae.errors import BackendError, ConfigError, DGAEError

from export import cache as engine_cache

log = logging.getLogger("deploy.entrypoint")

BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")
FALLBACKS = ("torch", "fail")
GPU_PRECISION, CPU_PRECISION = "fp16", "fp32"
DEFAULT_CACHE = Path.home() / ".cache" / "dgae" / "engines"
EXIT_USER_ERROR = 2

# Environment variables read here (everything else DGAE_* goes to the service untouched).
ENV_CHECKPOINT, ENV_BACKEND, ENV_DEVICE, ENV_PRECISION = ("DGAE_CHECKPOINT", "DGAE_BACKEND",
                                                          "DGAE_DEVICE", "DGAE_PRECISION")
ENV_CACHE, ENV_FALLBACK, ENV_KERNELS = "DGAE_ENGINE_CACHE", "DGAE_ENGINE_FALLBACK", "DGAE_KERNELS"
ENV_ONNX_ARGS, ENV_TRT_ARGS = "DGAE_ONNX_EXPORT_ARGS", "DGAE_TRT_BUILD_ARGS"
ENV_ONNX_DIR, ENV_ENGINE_DIR = "DGAE_ONNX_DIR", "DGAE_ENGINE_DIR"

Runner = Callable[[Sequence[str]], int]  # runs a command, returns its exit code


@dataclasses.dataclass(frozen=True)
class Machine:
    """What the entrypoint found: the GPU (None without a usable one) and the runtimes installed."""

    gpu: str | None = None
    gpu_capability: str = ""
    tensorrt: str | None = None
    torch: str = ""
    c_compiler: bool = False


@dataclasses.dataclass(frozen=True)
class Plan:
    backend: str
    device: str
    precision: str
    checkpoint: str
    checkpoint_sha256: str
    build_onnx: bool
    build_engine: bool
    reason: str
    kernels: str | None = None  # DGAE_KERNELS to set for the service (None: leave as is)


def probe_machine(device: str = "auto") -> Machine:
    """Look at CUDA (through torch), TensorRT and a C compiler (Triton needs one at run time)."""
    import torch  # noqa: PLC0415 - only the entrypoint process needs it, and only here

    cc = bool(os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc"))
    if device == "cpu" or not torch.cuda.is_available():
        return Machine(torch=torch.__version__, c_compiler=cc)
    index = torch.device(device if device.startswith("cuda") else "cuda").index or 0
    major, minor = torch.cuda.get_device_capability(index)
    try:
        import tensorrt  # noqa: PLC0415

        trt = str(tensorrt.__version__)
    except ImportError:
        trt = None
    return Machine(gpu=torch.cuda.get_device_name(index), gpu_capability=f"{major}.{minor}", tensorrt=trt,
                   torch=torch.__version__, c_compiler=cc)


def decide(env: Mapping[str, str], machine: Machine, checkpoint: str, sha256: str) -> Plan:
    """Pure decision: which backend, device and precision, and what has to be built first."""
    requested = env.get(ENV_BACKEND, "auto").strip().lower() or "auto"
    if requested not in BACKENDS:
        raise ConfigError(f"{ENV_BACKEND}={requested!r}: expected one of {', '.join(BACKENDS)}")
    device = env.get(ENV_DEVICE, "auto").strip().lower() or "auto"
    if device == "auto":
        device = "cuda" if machine.gpu else "cpu"
    if device.startswith("cuda") and not machine.gpu:
        raise ConfigError(f"{ENV_DEVICE}={device!r} but no CUDA GPU is visible (is the container started with "
                          f"the GPU reservation / --gpus?)")
    if device != "cpu" and not device.startswith("cuda"):
        raise ConfigError(f"{ENV_DEVICE}={device!r}: expected auto, cpu or cuda[:N]")
    on_gpu = device.startswith("cuda")
    if requested == "auto":
        if on_gpu and machine.tensorrt:
            backend, reason = "tensorrt", f"GPU {machine.gpu} with TensorRT {machine.tensorrt}"
        elif on_gpu:
            backend, reason = "torch", f"GPU {machine.gpu} but TensorRT is not installed"
        else:
            backend, reason = "auto", "no GPU: the service picks the fastest verified CPU runtime"
    else:
        backend, reason = requested, f"{ENV_BACKEND}={requested}"
    if backend == "tensorrt" and not (on_gpu and machine.tensorrt):
        raise ConfigError(f"backend tensorrt needs a CUDA GPU and the tensorrt package "
                          f"(GPU: {machine.gpu or 'none'}, TensorRT: {machine.tensorrt or 'not installed'})")
    precision = env.get(ENV_PRECISION) or (GPU_PRECISION if on_gpu else CPU_PRECISION)
    kernels = None
    if backend == "torch" and on_gpu and not machine.c_compiler and not env.get(ENV_KERNELS):
        kernels, reason = "reference", reason + "; no C compiler for Triton, so DGAE_KERNELS=reference"
    return Plan(backend=backend, device=device, precision=precision, checkpoint=checkpoint,
                checkpoint_sha256=sha256, build_onnx=backend in ("onnxruntime", "tensorrt"),
                build_engine=backend == "tensorrt", reason=reason, kernels=kernels)


def run_command(cmd: Sequence[str]) -> int:
    log.info("running: %s", shlex.join(cmd))
    return subprocess.run(list(cmd), check=False).returncode


def _builder(cmd_for: Callable[[Path], list[str]], what: str, run: Runner) -> engine_cache.Builder:
    def build(out: Path) -> None:
        code = run(cmd_for(out))
        if code != 0:
            raise BackendError(f"{what} failed with exit code {code} (see the log above)")
    return build


def prepare(plan: Plan, machine: Machine, env: Mapping[str, str], run: Runner = run_command) -> dict[str, str]:
    """Build what ``plan`` needs into the cache; return the environment for ``dgae serve``."""
    cache = Path(env.get(ENV_CACHE) or DEFAULT_CACHE)
    out = {ENV_CHECKPOINT: plan.checkpoint, ENV_BACKEND: plan.backend, ENV_DEVICE: plan.device,
           ENV_PRECISION: plan.precision,
           # the service's own export cache (backend=auto) lives on the same volume
           engine_cache.CACHE_ENV: env.get(engine_cache.CACHE_ENV) or str(cache)}
    if plan.kernels:
        out[ENV_KERNELS] = plan.kernels
    if not plan.build_onnx:
        return out
    dgae = [sys.executable, "-m", "cli", "export"]
    onnx_args = shlex.split(env.get(ENV_ONNX_ARGS, ""))
    if plan.backend == "onnxruntime" and plan.precision == "fp16":
        onnx_args = ["--fp16", *onnx_args]  # ONNX Runtime runs the export's own precision
    onnx_parts = {"checkpoint_sha256": plan.checkpoint_sha256, "torch": machine.torch,
                  "exporter": engine_cache.exporter_digest(), "args": shlex.join(onnx_args)}
    onnx_dir = engine_cache.ensure_entry(cache, "onnx", onnx_parts, _builder(
        lambda d: [*dgae, "onnx", "--checkpoint", plan.checkpoint, "-o", str(d), *onnx_args], "ONNX export", run))
    out[ENV_ONNX_DIR] = str(onnx_dir)
    if not plan.build_engine:
        return out
    trt_args = shlex.split(env.get(ENV_TRT_ARGS, ""))
    if plan.precision != "fp32":
        trt_args = [f"--{plan.precision}", *trt_args]  # from the fp32 export; norms stay fp32 in the engine
    engine_parts = {"checkpoint_sha256": plan.checkpoint_sha256, "gpu": machine.gpu or "",
                    "capability": machine.gpu_capability, "tensorrt": machine.tensorrt or "",
                    "onnx": onnx_dir.name, "args": shlex.join(trt_args)}
    engine_dir = engine_cache.ensure_entry(cache, "trt", engine_parts, _builder(
        lambda d: [*dgae, "tensorrt", "--onnx", str(onnx_dir), "-o", str(d), *trt_args],
        "TensorRT engine build", run))
    out[ENV_ENGINE_DIR] = str(engine_dir)
    return out


def prepare_with_fallback(plan: Plan, machine: Machine, env: Mapping[str, str],
                          run: Runner = run_command) -> dict[str, str]:
    """:func:`prepare`, but a failed TensorRT build serves torch on the GPU instead of not serving."""
    fallback = env.get(ENV_FALLBACK, FALLBACKS[0])
    if fallback not in FALLBACKS:
        raise ConfigError(f"{ENV_FALLBACK}={fallback!r}: expected one of {', '.join(FALLBACKS)}")
    try:
        return prepare(plan, machine, env, run)
    except BackendError as exc:
        if plan.backend != "tensorrt" or fallback == "fail":
            raise
        log.error("%s; serving with torch on %s instead (set %s=fail to stop here)", exc, plan.device, ENV_FALLBACK)
        kernels = None if machine.c_compiler or env.get(ENV_KERNELS) else "reference"
        torch_plan = dataclasses.replace(plan, backend="torch", build_onnx=False, build_engine=False,
                                         reason=f"TensorRT build failed: {exc}", kernels=kernels)
        return prepare(torch_plan, machine, env, run)


def make_plan(env: Mapping[str, str]) -> tuple[Plan, Machine]:
    from dgae.checkpoint import read_metadata, resolve_checkpoint  # noqa: PLC0415
    from dgae.hashing import file_sha256  # noqa: PLC0415

    checkpoint = resolve_checkpoint(env.get(ENV_CHECKPOINT) or None).resolve()
    read_metadata(checkpoint)  # typed one-line error for a missing or foreign file
    machine = probe_machine(env.get(ENV_DEVICE, "auto").strip().lower() or "auto")
    plan = decide(env, machine, str(checkpoint), file_sha256(checkpoint))
    log.info("plan: backend=%s device=%s precision=%s (%s)", plan.backend, plan.device, plan.precision, plan.reason)
    return plan, machine


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="entrypoint", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", nargs="?", default="serve", choices=("serve", "prepare", "plan"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    env = dict(os.environ)
    try:
        plan, machine = make_plan(env)
        if args.action == "plan":
            print(json.dumps({"plan": dataclasses.asdict(plan), "machine": dataclasses.asdict(machine)}, indent=2))
            return 0
        serve_env = prepare_with_fallback(plan, machine, env)
    except DGAEError as exc:
        log.error("%s", exc)
        return EXIT_USER_ERROR
    if args.action == "prepare":
        print(json.dumps(serve_env, indent=2, sort_keys=True))
        return 0
    env.update(serve_env)
    cmd = [sys.executable, "-m", "cli", "serve"]
    log.info("exec: %s (%s)", shlex.join(cmd), " ".join(f"{k}={v}" for k, v in sorted(serve_env.items())))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, cmd, env)
    return 0  # pragma: no cover - execve does not return


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
