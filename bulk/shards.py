"""Sharded, resumable, exactly-once output, shared by encode-dataset and decode-dataset.

The inputs are cut into shards of ``shard_size`` consecutive *input* items (an input that fails
drops out of its shard, so a shard holds shard_size samples less its failures; the boundaries
never move, which is what lets shards be computed independently, resumed and split across
ranks or Ray actors). Committing a shard writes its file(s) under a temporary name, fsyncs and
renames them, then writes ``.parts/<shard>.json`` (its records, errors and sha256) the same way:
that record is the completion mark. A rerun (after ``kill -9``, or a finished run) verifies every
recorded shard against its sha256 and redoes only the missing or damaged ones; the manifest,
errors file and ``dataset.json`` (written last) are assembled from the records, so a resumed run
ends byte-identical to an uninterrupted one. ``.parts/plan.json`` pins the inputs and options: a
rerun with different ones is refused instead of mixing two datasets.

A write that fails (disk full, the file size limit, a quota, an I/O error) deletes its temporary
file and raises :class:`OutputError` saying so: the failing shard has no record and no file under
its final name, the shards committed before it stay, and rerunning the same command once space is
free resumes from there (docs/faults.md).
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from formats.shards import (DATASET_FILE, ERRORS_FILE, MANIFEST_FORMATS, MANIFEST_STEM, SHARD_INDEX_DIGITS, SHARDS_DIR,
                           dumps, shard_name)
from dgae.errors import DGAEError, InputError, OutputError
from dgae.hashing import file_sha256

from .sources import Item

log = logging.getLogger(__name__)

PARTS_DIR = ".parts"
PLAN_FILE = "plan.json"
FILES_DIR = "images"
TMP_MARK = ".tmp-"
DEFAULT_POLL_S = 2.0
# Why a write can fail for lack of room, in words a user can act on.
NO_ROOM = {errno.ENOSPC: "the disk is full", errno.EFBIG: "the file size limit is reached (ulimit -f)",
           errno.EDQUOT: "the disk quota is exceeded"}


@dataclass(frozen=True)
class ShardTask:
    index: int
    items: tuple[Item, ...]

    @property
    def stem(self) -> str:
        return f"shard-{self.index:0{SHARD_INDEX_DIGITS}d}"


def plan_shards(items: Sequence[Item], shard_size: int) -> list[ShardTask]:
    if shard_size < 1:
        raise InputError(f"--shard-size must be >= 1, got {shard_size}")
    return [ShardTask(k, tuple(items[i:i + shard_size])) for k, i in enumerate(range(0, len(items), shard_size))]


def rank_tasks(tasks: Sequence[ShardTask], rank: int, world: int) -> list[ShardTask]:
    """The shards rank ``rank`` of ``world`` owns (round robin: balanced, fixed)."""
    return [t for t in tasks if t.index % world == rank]


@dataclass
class ShardResult:
    """A computed shard: one shard file (``data``) or loose files (``files``: name -> bytes)."""

    task: ShardTask
    records: list[dict[str, Any]]
    errors: list[dict[str, Any]]
    data: bytes | None = None
    files: dict[str, bytes] = field(default_factory=dict)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write to a temporary sibling, fsync, rename: readers see the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)  # never leave a partial file behind
        reason = NO_ROOM.get(exc.errno, exc.strerror or str(exc))
        raise OutputError(f"cannot write {path} ({len(data)} bytes): {reason} [{exc.strerror}]; the partial file "
                          f"was removed and completed shards are kept: make room and rerun the same command "
                          f"to resume") from exc


def _remove_temps(folder: Path, prefix: str = "") -> None:
    if folder.is_dir():
        for p in folder.glob(f".{prefix}*{TMP_MARK}*"):
            p.unlink(missing_ok=True)


class ShardedOutput:
    """An output folder: ``shards/`` (or ``images/``), ``.parts/``, manifest, errors, dataset.json."""

    def __init__(self, root: str | os.PathLike, plan: dict[str, Any], shard_format: str | None):
        self.root = Path(root)
        self.plan = plan
        self.shard_format = shard_format  # None: loose files in images/
        self.parts = self.root / PARTS_DIR
        self.data_dir = self.root / (SHARDS_DIR if shard_format else FILES_DIR)

    # --- setup ---------------------------------------------------------------------------------
    def open(self, overwrite: bool = False, create: bool = True) -> None:
        plan_path = self.parts / PLAN_FILE
        if overwrite:
            self.remove_outputs()
        if plan_path.exists():
            try:
                old = json.loads(plan_path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise InputError(f"{plan_path}: unreadable ({exc}); use --overwrite") from exc
            if old != json.loads(dumps(self.plan)):
                changed = sorted(
                    k for k in set(old) | set(self.plan) if old.get(k) != json.loads(dumps(self.plan)).get(k)
                )
                raise InputError(f"{self.root} holds a run with other inputs or options (differs in: "
                                 f"{', '.join(changed)}); use another output folder or --overwrite")
            return
        if not create:
            return
        if self.root.exists() and any(p.name != PARTS_DIR for p in self.root.iterdir()):
            raise InputError(f"{self.root} exists and is not a dgae dataset output; give a new or empty folder")
        self.parts.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(plan_path, dumps(self.plan).encode())

    def remove_outputs(self) -> None:
        for name in (PARTS_DIR, SHARDS_DIR, FILES_DIR):
            shutil.rmtree(self.root / name, ignore_errors=True)
        for fmt in MANIFEST_FORMATS:
            (self.root / f"{MANIFEST_STEM}.{fmt}").unlink(missing_ok=True)
        for name in (ERRORS_FILE, DATASET_FILE):
            (self.root / name).unlink(missing_ok=True)

    # --- shards --------------------------------------------------------------------------------
    def shard_file(self, task: ShardTask) -> Path | None:
        return self.data_dir / shard_name(task.index, self.shard_format) if self.shard_format else None

    def part_path(self, task: ShardTask) -> Path:
        return self.parts / f"{task.stem}.json"

    def load_part(self, task: ShardTask, verify: bool = True) -> dict[str, Any] | None:
        """The shard's completion record when the shard is whole: its files present with the
        recorded sizes and (``verify``) sha256s; None means the shard must be (re)computed."""
        try:
            part = json.loads(self.part_path(task).read_text())
        except (OSError, json.JSONDecodeError):
            return None
        try:
            for name, sha in part["files"].items():
                path = self.data_dir / name
                if path.stat().st_size != part["sizes"][name] or (verify and file_sha256(path) != sha):
                    log.warning("%s differs from its record: recomputing shard %d", path, task.index)
                    return None
        except (OSError, KeyError, AttributeError, TypeError):
            return None
        return part

    def pending(self, tasks: Sequence[ShardTask], verify: bool = True) -> list[ShardTask]:
        """The shards still to compute. ``verify`` re-hashes the complete ones (a rerun's check,
        once per run); without it only sizes are compared (polling, the final assembly)."""
        return [t for t in tasks if self.load_part(t, verify) is None]

    def commit(self, result: ShardResult) -> dict[str, Any]:
        task = result.task
        _remove_temps(self.data_dir, task.stem if self.shard_format else "")
        files = dict(result.files)
        if self.shard_format:
            files = {self.shard_file(task).name: result.data}
        hashes = {}
        for name, data in files.items():
            atomic_write(self.data_dir / name, data)
            hashes[name] = _sha256_bytes(data)
        part = {"index": task.index, "inputs": len(task.items), "files": hashes,
                "sizes": {name: len(data) for name, data in files.items()},
                "bytes": sum(len(d) for d in files.values()), "records": result.records, "errors": result.errors}
        atomic_write(self.part_path(task), dumps(part).encode())
        return part

    def wait_for(self, tasks: Sequence[ShardTask], timeout_s: float, poll_s: float = DEFAULT_POLL_S) -> None:
        """Rank 0 under torchrun: wait until every shard has been committed by its rank."""
        deadline = time.monotonic() + timeout_s
        while True:
            missing = self.pending(tasks, verify=False)
            if not missing:
                return
            if time.monotonic() > deadline:
                raise DGAEError(f"{len(missing)} shard(s) still missing after {timeout_s:.0f} s "
                                f"(first: {missing[0].stem}); rerun to resume")
            time.sleep(poll_s)

    # --- the final files -----------------------------------------------------------------------
    def finalize(self, tasks: Sequence[ShardTask], header: dict[str, Any], manifest_format: str,
                 row_common: dict[str, Any]) -> dict:
        if manifest_format not in MANIFEST_FORMATS:
            raise InputError(f"manifest format must be one of {', '.join(MANIFEST_FORMATS)}, got {manifest_format!r}")
        parts = []
        for t in tasks:
            part = self.load_part(t, verify=False)  # hashed when committed or when this run began
            if part is None:
                raise DGAEError(f"shard {t.index} is not complete; rerun to resume")
            parts.append(part)
        rows, errors, shards = [], [], []
        for part in parts:
            errors += part["errors"]
            if not self.shard_format:  # loose files: each row names its file and that file's sha256
                rows += [{**rec, **row_common, "file_sha256": part["files"].get(rec.get("file"))}
                         for rec in part["records"]]
                continue
            (name, sha), = part["files"].items()
            rows += [{**rec, **row_common, "shard": name, "shard_sha256": sha} for rec in part["records"]]
            shards.append({"name": name, "count": len(part["records"]), "inputs": part["inputs"],
                           "bytes": part["bytes"], "sha256": sha})
        manifest_name = f"{MANIFEST_STEM}.{manifest_format}"
        atomic_write(self.root / manifest_name, manifest_bytes(rows, manifest_format))
        atomic_write(self.root / ERRORS_FILE, b"".join(dumps(e).encode() + b"\n" for e in errors))
        summary = {**header, "manifest": manifest_name, "errors_file": ERRORS_FILE,
                   "counts": {"inputs": sum(p["inputs"] for p in parts), "samples": len(rows), "errors": len(errors)}}
        if self.shard_format:
            summary["shards"] = shards
        atomic_write(self.root / DATASET_FILE, (json.dumps(summary, sort_keys=True, indent=1) + "\n").encode())
        _remove_temps(self.data_dir)
        _remove_temps(self.parts)
        _remove_temps(self.root)
        return summary


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest_bytes(rows: list[dict[str, Any]], manifest_format: str) -> bytes:
    if manifest_format == "jsonl":
        return b"".join(dumps(r).encode() + b"\n" for r in rows)
    try:
        import pyarrow as pa  # noqa: PLC0415
        import pyarrow.parquet as pq  # noqa: PLC0415
    except ModuleNotFoundError:
        raise InputError("--manifest parquet needs pyarrow (pip install 'dgae-serve[bulk]')") from None
    columns = sorted({k for r in rows for k in r})
    table = {}
    for col in columns:
        values = [r.get(col) for r in rows]
        if any(isinstance(v, (dict, list)) for v in values):  # nested records as JSON text: one schema always
            values = [None if v is None else dumps(v) for v in values]
        elif len({type(v) for v in values if v is not None}) > 1:
            values = [None if v is None else str(v) for v in values]
        table[col] = values
    buf = io.BytesIO()
    pq.write_table(pa.table(table), buf)
    return buf.getvalue()
