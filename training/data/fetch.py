"""Build the small offline photo training set: ``python -m training.data.fetch --out data/photos``.

Sources (no web access needed beyond the Debian archive):
  * Debian wallpaper packages, fetched with ``apt-get download`` and unpacked with ``dpkg -x``.
    Only real photographs are kept (hand-curated in ``DEBIAN_PHOTOS`` after viewing every image);
    abstract renders, vector art, digital paintings and logos are dropped. A wallpaper shipped at
    several sizes (MATE's Elephants; KDE's per-resolution symlinks) is kept once, largest variant.
  * the colour photographs bundled with scikit-image and scikit-learn.

Every photo is re-encoded as RGB JPEG (quality 95, no chroma subsampling) with its long side
capped at ``--max-side``. ``manifest.json`` lists per file: file, source package + version,
licence (from the package's DEP-5 copyright file), sha256, width, height and split. The
train/val split is by photograph and deterministic: photos are ranked by sha256 of their id and
the first ``max(min_val, ceil(val_fraction * n))`` are validation.

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
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

from dgae.errors import ConfigError, DGAEError
from dgae.hashing import file_sha256

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
SELECTION_VERSION = 1  # bump when DEBIAN_PHOTOS / PYTHON_PHOTOS change
DEFAULT_MAX_SIDE = 2048
DEFAULT_VAL_FRACTION = 0.15
DEFAULT_MIN_VAL = 5
JPEG_QUALITY = 95
JPEG_SUBSAMPLING_444 = 0
OUTPUT_SUFFIX = ".jpg"

# package -> (photo name, glob of its variants relative to the unpacked package root).
_LOMIRI_DIR = "usr/share/backgrounds"
_MATE_DIR = "usr/share/backgrounds/mate"
_PLASMA_DIR = "usr/share/wallpapers"
DEBIAN_PHOTOS: dict[str, list[tuple[str, str]]] = {
    # Dropped: umang_by_Abhishek_Mudgal (abstract colour-gradient render).
    "lomiri-wallpapers-16.04": [
        (name, f"{_LOMIRI_DIR}/{name}.jpg")
        for name in ("Bridge_by_Sander_Klootwijk", "Dragonfly_by_Bolly", "Picture_0B_by_freespace",
                     "Picture_1A_by_freespace", "Wine_by_Jakkub_Mede", "aitzgorri_by_Aitzol_Berasategi",
                     "analogpattern_by_Peter_Nerlich", "free_by_Peter_Nerlich", "friends_by_Aitzol_Berasategi",
                     "greentock_by_Peter_Nerlich", "life_by_Aitzol_Berasategi",
                     "picosdeeuropa_by_Aitzol_Berasategi", "seeding_by_Clements_Engelhardt",
                     "sunset_by_Aitzol_Berasategi")
    ],
    # Dropped: abstract/{Arc-Colors*,Flow,Gulp,Silk,Spring,Waves}.png and all of desktop/ (vector
    # art, logos, blurred renders). Elephants is a photograph of an acrylic painting (canvas
    # texture), shipped at three sizes: the glob picks the largest.
    "mate-backgrounds": [("Elephants", f"{_MATE_DIR}/abstract/Elephants*.jpg")] + [
        (name, f"{_MATE_DIR}/nature/{name}.jpg")
        for name in ("Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow", "LadyBird",
                     "RainDrops", "Storm", "TwoWings", "Wood", "YellowFlower")
    ],
    # Dropped: Altai, Autumn, Canopee, Cascade, Cluster, Elarun, Flow, FlyingKonqui, Honeywave,
    # IceCold, Kay, Kokkini, MilkyWay, Opal, PastelHills, Patak, SafeLanding, Shell, Volna
    # (renders / illustrations). Each kept one ships many sizes (mostly symlinks): largest wins.
    "plasma-workspace-wallpapers": [
        (name, f"{_PLASMA_DIR}/{name}/contents/images/*")
        for name in ("BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow",
                     "FallenLeaf", "Grey", "Kite", "OneStandsOut", "Path", "summer_1am")
    ],
}

# (python package, file relative to its data dir, licence as stated in the package's docs).
# Dropped: greyscale images, microscopy/astronomy/retina images, synthetic images, and
# motorcycle_right (stereo twin of motorcycle_left).
PYTHON_PHOTOS: list[tuple[str, str, str]] = [
    ("scikit-image", "astronaut.png", "Public domain (NASA Great Images; skimage.data.astronaut)"),
    ("scikit-image", "chelsea.png", "CC0-1.0 (Stefan van der Walt; skimage.data.chelsea)"),
    ("scikit-image", "coffee.png", "CC0-1.0 (Rachel Michetti; skimage.data.coffee)"),
    ("scikit-image", "rocket.jpg", "Public domain (SpaceX; skimage.data.rocket)"),
    ("scikit-image", "motorcycle_left.png",
     "Middlebury Stereo 2014 (Scharstein et al., GCPR 2014); see skimage.data.stereo_motorcycle"),
    ("scikit-learn", "china.jpg", "CC-BY-2.0 (danielbuechele, Flickr; sklearn/datasets/images/README.txt)"),
    ("scikit-learn", "flower.jpg", "CC-BY-2.0 (vultilion, Flickr; sklearn/datasets/images/README.txt)"),
]


@dataclass(frozen=True)
class PhotoSource:
    """One photograph to include: a stable id, where to read it, and its provenance."""

    photo_id: str
    path: Path
    source: str
    source_version: str
    licence: str


# ----------------------------------------------------------------------------- provenance


def parse_dep5_licences(text: str) -> list[tuple[list[str], str]]:
    """(file patterns, licence) per ``Files:`` stanza of a machine-readable Debian copyright file."""
    stanzas = []
    for block in re.split(r"\n\s*\n", text):
        files = re.search(r"^Files:(.*(?:\n[ \t]+.*)*)", block, flags=re.MULTILINE)
        licence = re.search(r"^License:[ \t]*(\S.*)$", block, flags=re.MULTILINE)
        if files and licence:
            stanzas.append((files.group(1).split(), licence.group(1).strip()))
    return stanzas


def licence_for(installed_path: str, stanzas: list[tuple[list[str], str]]) -> str:
    """Licence of an installed file: last matching stanza wins (DEP-5), matched on the file name
    because stanza paths are relative to the upstream tree, not the install location."""
    name = Path(installed_path).name
    found = "unknown"
    for patterns, licence in stanzas:
        if any(not p.startswith("debian/") and fnmatch(name, Path(p).name) for p in patterns):
            found = licence
    return found


def assign_splits(photo_ids: list[str], val_fraction: float, min_val: int) -> dict[str, str]:
    """Deterministic per-photo split: the lowest sha256(id) ranks are 'val', the rest 'train'."""
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n = len(photo_ids)
    n_val = min(max(min_val, math.ceil(val_fraction * n)), n - 1)  # keep at least one train photo
    ranked = sorted(photo_ids, key=lambda pid: hashlib.sha256(pid.encode()).hexdigest())
    return {pid: ("val" if rank < n_val else "train") for rank, pid in enumerate(ranked)}


# ----------------------------------------------------------------------------- sources


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    log.debug("running %s", " ".join(cmd))
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


def download_deb(package: str, deb_dir: Path) -> Path:
    """``deb_dir/<package>_*.deb``, fetched with apt-get download unless already there."""
    existing = sorted(deb_dir.glob(f"{package}_*.deb"))
    if existing:
        return existing[-1]
    result = _run(["apt-get", "download", package], deb_dir)
    if result.returncode != 0:
        log.info("apt-get download %s failed (%s); running apt-get update", package, result.stderr.strip()[-200:])
        _run(["apt-get", "update"], deb_dir)
        result = _run(["apt-get", "download", package], deb_dir)
    existing = sorted(deb_dir.glob(f"{package}_*.deb"))
    if result.returncode != 0 or not existing:
        raise DGAEError(f"cannot download Debian package {package}: {result.stderr.strip()[-500:]}")
    return existing[-1]


def _largest_variant(paths: list[Path]) -> Path:
    from PIL import Image

    def pixels(p: Path) -> int:
        with Image.open(p) as im:  # header only
            return im.width * im.height

    unique = sorted({p.resolve() for p in paths})  # KDE ships per-resolution names as symlinks
    return max(unique, key=pixels)


def debian_sources(deb_dir: Path, unpack_dir: Path) -> list[PhotoSource]:
    sources = []
    for package, photos in DEBIAN_PHOTOS.items():
        deb = download_deb(package, deb_dir)
        root = unpack_dir / package
        root.mkdir(parents=True, exist_ok=True)
        subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
        version = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], check=True, capture_output=True,
                                 text=True).stdout.strip()
        stanzas = parse_dep5_licences((root / "usr/share/doc" / package / "copyright").read_text(errors="replace"))
        for name, pattern in photos:
            variants = sorted(root.glob(pattern))
            if not variants:
                raise DGAEError(f"{package} {version} no longer ships {pattern}; update DEBIAN_PHOTOS")
            chosen = _largest_variant(variants)
            sources.append(PhotoSource(f"{package}/{name}", chosen, package, version, licence_for(str(chosen), stanzas)))
    return sources


def python_package_sources() -> list[PhotoSource]:
    """The colour photographs bundled with scikit-image and scikit-learn."""
    import sklearn
    import skimage

    roots = {"scikit-image": (Path(skimage.__file__).parent / "data", skimage.__version__),
             "scikit-learn": (Path(sklearn.__file__).parent / "datasets" / "images", sklearn.__version__)}
    sources = []
    for package, filename, licence in PYTHON_PHOTOS:
        data_dir, version = roots[package]
        sources.append(PhotoSource(f"{package}/{Path(filename).stem}", data_dir / filename, package, version, licence))
    return sources


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


def _settings(max_side: int, val_fraction: float, min_val: int, debian: bool) -> dict:
    return {"max_side": max_side, "val_fraction": val_fraction, "min_val": min_val, "jpeg_quality": JPEG_QUALITY,
            "selection_version": SELECTION_VERSION, "debian": debian}


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


def build_photo_set(out: Path, sources: list[PhotoSource], max_side: int = DEFAULT_MAX_SIDE,
                    val_fraction: float = DEFAULT_VAL_FRACTION, min_val: int = DEFAULT_MIN_VAL,
                    debian: bool = True) -> dict:
    """Convert ``sources`` into ``out`` and write the manifest; returns the manifest dict."""
    if max_side <= 0:
        raise ConfigError(f"max_side must be positive, got {max_side}")
    ids = [s.photo_id for s in sources]
    if len(set(ids)) != len(ids):
        raise ConfigError("duplicate photo ids in sources")
    splits = assign_splits(ids, val_fraction, min_val)
    entries = []
    for src in sorted(sources, key=lambda s: s.photo_id):
        name = _output_name(src.photo_id)
        width, height = convert_photo(src.path, out / name, max_side)
        entries.append({"file": name, "id": src.photo_id, "source": src.source, "source_version": src.source_version,
                        "licence": src.licence, "sha256": file_sha256(out / name), "width": width, "height": height,
                        "split": splits[src.photo_id]})
        log.info("%-5s %4dx%-4d %s", splits[src.photo_id], width, height, name)
    manifest = {"version": MANIFEST_VERSION, "settings": _settings(max_side, val_fraction, min_val, debian),
                "counts": {split: sum(e["split"] == split for e in entries) for split in ("train", "val")},
                "files": entries}
    tmp = out / (MANIFEST_NAME + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(out / MANIFEST_NAME)  # atomic: a half-written manifest never looks valid
    return manifest


def fetch(out: Path, max_side: int = DEFAULT_MAX_SIDE, val_fraction: float = DEFAULT_VAL_FRACTION,
          min_val: int = DEFAULT_MIN_VAL, deb_cache: Path | None = None, debian: bool = True) -> dict:
    """Build (or verify) the photo set in ``out``; returns its manifest."""
    settings = _settings(max_side, val_fraction, min_val, debian)
    if is_up_to_date(out, settings):
        log.info("%s is up to date; nothing to do", out / MANIFEST_NAME)
        return json.loads((out / MANIFEST_NAME).read_text())
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dgae-fetch-") as tmp:
        deb_dir = deb_cache or Path(tmp) / "debs"
        deb_dir.mkdir(parents=True, exist_ok=True)
        sources = python_package_sources()
        if debian:
            sources += debian_sources(deb_dir, Path(tmp) / "unpacked")
        manifest = build_photo_set(out, sources, max_side, val_fraction, min_val, debian)
    log.info("wrote %d photos (%d train, %d val) to %s", len(manifest["files"]), manifest["counts"]["train"],
             manifest["counts"]["val"], out)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="output folder (e.g. data/photos)")
    parser.add_argument("--max-side", type=int, default=DEFAULT_MAX_SIDE, help="cap on the long side, px")
    parser.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION)
    parser.add_argument("--min-val", type=int, default=DEFAULT_MIN_VAL)
    parser.add_argument("--deb-cache", type=Path, default=None, help="keep/reuse downloaded .deb files here")
    parser.add_argument("--no-debian", action="store_true", help="only the scikit-image/scikit-learn photos")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    fetch(args.out, args.max_side, args.val_fraction, args.min_val, args.deb_cache, debian=not args.no_debian)
    return 0


if __name__ == "__main__":
    sys.exit(main())
