"""The export cache keeps only the most recently used exports."""
from __future__ import annotations

import os

import pytest

from dgae.errors import BackendError
from export import cache


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
