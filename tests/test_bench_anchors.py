"""`dgae bench anchors` measures the backend a user gets by default at its default steps against
the one-pass VAE anchors, in one run."""
from __future__ import annotations

import json
import statistics

import pytest

from cli import main as cli

QUICK_ARGS = ("--device", "cpu", "--quick", "--size", "32", "--batch", "1", "--backend", "torch", "--no-plot")


def bench_anchors(checkpoint, out, *args: str) -> dict:
    """`dgae bench anchors` on the tiny checkpoint at 32 px (torch backend): its JSON report."""
    rc = cli.main(["bench", "anchors", "--checkpoint", str(checkpoint), *QUICK_ARGS, *args, "--out", str(out)])
    assert rc == 0
    return json.loads((out / "anchors-cpu.json").read_text())


def round_ratios(numerator: dict, denominator: dict) -> list[float]:
    """Per-round ratios of two rows' timings."""
    return [a / b for a, b in zip(numerator["round_ms"], denominator["round_ms"])]


@pytest.mark.timeout(1800)
def test_anchors_time_the_default_backend_at_its_default_steps(tiny_checkpoint, tmp_path):
    report = bench_anchors(tiny_checkpoint, tmp_path, "--repeats", "1", "--steps", "1")
    dgae = [r for r in report["rows"] if r["kind"] == "dgae"]
    assert [r["steps"] for r in dgae] == [1, 2]  # the model's default (2) is always measured
    default = next(r for r in dgae if r["default"])
    assert default["steps"] == 2 and default["backend"] == "torch"
    s = report["summary"]
    assert s["default_steps"] == 2 and s["default_ms_per_image"] == default["ms_per_image"]
    for r in report["rows"]:
        assert r["latency"]["n"] == len(r["round_ms"]) == 1
        if r["kind"] == "anchor":
            assert s[f"speedup_vs_{r['label']}"] == pytest.approx(r["ms_per_image"] / default["ms_per_image"])


def test_anchors_speedups_are_medians_of_ratios_within_a_round(tiny_checkpoint, tmp_path):
    report = bench_anchors(tiny_checkpoint, tmp_path, "--repeats", "3", "--steps", "2")
    s = report["summary"]
    default = next(r for r in report["rows"] if r["kind"] == "dgae" and r["default"])
    assert s["rounds"] == 3 and all(len(r["round_ms"]) == 3 for r in report["rows"])
    for r in report["rows"]:
        if r["kind"] == "anchor":
            ratios = round_ratios(r, default)
            assert s[f"speedup_vs_{r['label']}"] == pytest.approx(statistics.median(ratios))
            assert s[f"speedup_range_vs_{r['label']}"] == pytest.approx([min(ratios), max(ratios)])


@pytest.mark.server
@pytest.mark.timeout(1800)
def test_anchors_http_row_times_a_started_service_at_its_defaults(tiny_checkpoint, tmp_path):
    report = bench_anchors(tiny_checkpoint, tmp_path, "--repeats", "2", "--steps", "1", "--http")
    (service,) = [r for r in report["rows"] if r["kind"] == "service"]
    assert service["steps"] == report["summary"]["default_steps"] and service["latency"]["n"] == 2
    assert service["ms_per_image"] > 0
    for r in report["rows"]:
        if r["kind"] == "anchor":
            assert report["summary"][f"http_speedup_vs_{r['label']}"] == pytest.approx(
                statistics.median(round_ratios(r, service)))


def test_anchors_http_needs_the_wall_clock(tiny_checkpoint, tmp_path):
    rc = cli.main(["bench", "anchors", "--checkpoint", str(tiny_checkpoint), "--device", "cpu", "--quick",
                   "--http", "--clock", "cpu", "--out", str(tmp_path), "--no-plot"])
    assert rc != 0 and not (tmp_path / "anchors-cpu.json").exists()
