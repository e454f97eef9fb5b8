"""The export cache keeps only the most recently used exports, rebuilds an entry whose files no
longer match their build-time digests, and repairs what a build killed part-way left behind."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dgae.errors import BackendError
from export import cache

REPO_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 60
POLL_S = 0.05


def _folders(root, n):
    exports = root / cache.ONNX_SUBDIR
    made = []
    for i in range(n):
        d = exports / f"{i:016x}-fp32"
        d.mkdir(parents=True)
        (d / "model.onnx").write_bytes(b"x")
        os.utime(d, (1_000_000 + i, 1_000_000 + i))  # folder i used at time i
        made.append(d)
    return exports, made


def test_prune_keeps_the_most_recently_used(tmp_path):
    exports, made = _folders(tmp_path, 6)
    removed = cache.prune_exports(exports, keep=4)
    assert sorted(removed) == made[:2]
    assert sorted(p for p in exports.iterdir()) == made[2:]


def test_prune_never_removes_the_protected_folder(tmp_path):
    exports, made = _folders(tmp_path, 3)
    removed = cache.prune_exports(exports, keep=1, protect=made[0])
    assert removed == [made[1]] and made[0].is_dir() and made[2].is_dir()


@pytest.mark.parametrize("raw", ["0", "-2", "many"])
def test_bad_keep_setting_is_a_clear_error(monkeypatch, raw):
    monkeypatch.setenv(cache.KEEP_ENV, raw)
    with pytest.raises(BackendError, match="DGAE_CACHE_KEEP"):
        cache.cache_keep()


def test_keep_default_and_override(monkeypatch):
    monkeypatch.delenv(cache.KEEP_ENV, raising=False)
    assert cache.cache_keep() == cache.DEFAULT_KEEP
    monkeypatch.setenv(cache.KEEP_ENV, "2")
    assert cache.cache_keep() == 2


# --- faults survived (issue 27, docs/faults.md) ----------------------------------------------------------
PARTS = {"checkpoint_sha256": "a" * 64, "precision": "fp32"}
GRAPH = "model.onnx"
GRAPH_BYTES = bytes(range(256)) * 64


class Builder:
    """Writes one graph file and counts its builds."""

    def __init__(self):
        self.builds = 0

    def __call__(self, out):
        self.builds += 1
        (out / GRAPH).write_bytes(GRAPH_BYTES)
        (out / "sub").mkdir()
        (out / "sub" / "weights.bin").write_bytes(b"w" * 100)


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_a_damaged_entry_is_detected_by_its_digest_and_rebuilt(tmp_path, caplog, damage):
    build = Builder()
    entry = cache.ensure_entry(tmp_path, "onnx", PARTS, build)
    manifest = cache.read_entry(entry)
    assert set(manifest["files"]) == {GRAPH, "sub/weights.bin"}
    graph = entry / GRAPH
    if damage == "truncate":
        graph.write_bytes(GRAPH_BYTES[: len(GRAPH_BYTES) // 2])
    elif damage == "flip":  # same size, one byte changed: only a digest sees it
        graph.write_bytes(GRAPH_BYTES[:100] + bytes([GRAPH_BYTES[100] ^ 1]) + GRAPH_BYTES[101:])
    else:
        (entry / "sub" / "weights.bin").unlink()
    assert cache.ensure_entry(tmp_path, "onnx", PARTS, build) == entry
    assert build.builds == 2 and graph.read_bytes() == GRAPH_BYTES and (entry / "sub" / "weights.bin").is_file()
    assert any(r.levelname == "WARNING" and "does not verify" in r.message for r in caplog.records)
    assert cache.ensure_entry(tmp_path, "onnx", PARTS, build) == entry and build.builds == 2  # now reused


def test_an_entry_without_digests_is_rebuilt_once(tmp_path):
    build = Builder()
    entry = cache.ensure_entry(tmp_path, "onnx", PARTS, build)
    manifest = cache.read_entry(entry)
    del manifest["files"]  # as written before digests were recorded
    (entry / cache.MANIFEST).write_text(json.dumps(manifest))
    cache.ensure_entry(tmp_path, "onnx", PARTS, build)
    cache.ensure_entry(tmp_path, "onnx", PARTS, build)
    assert build.builds == 2


KILLED_BUILD = """
import sys, time
from pathlib import Path
from export import cache

def build(out):
    (out / "model.onnx").write_bytes(b"half of a graph")
    Path(sys.argv[2]).write_text("building")
    time.sleep(600)

cache.ensure_entry(sys.argv[1], "onnx", {"checkpoint_sha256": "a" * 64, "precision": "fp32"}, build)
"""


def test_sigkill_during_the_first_export_leaves_a_cache_the_next_start_repairs(tmp_path, caplog):
    """A process killed mid-export leaves only its .tmp-<pid> folder (never a finished-looking entry);
    the next ensure_entry removes it, builds, and serves a verified entry."""
    started = tmp_path / "started"
    root = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_BUILD, str(root), str(started)], env=env, cwd=REPO_ROOT)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not started.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the build never started"
            time.sleep(POLL_S)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(START_TIMEOUT_S)
    name = cache.entry_name("onnx", PARTS)
    assert [p.name for p in root.glob(f".{name}.tmp-*")] == [f".{name}.tmp-{proc.pid}"]
    assert not (root / name).exists()

    build = Builder()
    entry = cache.ensure_entry(root, "onnx", PARTS, build)
    assert build.builds == 1 and (entry / GRAPH).read_bytes() == GRAPH_BYTES
    assert cache.entry_problem(entry, cache.read_entry(entry)) is None
    assert list(root.glob(f".{name}.tmp-*")) == []
    assert any("unfinished build" in r.message for r in caplog.records)
