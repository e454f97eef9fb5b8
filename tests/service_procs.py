"""Helpers for tests that run several real processes on loopback at once (service replicas, the
entrypoint, nginx): start without waiting, wait for /readyz, stop (or kill) only what the test
started."""
from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

READY_TIMEOUT_S = 240.0  # the CI machine is shared with a training run: be patient, never flaky
POLL_S = 0.25
STOP_TIMEOUT_S = 30.0
LOG_TAIL_CHARS = 3000
HTTP_OK = 200
REPO = Path(__file__).resolve().parent.parent


def serve_unavailable() -> str | None:
    """Why `dgae serve` cannot run here, or None when it can."""
    for module in ("cli.commands.serve", "uvicorn", "fastapi"):
        if importlib.util.find_spec(module.split(".")[0]) is None or importlib.util.find_spec(module) is None:
            return f"`dgae serve` is unavailable: module {module} is missing (service branch not merged?)"
    return None


def skip_without_serve() -> None:
    reason = serve_unavailable()
    if reason:
        pytest.skip(reason)


def service_env(checkpoint: Path, port: int, **extra: str) -> dict[str, str]:
    """Environment for a CPU torch replica on loopback (no inherited DGAE_* settings)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DGAE_")}
    env.update(DGAE_CHECKPOINT=str(checkpoint), DGAE_HOST="127.0.0.1", DGAE_PORT=str(port),
               DGAE_BACKEND="torch", DGAE_DEVICE="cpu", PYTHONPATH=str(REPO))
    env.update(extra)
    return env


def start(cmd: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    proc.log_file, proc.log_path = log, log_path  # type: ignore[attr-defined]
    return proc


def start_service(checkpoint: Path, port: int, log_path: Path, **extra_env: str) -> subprocess.Popen:
    return start([sys.executable, "-m", "cli", "serve"], service_env(checkpoint, port, **extra_env), log_path)


def log_tail(proc: subprocess.Popen) -> str:
    try:
        return Path(proc.log_path).read_text(errors="replace")[-LOG_TAIL_CHARS:]  # type: ignore[attr-defined]
    except OSError:
        return "<no log>"


def wait_ready(port: int, procs: list[subprocess.Popen], path: str = "/readyz",
               timeout: float = READY_TIMEOUT_S) -> None:
    """Poll until GET path answers 200; fail with the logs if a process exits first."""
    import httpx  # noqa: PLC0415

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                pytest.fail(f"process exited with {proc.returncode} before {path} was ready:\n{log_tail(proc)}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5).status_code == HTTP_OK:
                return
        except httpx.HTTPError:
            pass
        time.sleep(POLL_S)
    pytest.fail(f"127.0.0.1:{port}{path} not ready after {timeout:.0f} s:\n" + "\n".join(map(log_tail, procs)))


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> int | None:
    """Signal the process we started (only it), wait, kill if it hangs; returns its exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    proc.log_file.close()  # type: ignore[attr-defined]
    return proc.returncode
