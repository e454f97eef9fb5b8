"""Build-once cache for runtime files (ONNX exports, TensorRT engines) on a shared volume.

An entry is named by a hash of everything that changes its contents (checkpoint sha256, GPU,
TensorRT version, build options), so a changed GPU or checkpoint builds a new entry and an
unchanged one is reused. Replicas that share the volume coordinate with a file lock: the first
one builds, the others wait and then reuse. Layout under the cache root::

    <kind>-<key>/                 finished entry; cache-entry.json inside records the key's parts
    .<kind>-<key>.lock            flock held while one process checks or builds the entry
    .<kind>-<key>.tmp-<pid>/      build in progress; renamed to <kind>-<key> only when complete
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

from dgae.errors import ConfigError

log = logging.getLogger(__name__)

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


def read_manifest(entry: Path) -> dict | None:
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
        manifest = read_manifest(final)
        if manifest is not None and manifest.get("parts") == expected:
            log.info("reusing cached %s %s (built %s)", kind, final, manifest.get("built_at", "?"))
            return final
        if final.exists():
            log.warning("cached %s %s is incomplete or does not match its key; rebuilding", kind, final)
            shutil.rmtree(final)
        tmp = root / f".{name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        log.info("building %s into %s (%s)", kind, final, json.dumps(expected, sort_keys=True))
        started = time.monotonic()
        try:
            build(tmp)
            seconds = round(time.monotonic() - started, 1)
            manifest = {"kind": kind, "parts": expected, "build_seconds": seconds,
                        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("built %s in %.1f s", kind, seconds)
    return final
