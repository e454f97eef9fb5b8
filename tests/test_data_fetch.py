"""Photo-set builder: provenance parsing, per-photo split, conversion and idempotency (offline)."""
from __future__ import annotations

import json
import math

import pytest
from PIL import Image

from training.data import fetch
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
    assert fetch._largest_variant(sorted(tmp_path.glob("*.png"))) == (tmp_path / "big.png").resolve()


def test_build_python_photos_then_skip(tmp_path, caplog):
    out = tmp_path / "photos"
    manifest = fetch.fetch(out, max_side=96, debian=False)
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

    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with caplog.at_level("INFO"):
        fetch.fetch(out, max_side=96, debian=False)
    assert "up to date" in caplog.text
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes

    settings = on_disk["settings"]
    assert not fetch.is_up_to_date(out, {**settings, "max_side": 128})  # new cap -> rebuild
    (out / manifest["files"][0]["file"]).write_bytes(b"corrupt")
    assert not fetch.is_up_to_date(out, settings)  # tampered file -> rebuild
