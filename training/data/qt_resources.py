"""Read Qt binary resource bundles (``.rcc``, as written by Qt's ``rcc -binary``).

GCompris ships its activity images inside such bundles, not as loose files. Layout (Qt's
rcc format, versions 1-3): a 20-byte header (``qres``, version, tree / data / names offsets; a
flags word follows from version 3), a tree of fixed-size nodes (name offset, flags, then either
child count + first child index for a directory or locale + data offset for a file; versions >= 2
add an 8-byte modification time), UTF-16BE names prefixed with their length and hash, and data
blobs prefixed with their size (zlib-compressed blobs also carry the uncompressed size first).
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Iterator

from dgae.errors import DGAEError

MAGIC = b"qres"
HEADER = struct.Struct(">IIII")  # version, tree offset, data offset, names offset
NODE_SIZE_V1 = 14
NODE_SIZE_V2 = 22  # + last-modified time
NAME_PREFIX = 6  # u16 length + u32 hash
FLAG_COMPRESSED = 0x01
FLAG_DIRECTORY = 0x02
FLAG_COMPRESSED_ZSTD = 0x04
ZLIB_SIZE_PREFIX = 4  # Qt's qCompress stores the uncompressed size before the zlib stream


class ResourceError(DGAEError):
    """A Qt resource bundle that cannot be read."""


def iter_resources(data: bytes) -> Iterator[tuple[str, bytes]]:
    """(path inside the bundle, file bytes) for every file of an rcc bundle; zstd-compressed
    entries (which Qt writes only when asked) are skipped."""
    if data[:len(MAGIC)] != MAGIC:
        raise ResourceError("not a Qt resource bundle (no 'qres' magic)")
    version, tree, blobs, names = HEADER.unpack_from(data, len(MAGIC))
    node_size = NODE_SIZE_V1 if version < 2 else NODE_SIZE_V2

    def name(offset: int) -> str:
        (length,) = struct.unpack_from(">H", data, names + offset)
        start = names + offset + NAME_PREFIX
        return data[start:start + 2 * length].decode("utf-16-be")

    def walk(index: int, prefix: str) -> Iterator[tuple[str, bytes]]:
        node = tree + index * node_size
        name_offset, flags = struct.unpack_from(">IH", data, node)
        path = f"{prefix}{name(name_offset)}" if index else ""
        if flags & FLAG_DIRECTORY:
            count, first = struct.unpack_from(">II", data, node + 6)
            for child in range(first, first + count):
                yield from walk(child, f"{path}/" if path else "")
            return
        (offset,) = struct.unpack_from(">I", data, node + 10)
        (size,) = struct.unpack_from(">I", data, blobs + offset)
        blob = data[blobs + offset + 4:blobs + offset + 4 + size]
        if flags & FLAG_COMPRESSED_ZSTD:
            return
        yield path, zlib.decompress(blob[ZLIB_SIZE_PREFIX:]) if flags & FLAG_COMPRESSED else blob

    try:
        yield from walk(0, "")
    except (struct.error, zlib.error, UnicodeDecodeError) as exc:
        raise ResourceError(f"corrupt Qt resource bundle: {exc}") from exc


def extract(bundle: Path, out: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Write the files of ``bundle`` whose names end in ``suffixes`` under ``out`` (bundle paths
    kept); returns the written paths."""
    written = []
    for path, blob in iter_resources(bundle.read_bytes()):
        if not path.lower().endswith(suffixes) or ".." in Path(path).parts:
            continue
        dst = out / path
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(blob)
        written.append(dst)
    return written
