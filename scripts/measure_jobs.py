"""Measure the jobs API and the cost model against a real `dgae serve` with the bundled model
(docs/jobs.md has the numbers of one run). Prints one JSON object per check.

    PYTHONPATH=$PWD python scripts/measure_jobs.py [--port 8771] [--backend auto]

Checks: the synchronous 2048² decode at default steps (served or refused, and how fast); the same
as a job, polled every 2 s (progress monotone, a 2048² PNG); a small job equals the synchronous
decode (max level difference); DELETE on a running job (time to cancelled, then a synchronous
request's latency); a finished result across a restart and a job running at SIGTERM; the thin
images (16,777,216 x 1 refused by admission, 65536 x 1 charged its padded size).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image
from safetensors.torch import save as st_save

REPO = Path(__file__).resolve().parent.parent
SIDE = 2048
POLL_S = 2.0
READY_TIMEOUT_S = 600
HTTP_TIMEOUT_S = 900
SHUTDOWN_TIMEOUT_S = 10
CANCEL_AFTER_PASSES = 3
THIN_WIDE = 4096 * 4096
THIN_NARROW = 65536


def report(name: str, **values) -> None:
    print(json.dumps({"check": name, **values}), flush=True)


def latents_body(side_px: int, seed: int = 0) -> bytes:
    g = torch.Generator().manual_seed(seed)
    return st_save({"latents": torch.randn(1, 4, side_px // 8, side_px // 8, generator=g)})


def png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (120, 60, 200)).save(buf, format="PNG")
    return buf.getvalue()


def start(port: int, jobs_dir: Path, log: Path, backend: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DGAE_")}
    env["PYTHONPATH"] = str(REPO)
    cmd = [sys.executable, "-m", "cli", "serve", "--port", str(port), "--backend", backend, "--jobs-dir", str(jobs_dir),
           "--shutdown-timeout-s", str(SHUTDOWN_TIMEOUT_S)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    url, started = f"http://127.0.0.1:{port}", time.monotonic()
    while True:
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                report("start", seconds=round(time.monotonic() - started, 1))
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() - started > READY_TIMEOUT_S:
            raise SystemExit(f"server did not start; see {log}")
        time.sleep(0.5)


def poll(c: httpx.Client, job_id: str, every_s: float = POLL_S, until=None) -> tuple[dict, list[dict]]:
    seen = []
    while True:
        job = c.get(f"/v1/jobs/{job_id}").json()
        seen.append(job)
        if (until or (lambda j: j["state"] not in ("queued", "running")))(job):
            return job, seen
        time.sleep(every_s)


def thin_checks(c: httpx.Client) -> None:
    wide = png(THIN_WIDE, 1)
    t = time.monotonic()
    r = c.post("/encode", content=wide, headers={"Content-Type": "image/png"})
    report("thin_16777216x1", status=r.status_code, seconds=round(time.monotonic() - t, 2), body=r.json(),
           png_bytes=len(wide))
    r = c.post("/v1/jobs/encode", content=png(THIN_NARROW, 1), headers={"Content-Type": "image/png"})
    report("thin_65536x1", status=r.status_code, charged_pixels=r.json().get("pixels"),
           image_pixels=THIN_NARROW, padded_pixels=THIN_NARROW * 8)
    poll(c, r.json()["id"], every_s=0.5)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8771)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--only-thin", action="store_true", help="only the thin-image checks")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dgae-jobs-"))
    log = work / "server.log"
    proc = start(args.port, work / "jobs", log, args.backend)
    c = httpx.Client(base_url=f"http://127.0.0.1:{args.port}", timeout=HTTP_TIMEOUT_S)
    model = c.get("/v1/model").json()
    report("model", backend=model["backend"], device=model["device"], cost=model["cost"],
           default_steps=model["steps"]["default"], request_timeout_s=model["limits"]["request_timeout_s"])
    if args.only_thin:
        thin_checks(c)
        proc.send_signal(signal.SIGTERM)
        proc.wait()
        return
    big = latents_body(SIDE)

    t = time.monotonic()
    r = c.post("/decode", content=big)
    report("sync_2048", status=r.status_code, seconds=round(time.monotonic() - t, 2),
           body=r.json() if r.headers["content-type"].startswith("application/json") else f"{len(r.content)} bytes")

    t = time.monotonic()
    r = c.post("/v1/jobs/decode?seed=1", content=big)
    job = r.json()
    done, seen = poll(c, job["id"])
    progress = [j["progress"]["done"] for j in seen]
    result = c.get(f"/v1/jobs/{job['id']}/result")
    size = Image.open(io.BytesIO(result.content)).size
    report("job_2048", submit_status=r.status_code, state=done["state"], seconds=round(time.monotonic() - t, 1),
           estimate_s=job["estimate_s"], total=done["progress"]["total"], monotone=progress == sorted(progress),
           polled_progress=progress, seconds_left=[j["seconds_left"] for j in seen], result_size=size,
           content_type=result.headers["content-type"])
    kept = hashlib.sha256(result.content).hexdigest()

    small = latents_body(256, seed=3)
    j = c.post("/v1/jobs/decode?seed=7", content=small).json()
    poll(c, j["id"], every_s=0.2)
    a = np.asarray(Image.open(io.BytesIO(c.get(f"/v1/jobs/{j['id']}/result").content)), dtype=np.int16)
    b = np.asarray(Image.open(io.BytesIO(c.post("/decode?seed=7", content=small).content)), dtype=np.int16)
    report("small_job_equals_sync", max_level_difference=int(np.abs(a - b).max()), size=list(a.shape))

    running = c.post("/v1/jobs/decode?seed=2", content=big).json()
    poll(c, running["id"], every_s=0.2, until=lambda x: x["progress"]["done"] >= CANCEL_AFTER_PASSES)
    t = time.monotonic()
    c.delete(f"/v1/jobs/{running['id']}")
    ended, _ = poll(c, running["id"], every_s=0.1)
    cancel_s = time.monotonic() - t
    t = time.monotonic()
    r = c.post("/decode?steps=1", content=latents_body(256))
    report("cancel", state=ended["state"], cancel_seconds=round(cancel_s, 2), passes_done=ended["progress"]["done"],
           next_sync_status=r.status_code, next_sync_seconds=round(time.monotonic() - t, 2))

    thin_checks(c)

    drained = c.post("/v1/jobs/decode?seed=4", content=big).json()
    poll(c, drained["id"], every_s=0.2, until=lambda x: x["state"] == "running")
    t = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait()
    stop_s = time.monotonic() - t
    proc = start(args.port, work / "jobs", log, args.backend)
    after = c.get(f"/v1/jobs/{drained['id']}").json()
    same = hashlib.sha256(c.get(f"/v1/jobs/{job['id']}/result").content).hexdigest() == kept
    report("restart", finished_result_survives=same, sigterm_seconds=round(stop_s, 1),
           running_job_state=after["state"], running_job_error=after["error"])
    proc.send_signal(signal.SIGTERM)
    proc.wait()
    report("log", path=str(log))


if __name__ == "__main__":
    main()
