"""`dgae bench backends` on the tiny preset: real timings of the eager baseline, same-run ratios,
skipped backends with reasons, JSON + plot output, and argument errors."""
from __future__ import annotations

import json

import pytest

from benchmarks import throughput
from benchmarks.report import latency_summary, paired_ratio, percentile, time_interleaved, time_repeats
from cli import main as cli

TINY_GRID = throughput.Grid(sizes=(32,), batches=(1, 2), steps=(1, 2), steps_sizes=1, warmup=0, repeats=1)


def test_percentile_is_nearest_rank():
    values = [0.4, 0.1, 0.3, 0.2]
    assert percentile(values, 50) == 0.2
    assert percentile(values, 99) == 0.4
    assert percentile([0.7], 1) == 0.7
    s = latency_summary([0.010, 0.020, 0.030])
    assert s["p50_ms"] == pytest.approx(20.0) and s["p99_ms"] == pytest.approx(30.0) and s["n"] == 3


def test_time_repeats_counts_calls_and_keeps_going_until_min_seconds():
    calls = []
    out = time_repeats(lambda: calls.append(1), warmup=2, repeats=3, sync=lambda: None)
    assert len(calls) == 5 and len(out) == 3 and all(t >= 0 for t in out)
    calls.clear()
    out = time_repeats(lambda: calls.append(1), warmup=0, repeats=1, sync=lambda: None,
                       min_seconds=10.0, max_repeats=7)
    assert len(out) == 7                                   # capped by max_repeats


def test_time_interleaved_calls_each_once_per_round_in_a_rotating_order():
    calls = []
    out = time_interleaved({k: (lambda k=k: calls.append(k)) for k in "abc"}, warmup=1, rounds=4, sync=lambda: None)
    assert calls[:3] == list("abc")                        # warm-up, once each
    assert calls[3:] == list("abc" "bca" "cab" "abc")      # round r starts r further along
    assert {k: len(v) for k, v in out.items()} == {"a": 4, "b": 4, "c": 4}


def test_paired_ratio_is_the_median_of_per_round_ratios():
    r = paired_ratio([10.0, 30.0, 12.0], [1.0, 2.0, 1.0])
    assert r == {"median": 12.0, "min": 10.0, "max": 15.0, "n": 3}
    assert r["median"] != 52.0 / 4.0                       # not the ratio of the sums


def test_grid_sweeps_steps_only_on_the_first_sizes():
    grid = throughput.Grid(sizes=(64, 128), batches=(1, 8), steps=(1, 2, 4, 8), steps_sizes=1, warmup=0, repeats=1)
    cases = grid.cases()
    assert ("decode", 64, 8, 8) in cases and ("decode", 128, 8, 1) in cases
    assert ("decode", 128, 8, 2) not in cases
    assert sum(op == "encode" for op, *_ in cases) == 4


def test_unknown_backend_name_is_a_clear_error():
    with pytest.raises(Exception, match="unknown backend"):
        throughput.select_specs(["nope"])
    assert throughput.select_specs(["onnxruntime-fp32"])[0].name == throughput.BASELINE


def test_run_measures_baseline_and_ratios_from_the_same_run(tiny_checkpoint, monkeypatch):
    """A second torch row stands in for another runtime, so the ratio plumbing is exercised with
    real measurements; CUDA-only rows must be skipped with a reason."""
    twin = throughput.BackendSpec("torch-eager-twin", "torch", kernels="reference")
    monkeypatch.setattr(throughput, "SPECS", (*throughput.SPECS, twin))
    report = throughput.run(tiny_checkpoint, "cpu", TINY_GRID, quick=True,
                            names=["torch-eager-twin", "tensorrt-fp16"], budget_s=None, peak_tflops=None)
    rows = report["rows"]
    base = [r for r in rows if r["backend"] == throughput.BASELINE]
    assert len(base) == len(TINY_GRID.cases())
    assert all(r["ratio_vs_eager"] == pytest.approx(1.0) for r in base)
    twin_rows = [r for r in rows if r["backend"] == "torch-eager-twin"]
    for r in twin_rows:
        ref = next(b for b in base if (b["op"], b["size"], b["batch"], b["steps"]) ==
                   (r["op"], r["size"], r["batch"], r["steps"]))
        assert r["ratio_vs_eager"] == pytest.approx(r["images_per_s"] / ref["images_per_s"])
        assert r["latency"]["p50_ms"] > 0
    decode = [r for r in rows if r["op"] == "decode"]
    assert all(r["flops"] > 0 and r["achieved_tflops"] > 0 and r["peak_fraction"] is None for r in decode)
    assert report["backends"]["tensorrt-fp16"]["skipped"].startswith("needs a CUDA device")
    summary = throughput.ratio_summary(report)
    assert {(s["batch"], s["backend"]) for s in summary} == {(2, "torch-eager-twin")}
    assert "torch-eager-twin / torch-eager-fp32" in throughput.summary_text(report)


