"""Find the same photograph shipped twice (identical bytes, another size, another format).

Two photos are the same when their files hash alike (sha256) or their difference hashes (dHash:
a grayscale ``DHASH_SIDE+1 x DHASH_SIDE`` thumbnail, one bit per horizontal neighbour pair
telling which is brighter) differ in at most ``max_distance`` bits. dHash survives resizing and
re-encoding but not cropping, so a cropped copy stays (it is a different framing). Of each group
the largest (most pixels) is kept.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from dgae.hashing import file_sha256

log = logging.getLogger(__name__)

DHASH_SIDE = 16  # 256-bit hash
DEFAULT_MAX_DISTANCE = 24  # bits of 256: measured gaps on the photo set, see docs/data.md


@dataclass(frozen=True)
class Fingerprint:
    sha256: str
    dhash: int
    pixels: int


def dhash(path: Path, side: int = DHASH_SIDE) -> int:
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # trusted package files
    with Image.open(path) as im:
        im.draft("L", (4 * side, 4 * side))  # JPEG: decode at a reduced scale, much faster
        small = im.convert("L").resize((side + 1, side), Image.BILINEAR)
    px = small.tobytes()  # one byte per pixel, row-major
    bits = 0
    for row in range(side):
        for col in range(side):
            left, right = px[row * (side + 1) + col], px[row * (side + 1) + col + 1]
            bits = (bits << 1) | (left > right)
    return bits


def fingerprint(path: Path) -> Fingerprint:
    from PIL import Image

    with Image.open(path) as im:
        pixels = im.width * im.height
    return Fingerprint(file_sha256(path), dhash(path), pixels)


def same_photo(a: Fingerprint, b: Fingerprint, max_distance: int = DEFAULT_MAX_DISTANCE) -> bool:
    return a.sha256 == b.sha256 or bin(a.dhash ^ b.dhash).count("1") <= max_distance


def deduplicate(prints: dict[str, Fingerprint], max_distance: int = DEFAULT_MAX_DISTANCE) -> dict[str, str]:
    """Map each dropped id to the id kept in its place. Groups are the connected components of
    ``same_photo``; the kept member has the most pixels (ties: the smallest id), so the result
    does not depend on the order of ``prints``."""
    ids = sorted(prints)
    parent = {i: i for i in ids}

    def root(i: str) -> str:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for n, a in enumerate(ids):
        for b in ids[n + 1:]:
            if same_photo(prints[a], prints[b], max_distance):
                parent[root(b)] = root(a)
    groups: dict[str, list[str]] = {}
    for i in ids:
        groups.setdefault(root(i), []).append(i)
    dropped = {}
    for members in groups.values():
        keep = min(members, key=lambda i: (-prints[i].pixels, i))
        for i in members:
            if i != keep:
                dropped[i] = keep
                log.info("duplicate: %s is %s", i, keep)
    return dropped
