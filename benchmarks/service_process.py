"""Start `dgae serve` as a subprocess on 127.0.0.1 (a free port), wait for /readyz, stop it on
exit (SIGTERM, then SIGKILL after a grace period). The service is configured only through its
``DGAE_*`` environment variables, as in production."""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from dgae.errors import BackendError

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
READY_TIMEOUT_S = 300.0
READY_POLL_S = 0.25
STOP_GRACE_S = 15.0
LOG_TAIL_CHARS = 2000
REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


class ServiceProcess:
    """``with ServiceProcess(env) as url:`` a ready service at ``url``; always stopped on exit."""

    def __init__(self, settings: dict[str, str], ready_timeout_s: float = READY_TIMEOUT_S):
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.env = {**os.environ, "DGAE_HOST": LOOPBACK, "DGAE_PORT": str(self.port), "DGAE_LOG_LEVEL": "warning",
                    **{k: str(v) for k, v in settings.items()}}
        self.ready_timeout_s = ready_timeout_s
        self.proc: subprocess.Popen | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="dgae-bench-serve-", suffix=".log", delete=False)

    def __enter__(self) -> str:
        cmd = [sys.executable, "-m", "cli", "serve"]
        log.info("starting %s on %s (%s)", " ".join(cmd), self.url,
                 ", ".join(f"{k}={v}" for k, v in self.env.items() if k.startswith("DGAE_") and "KEY" not in k))
        self.proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self.url

    def __exit__(self, *exc) -> None:
        self.stop()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        with httpx.Client(timeout=READY_POLL_S * 4) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise BackendError(f"dgae serve exited with status {self.proc.returncode}: {self.log_tail()}")
                try:
                    if client.get(f"{self.url}/readyz").status_code == httpx.codes.OK:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(READY_POLL_S)
        raise BackendError(f"dgae serve not ready after {self.ready_timeout_s:.0f} s: {self.log_tail()}")

    def log_tail(self) -> str:
        try:
            return Path(self._log.name).read_text(errors="replace")[-LOG_TAIL_CHARS:].strip()
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                log.warning("dgae serve did not stop in %.0f s; killing it", STOP_GRACE_S)
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        Path(self._log.name).unlink(missing_ok=True)
