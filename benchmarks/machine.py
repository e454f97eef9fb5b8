"""Where a benchmark ran: CPU model and cores, GPU, library versions, git commit, and the exact
checkpoint (sha256, preset, whether its weights are trained). Every results JSON embeds this."""
from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CPUINFO = Path("/proc/cpuinfo")
GIT_TIMEOUT_S = 10
# distributions whose versions change the numbers
LIBRARIES = ("torch", "triton", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt", "diffusers",
             "numpy", "fastapi", "uvicorn", "httpx")


def cpu_model() -> str:
    try:
        for line in CPUINFO.read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def gpu_info() -> dict | None:
    import torch  # noqa: PLC0415

    if not torch.cuda.is_available():
        return None
    idx = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(idx)
    return {"name": props.name, "count": torch.cuda.device_count(),
            "capability": f"{props.major}.{props.minor}", "memory_gib": round(props.total_memory / 2**30, 1),
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def git_commit() -> dict:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=GIT_TIMEOUT_S, check=True).stdout.strip()
    try:
        return {"commit": git("rev-parse", "HEAD"), "branch": git("rev-parse", "--abbrev-ref", "HEAD"),
                "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "branch": None, "dirty": None}


def checkpoint_info(path: str | os.PathLike | None) -> dict | None:
    """sha256, preset and parameter counts; ``trained`` is False for `dgae init` random weights
    (speed does not depend on weight values, but the JSON says which it was)."""
    if path is None:
        return None
    from dgae.checkpoint import describe  # noqa: PLC0415

    d = describe(path)
    meta = d.get("metadata", {})
    return {"path": str(path), "sha256": d["sha256"], "preset": d["preset"], "params": d["params"],
            "trained": meta.get("trained", "true") != "false"}


def describe_machine(checkpoint: str | os.PathLike | None = None) -> dict:
    import torch  # noqa: PLC0415

    gpu = gpu_info()
    return {
        "timestamp_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu": {"model": cpu_model(), "logical_cores": os.cpu_count(), "usable_cores": usable_cores(),
                "torch_threads": torch.get_num_threads()},
        "gpu": gpu,
        "summary": machine_summary(gpu),
        "libraries": library_versions(),
        "git": git_commit(),
        "checkpoint": checkpoint_info(checkpoint),
    }


def machine_summary(gpu: dict | None = None) -> str:
    """One line naming the machine, e.g. 'NVIDIA H100 80GB HBM3' or 'AMD EPYC, 2 cores (CPU)'."""
    if gpu:
        return f"{gpu['name']} (CUDA {gpu['cuda']}), host CPU {cpu_model()}"
    return f"{cpu_model()}, {usable_cores()} cores (CPU only)"
