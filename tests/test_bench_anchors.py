"""`dgae bench anchors` measures the backend a user gets by default at its default steps against
the one-pass VAE anchors, in one run."""
from __future__ import annotations

import json

import pytest

from cli import main as cli


@pytest.mark.timeout(1800)
def test_anchors_time_the_default_backend_at_its_default_steps(tiny_checkpoint, tmp_path):
    rc = cli.main(["bench", "anchors", "--checkpoint", str(tiny_checkpoint), "--device", "cpu", "--quick",
                   "--size", "32", "--batch", "1", "--repeats", "1", "--steps", "1", "--backend", "torch",
                   "--out", str(tmp_path), "--no-plot"])
    assert rc == 0
    report = json.loads((tmp_path / "anchors-cpu.json").read_text())
    dgae = [r for r in report["rows"] if r["kind"] == "dgae"]
    assert [r["steps"] for r in dgae] == [1, 2]  # the model's default (2) is always measured
    default = next(r for r in dgae if r["default"])
    assert default["steps"] == 2 and default["backend"] == "torch"
    s = report["summary"]
    assert s["default_steps"] == 2 and s["default_ms_per_image"] == default["ms_per_image"]
    for r in report["rows"]:
        if r["kind"] == "anchor":
            assert s[f"speedup_vs_{r['label']}"] == pytest.approx(r["ms_per_image"] / default["ms_per_image"])
