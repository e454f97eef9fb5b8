"""The deployment entrypoint: backend choice per machine, the build-once engine cache (keyed by
checkpoint + GPU + TensorRT version), the TensorRT fallback, the healthcheck probe, and the real
script serving a checkpoint on this CPU machine outside Docker."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from deploy import entrypoint, healthcheck
from export import cache as engine_cache
from deploy.entrypoint import Machine, decide, prepare, prepare_with_fallback
from dgae.checkpoint import BUNDLED_CHECKPOINT
from dgae.errors import BackendError, ConfigError

from service_cases import free_port, png
from service_procs import REPO, skip_without_serve, start, stop, wait_ready

SCRIPT = REPO / "docker" / "entrypoint.sh"
CPU = Machine(torch="2.13.0")
L4 = Machine(gpu="NVIDIA L4", gpu_capability="8.9", tensorrt="10.9.0", torch="2.13.0")
H100 = Machine(gpu="NVIDIA H100 80GB HBM3", gpu_capability="9.0", tensorrt="10.9.0", torch="2.13.0")
SHA_A, SHA_B = "a" * 64, "b" * 64


# --- backend choice ---------------------------------------------------------------------------
def test_no_gpu_leaves_the_cpu_runtime_to_the_services_auto_backend(tmp_path):
    plan = decide({}, CPU, "/w/model.safetensors", SHA_A)
    assert (plan.backend, plan.device, plan.precision) == ("auto", "cpu", "fp32")
    assert not plan.build_onnx and not plan.build_engine
    cache = tmp_path / "volume"
    served = prepare(plan, CPU, {"DGAE_ENGINE_CACHE": str(cache)}, FakeExport())
    assert served["DGAE_BACKEND"] == "auto" and served["DGAE_CACHE_DIR"] == str(cache)  # its export cache: the volume
    mine = prepare(plan, CPU, {"DGAE_ENGINE_CACHE": str(cache), "DGAE_CACHE_DIR": "/elsewhere"}, FakeExport())
    assert mine["DGAE_CACHE_DIR"] == "/elsewhere"


def test_gpu_with_tensorrt_builds_engines_in_fp16():
    plan = decide({}, L4, "/w/model.safetensors", SHA_A)
    assert (plan.backend, plan.device, plan.precision) == ("tensorrt", "cuda", "fp16")
    assert plan.build_onnx and plan.build_engine and "L4" in plan.reason


def test_gpu_without_tensorrt_uses_torch_and_reference_kernels_without_a_compiler():
    plan = decide({}, Machine(gpu="NVIDIA L4", gpu_capability="8.9", torch="2.13.0"), "/m", SHA_A)
    assert (plan.backend, plan.device, plan.kernels) == ("torch", "cuda", "reference")
    with_cc = decide({}, Machine(gpu="NVIDIA L4", gpu_capability="8.9", torch="2.13.0", c_compiler=True), "/m", SHA_A)
    assert with_cc.kernels is None


def test_explicit_settings_win():
    plan = decide({"DGAE_BACKEND": "onnxruntime", "DGAE_PRECISION": "fp32"}, L4, "/m", SHA_A)
    assert (plan.backend, plan.precision, plan.build_onnx, plan.build_engine) == ("onnxruntime", "fp32", True, False)
    assert decide({"DGAE_DEVICE": "cpu"}, L4, "/m", SHA_A).backend == "auto"
    assert decide({"DGAE_BACKEND": "torch"}, CPU, "/m", SHA_A).backend == "torch"


@pytest.mark.parametrize("env, message", [
    ({"DGAE_BACKEND": "tensorflow"}, "DGAE_BACKEND='tensorflow'"),
    ({"DGAE_BACKEND": "tensorrt"}, "needs a CUDA GPU"),
    ({"DGAE_DEVICE": "cuda"}, "no CUDA GPU is visible"),
    ({"DGAE_DEVICE": "tpu"}, "DGAE_DEVICE='tpu'"),
])
def test_impossible_settings_are_named(env, message):
    with pytest.raises(ConfigError, match=message):
        decide(env, CPU, "/m", SHA_A)


# --- engine cache -----------------------------------------------------------------------------
class FakeExport:
    """Stands in for `dgae export onnx|tensorrt`: records calls, writes a file into -o DIR."""

    def __init__(self, fail: str | None = None):
        self.calls: list[list[str]] = []
        self.fail = fail

    def __call__(self, cmd):
        self.calls.append(list(cmd))
        what = cmd[cmd.index("export") + 1]
        if what == self.fail:
            return 3
        out = Path(cmd[cmd.index("-o") + 1])
        (out / f"{what}.bin").write_text(" ".join(cmd))
        (out / "manifest.json").write_text(json.dumps({"kind": what}))  # the exporter's own manifest
        return 0

    def kinds(self) -> list[str]:
        return [c[c.index("export") + 1] for c in self.calls]


def _prepare(tmp_path, machine, sha, run, env=None):
    env = {"DGAE_ENGINE_CACHE": str(tmp_path / "cache"), **(env or {})}
    return prepare(decide(env, machine, "/w/m.safetensors", sha), machine, env, run)


def test_first_start_builds_then_every_later_start_reuses(tmp_path):
    run = FakeExport()
    first = _prepare(tmp_path, L4, SHA_A, run)
    assert run.kinds() == ["onnx", "tensorrt"]
    trt_cmd = run.calls[1]
    assert "--fp16" in trt_cmd and trt_cmd[trt_cmd.index("--onnx") + 1] == first["DGAE_ONNX_DIR"]
    assert (Path(first["DGAE_ENGINE_DIR"]) / "tensorrt.bin").is_file()
    assert json.loads((Path(first["DGAE_ENGINE_DIR"]) / "manifest.json").read_text()) == {"kind": "tensorrt"}
    assert first["DGAE_BACKEND"] == "tensorrt" and first["DGAE_DEVICE"] == "cuda"
    again = _prepare(tmp_path, L4, SHA_A, run)
    assert again == first and run.kinds() == ["onnx", "tensorrt"]  # nothing rebuilt


def test_changed_gpu_rebuilds_engines_only_and_changed_checkpoint_rebuilds_all(tmp_path):
    run = FakeExport()
    l4 = _prepare(tmp_path, L4, SHA_A, run)
    h100 = _prepare(tmp_path, H100, SHA_A, run)
    assert run.kinds() == ["onnx", "tensorrt", "tensorrt"]
    assert h100["DGAE_ONNX_DIR"] == l4["DGAE_ONNX_DIR"] and h100["DGAE_ENGINE_DIR"] != l4["DGAE_ENGINE_DIR"]
    new_trt = Machine(**{**L4.__dict__, "tensorrt": "10.10.0"})
    assert _prepare(tmp_path, new_trt, SHA_A, run)["DGAE_ENGINE_DIR"] not in (l4["DGAE_ENGINE_DIR"],
                                                                              h100["DGAE_ENGINE_DIR"])
    other = _prepare(tmp_path, L4, SHA_B, run)
    assert run.kinds()[-2:] == ["onnx", "tensorrt"] and other["DGAE_ONNX_DIR"] != l4["DGAE_ONNX_DIR"]
    assert _prepare(tmp_path, L4, SHA_A, run) == l4  # the old entries are still reused
    manifest = engine_cache.read_entry(Path(l4["DGAE_ENGINE_DIR"]))
    assert manifest["parts"]["gpu"] == "NVIDIA L4" and manifest["parts"]["checkpoint_sha256"] == SHA_A


def test_failed_build_leaves_nothing_and_falls_back_to_torch(tmp_path):
    run = FakeExport(fail="tensorrt")
    env = {"DGAE_ENGINE_CACHE": str(tmp_path / "cache")}
    plan = decide(env, L4, "/w/m.safetensors", SHA_A)
    with pytest.raises(BackendError, match="TensorRT engine build failed with exit code 3"):
        prepare(plan, L4, env, run)
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(("trt-", ".trt-")) and p.is_dir()]
    served = prepare_with_fallback(plan, L4, env, run)
    assert served["DGAE_BACKEND"] == "torch" and served["DGAE_DEVICE"] == "cuda"
    assert "DGAE_ENGINE_DIR" not in served and served["DGAE_KERNELS"] == "reference"
    with pytest.raises(BackendError):
        prepare_with_fallback(plan, L4, {**env, "DGAE_ENGINE_FALLBACK": "fail"}, run)
    with pytest.raises(ConfigError, match="DGAE_ENGINE_FALLBACK='maybe'"):
        prepare_with_fallback(plan, L4, {**env, "DGAE_ENGINE_FALLBACK": "maybe"}, run)
    assert _prepare(tmp_path, L4, SHA_A, FakeExport())["DGAE_BACKEND"] == "tensorrt"  # next start retries


def test_incomplete_entry_is_rebuilt(tmp_path):
    built = []
    parts = {"checkpoint_sha256": SHA_A}
    entry = tmp_path / engine_cache.entry_name("onnx", parts)
    entry.mkdir()
    (entry / "half-written.onnx").write_text("x")  # no manifest: a crash mid-build on an old version

    def build(d: Path) -> None:
        built.append(d)
        (d / "m.onnx").write_text("y")

    out = engine_cache.ensure_entry(tmp_path, "onnx", parts, build)
    assert built and sorted(p.name for p in out.iterdir()) == sorted(["m.onnx", engine_cache.MANIFEST])


def test_replicas_sharing_the_cache_build_once(tmp_path):
    """A second process-equivalent (separate lock fd) waits for the first build, then reuses it."""
    parts, builds = {"checkpoint_sha256": SHA_A, "gpu": "L4"}, []
    release, started = threading.Event(), threading.Event()

    def slow_build(d: Path) -> None:
        builds.append(d)
        started.set()
        release.wait()
        (d / "engine.plan").write_text("e")

    results: dict[str, Path] = {}
    first = threading.Thread(target=lambda: results.__setitem__("a", engine_cache.ensure_entry(
        tmp_path, "trt", parts, slow_build)))
    second = threading.Thread(target=lambda: results.__setitem__("b", engine_cache.ensure_entry(
        tmp_path, "trt", parts, slow_build)))
    first.start()
    assert started.wait(30)
    second.start()
    second.join(0.5)
    assert second.is_alive() and len(builds) == 1  # waiting on the lock, not building
    release.set()
    first.join(30)
    second.join(30)
    assert len(builds) == 1 and results["a"] == results["b"]


def test_entry_kind_is_validated(tmp_path):
    with pytest.raises(ConfigError, match="kind"):
        engine_cache.ensure_entry(tmp_path, "../x", {}, lambda d: None)


# --- healthcheck probe ------------------------------------------------------------------------
def test_healthcheck_reports_a_closed_port_and_a_bad_setting(monkeypatch, capsys):
    monkeypatch.setenv("DGAE_PORT", str(free_port()))
    assert healthcheck.main() == healthcheck.EXIT_UNHEALTHY
    monkeypatch.setenv("DGAE_PORT", "eighty")
    assert healthcheck.main() == healthcheck.EXIT_UNHEALTHY
    assert "DGAE_PORT='eighty'" in capsys.readouterr().err


# --- the real script, outside Docker ----------------------------------------------------------
def _script_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DGAE_")}
    return {**env, "DGAE_PYTHON": sys.executable, **extra}


def test_plan_names_the_checkpoint_and_a_missing_one_is_a_one_line_error(tiny_checkpoint, tmp_path, monkeypatch,
                                                                          capsys, caplog):
    for key in [k for k in os.environ if k.startswith("DGAE_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("DGAE_CHECKPOINT", str(tiny_checkpoint))
    assert entrypoint.main(["plan"]) == 0
    plan = json.loads(capsys.readouterr().out)["plan"]
    assert plan["checkpoint"] == str(Path(tiny_checkpoint).resolve()) and len(plan["checkpoint_sha256"]) == 64
    assert (plan["backend"], plan["device"]) == ("auto", "cpu")
    monkeypatch.setenv("DGAE_CHECKPOINT", str(tmp_path / "nope.safetensors"))
    assert entrypoint.main(["plan"]) == entrypoint.EXIT_USER_ERROR
    assert "checkpoint not found" in caplog.text


def test_script_runs_any_other_command_instead():
    out = subprocess.run([str(SCRIPT), "echo", "hello"], env=_script_env(), capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "hello"


@pytest.mark.server
@pytest.mark.parametrize("which", ["tiny", "bundled"])
def test_script_serves_on_cpu_outside_docker(which, tiny_checkpoint, tmp_path, monkeypatch):
    skip_without_serve()
    if which == "bundled" and not BUNDLED_CHECKPOINT.is_file():
        pytest.skip(f"no bundled checkpoint at {BUNDLED_CHECKPOINT} yet")
    port = free_port()
    extra = {"DGAE_CHECKPOINT": str(tiny_checkpoint)} if which == "tiny" else {}
    env = _script_env(DGAE_PORT=str(port), DGAE_HOST="127.0.0.1", DGAE_ENGINE_CACHE=str(tmp_path / "cache"), **extra)
    proc = start([str(SCRIPT)], env, tmp_path / "entrypoint.log")
    try:
        wait_ready(port, [proc])
        monkeypatch.setenv("DGAE_PORT", str(port))
        assert healthcheck.main() == healthcheck.EXIT_HEALTHY
        model = httpx.get(f"http://127.0.0.1:{port}/v1/model", timeout=30).json()
        assert (model["backend"], model["device"]) == ("onnxruntime", "cpu"), model  # the fastest CPU runtime
        assert model["backend_reason"].startswith("backend=auto chose onnxruntime-cpu"), model
        resp = httpx.post(f"http://127.0.0.1:{port}/encode", content=png(32, 32),
                          headers={"Content-Type": "image/png"}, timeout=120)
        assert resp.status_code == 200, resp.text
        n, c, h, w = map(int, resp.headers["X-DGAE-Shape"].split(","))
        assert n == 1 and h * 8 <= 32 and h == w and c >= 1
    finally:
        code = stop(proc)
    assert code == 0, f"entrypoint did not exit cleanly on SIGTERM ({code})"
    log = (tmp_path / "entrypoint.log").read_text()
    assert "plan: backend=auto device=cpu" in log


def test_precision_reaches_the_right_export_step(tmp_path):
    run = FakeExport()
    _prepare(tmp_path, L4, SHA_A, run, {"DGAE_BACKEND": "onnxruntime"})
    _prepare(tmp_path, L4, SHA_A, run, {"DGAE_PRECISION": "bf16", "DGAE_TRT_BUILD_ARGS": "--max-batch 4"})
    onnx_fp16, onnx_fp32, trt_bf16 = run.calls
    assert "--fp16" in onnx_fp16 and "--fp16" not in onnx_fp32  # TensorRT builds from the fp32 export
    assert trt_bf16[-3:] == ["--bf16", "--max-batch", "4"]
