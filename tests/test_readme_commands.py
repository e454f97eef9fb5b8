"""The README's shell commands, run literally: the curl examples against a real `dgae serve` of the
bundled model, the CLI quick start in a folder holding the photos they name. A command that fails
(curl's --fail-with-body, a non-zero exit) fails the test with its output."""
from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service_cases import free_port
from service_procs import REPO, skip_without_serve, start_service, stop, wait_ready

pytestmark = [pytest.mark.server, pytest.mark.slow, pytest.mark.timeout(900)]

README = REPO / "README.md"
CHECKPOINT = REPO / "weights" / "dgae-small-f8c4.safetensors"
PHOTO_SIDE = 64  # small photos keep the bundled model's decodes quick
README_HOST = "localhost:8000"
COMMAND_TIMEOUT_S = 300
FAIL_FLAGS = "curl -sS --fail-with-body "


def shell_blocks(text: str) -> list[list[str]]:
    """The commands of every ```bash block: comments dropped, backslash continuations joined."""
    blocks = []
    for body in re.findall(r"```bash\n(.*?)```", text, re.S):
        commands, pending = [], ""
        for line in body.splitlines():
            line = pending + line
            if line.endswith("\\"):
                pending = line[:-1] + " "
                continue
            pending = ""
            if line.strip() and not line.lstrip().startswith("#"):
                commands.append(line)
        blocks.append(commands)
    return blocks


def curl_commands() -> list[str]:
    return [c for block in shell_blocks(README.read_text()) for c in block if c.startswith("curl ")]


def cli_commands() -> list[str]:
    """The quick start's commands (the GPU path's have their own tests: test_kernels_compile,
    test_bench_roofline, test_gpu_run)."""
    quick = next(block for block in shell_blocks(README.read_text()) if any(" info" in c for c in block))
    return [c for c in quick if c.startswith(".venv/bin/dgae ")]


def write_photos(folder: Path) -> None:
    """The files the README's commands name: photos of different sizes (a.jpg and b.jpg differ)."""
    rng = np.random.default_rng(0)
    sizes = {"photo.png": (PHOTO_SIDE, PHOTO_SIDE), "photo.jpg": (PHOTO_SIDE, PHOTO_SIDE + 8),
             "a.png": (PHOTO_SIDE, PHOTO_SIDE), "b.png": (PHOTO_SIDE, PHOTO_SIDE), "small.png": (16, 16),
             "a.jpg": (PHOTO_SIDE, PHOTO_SIDE), "b.jpg": (PHOTO_SIDE - 8, PHOTO_SIDE + 16)}
    for name, (h, w) in sizes.items():
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="PNG" if name.endswith(".png") else "JPEG")
        (folder / name).write_bytes(buf.getvalue())


def run(command: str, cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=cwd, capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT_S)
    assert done.returncode == 0, f"{command}\nexit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done


def test_the_readme_has_the_commands_this_test_runs():
    curls, clis = curl_commands(), cli_commands()
    assert any("/encode" in c for c in curls) and any("/decode" in c for c in curls)
    assert any("/v2/" in c for c in curls) and any(" roundtrip " in c for c in clis)


def test_readme_curl_examples_against_a_real_server(tmp_path):
    skip_without_serve()
    port = free_port()
    write_photos(tmp_path)
    proc = start_service(CHECKPOINT, port, tmp_path / "serve.log")
    try:
        wait_ready(port, [proc])
        for command in curl_commands():
            command = command.replace("curl ", FAIL_FLAGS, 1).replace(README_HOST, f"127.0.0.1:{port}")
            run(command, tmp_path)
    finally:
        stop(proc)
    assert Image.open(tmp_path / "photo_rec.png").size == Image.open(tmp_path / "photo.png").size
    assert zipfile_names(tmp_path / "ab.zip") == 2
    assert Image.open(tmp_path / "rec.webp").format == "WEBP"


def zipfile_names(path: Path) -> int:
    import zipfile  # noqa: PLC0415

    with zipfile.ZipFile(path) as zf:
        return len(zf.namelist())


def test_readme_cli_quick_start(tmp_path):
    write_photos(tmp_path)
    venv_bin = Path(sys.executable).parent
    if not (venv_bin / "dgae").exists():
        pytest.skip("the dgae console script is not installed in this environment")
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "bin").symlink_to(venv_bin)
    for command in cli_commands():
        run(command, tmp_path)
    assert Image.open(tmp_path / "photo_rec.png").size == Image.open(tmp_path / "photo.jpg").size