def test_budget_cuts_cases_instead_of_running_them(tiny_checkpoint):
    report = throughput.run(tiny_checkpoint, "cpu", TINY_GRID, quick=True, names=[throughput.BASELINE],
                            budget_s=0.0, peak_tflops=None)
    assert report["rows"] == []
    assert len(report["backends"][throughput.BASELINE]["cut_by_budget"]) == len(TINY_GRID.cases())


@pytest.fixture()
def restore_threads():
    """--threads changes process-wide state (torch threads, OMP_NUM_THREADS): put it back."""
    import os

    import torch

    threads, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    yield
    torch.set_num_threads(threads)
    if env is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = env


def test_cli_writes_json_with_machine_and_plot(tiny_checkpoint, tmp_path, capsys, restore_threads):
    rc = cli.main(["bench", "backends", "--checkpoint", str(tiny_checkpoint), "--device", "cpu", "--quick",
                   "--sizes", "32", "--batches", "1", "--steps", "1", "--repeats", "1", "--warmup", "0",
                   "--backends", "torch-eager-fp32", "--threads", "1", "--clock", "cpu", "--out", str(tmp_path)])
    assert rc == 0
    report = json.loads((tmp_path / "backends-cpu.json").read_text())
    assert report["clock"] == "cpu" and report["run"]["threads"] == 1
    machine = report["machine"]
    assert machine["cpu"]["usable_cores"] >= 1 and machine["libraries"]["torch"]
    assert machine["checkpoint"]["preset"] == "tiny" and len(machine["checkpoint"]["sha256"]) == 64
    assert report["input_source"] in ("photos", "noise")
    assert (tmp_path / "backends-cpu.png").stat().st_size > 0
    out = capsys.readouterr().out
    assert "x eager" in out and "p50 cpu ms" in out and "machine:" in out
    assert report["run"]["wall_s"] > 0 and report["run"]["cpu_s"] > 0
    assert cli.main(["bench", "markdown", "--out", str(tmp_path)]) == 0
    md = capsys.readouterr().out
    assert "| torch-eager-fp32 | encode | 32 | 1 |" in md and "*Machine: " in md and "backends-cpu.png" in md


@pytest.mark.parametrize("argv", [["--sizes", "0"], ["--batches", "a,b"]])
def test_malformed_lists_are_rejected_by_the_parser(argv, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "backends", "--out", str(tmp_path), *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "error: argument" in err and "integers" in err


@pytest.mark.parametrize("argv, message", [(["--device", "tpu"], "--device must be"),
                                           (["--repeats", "0", "--device", "cpu"], "--repeats must be")])
def test_bad_values_exit_2_with_a_message(argv, message, tiny_checkpoint, tmp_path, capsys):
    rc = cli.main(["bench", "backends", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path), *argv])
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "backends-cpu.json").exists()


def test_missing_checkpoint_is_a_one_line_error(tmp_path, capsys):
    rc = cli.main(["bench", "backends", "--checkpoint", str(tmp_path / "none.safetensors"), "--device", "cpu",
                   "--out", str(tmp_path)])
    assert rc == 2
    assert "checkpoint not found" in capsys.readouterr().err
