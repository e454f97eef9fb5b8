"""Shared plumbing for the benchmarks: latency statistics, device-synchronised timing, plain-text
tables and strict JSON output (NaN/inf become null)."""
from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Sequence

MS_PER_S = 1e3
PERCENTILES = (50, 95, 99)
# "wall": elapsed time (what a caller waits). "cpu": this process's CPU time (all its threads) -
# with one intra-op thread it is the call's cost on a dedicated core, unaffected by other
# processes competing for the CPU; CPU device only (GPU work is not CPU time).
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of a non-empty sequence; with few samples p99 is
    the maximum, which is what a handful of repeats can honestly say."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """{p50_ms, p95_ms, p99_ms, mean_ms, n} of latencies given in seconds."""
    out = {f"p{q}_ms": percentile(seconds, q) * MS_PER_S for q in PERCENTILES}
    out["mean_ms"] = statistics.fmean(seconds) * MS_PER_S if seconds else math.nan
    out["n"] = len(seconds)
    return out


def synchronizer(device: str) -> Callable[[], None]:
    """A function that waits for queued device work (CUDA) or does nothing (CPU)."""
    if str(device).startswith("cuda"):
        import torch  # noqa: PLC0415

        return torch.cuda.synchronize
    return lambda: None


def time_repeats(fn: Callable[[], Any], warmup: int, repeats: int, sync: Callable[[], None],
                 min_seconds: float = 0.0, max_repeats: int = 0, clock: str = "wall") -> list[float]:
    """Run ``fn`` ``warmup`` times untimed, then at least ``repeats`` times (and, while under
    ``max_repeats``, until ``min_seconds`` of timed runs); seconds per timed run, each bracketed
    by device synchronisation so queued GPU work is counted."""
    for _ in range(warmup):
        fn()
    sync()
    now = CLOCKS[clock]
    out: list[float] = []
    limit = max(repeats, max_repeats)
    while len(out) < repeats or (sum(out) < min_seconds and len(out) < limit):
        start = now()
        fn()
        sync()
        out.append(now() - start)
    return out


def time_interleaved(fns: dict[str, Callable[[], Any]], warmup: int, rounds: int, sync: Callable[[], None],
                     clock: str = "wall") -> dict[str, list[float]]:
    """Time several callables in rounds: each round calls every one once, starting one further
    along each round (no fixed neighbour), so machine drift lands on all of them alike and
    ``seconds[a][i] / seconds[b][i]`` is a ratio of two calls made within the same round.
    Returns label -> seconds per round (``rounds`` of them), after ``warmup`` untimed calls each."""
    labels = list(fns)
    for label in labels:
        for _ in range(warmup):
            fns[label]()
    sync()
    now = CLOCKS[clock]
    out: dict[str, list[float]] = {label: [] for label in labels}
    for r in range(rounds):
        for label in labels[r % len(labels):] + labels[:r % len(labels)]:
            start = now()
            fns[label]()
            sync()
            out[label].append(now() - start)
    return out


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> dict[str, float]:
    """Median, min and max of the per-round ratios of two series timed by :func:`time_interleaved`."""
    ratios = [a / b for a, b in zip(numerator, denominator) if b > 0]
    if not ratios:
        return {"median": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios), "n": len(ratios)}


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None or not math.isfinite(value) else format(value, spec)


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    body = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
            for r in rows]
    return "\n".join([line, "-" * len(line), *body])


def finite(obj: Any) -> Any:
    """Recursively map NaN/inf floats to None (JSON has no such values)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def write_json(path: Path, report: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(finite(report), indent=2, allow_nan=False, default=str))
    tmp.replace(path)
    return path


def read_json(path: Path) -> dict:
    from dgae.errors import InputError  # noqa: PLC0415

    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read benchmark results {path}: {exc}") from exc
