"""`dgae bench sizes` end to end on the tiny preset: rows per size x tiling x op from fresh
processes, cost-per-megapixel ratios from the same run, JSON + plot + markdown."""
from __future__ import annotations

import json

import pytest

from benchmarks import markdown
from cli import main as cli

SIZES = "32,64"


def test_sizes_benchmark_writes_rows_ratios_and_a_plot(tiny_checkpoint, tmp_path):
    rc = cli.main(["bench", "sizes", "--checkpoint", str(tiny_checkpoint), "--device", "cpu", "--quick",
                   "--sizes", SIZES, "--untiled-max", "32", "--threads", "1", "--out", str(tmp_path)])
    assert rc == 0
    report = json.loads((tmp_path / "sizes-cpu.json").read_text())
    rows = {(r["op"], r["size"], r["tile"]): r for r in report["rows"]}
    assert set(rows) == {(op, s, t) for op in ("encode", "decode") for s in (32, 64) for t in ("auto", "off")
                         if not (t == "off" and s > 32)}
    for r in rows.values():
        assert r["seconds"] > 0 and r["peak_rss_bytes"] > 0
        assert r["s_per_mp"] == pytest.approx(r["seconds"] / r["megapixels"])
    ratio = next(s for s in report["summary"] if (s["op"], s["tile"], s["size"]) == ("decode", "auto", 64))
    assert ratio["cost_per_mp_ratio"] == pytest.approx(rows[("decode", 64, "auto")]["s_per_mp"]
                                                       / rows[("decode", 32, "auto")]["s_per_mp"])
    assert (tmp_path / "sizes-cpu.png").stat().st_size > 0
    assert "cost/MP" in markdown.render_folder(tmp_path)


def test_sizes_must_fit_the_model(tiny_checkpoint, tmp_path):
    assert cli.main(["bench", "sizes", "--checkpoint", str(tiny_checkpoint), "--device", "cpu",
                     "--sizes", "30", "--out", str(tmp_path)]) == 2
