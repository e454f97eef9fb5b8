"""Build the bulk-encode demo input from the `make data` photos: ``make bulk-input``.

Every photo is resized (short side ``--context`` px, bicubic) and cut into ``--crops`` crops of
``--size`` px on a grid (``training.data.dataset.grid_offsets``), saved as JPEG under
``OUT/<photo>/crop_NN.jpg``; then a few unusable files are mixed in: a zero-byte file, a truncated
JPEG, a text file and random bytes named as images, and a PNG with a damaged header. The result is
deterministic (same photos -> same bytes); it is built, never committed (data/ is git-ignored).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training.data.dataset import IMAGE_SUFFIXES, grid_offsets  # noqa: E402

DEFAULT_SIZE = 128
DEFAULT_CROPS = 8
DEFAULT_CONTEXT = 384
JPEG_QUALITY = 95
RANDOM_BYTES = 4096
PNG_HEADER_BYTES = 16
BAD_DIR = "zz_bad"


def bad_files(out: Path, sample_jpeg: bytes, sample_png: bytes) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "zero_byte.jpg": b"",
        "truncated.jpg": sample_jpeg[: len(sample_jpeg) // 3],
        "text_named_as_image.png": b"this is a text file, not an image\n",
        "random_bytes.jpg": np.random.default_rng(0).integers(0, 256, RANDOM_BYTES, dtype=np.uint8).tobytes(),
        "damaged_header.png": sample_png[:PNG_HEADER_BYTES]
        + b"\x00" * PNG_HEADER_BYTES
        + sample_png[2 * PNG_HEADER_BYTES :],
    }
    for name, data in files.items():
        (out / name).write_bytes(data)
    return [out / n for n in files]


def build(photos: Path, out: Path, size: int, crops: int, context: int) -> tuple[int, int]:
    sources = sorted(p for p in photos.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not sources:
        raise SystemExit(f"error: no photos in {photos}; run `make data` first")
    written = 0
    for src in sources:
        with Image.open(src) as im:
            rgb = im.convert("RGB")
        scale = context / min(rgb.size)
        rgb = rgb.resize((max(size, round(rgb.width * scale)), max(size, round(rgb.height * scale))), Image.BICUBIC)
        folder = out / src.stem
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(crops):
            top, left = grid_offsets(k, crops, rgb.height, rgb.width, size)
            rgb.crop((left, top, left + size, top + size)).save(folder / f"crop_{k:02d}.jpg", quality=JPEG_QUALITY)
            written += 1
    first = sorted(out.rglob("crop_00.jpg"))[0]
    png = out / "first.png.tmp"
    Image.open(first).save(png, format="PNG")
    bad = bad_files(out / BAD_DIR, first.read_bytes(), png.read_bytes())
    png.unlink()
    return written, len(bad)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--photos", type=Path, default=Path("data/photos"))
    p.add_argument("--out", type=Path, default=Path("data/bulk-input"))
    p.add_argument("--size", type=int, default=DEFAULT_SIZE, help="crop side (px)")
    p.add_argument("--crops", type=int, default=DEFAULT_CROPS, help="crops per photo")
    p.add_argument("--context", type=int, default=DEFAULT_CONTEXT, help="photo short side before cropping (px)")
    args = p.parse_args(argv)
    good, bad = build(args.photos, args.out, args.size, args.crops, args.context)
    print(f"wrote {good} crops of {args.size} px and {bad} unusable files to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
