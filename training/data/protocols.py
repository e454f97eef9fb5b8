"""Evaluation protocols: which validation photos a model card's numbers are measured on.

``make data`` writes one manifest per protocol beside ``manifest.json`` (``manifest-<name>.json``,
the same entries, split ``val``, in the protocol's order: ``dgae eval`` seeds crop i with seed + i,
so the order is part of the protocol). Pass one to ``dgae eval --data``.

- ``val7``: the 7 validation photos of the first 45-photo set, in that set's order; every table
  of the model card before the 336-photo set is on these.
- ``unseen``: the validation split minus any photo a bundled stage ever trained on
  (:data:`TRAINED_ON`), in manifest order: the photos no bundled weights have seen.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

VAL7 = (
    "lomiri-wallpapers-16.04/Picture_0B_by_freespace",
    "mate-backgrounds/FreshFlower",
    "mate-backgrounds/Garden",
    "mate-backgrounds/GreenMeadow",
    "mate-backgrounds/TwoWings",
    "plasma-workspace-wallpapers/Grey",
    "scikit-image/coffee",
)
# validation photos of this set that a bundled stage trained on, and why
TRAINED_ON = {
    "plasma-workspace-wallpapers/OneStandsOut":
        "train in the 45-photo set: the one-step default's stage 1 trained on it (steps 0-541)",
}


def protocol_entries(manifest: dict) -> dict[str, list[dict]]:
    """{protocol name: manifest entries}; a protocol whose photos are not all in the set is left out."""
    val = [e for e in manifest["files"] if e["split"] == "val"]
    by_id = {e["id"]: e for e in val}
    out = {"unseen": [e for e in val if e["id"] not in TRAINED_ON]}
    if all(i in by_id for i in VAL7):
        out["val7"] = [by_id[i] for i in VAL7]
    return out


def manifest_path(root: Path, name: str) -> Path:
    return Path(root) / f"manifest-{name}.json"


def write_protocol_manifests(root: Path, manifest: dict) -> list[Path]:
    """Write ``manifest-<name>.json`` for each protocol the set supports; the paths written."""
    written = []
    for name, entries in protocol_entries(manifest).items():
        doc = {"version": manifest["version"], "protocol": name, "counts": {"val": len(entries)}, "files": entries}
        path, text = manifest_path(root, name), json.dumps(doc, indent=2) + "\n"
        written.append(path)
        if path.is_file() and path.read_text() == text:
            continue  # unchanged: leave the file (and its mtime) alone
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
        log.info("protocol %s: %d validation photos -> %s", name, len(entries), path)
    return written
