"""Bulk encode throughput vs the in-process backend: ``python -m benchmarks.bulk`` (``make bench-bulk``).

Two numbers from one run, on one machine, with one backend object and one batch size:

- in-process: ``backend.encode`` over the already decoded images of SRC, batch after batch
  (what a caller holding tensors gets: the ceiling);
- bulk: ``bulk.encode.run_encode`` on SRC into a fresh folder: listing, reading and decoding the
  files in DataLoader workers, encoding, packing and writing shards, manifest and errors file.

Repeats alternate between the two so that drifting load on a shared machine hits both alike; the
report is the median of each and their ratio (target >= 0.9). SRC defaults to ``make bulk-input``'s
folder, else seeded synthetic images written to a temporary folder.
"""
from __future__ import annotations

import argparse
import logging
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from backends.factory import create_backend
from bulk.encode import DEFAULT_WORKERS, EncodeOptions, run_encode
from bulk.preprocess import Preprocess, prepare_item
from bulk.sources import list_source
from dgae.errors import DGAEError, InputError
from formats.images import to_tensor

from .common import DEFAULT_OUT, apply_threads, resolve_bench_checkpoint, resolve_device, results_name

log = logging.getLogger(__name__)

DEFAULT_SRC = Path("data/bulk-input")
DEFAULT_BATCH = 16
DEFAULT_REPEATS = 3
DEFAULT_SHARD_SIZE = 64
SYNTHETIC_IMAGES = 256
SYNTHETIC_SIDE = 128
SYNTHETIC_SEED = 0
SYNTHETIC_GRID = 8  # smooth synthetic content: a random 8x8 image upsampled
JPEG_QUALITY = 95
TARGET_RATIO = 0.9
EXIT_USER_ERROR = 2


def synthetic_source(folder: Path, n: int, side: int) -> Path:
    rng = np.random.default_rng(SYNTHETIC_SEED)
    for i in range(n):
        small = rng.integers(0, 256, (SYNTHETIC_GRID, SYNTHETIC_GRID, 3), dtype=np.uint8)
        Image.fromarray(small).resize((side, side), Image.BICUBIC).save(folder / f"{i:05d}.jpg", quality=JPEG_QUALITY)
    return folder


def cpu_seconds() -> float:
    """This process's CPU time plus its finished children's (the DataLoader workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(fn) -> tuple[int, float, float]:
    """(images, wall s, CPU s) of fn() -> images."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    n = fn()
    return n, time.perf_counter() - wall, cpu_seconds() - cpu


def in_process(backend, batches) -> int:
    for x in batches:
        backend.encode(x, "mean")
    return sum(len(x) for x in batches)


def bulk(backend, opts: EncodeOptions) -> int:
    return run_encode(opts, backend=backend)["counts"]["samples"]


def main(argv: list[str] | None = None) -> int:
    try:
        return run(argv)
    except DGAEError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR


def run(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bulk", description=__doc__.splitlines()[0])
    p.add_argument("--src", type=Path, default=None, help=f"images (default {DEFAULT_SRC}, else synthetic)")
    p.add_argument("--checkpoint", "-c", default=None)
    p.add_argument("--preset", default=None, help="a random-init checkpoint of this preset instead")
    p.add_argument("--backend", default="torch")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    p.add_argument("--workers", type=int, default=DEFAULT_WORKERS)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--repeats", type=int, default=DEFAULT_REPEATS)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder (bulk-<device>.json)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("bulk").setLevel(logging.ERROR)  # the unusable inputs are expected here
    if args.repeats < 1 or args.batch_size < 1:
        raise InputError("--repeats and --batch-size must be >= 1")
    apply_threads(args.threads)
    device = resolve_device(args.device)
    checkpoint = resolve_bench_checkpoint(args)
    backend = create_backend(args.backend, checkpoint, device=device)
    with tempfile.TemporaryDirectory(prefix="dgae-bench-bulk-") as tmp:
        src = args.src or (DEFAULT_SRC if DEFAULT_SRC.is_dir() else None)
        if src is None:
            (Path(tmp) / "src").mkdir()
            src = synthetic_source(Path(tmp) / "src", SYNTHETIC_IMAGES, SYNTHETIC_SIDE)
        pre = Preprocess()
        prepared = [prepare_item(it, pre, backend.config.downsample_factor) for it in list_source(str(src))]
        usable = [q.rgb for q in prepared if q.error is None]
        sizes = {r.shape for r in usable}
        if len(sizes) != 1:
            raise InputError(f"{src}: the in-process baseline needs one image size, found {sorted(sizes)}")
        batches = [to_tensor(usable[i:i + args.batch_size]) for i in range(0, len(usable), args.batch_size)]
        backend.encode(batches[0], "mean")  # warm-up
        runs: dict[str, list[dict]] = {"in_process": [], "bulk": []}
        for r in range(args.repeats):
            opts = EncodeOptions(src=str(src), out=str(Path(tmp) / f"out{r}"), checkpoint=str(checkpoint),
                                 backend=args.backend, device=device, batch_size=args.batch_size,
                                 shard_size=DEFAULT_SHARD_SIZE, workers=args.workers, progress=False)
            # alternate which goes first, so that load drifting during a repeat favours neither
            order = [("in_process", lambda: in_process(backend, batches)),
                     ("bulk", lambda opts=opts: bulk(backend, opts))]
            for name, fn in order if r % 2 == 0 else order[::-1]:
                n, wall, cpu = timed(fn)
                runs[name].append({"images": n, "wall_s": wall, "cpu_s": cpu, "img_s": n / wall,
                                   "img_per_cpu_s": n / cpu})
            print(f"repeat {r + 1}/{args.repeats}: in-process {runs['in_process'][-1]['img_s']:.2f} img/s, "
                  f"bulk {runs['bulk'][-1]['img_s']:.2f} img/s", flush=True)
    from .machine import describe_machine  # noqa: PLC0415
    from .report import write_json  # noqa: PLC0415

    med = {name: {k: statistics.median(r[k] for r in rs) for k in ("img_s", "img_per_cpu_s")}
           for name, rs in runs.items()}
    ratio = med["bulk"]["img_s"] / med["in_process"]["img_s"]
    cpu_ratio = med["bulk"]["img_per_cpu_s"] / med["in_process"]["img_per_cpu_s"]
    report = {"benchmark": "bulk", "src": str(src), "images": len(usable), "inputs": len(prepared),
              "image_size": list(next(iter(sizes))), "batch_size": args.batch_size, "workers": args.workers,
              "threads": args.threads, "backend": backend.info().to_dict(), "repeats": args.repeats, "runs": runs,
              "in_process_median": med["in_process"]["img_s"], "bulk_median": med["bulk"]["img_s"],
              "ratio": ratio, "cpu_ratio": cpu_ratio, "target_ratio": TARGET_RATIO,
              "machine": describe_machine(checkpoint)}
    path = write_json(args.out / f"{results_name('bulk', device)}.json", report)
    print(f"machine: {report['machine']['summary']}")
    print(
        f"bulk encode {report['bulk_median']:.2f} img/s vs in-process backend encode {report['in_process_median']:.2f} "
        f"img/s at batch {args.batch_size} ({len(usable)} images of {report['image_size'][1]}x"
        f"{report['image_size'][0]} px): ratio {ratio:.2f}x (target >= {TARGET_RATIO}x); per CPU second "
        f"(workers included): {cpu_ratio:.2f}x"
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
