"""`dgae bench load` end to end on the tiny preset: the benchmark starts the service twice on
loopback (batching on vs max_batch_size=1), sweeps concurrency, and reports same-run ratios. Both
services are always stopped (ServiceProcess.__exit__)."""
from __future__ import annotations

import json

import pytest

from cli import main as cli

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def load_report(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("load")
    rc = cli.main(["bench", "load", "--checkpoint", str(tiny_checkpoint), "--device", "cpu", "--quick",
                   "--size", "32", "--concurrency", "1,4", "--batch-size", "4", "--max-requests", "8",
                   "--level-seconds", "20", "--max-wait-ms", "50", "--out", str(out)])
    assert rc == 0
    return json.loads((out / "load-cpu.json").read_text()), out


def test_every_level_completes_without_errors(load_report):
    report, out = load_report
    assert [c["name"] for c in report["configs"]] == ["batching", "max_batch_size=1"]
    for cfg in report["configs"]:
        assert {(lv["op"], lv["concurrency"]) for lv in cfg["levels"]} == {
            (op, c) for op in ("encode", "decode") for c in (1, 4)}
        for lv in cfg["levels"]:
            assert lv["errors"] == 0 and lv["ok"] == lv["sent"] == 8, lv["statuses"]
            assert lv["requests_per_s"] > 0 and lv["latency"]["p50_ms"] > 0
    assert (out / "load-cpu.png").stat().st_size > 0
    assert report["machine"]["checkpoint"]["preset"] == "tiny"


def test_batching_really_batches_and_max_batch_size_1_does_not(load_report):
    report, _ = load_report
    cfgs = {c["name"]: c for c in report["configs"]}
    for lv in cfgs["max_batch_size=1"]["levels"]:
        assert lv["mean_batch_size"] == pytest.approx(1.0)
    busy = [lv for lv in cfgs["batching"]["levels"] if lv["concurrency"] == 4]
    assert all(lv["mean_batch_size"] > 1.0 for lv in busy)     # 4 clients, 50 ms window: batches form


def test_same_run_ratios_are_reported(load_report):
    report, _ = load_report
    ratios = {(r["op"], r["concurrency"]): r["ratio"] for r in report["summary"]["batching_ratio"]}
    assert set(ratios) == {(op, c) for op in ("encode", "decode") for c in (1, 4)}
    cfgs = {c["name"]: c for c in report["configs"]}
    rate = {name: next(x["requests_per_s"] for x in cfg["levels"] if x["op"] == "decode" and x["concurrency"] == 4)
            for name, cfg in cfgs.items()}
    assert ratios[("decode", 4)] == pytest.approx(rate["batching"] / rate["max_batch_size=1"])
    vs = report["summary"]["service_vs_inprocess"]
    assert {(r["op"], r["batch"]) for r in vs} == {(op, b) for op in ("encode", "decode") for b in (4, 1)}
    assert all(r["inprocess_images_per_s"] > 0 and r["ratio"] > 0 for r in vs)


@pytest.mark.parametrize("argv, message", [(["--ops", "resize"], "--ops must list"),
                                           (["--batch-size", "1"], "--batch-size must be >= 2")])
def test_bad_options_are_refused_before_any_server_starts(argv, message, tiny_checkpoint, tmp_path, capsys):
    rc = cli.main(["bench", "load", "--checkpoint", str(tiny_checkpoint), "--device", "cpu", "--out", str(tmp_path),
                   *argv])
    assert rc == 2
    assert message in capsys.readouterr().err
