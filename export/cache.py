"""The one build-once cache for exports: ONNX graphs exported on demand and TensorRT engines, on
a local disk or a volume shared by replicas.

An entry is named by a hash of everything that changes its contents (checkpoint sha256,
precision, exporter and runtime versions, GPU, build options), so a changed input builds a new
entry and an unchanged one is reused. Processes that share the root coordinate with a file lock:
the first one builds, the others wait and then reuse. Layout under a root::

    <kind>-<key>/                 finished entry; cache-entry.json inside records the key's parts
                                  and the sha256 of every file the build wrote
    .<kind>-<key>.lock            flock held while one process checks or builds the entry
    .<kind>-<key>.tmp-<pid>/      build in progress; renamed to <kind>-<key> only when complete

Faults survived (docs/faults.md): a finished entry is verified against its recorded digests every
time it is handed out; a truncated, edited or missing file (or an entry from before digests were
recorded) is logged as a warning and rebuilt. A build killed part-way (SIGKILL, power loss) leaves
only its ``.tmp-<pid>`` folder, never a finished-looking entry; the next process to take the lock
deletes such leftovers and builds again.

:func:`cached_onnx_dir` is what a runtime given only a checkpoint uses: an entry under
``$DGAE_CACHE_DIR/onnx/`` (default root ``$XDG_CACHE_HOME/dgae`` or ``~/.cache/dgae``) holding a
validated export of that exact checkpoint file, including the decode unrolled for its default
step count; one whose files no longer verify is rebuilt. Every use touches the entry; after a new
export, the least recently used exports beyond the newest ``$DGAE_CACHE_KEEP`` (default 4) are
deleted, so a server that sees many checkpoints does not fill its disk.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Iterator, Mapping

from dgae.errors import BackendError, ConfigError
from dgae.hashing import file_sha256

log = logging.getLogger(__name__)

CACHE_ENV = "DGAE_CACHE_DIR"
KEEP_ENV = "DGAE_CACHE_KEEP"
DEFAULT_KEEP = 4
ONNX_SUBDIR = "onnx"
ONNX_KIND = "onnx"
REPO_ROOT = Path(__file__).resolve().parent.parent
EXPORT_SOURCE_PACKAGES = ("export", "dgae", "kernels")

MANIFEST = "cache-entry.json"  # not manifest.json: that is the exporter's own file in the same folder
KEY_HEX_CHARS = 16
KIND_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")

Builder = Callable[[Path], None]  # fills the given (empty) directory; raises on failure


def cache_key(parts: Mapping[str, str]) -> str:
    """Stable short hash of the key parts (order-independent)."""
    canonical = json.dumps(dict(parts), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:KEY_HEX_CHARS]


def entry_name(kind: str, parts: Mapping[str, str]) -> str:
    if not kind or not set(kind) <= KIND_CHARS:
        raise ConfigError(f"cache entry kind {kind!r} must be lowercase letters, digits and '-'")
    return f"{kind}-{cache_key(parts)}"


def file_digests(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (relative POSIX paths), the manifest itself excluded."""
    return {path.relative_to(folder).as_posix(): file_sha256(path) for path in sorted(folder.rglob("*"))
            if path.is_file() and path.relative_to(folder).as_posix() != MANIFEST}


def entry_problem(entry: Path, manifest: dict) -> str | None:
    """Why a finished entry's files cannot be trusted (None when every recorded digest matches)."""
    recorded = manifest.get("files")
    if not isinstance(recorded, dict):
        return "it records no file digests (built by an older version)"
    for name, digest in sorted(recorded.items()):
        path = entry / name
        if not path.is_file():
            return f"{name} is missing"
        actual = file_sha256(path)
        if actual != digest:
            return f"{name} has sha256 {actual[:12]}..., not the {str(digest)[:12]}... recorded at build time " \
                   f"({path.stat().st_size} bytes: truncated or corrupted)"
    return None


def remove_unfinished_builds(root: Path, name: str) -> list[Path]:
    """Delete ``.<name>.tmp-*`` folders. Only called with the entry's lock held, so no live process
    is writing them: they are what a killed build left behind."""
    removed = []
    for leftover in sorted(root.glob(f".{name}.tmp-*")):
        log.warning("removing %s: an unfinished build left by a process that died (killed mid-build?)", leftover)
        shutil.rmtree(leftover, ignore_errors=True)
        removed.append(leftover)
    return removed


