"""One ONNX export of the tiny checkpoint per test session, shared by the export and backend tests
(dynamo export is the slow part, so it is done once and memoised here)."""
from __future__ import annotations

import shutil
from pathlib import Path

# Tracing takes ~1 CPU-minute; on a contended CI box the session's first export test can wait far
# longer for a core than the default per-test timeout allows.
EXPORT_TIMEOUT_S = 1800
UNROLL_STEPS = 2  # the tiny preset's default_steps, so a default decode uses the unrolled graph
_CACHE: dict[str, Path] = {}


def tiny_export(tmp_path_factory, checkpoint: Path) -> Path:
    """Directory with encoder/denoiser/decode_unrolled ONNX files and manifest (validated)."""
    if "dir" not in _CACHE:
        from export.onnx_export import export_onnx

        out = tmp_path_factory.mktemp("onnx") / "tiny"
        export_onnx(checkpoint, out, unroll_steps=UNROLL_STEPS)
        _CACHE["dir"] = out
    return _CACHE["dir"]


def copy_export(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, dirs_exist_ok=True)
    return dst
