"""`dgae bench sizes`: encode and decode cost and peak memory against image size, tiled and untiled.

Each (size, tiling, operation) runs in a fresh process, so its peak RSS (VmHWM) is its own: the
process loads the backend, warms it up on a small image, then times one call at the target size
(the median of ``repeats`` calls at small sizes), in wall time or, with ``--clock cpu``, in the
process's CPU time (with ``--threads 1``: the cost on a dedicated core, robust to other load). Untiled rows run only up
to ``untiled_max``
(beyond it they need more memory than the machine has: that is the point of tiling). The summary
gives decode cost per megapixel at each size divided by the cost per megapixel at the smallest
size, from the same run and the same steps.
"""
from __future__ import annotations

import json
import logging
import statistics
import subprocess
import sys
import time
from pathlib import Path

from dgae.errors import InputError

log = logging.getLogger(__name__)

DEFAULT_SIZES = (256, 512, 1024, 2048)
QUICK_SIZES = (64, 128, 256)
DEFAULT_UNTILED_MAX = 1024
DEFAULT_STEPS = 1
WARMUP_SIDE = 64
SMALL_REPEATS = 3  # calls timed (median) at sizes up to SMALL_SIDE
SMALL_SIDE = 512
CHILD_TIMEOUT_S = 3600
MEGAPIXEL = 1e6
KIB = 1024
OPS = ("encode", "decode")


def peak_rss_bytes() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * KIB
    return 0


def child(spec: dict) -> dict:
    """Run in the fresh process: one operation at one size; returns seconds and peak RSS."""
    import torch  # noqa: PLC0415

    from backends.factory import create_backend  # noqa: PLC0415

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    backend = create_backend(spec["backend"], spec["checkpoint"], device="cpu")
    f, c = backend.config.downsample_factor, backend.config.latent_channels
    side, tile, steps, op = spec["size"], spec["tile"], spec["steps"], spec["op"]
    gen = torch.Generator().manual_seed(side)

    def call(s: int):
        if op == "encode":
            return backend.encode(torch.rand(1, 3, s, s, generator=gen) * 2 - 1, "mean", [0], tile=tile)
        return backend.decode(torch.randn(1, c, s // f, s // f, generator=gen), steps, [0], tile=tile)

    call(WARMUP_SIDE)
    clock = time.process_time if spec.get("clock") == "cpu" else time.perf_counter
    times = []
    for _ in range(SMALL_REPEATS if side <= SMALL_SIDE else 1):
        started = clock()
        call(side)
        times.append(clock() - started)
    return {"seconds": statistics.median(times), "peak_rss_bytes": peak_rss_bytes(),
            "backend": backend.info().name, "threads": torch.get_num_threads()}


def run_case(spec: dict) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.sizes", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {CHILD_TIMEOUT_S} s"}
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {proc.returncode}: {last[:300]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(checkpoint: Path, sizes: tuple[int, ...], steps: int, untiled_max: int, backend: str,
        threads: int | None, clock: str = "wall", ops: tuple[str, ...] = OPS) -> dict:
    from dgae.checkpoint import read_config  # noqa: PLC0415

    config = read_config(checkpoint)
    bad = [s for s in sizes if s % config.size_multiple]
    if bad:
        raise InputError(f"sizes {bad} are not multiples of the model's size multiple {config.size_multiple}")
    unknown = set(ops) - set(OPS)
    if unknown or not ops:
        raise InputError(f"ops must be some of {', '.join(OPS)}, got {', '.join(ops) or 'none'}")
    rows = []
    for side in sizes:
        for tile in ("auto", "off"):
            if tile == "off" and side > untiled_max:
                continue
            for op in ops:
                spec = {"checkpoint": str(checkpoint), "size": side, "tile": tile, "op": op, "steps": steps,
                        "backend": backend, "threads": threads, "clock": clock}
                log.info("sizes: %s %dpx tile=%s", op, side, tile)
                result = run_case(spec)
                row = {"op": op, "size": side, "tile": tile, "steps": steps if op == "decode" else None,
                       "megapixels": side * side / MEGAPIXEL, **result}
                if "seconds" in row:
                    row["s_per_mp"] = row["seconds"] / row["megapixels"]
                rows.append(row)
                print(format_row(row), flush=True)
    return {"benchmark": "sizes", "backend": backend, "steps": steps, "sizes": list(sizes), "clock": clock,
            "untiled_max": untiled_max, "tiling": config.tiling.__dict__, "rows": rows,
            "summary": summarize(rows)}


def summarize(rows: list[dict]) -> list[dict]:
    """Cost per megapixel at each size ÷ at the smallest size (same op and tiling, same run)."""
    out = []
    for op in OPS:
        for tile in ("auto", "off"):
            ok = sorted((r for r in rows if r["op"] == op and r["tile"] == tile and "s_per_mp" in r),
                        key=lambda r: r["size"])
            if not ok:
                continue
            base = ok[0]
            out += [{"op": op, "tile": tile, "size": r["size"], "base_size": base["size"],
                     "cost_per_mp_ratio": r["s_per_mp"] / base["s_per_mp"]} for r in ok]
    return out


def format_row(row: dict) -> str:
    head = f"{row['op']:<6} {row['size']:>5}px tile={row['tile']:<4}"
    if "error" in row:
        return f"{head} failed: {row['error']}"
    return (f"{head} {row['seconds']:8.2f} s  {row['s_per_mp']:7.2f} s/MP  "
            f"peak RSS {row['peak_rss_bytes'] / 2 ** 30:5.2f} GiB")


def results_table(report: dict) -> str:
    lines = [format_row(r) for r in report["rows"]]
    lines += [f"{s['op']} tile={s['tile']}: cost/MP at {s['size']}px = {s['cost_per_mp_ratio']:.2f}x "
              f"that at {s['base_size']}px" for s in report["summary"] if s["size"] != s["base_size"]]
    return "\n".join(lines)


if __name__ == "__main__":  # the per-case child process
    print(json.dumps(child(json.loads(sys.argv[1]))))
