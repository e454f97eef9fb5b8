"""Where the images of a bulk encode come from, listed once and deterministically.

- a folder tree: every file with an image suffix, recursively, sorted by relative path (other
  files are ignored and counted); ``folder_labels`` labels each image with the index of its
  top-level sub-folder (ImageNet's layout), sorted by name;
- a list: ``.csv`` (columns ``path`` and optional ``label``, header optional) or any other text
  file (one path per line, optionally followed by whitespace and a label; ``#`` comments);
  relative paths are relative to the list's folder;
- WebDataset tar shards: a ``.tar`` file or a pattern (``*`` globs, ``{000..009}`` braces); a
  sample is the members sharing a key (the name up to the first dot of the basename), its image
  the first member with an image extension, its label the ``.cls`` member.

Each :class:`Item` has a stable ``key`` (from the source id, see :func:`formats.shards.sample_key`),
so keys, seeds and shards do not depend on the order the filesystem lists files in.
"""
from __future__ import annotations

import csv
import glob
import hashlib
import logging
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

from formats.images import READ_SUFFIXES
from formats.shards import sample_key
from dgae.errors import InputError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = READ_SUFFIXES
TAR_SUFFIX = ".tar"
CSV_SUFFIX = ".csv"
PATH_COLUMN, LABEL_COLUMN = "path", "label"
LABEL_MEMBER_EXTS = ("cls", "label")
COMMENT_PREFIX = "#"


@dataclass(frozen=True)
class Item:
    """One input: ``kind`` ``file`` (``path``) or ``tar`` (``path`` + member byte range; decode
    inputs: ``dataset`` / ``file`` with ``offset`` the position); an item whose source is already
    known to be unusable carries ``error``."""

    index: int
    key: str
    source: str
    label: int | str | None
    kind: str
    path: str
    offset: int = 0
    size: int = -1
    error: str | None = None

    def to_dict(self) -> dict:
        return {"index": self.index, "key": self.key, "source": self.source, "label": self.label,
                "kind": self.kind, "path": self.path, "offset": self.offset, "size": self.size, "error": self.error}


def parse_label(text: str | None) -> int | str | None:
    if text is None or not text.strip():
        return None
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        return text


def read_item_bytes(item: Item) -> bytes:
    """The encoded image bytes of an item (InputError when unreadable)."""
    try:
        with open(item.path, "rb") as fh:
            if item.kind == "tar":
                fh.seek(item.offset)
                data = fh.read(item.size)
                if len(data) != item.size:
                    raise InputError(f"{item.source}: truncated tar member ({len(data)} of {item.size} bytes)")
                return data
            return fh.read()
    except OSError as exc:
        raise InputError(f"{item.source}: cannot read ({exc.strerror})") from exc


# --- listing -------------------------------------------------------------------------------------
def _numbered(entries: list[tuple[str, str, int | str | None, dict]]) -> list[Item]:
    """(source id, display source, label, item fields) -> Items with keys; duplicate ids are an error."""
    seen: dict[str, str] = {}
    items = []
    for i, (source_id, source, label, fields) in enumerate(entries):
        key = sample_key(source_id)
        if key in seen:
            raise InputError(f"{source} is listed twice (same key as {seen[key]})")
        seen[key] = source
        items.append(Item(index=i, key=key, source=source, label=label, **fields))
    return items


def list_folder(root: Path, folder_labels: bool = False) -> list[Item]:
    files, ignored = [], 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            path = Path(dirpath) / name
            if name.startswith(".") or not path.is_file():
                continue
            if path.suffix.lower() in IMAGE_SUFFIXES:
                files.append(path.relative_to(root).as_posix())
            else:
                ignored += 1
    if ignored:
        log.info("%s: ignored %d file(s) without an image suffix (%s)", root, ignored,
                 ", ".join(sorted(IMAGE_SUFFIXES)))
    files.sort()
    classes = sorted({rel.split("/", 1)[0] for rel in files if "/" in rel}) if folder_labels else []
    class_index = {c: i for i, c in enumerate(classes)}
    entries = []
    for rel in files:
        label = class_index.get(rel.split("/", 1)[0]) if folder_labels and "/" in rel else None
        entries.append((rel, rel, label, {"kind": "file", "path": str(root / rel)}))
    return _numbered(entries)