def read_entry(entry: Path) -> dict | None:
    """The manifest of a finished entry, or None when the entry is missing or incomplete."""
    try:
        return json.loads((entry / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for %s (another process is building this entry)", lock_path.name)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_entry(root: str | os.PathLike, kind: str, parts: Mapping[str, str], build: Builder) -> Path:
    """Return the finished entry for ``parts``, building it with ``build`` first if needed.

    A failed build leaves nothing behind (the next start tries again); a finished entry is never
    modified, so readers need no lock once ``ensure_entry`` has returned.
    """
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"engine cache {root} is not writable: {exc}") from exc
    name = entry_name(kind, parts)
    final = root / name
    expected = {k: str(v) for k, v in parts.items()}
    with _locked(root / f".{name}.lock"):
        manifest = read_entry(final)
        if manifest is not None and manifest.get("parts") == expected:
            problem = entry_problem(final, manifest)
            if problem is None:
                log.info("reusing cached %s %s (built %s)", kind, final, manifest.get("built_at", "?"))
                return final
            log.warning("cached %s %s does not verify: %s; rebuilding", kind, final, problem)
        elif final.exists():
            log.warning("cached %s %s is incomplete or does not match its key; rebuilding", kind, final)
        if final.exists():
            shutil.rmtree(final)
        remove_unfinished_builds(root, name)
        tmp = root / f".{name}.tmp-{os.getpid()}"
        tmp.mkdir()
        log.info("building %s into %s (%s)", kind, final, json.dumps(expected, sort_keys=True))
        started = time.monotonic()
        try:
            build(tmp)
            seconds = round(time.monotonic() - started, 1)
            manifest = {"kind": kind, "parts": expected, "build_seconds": seconds, "files": file_digests(tmp),
                        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            _fsync_tree(tmp)  # the data is on disk before the rename makes the entry look finished
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("built %s in %.1f s", kind, seconds)
    return final


def _fsync_tree(folder: Path) -> None:
    for path in [*sorted(p for p in folder.rglob("*") if p.is_file()), folder]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def source_digest(*packages: Path) -> str:
    """Hash of the Python source of ``packages``: a changed exporter or model code builds a new
    entry instead of reusing files it would no longer produce."""
    h = hashlib.sha256()
    for package in packages:
        for path in sorted(package.rglob("*.py")):
            h.update(path.relative_to(package.parent).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:KEY_HEX_CHARS]


def exporter_digest() -> str:
    """The source that determines an exported graph: the exporter, the model core and its kernels."""
    return source_digest(*(REPO_ROOT / name for name in EXPORT_SOURCE_PACKAGES))


# --- ONNX exports on demand --------------------------------------------------------------------
def cache_root() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dgae"


def cached_onnx_dir(checkpoint: str | os.PathLike | None, precision: str = "fp32",
                    root: str | os.PathLike | None = None) -> Path:
    """A verified ONNX export of ``checkpoint``, exporting it first when the cache has none."""
    # Imported here: the container entrypoint uses this module's build-once entries without torch.
    import torch  # noqa: PLC0415

    from dgae.checkpoint import read_config, resolve_checkpoint  # noqa: PLC0415

    from . import manifest as mf  # noqa: PLC0415
    from .onnx_export import export_onnx  # noqa: PLC0415

    path = resolve_checkpoint(checkpoint)
    sha = file_sha256(path)
    steps = read_config(path).sampler.default_steps
    keep = cache_keep()  # a bad setting fails before minutes of exporting, not after
    exports = (Path(root) if root else cache_root()) / ONNX_SUBDIR
    parts = {"checkpoint_sha256": sha, "precision": precision, "unroll_steps": str(steps), "torch": torch.__version__,
             "exporter": exporter_digest()}
    built: list[Path] = []

    def build(out: Path) -> None:
        log.info("exporting %s to ONNX (%s)", path, precision)
        export_onnx(path, out, precision=precision, unroll_steps=steps)
        built.append(out)

    directory = ensure_entry(exports, ONNX_KIND, parts, build)
    try:
        manifest = mf.read_manifest(directory)
        mf.check_checkpoint(manifest, sha, directory)
        mf.verify_files(directory, manifest)
    except BackendError as exc:  # a finished entry whose files were damaged since: build it again
        log.warning("cached ONNX export %s does not verify (%s); exporting again", directory, exc)
        shutil.rmtree(directory, ignore_errors=True)
        directory = ensure_entry(exports, ONNX_KIND, parts, build)
    os.utime(directory)  # most recently used: pruning keeps it
    if built:
        prune_exports(exports, keep=keep, protect=directory)
    else:
        log.info("using cached ONNX export %s", directory)
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
    """Delete all but the ``keep`` most recently used finished entries (never ``protect``, never a
    build in progress)."""
    folders = sorted((d for d in exports.iterdir() if d.is_dir() and not d.name.startswith(".")),
                     key=lambda d: d.stat().st_mtime, reverse=True)
    removed = []
    for stale in folders[keep:]:
        if protect is not None and stale.resolve() == protect.resolve():
            continue
        shutil.rmtree(stale, ignore_errors=True)
        log.info("removed stale ONNX export %s (keeping the %d most recently used)", stale, keep)
        removed.append(stale)
    return removed
