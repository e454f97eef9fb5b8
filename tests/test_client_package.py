"""clients/python builds dgae-client alone: a wheel holding only the dgae_client package, depending on
numpy, httpx, pillow and safetensors with the same pins as dgae-serve (torch only as an extra)."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import dgae_client

REPO_ROOT = Path(__file__).resolve().parent.parent
CLIENT_PROJECT = REPO_ROOT / "clients" / "python"
BUILD_TIMEOUT_S = 300
CLIENT_DEPENDENCIES = {"numpy", "httpx", "pillow", "safetensors"}


def requirement_name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower()


def test_the_client_wheel_holds_only_the_client_package(tmp_path):
    project = tmp_path / "project"
    shutil.copytree(CLIENT_PROJECT, project, symlinks=False)  # the dgae_client link becomes files
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(project),
                    "-w", str(tmp_path / "dist")], check=True, timeout=BUILD_TIMEOUT_S, capture_output=True)
    [wheel] = (tmp_path / "dist").glob("dgae_client-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    packaged = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert packaged == {"dgae_client"}
    assert {Path(n).name for n in names if n.startswith("dgae_client/")} == \
        {p.name for p in (REPO_ROOT / "dgae_client").glob("*.py")}
    required = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert {requirement_name(r) for r in required if "extra ==" not in r} == CLIENT_DEPENDENCIES
    assert [requirement_name(r) for r in required if "extra ==" in r] == ["torch"]


def test_the_client_pins_are_dgae_serves():
    client = tomllib.loads((CLIENT_PROJECT / "pyproject.toml").read_text())["project"]
    serve = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    serve_pins = {requirement_name(r): r for r in serve["dependencies"] + serve["optional-dependencies"]["client"]}
    assert {requirement_name(r) for r in client["dependencies"]} == CLIENT_DEPENDENCIES
    assert all(serve_pins[requirement_name(r)] == r for r in client["dependencies"])
    assert client["requires-python"] == serve["requires-python"]
    assert client["version"] == serve["version"] == dgae_client.__version__
