"""Export-on-demand cache for runtimes that need ONNX files but were given only a checkpoint.

``$DGAE_CACHE_DIR/onnx/<sha256[:16]>-<precision>/`` (default root ``$XDG_CACHE_HOME/dgae`` or
``~/.cache/dgae``) holds a validated export of that exact checkpoint file, including the decode
unrolled for the checkpoint's default step count. A directory whose manifest or files do not verify
is re-exported (the export itself never overwrites anything before validation passes).

Every use touches the directory; after a new export, the least recently used exports beyond the
newest ``$DGAE_CACHE_KEEP`` (default 4) are deleted, so a server that sees many checkpoints over
its life does not fill its disk with stale exports (with their TensorRT engine caches inside).
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from dgae.checkpoint import file_sha256, read_config, resolve_checkpoint
from dgae.errors import BackendError

from . import manifest as mf

log = logging.getLogger(__name__)

CACHE_ENV = "DGAE_CACHE_DIR"
SHA_PREFIX_CHARS = 16
KEEP_ENV = "DGAE_CACHE_KEEP"
DEFAULT_KEEP = 4
ONNX_SUBDIR = "onnx"


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
    exports = (Path(root) if root else cache_root()) / ONNX_SUBDIR
    directory = exports / f"{sha[:SHA_PREFIX_CHARS]}-{precision}"
    try:
        manifest = mf.read_manifest(directory)
        mf.check_checkpoint(manifest, sha, directory)
        mf.verify_files(directory, manifest)
        if manifest.precision != precision:
            raise BackendError(f"cached export is {manifest.precision}, not {precision}")
        log.info("using cached ONNX export %s", directory)
        os.utime(directory)  # most recently used: pruning keeps it
        return directory
    except BackendError as exc:
        log.info("no usable ONNX export in %s (%s); exporting %s", directory, exc, path)
    keep = cache_keep()  # a bad setting fails before minutes of exporting, not after
    steps = read_config(path).sampler.default_steps
    export_onnx(path, directory, precision=precision, unroll_steps=steps)
    prune_exports(exports, keep=keep, protect=directory)
    return directory


def cache_keep() -> int:
    raw = os.environ.get(KEEP_ENV, str(DEFAULT_KEEP))
    try:
        keep = int(raw)
    except ValueError:
        raise BackendError(f"{KEEP_ENV}={raw!r}: expected a whole number >= 1") from None
    if keep < 1:
        raise BackendError(f"{KEEP_ENV}={raw!r}: expected a whole number >= 1")
    return keep


def prune_exports(exports: Path, keep: int, protect: Path | None = None) -> list[Path]:
    """Delete all but the ``keep`` most recently used export folders (never ``protect``)."""
    folders = sorted((d for d in exports.iterdir() if d.is_dir()), key=lambda d: d.stat().st_mtime, reverse=True)
    removed = []
    for stale in folders[keep:]:
        if protect is not None and stale.resolve() == protect.resolve():
            continue
        shutil.rmtree(stale, ignore_errors=True)
        log.info("removed stale ONNX export %s (keeping the %d most recently used)", stale, keep)
        removed.append(stale)
    return removed
