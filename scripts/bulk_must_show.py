"""The bulk-encode checks on real photos (``make bulk-demo``), printed as one JSON report:

1. SRC (e.g. ``make bulk-input``: 360 crops + 5 unusable files) encodes to shards; a second run
   killed with SIGKILL once half its shards are committed, then rerun, ends byte-identical to the
   uninterrupted run; the unusable files are in errors.jsonl with reasons;
2. ``--engine ray`` (a local Ray on this machine's CPUs) writes the same bytes;
3. ``LatentDataset`` returns exactly the latents ``dgae encode`` gives: one image per call
   (``--batch-size 1``) and a whole batch (the same 16 images in one ``dgae encode --batch-size 16``).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from formats.shards import ERRORS_FILE, LatentDataset  # noqa: E402
from formats.latents import load_latents  # noqa: E402

POLL_S = 0.05
RUN_TIMEOUT_S = 1800
SINGLE_IMAGES = 4


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli", *args]


def run(args: list[str], threads: int | None = None) -> float:
    """Run a CLI command; ``threads``: its torch intra-op threads via OMP_NUM_THREADS (`dgae encode`
    has no --threads, and the last bits of a CPU convolution depend on the thread count)."""
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    start = time.monotonic()
    subprocess.run(args, cwd=ROOT, check=True, timeout=RUN_TIMEOUT_S, stdout=subprocess.DEVNULL, env=env)
    return time.monotonic() - start


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def compare(a: Path, b: Path) -> dict:
    ta, tb = tree(a), tree(b)
    differ = sorted(k for k in set(ta) | set(tb) if ta.get(k) != tb.get(k))
    return {"files": len(ta), "identical": not differ, "differing": differ[:10]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--src", type=Path, default=Path("data/bulk-input"))
    p.add_argument("--out", type=Path, default=Path("out/bulk-demo"))
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--shard-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of every run (Ray actors too)")
    p.add_argument("--no-ray", action="store_true")
    args = p.parse_args(argv)
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    ckpt = ["-c", args.checkpoint] if args.checkpoint else []
    common = ["--shard-size", str(args.shard_size), "--batch-size", str(args.batch_size), "--threads",
              str(args.threads), "--no-progress", *ckpt]
    report: dict = {"src": str(args.src)}

    ref = args.out / "uninterrupted"
    report["uninterrupted_s"] = round(run(cli("encode-dataset", str(args.src), str(ref), "--workers",
                                              str(args.workers), *common)), 1)
    info = json.loads((ref / "dataset.json").read_text())
    report["counts"] = info["counts"]
    report["shards"] = len(info["shards"])
    report["errors"] = [json.loads(line) for line in (ref / ERRORS_FILE).read_text().splitlines()]

    killed = args.out / "killed"
    proc = subprocess.Popen(cli("encode-dataset", str(args.src), str(killed), "--workers", str(args.workers), *common),
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    half = max(1, report["shards"] // 2)
    while proc.poll() is None and len(list((killed / ".parts").glob("shard-*.json"))) < half:
        time.sleep(POLL_S)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    report["kill"] = {"returncode": proc.returncode,
                      "shards_complete_at_kill": len(list((killed / ".parts").glob("shard-*.json"))),
                      "temp_files_left": len([q for q in killed.rglob("*") if ".tmp-" in q.name]),
                      "dataset_json_existed": (killed / "dataset.json").exists()}
    report["resume_s"] = round(run(cli("encode-dataset", str(args.src), str(killed), "--workers",
                                       str(args.workers), *common)), 1)
    report["killed_and_resumed_vs_uninterrupted"] = compare(ref, killed)

    if not args.no_ray:
        ray_out = args.out / "ray"
        report["ray_s"] = round(run(cli("encode-dataset", str(args.src), str(ray_out), "--engine", "ray",
                                        "--ray-num-cpus", "2", "--ray-actors", "2", *common)), 1)
        report["ray_vs_local"] = compare(ref, ray_out)

    # LatentDataset vs dgae encode: the first batch of the reference run, and single images
    ds = LatentDataset(ref)
    batch = [ds[i] for i in range(args.batch_size)]
    paths = [str((args.src / b["record"]["source"]).resolve()) for b in batch]
    enc = args.out / "dgae-encode-batch.safetensors"
    run(cli("encode", *paths, "-o", str(enc), "--batch-size", str(args.batch_size), *ckpt), args.threads)
    same_batch = torch.equal(torch.stack([b["latents"] for b in batch]), load_latents(enc.read_bytes())[0])
    listing = args.out / "single.txt"
    listing.write_text("".join(f"{q}\n" for q in paths[:SINGLE_IMAGES]))
    single = args.out / "single"
    run(cli("encode-dataset", str(listing), str(single), *common, "--batch-size", "1"))  # the last value wins
    ds1, equal = LatentDataset(single), []
    for i in range(len(ds1)):
        out = args.out / f"dgae-encode-{i}.safetensors"
        run(cli("encode", ds1[i]["record"]["source"], "-o", str(out), *ckpt), args.threads)
        equal.append(torch.equal(ds1[i]["latents"], load_latents(out.read_bytes())[0][0]))
    report["latent_dataset_vs_dgae_encode"] = {"batch_of": args.batch_size, "batch_identical": same_batch,
                                               "single_images": len(equal), "single_identical": all(equal)}
    text = json.dumps(report, indent=1)
    (args.out / "report.json").write_text(text + "\n")
    print(text)
    ok = report["killed_and_resumed_vs_uninterrupted"]["identical"] and same_batch and \
        len(equal) == SINGLE_IMAGES and all(equal) and \
        (args.no_ray or report["ray_vs_local"]["identical"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
