"""Export-on-demand cache for runtimes that need ONNX files but were given only a checkpoint.

``$DGAE_CACHE_DIR/onnx/<sha256[:16]>-<precision>/`` (default root ``$XDG_CACHE_HOME/dgae`` or
``~/.cache/dgae``) holds a validated export of that exact checkpoint file, including the decode
unrolled for the checkpoint's default step count. A directory whose manifest or files do not verify
is re-exported (the export itself never overwrites anything before validation passes).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from dgae.checkpoint import file_sha256, read_config, resolve_checkpoint
from dgae.errors import BackendError

from . import manifest as mf

log = logging.getLogger(__name__)

CACHE_ENV = "DGAE_CACHE_DIR"
SHA_PREFIX_CHARS = 16


def cache_root() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dgae"


def cached_onnx_dir(checkpoint: str | os.PathLike | None, precision: str = "fp32",
                    root: str | os.PathLike | None = None) -> Path:
    """A verified ONNX export of ``checkpoint``, exporting it first when the cache has none."""
    from .onnx_export import export_onnx  # noqa: PLC0415 - torch.onnx is heavy; only when exporting

    path = resolve_checkpoint(checkpoint)
    sha = file_sha256(path)
    directory = Path(root) if root else cache_root()
    directory = directory / "onnx" / f"{sha[:SHA_PREFIX_CHARS]}-{precision}"
    try:
        manifest = mf.read_manifest(directory)
        mf.check_checkpoint(manifest, sha, directory)
        mf.verify_files(directory, manifest)
        if manifest.precision != precision:
            raise BackendError(f"cached export is {manifest.precision}, not {precision}")
        log.info("using cached ONNX export %s", directory)
        return directory
    except BackendError as exc:
        log.info("no usable ONNX export in %s (%s); exporting %s", directory, exc, path)
    steps = read_config(path).sampler.default_steps
    export_onnx(path, directory, precision=precision, unroll_steps=steps)
    return directory