def _list_rows(path: Path) -> list[tuple[str, str | None]]:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the list ({exc})") from exc
    rows: list[tuple[str, str | None]] = []
    if path.suffix.lower() == CSV_SUFFIX:
        table = [r for r in csv.reader(text.splitlines()) if r and any(c.strip() for c in r)]
        if table and table[0][0].strip().lower() == PATH_COLUMN:
            header = [c.strip().lower() for c in table[0]]
            col = header.index(LABEL_COLUMN) if LABEL_COLUMN in header else None
            rows = [(r[0].strip(), r[col] if col is not None and col < len(r) else None) for r in table[1:]]
        else:
            rows = [(r[0].strip(), r[1] if len(r) > 1 else None) for r in table]
        return rows
    base = path.parent
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(COMMENT_PREFIX):
            continue
        parts = line.rsplit(maxsplit=1)
        whole_is_file = (base / line).exists() or Path(line).exists()
        rows.append((line, None) if len(parts) == 1 or whole_is_file else (parts[0], parts[1]))
    return rows


def list_file_list(path: Path) -> list[Item]:
    entries = []
    for p, label in _list_rows(path):
        full = Path(p) if os.path.isabs(p) else path.parent / p
        entries.append((p, p, parse_label(label), {"kind": "file", "path": str(full)}))
    return _numbered(entries)


def expand_tar_pattern(pattern: str) -> list[Path]:
    patterns = [pattern]
    if "{" in pattern:
        try:
            from braceexpand import braceexpand  # noqa: PLC0415 - installed with webdataset
        except ModuleNotFoundError:
            raise InputError("brace patterns need the 'braceexpand' package (pip install 'dgae-serve[bulk]')") from None
        patterns = list(braceexpand(pattern))
    paths = sorted({Path(p) for pat in patterns for p in (glob.glob(pat) if any(ch in pat for ch in "*?[") else [pat])})
    missing = [str(p) for p in paths if not p.is_file()]
    if missing or not paths:
        raise InputError(f"no tar shard at {', '.join(missing) or pattern}")
    return paths


def _tar_members(path: Path) -> tuple[dict[str, dict[str, tarfile.TarInfo]], str | None]:
    """Members grouped by WebDataset key, and the read error that stopped the listing early."""
    groups: dict[str, dict[str, tarfile.TarInfo]] = {}
    error = None
    try:
        with tarfile.open(path, mode="r:") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                folder, _, base = m.name.rpartition("/")
                stem, _, ext = base.partition(".")
                groups.setdefault(f"{folder}/{stem}" if folder else stem, {})[ext.lower()] = m
    except (tarfile.TarError, OSError, EOFError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    return groups, error


def _read_range(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read(size)


def list_tars(pattern: str) -> list[Item]:
    entries = []
    for path in expand_tar_pattern(pattern):
        groups, error = _tar_members(path)
        if error and not groups:
            raise InputError(f"{path}: not a readable tar file ({error})")
        if error:
            log.warning("%s: tar is truncated or corrupt after %d samples (%s)", path, len(groups), error)
        for key in sorted(groups):
            members = groups[key]
            source_id = f"{path.name}:{key}"
            img = next((members[e] for e in sorted(members) if f".{e.rsplit('.', 1)[-1]}" in IMAGE_SUFFIXES), None)
            lab = next((members[e] for e in LABEL_MEMBER_EXTS if e in members), None)
            label = parse_label(_read_range(path, lab.offset_data, lab.size).decode(errors="replace")) \
                if lab is not None else None
            fields = {"kind": "tar", "path": str(path)}
            if img is None:
                fields["error"] = f"{source_id}: tar sample has no image member (members: {', '.join(sorted(members))})"
            else:
                fields.update(offset=img.offset_data, size=img.size)
            entries.append((source_id, source_id, label, fields))
    return _numbered(entries)


def list_source(src: str, folder_labels: bool = False) -> list[Item]:
    """Every input item of SRC (a folder, a list file, or tar shards) in a deterministic order."""
    path = Path(src)
    if path.is_dir():
        items = list_folder(path, folder_labels)
    elif path.suffix.lower() == TAR_SUFFIX or any(ch in src for ch in "*?[{"):
        items = list_tars(src)
    elif path.is_file():
        items = list_file_list(path)
    else:
        raise InputError(f"{src}: no such folder, list file or tar shard")
    if not items:
        raise InputError(f"{src}: no images found")
    return items


def items_digest(items: list[Item]) -> str:
    """sha256 over the item list (keys, sources, labels): a resumed run must see the same inputs."""
    digest = hashlib.sha256()
    for it in items:
        digest.update(f"{it.key}\x00{it.source}\x00{it.label}\x00{it.size}\n".encode())
    return digest.hexdigest()
