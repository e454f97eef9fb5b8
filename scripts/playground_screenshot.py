"""Regenerate docs/playground.jpg: start `dgae serve` (bundled model) on a free loopback port, open
the playground in headless Chromium (system binary, Playwright), pick a sample photo, show the
4-seed variability map, and screenshot the page.

    python scripts/playground_screenshot.py [--sample astronaut.jpg] [--out docs/playground.jpg]
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 240
OP_TIMEOUT_MS = 240_000
POLL_S = 0.25
HTTP_OK = 200
VIEWPORT = {"width": 1100, "height": 900}
STOP_TIMEOUT_S = 30
JPEG_QUALITY = 80  # a full-page PNG of photos is > 1 MB; the docs screenshot is a JPEG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"dgae serve exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=5) as r:
                if r.status == HTTP_OK:
                    return
        except OSError:
            pass
        time.sleep(POLL_S)
    raise SystemExit(f"{url} not ready after {READY_TIMEOUT_S} s")


def wait_run(page, before: int) -> None:
    page.wait_for_function("n => Number(document.body.dataset.runs || 0) > n", arg=before, timeout=OP_TIMEOUT_MS)
    if page.get_attribute("body", "data-state") != "done":
        raise SystemExit(f"the page reports an error: {page.inner_text('#error')}")


def main() -> int:
    from playwright.sync_api import sync_playwright  # noqa: PLC0415 - dev extra

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sample", default="astronaut.jpg")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "playground.jpg")
    p.add_argument("--chromium", default=os.environ.get("DGAE_CHROMIUM") or shutil.which("chromium"))
    p.add_argument("--seed", default="7", help="decode seed for a reproducible picture")
    args = p.parse_args()
    if not args.chromium:
        raise SystemExit("no chromium found: apt-get install chromium, or pass --chromium")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DGAE_")}
    env["PYTHONPATH"] = str(REPO)
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen([sys.executable, "-m", "dgae", "serve", "--port", str(port), "--torch-threads", "1"],
                                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_ready(url, proc)
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=args.chromium)
                page = browser.new_page(viewport=VIEWPORT)
                page.goto(url + "/")
                page.wait_for_function("() => document.body.dataset.state === 'ready'", timeout=OP_TIMEOUT_MS)
                page.fill("#seed", args.seed)
                before = int(page.get_attribute("body", "data-runs") or 0)
                page.click(f"button[data-sample='{args.sample}']")
                wait_run(page, before)
                page.click("#vary")
                wait_run(page, before + 1)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                jpeg = {"type": "jpeg", "quality": JPEG_QUALITY} if args.out.suffix in (".jpg", ".jpeg") else {}
                page.screenshot(path=str(args.out), full_page=True, **jpeg)
                print(f"{args.out}: PSNR {page.inner_text('#psnr')}, decode {page.inner_text('#decode-ms')}")
                browser.close()
        finally:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
