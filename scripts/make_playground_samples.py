"""Write the playground's bundled sample photos (service/static/samples/*.jpg) from scikit-image's
public-domain / CC0 data images. Run once by hand; the JPEGs are committed (< 200 KB together).

    python scripts/make_playground_samples.py
"""
from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

OUT = Path(__file__).resolve().parent.parent / "service" / "static" / "samples"
JPEG_QUALITY = 85
TOTAL_BUDGET_BYTES = 200 * 1024
# name -> (scikit-image loader, output width, output height, licence line from its docstring)
SAMPLES = {
    "astronaut": ("astronaut", 256, 256, "Eileen Collins, NASA; public domain"),
    "coffee": ("coffee", 384, 256, "Rachel Michetti (Pikolo Espresso Bar); CC0"),
    "chelsea": ("chelsea", 300, 200, "Stefan van der Walt; CC0"),
}


def main() -> int:
    import skimage.data  # noqa: PLC0415 - train extra, needed only here

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    total, lines = 0, []
    for name, (loader, width, height, licence) in SAMPLES.items():
        img = Image.fromarray(getattr(skimage.data, loader)()).convert("RGB")
        img = img.resize((width, height), Image.LANCZOS)
        path = args.out / f"{name}.jpg"
        img.save(path, "JPEG", quality=JPEG_QUALITY, optimize=True)
        total += path.stat().st_size
        lines.append(f"{path.name}: skimage.data.{loader}() resized to {width}x{height}, {licence}")
        print(f"{path}: {path.stat().st_size} bytes")
    (args.out / "SOURCES.txt").write_text("\n".join(lines) + "\n")
    if total > TOTAL_BUDGET_BYTES:
        raise SystemExit(f"samples take {total} bytes, over the {TOTAL_BUDGET_BYTES}-byte budget")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
