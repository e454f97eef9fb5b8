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


@pytest.mark.server
@pytest.mark.timeout(1800)
def test_anchors_http_row_times_a_started_service_at_its_defaults(tiny_checkpoint, tmp_path):
    rc = cli.main(["bench", "anchors", "--checkpoint", str(tiny_checkpoint), "--device", "cpu", "--quick",
                   "--size", "32", "--batch", "1", "--repeats", "2", "--steps", "1", "--backend", "torch",
                   "--http", "--out", str(tmp_path), "--no-plot"])
    assert rc == 0
    report = json.loads((tmp_path / "anchors-cpu.json").read_text())
    (service,) = [r for r in report["rows"] if r["kind"] == "service"]
    assert service["steps"] == report["summary"]["default_steps"] and service["latency"]["n"] == 2
    assert service["ms_per_image"] > 0
    for r in report["rows"]:
        if r["kind"] == "anchor":
            assert report["summary"][f"http_speedup_vs_{r['label']}"] == pytest.approx(
                r["ms_per_image"] / service["ms_per_image"])


def test_anchors_http_needs_the_wall_clock(tiny_checkpoint, tmp_path):
    rc = cli.main(["bench", "anchors", "--checkpoint", str(tiny_checkpoint), "--device", "cpu", "--quick",
                   "--http", "--clock", "cpu", "--out", str(tmp_path), "--no-plot"])
    assert rc != 0 and not (tmp_path / "anchors-cpu.json").exists()
