"""Photo-set builder: provenance parsing, per-photo split, conversion and idempotency (offline)."""
from __future__ import annotations

import json
import math
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from training.data import catalogue, dedup, fetch, qt_resources, sources
from dgae.errors import ConfigError

DEP5 = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: demo

Files: *
Copyright: 2014 Someone
License: GPL-2+

Files: 16.04/sunset_by_A.jpg
       16.04/life_*.jpg
Copyright: A, 2018
License: CC-BY-4.0

Files: debian/*
Copyright: 2020 Packager
License: Expat
"""


def test_dep5_licence_lookup_by_file_name():
    stanzas = fetch.parse_dep5_licences(DEP5)
    assert [lic for _, lic in stanzas] == ["GPL-2+", "CC-BY-4.0", "Expat"]
    assert fetch.licence_for("/x/usr/share/backgrounds/sunset_by_A.jpg", stanzas) == "CC-BY-4.0"
    assert fetch.licence_for("/x/life_2.jpg", stanzas) == "CC-BY-4.0"
    assert fetch.licence_for("/x/other.png", stanzas) == "GPL-2+"  # debian/* never applies to payload


def test_licence_by_upstream_path_and_wheel_metadata():
    stanzas = fetch.parse_dep5_licences("Files: *\nLicense: GPL-3+\n\nFiles: src/a/resource/*\n"
                                        "       src/b/x.webp\nLicense: CC-BY-SA-4.0\n")
    assert sources.licence_for("g/src/a/resource/cat.webp", stanzas, "src/a/resource/cat.webp") == "CC-BY-SA-4.0"
    assert sources.licence_for("g/src/c/resource/cat.webp", stanzas, "src/c/resource/cat.webp") == "GPL-3+"
    assert sources.licence_for("x.png", [], default="GPL-2") == "GPL-2"
    assert sources.wheel_licence("Name: a\nLicense-Expression: BSD-3-Clause\n\nbody") == "BSD-3-Clause"
    assert sources.wheel_licence("Name: a\nClassifier: License :: OSI Approved :: MIT License\n") == "MIT License"
    assert sources.wheel_licence("Name: a\n") == sources.UNKNOWN_LICENCE


def _rcc(files: dict[str, tuple[bytes, bool]]) -> bytes:
    """A version-2 Qt resource bundle with one folder ``d`` holding ``files`` (name -> (bytes,
    compressed)), laid out as Qt's rcc writes it."""
    names, name_offsets = b"", {}
    for name in ["d", *files]:
        name_offsets[name] = len(names)
        names += struct.pack(">HI", len(name), 0) + name.encode("utf-16-be")
    data, data_offsets = b"", {}
    for name, (blob, compressed) in files.items():
        payload = struct.pack(">I", len(blob)) + zlib.compress(blob) if compressed else blob
        data_offsets[name] = len(data)
        data += struct.pack(">I", len(payload)) + payload
    stamp = struct.pack(">Q", 0)
    tree = struct.pack(">IHII", 0, 2, 1, 1) + stamp  # root: one child (index 1)
    tree += struct.pack(">IHII", name_offsets["d"], 2, len(files), 2) + stamp
    for name, (_, compressed) in files.items():
        tree += struct.pack(">IHHHI", name_offsets[name], int(compressed), 0, 0, data_offsets[name]) + stamp
    header = 4 + 16
    return (b"qres" + struct.pack(">IIII", 2, header + len(names) + len(data), header + len(names), header)
            + names + data + tree)


def test_qt_resource_bundle_extract(tmp_path):
    bundle = tmp_path / "a.rcc"
    bundle.write_bytes(_rcc({"x.png": (b"png-bytes", False), "y.webp": (b"webp" * 50, True), "z.qml": (b"q", False)}))
    assert dict(qt_resources.iter_resources(bundle.read_bytes())) == {
        "d/x.png": b"png-bytes", "d/y.webp": b"webp" * 50, "d/z.qml": b"q"}
    written = qt_resources.extract(bundle, tmp_path / "out", (".png", ".webp"))
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in written) == ["d/x.png", "d/y.webp"]
    assert (tmp_path / "out/d/y.webp").read_bytes() == b"webp" * 50
    with pytest.raises(qt_resources.ResourceError):
        list(qt_resources.iter_resources(b"not a bundle"))


def _photo(seed: int, size=(320, 240)) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)  # smooth blobs survive resizing
    return Image.fromarray(small).resize(size, Image.BICUBIC)


def test_dedup_keeps_the_largest_copy_of_a_photo(tmp_path):
    _photo(1, (640, 480)).save(tmp_path / "big.png")
    _photo(1, (320, 240)).save(tmp_path / "small.jpg", quality=80)  # same photo, smaller, re-encoded
    _photo(2).save(tmp_path / "other.png")
    prints = {p.stem: dedup.fingerprint(p) for p in tmp_path.iterdir()}
    assert dedup.deduplicate(prints) == {"small": "big"}
    assert dedup.deduplicate(dict(reversed(list(prints.items())))) == {"small": "big"}  # order-free


def test_select_photos_drops_duplicates_and_small_photos(tmp_path):
    _photo(1, (640, 480)).save(tmp_path / "a.png")
    _photo(1, (400, 300)).save(tmp_path / "a_copy.png")
    _photo(3, (300, 200)).save(tmp_path / "tiny.png")
    _photo(4).save(tmp_path / "b.png")
    srcs = [fetch.PhotoSource(f"p/{n}", tmp_path / f"{n}.png", "p", "1", "CC0") for n in ("a", "a_copy", "tiny", "b")]
    kept, dropped = fetch.select_photos(srcs, min_side=240)
    assert [s.photo_id for s in kept] == ["p/a", "p/b"]
    assert dropped == {"p/a_copy": "duplicate of p/a", "p/tiny": "short side 200 px < 240"}


def test_catalogue_lists_no_held_out_packages_and_unique_ids():
    held_out = {"pyiqa", "matplotlib", "imgaug", "mahotas"}
    packages = set(catalogue.DEBIAN_PHOTOS) | {w.package for w in catalogue.PYPI_PHOTOS} | {
        p for p, _, _ in catalogue.PYTHON_PHOTOS}
    assert not {p.lower() for p in packages} & held_out
    for package, photos in catalogue.DEBIAN_PHOTOS.items():
        assert len({name for name, _ in photos}) == len(photos), package


def test_split_is_per_photo_deterministic_and_order_free():
    ids = [f"pkg/photo{i}" for i in range(45)]
    splits = fetch.assign_splits(ids, 0.15, 5)
    assert splits == fetch.assign_splits(list(reversed(ids)), 0.15, 5)
    assert sum(s == "val" for s in splits.values()) == math.ceil(0.15 * 45)
    small = fetch.assign_splits(ids[:6], 0.15, 5)
    assert sum(s == "val" for s in small.values()) == 5  # min_val wins
    assert sum(s == "train" for s in fetch.assign_splits(ids[:3], 0.15, 5).values()) == 1
    with pytest.raises(ConfigError):
        fetch.assign_splits(ids, 1.5, 5)


def test_largest_variant_dedups_symlinks(tmp_path):
    Image.new("RGB", (20, 10)).save(tmp_path / "small.png")
    Image.new("RGB", (40, 30)).save(tmp_path / "big.png")
    (tmp_path / "alias.png").symlink_to(tmp_path / "big.png")
    assert fetch.largest_variant(sorted(tmp_path.glob("*.png"))) == (tmp_path / "big.png").resolve()


def test_build_python_photos_then_skip(tmp_path, caplog):
    out = tmp_path / "photos"
    manifest = fetch.fetch(out, max_side=96, download=False)
    sources = {s.photo_id: s for s in fetch.python_package_sources()}
    assert len(manifest["files"]) == len(sources) == 7
    assert manifest["counts"] == {"train": 2, "val": 5}
    for entry in manifest["files"]:
        path = out / entry["file"]
        with Image.open(path) as im, Image.open(sources[entry["id"]].path) as orig:
            assert im.mode == "RGB" and im.format == "JPEG" and im.size == (entry["width"], entry["height"])
            assert max(im.size) == 96
            assert abs(im.width / im.height - orig.width / orig.height) < 0.02
        assert entry["sha256"] == fetch.file_sha256(path)
        assert entry["licence"] and entry["source"] in ("scikit-image", "scikit-learn")
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == manifest
    unseen = json.loads((out / "manifest-unseen.json").read_text())  # the evaluation protocol beside it
    assert unseen["files"] == [e for e in manifest["files"] if e["split"] == "val"]
    assert not (out / "manifest-val7.json").exists()  # its wallpapers are not in the offline subset

    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with caplog.at_level("INFO"):
        fetch.fetch(out, max_side=96, download=False)
    assert "up to date" in caplog.text
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes

    settings = on_disk["settings"]
    assert not fetch.is_up_to_date(out, {**settings, "max_side": 128})  # new cap -> rebuild
    (out / manifest["files"][0]["file"]).write_bytes(b"corrupt")
    assert not fetch.is_up_to_date(out, settings)  # tampered file -> rebuild


def test_protocol_manifests_keep_their_order_and_leave_out_trained_photos(tmp_path):
    from training.data import protocols
    from training.data.dataset import resolve_files

    def entry(photo_id, split="val"):
        return {"id": photo_id, "file": photo_id.replace("/", "__") + ".jpg", "split": split}

    trained = next(iter(protocols.TRAINED_ON))
    files = [entry(i) for i in reversed(protocols.VAL7)] + [entry(trained), entry("x/train", "train"), entry("y/v")]
    manifest = {"version": 2, "files": files}
    for f in files:
        (tmp_path / f["file"]).write_bytes(b"")
    paths = protocols.write_protocol_manifests(tmp_path, manifest)
    assert sorted(p.name for p in paths) == ["manifest-unseen.json", "manifest-val7.json"]
    val7 = json.loads((tmp_path / "manifest-val7.json").read_text())
    assert [e["id"] for e in val7["files"]] == list(protocols.VAL7)  # the protocol's order, not the set's
    unseen = [e["id"] for e in json.loads((tmp_path / "manifest-unseen.json").read_text())["files"]]
    assert trained not in unseen and "x/train" not in unseen
    assert unseen == [e["id"] for e in files if e["split"] == "val" and e["id"] != trained]
    assert [p.name for p in resolve_files(tmp_path / "manifest-val7.json", "val")] == [
        e["file"] for e in val7["files"]]  # what `dgae eval --data manifest-val7.json` reads

    del manifest["files"][0]  # a set without all of val7: no val7 manifest is written
    (other := tmp_path / "other").mkdir()
    assert [p.name for p in protocols.write_protocol_manifests(other, manifest)] == ["manifest-unseen.json"]
