"""The jobs API and the cost model in-process (ASGI) on the tiny checkpoint: submit, poll, result
equal to the synchronous route, events, cancel, bounds, restart and shut-down; padded/tiled
admission and the up-front refusal of work estimated over its deadline."""
from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from backends.torch_backend import TorchBackend
from dgae.presets import get_preset
from dgae.request import DecodeRequest
from service.app import create_app
from service.core import cost
from service.core.settings import ServiceSettings
from service_cases import API_KEY, AUTH, latents, st_bytes

READY_WAIT_S = 60
JOB_WAIT_S = 120
POLL_S = 0.05
STEPS = 2
SLOW_PASS_S = 0.1  # the slow backend's sleep per denoiser pass
BIG_LATENT = 128  # 1024 x 1024 pixels: 16 decode tiles of the tiny model


def slow_backend(checkpoint) -> TorchBackend:
    """The tiny model with every denoiser pass slowed, so a tiled job runs for seconds."""
    backend = TorchBackend.from_checkpoint(checkpoint)
    inner = backend.denoise

    def denoise(buf, t):
        time.sleep(SLOW_PASS_S)
        return inner(buf, t)

    backend.denoise = denoise
    return backend


def make_client(tmp_path, checkpoint=None, backend=None, **overrides) -> TestClient:
    settings = ServiceSettings(**{"backend": "torch", "checkpoint": str(checkpoint) if checkpoint else None,
                                  "api_keys": (API_KEY,), "max_wait_ms": 5, "torch_threads": 1,
                                  "default_steps": STEPS, "jobs_dir": str(tmp_path / "jobs"), **overrides})
    return TestClient(create_app(settings, backend=backend))


def wait_ready(client: TestClient) -> None:
    deadline = time.monotonic() + READY_WAIT_S
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").json()
        time.sleep(POLL_S)


def submit(client, side: int = 8, seed: int = 5, **params) -> dict:
    q = {"seed": seed, **params}
    r = client.post("/v1/jobs/decode", params=q, content=st_bytes(latents(h=side, w=side, seed=seed)), headers=AUTH)
    assert r.status_code == 202, r.text
    assert r.headers["location"] == f"/v1/jobs/{r.json()['id']}"
    return r.json()


def poll(client, job_id: str, until=lambda j: j["state"] not in ("queued", "running")) -> tuple[dict, list[dict]]:
    seen, deadline = [], time.monotonic() + JOB_WAIT_S
    while True:
        job = client.get(f"/v1/jobs/{job_id}", headers=AUTH).json()
        seen.append(job)
        if until(job):
            return job, seen
        assert time.monotonic() < deadline, job
        time.sleep(POLL_S)


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="module")
def client(tiny_checkpoint, tmp_path_factory):
    with make_client(tmp_path_factory.mktemp("jobs"), tiny_checkpoint) as c:
        wait_ready(c)
        yield c


# --- the cost model --------------------------------------------------------------------------
def test_padded_and_tiled_pixels():
    cfg = get_preset("tiny")
    f, t = cfg.downsample_factor, cfg.tiling
    assert cost.encode_pixels(cfg, 1, 65536) > 65536 * f  # 8 rows once padded, tiles overlap
    assert cost.encode_pixels(cfg, 64, 64) == 64 * 64
    assert cost.decode_pixels(cfg, 1, 1) == cfg.decoder_multiple ** 2  # one latent pixel pads to the multiple
    assert cost.decode_pixels(cfg, 256, 256) == 64 * t.decode_tile ** 2  # 2048²: 8 x 8 tiles of 288²
    assert cost.decode_pixels(cfg, 256, 256, tile="off") == 2048 * 2048


def test_model_reports_the_measured_rates(client):
    body = client.get("/v1/model", headers=AUTH).json()
    rates = body["cost"]["seconds_per"]
    assert rates["decode"]["unit"] == "megapixel_step" and rates["decode"]["seconds"] > 0
    assert rates["encode"]["seconds"] > 0 and body["limits"]["max_request_timeout_s"] > 0
    assert 'dgae_cost_seconds_per_unit{backend="torch"' in client.get("/metrics").text


def test_thin_image_is_charged_its_padded_size(client):
    wide = io.BytesIO()
    Image.new("RGB", (4096 * 4096, 1)).save(wide, format="PNG")  # within max_pixels; 8 rows once padded
    r = client.post("/encode", content=wide.getvalue(), headers={**AUTH, "Content-Type": "image/png"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large", r.text
    charged = int(r.json()["error"]["message"].split(" holds ")[1].split()[0])
    assert charged >= 4096 * 4096 * 8  # refused from the header and the tile count, before any pixel is decoded


def test_over_deadline_is_refused_up_front_naming_estimate_deadline_and_jobs(tiny_checkpoint, tmp_path):
    with make_client(tmp_path, tiny_checkpoint, request_timeout_s=0.0001) as c:
        wait_ready(c)
        body = st_bytes(latents(h=8, w=8))
        r = c.post("/decode", content=body, headers=AUTH)
        assert r.status_code == 413, r.text
        err = r.json()["error"]
        assert err["code"] == "over_deadline"
        for needle in ("estimated at", "0.0001 s", "POST /v1/jobs/decode", "X-DGAE-Timeout-S"):
            assert needle in err["message"], err
        r = c.post("/decode", content=body, headers={**AUTH, "X-DGAE-Timeout-S": "600"})
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert c.post("/decode", content=body, headers={**AUTH, "X-DGAE-Timeout-S": "soon"}).status_code == 422
        assert 'dgae_over_deadline_rejections_total{operation="decode"} 1.0' in c.get("/metrics").text


# --- jobs ------------------------------------------------------------------------------------
def test_job_result_equals_the_synchronous_decode(client):
    job = submit(client)
    assert job["state"] in ("queued", "running") and job["progress"]["total"] == STEPS
    done, seen = poll(client, job["id"])
    assert done["state"] == "done" and done["progress"] == {"done": STEPS, "total": STEPS, "fraction": 1.0}
    fractions = [j["progress"]["done"] for j in seen]
    assert fractions == sorted(fractions)
    r = client.get(f"/v1/jobs/{job['id']}/result", headers=AUTH)
    sync = client.post("/decode?seed=5", content=st_bytes(latents(h=8, w=8, seed=5)), headers=AUTH)
    assert r.status_code == 200 and r.headers["content-type"] == sync.headers["content-type"] == "image/png"
    assert r.headers["x-dgae-seeds"] == sync.headers["x-dgae-seeds"] == "5"
    assert np.abs(pixels(r.content) - pixels(sync.content)).max() <= 1


def test_encode_job_returns_the_encode_body(client):
    image = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 90)).save(image, format="PNG")
    r = client.post("/v1/jobs/encode?format=json", content=image.getvalue(),
                    headers={**AUTH, "Content-Type": "image/png"})
    assert r.status_code == 202, r.text
    done, _ = poll(client, r.json()["id"])
    assert done["state"] == "done"
    got = client.get(f"/v1/jobs/{done['id']}/result", headers=AUTH).json()
    sync = client.post("/encode?format=json", content=image.getvalue(),
                       headers={**AUTH, "Content-Type": "image/png"}).json()
    assert got["shape"] == sync["shape"]
    assert np.allclose(got["latents"], sync["latents"], atol=1e-5)


def test_job_errors_and_ownership(client):
    assert client.get("/v1/jobs/nope", headers=AUTH).json()["error"]["code"] == "not_found"
    r = client.post("/v1/jobs/decode?step=2", content=st_bytes(latents()), headers=AUTH)
    assert r.status_code == 400 and "steps" in r.json()["error"]["message"]
    r = client.post("/v1/jobs/decode", content=b"not latents", headers=AUTH)
    assert r.status_code == 400  # checked at submission: no job is made
    assert client.post("/v1/jobs/decode", content=st_bytes(latents())).status_code == 401


def test_events_stream_progress_then_end(client):
    job = submit(client, side=8, seed=9)
    with client.stream("GET", f"/v1/jobs/{job['id']}/events", headers=AUTH) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        text = "".join(r.iter_text())
    events = [block for block in text.split("\n\n") if block.startswith("event:")]
    progress = [json.loads(e.split("data: ", 1)[1]) for e in events if e.startswith("event: progress")]
    assert events[-1].startswith("event: end") and '"state": "done"' in events[-1]
    done = [p["progress"]["done"] for p in progress]
    assert done == sorted(done) and progress[-1]["state"] == "done"


def test_cancel_running_job_frees_the_worker(tiny_checkpoint, tmp_path):
    with make_client(tmp_path, backend=slow_backend(tiny_checkpoint), warmup=False) as c:
        wait_ready(c)
        job = submit(c, side=BIG_LATENT)
        poll(c, job["id"], until=lambda j: j["progress"]["done"] >= 2)
        c.app.state.service.cost.observe("decode", 1.0, 1e-6, calibration=True)  # a rate: small work fits alone
        r = c.post("/decode", content=st_bytes(latents()), headers={**AUTH, "X-DGAE-Timeout-S": "0.5"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "busy" and "retry-after" in r.headers
        assert "busy with a job" in r.json()["error"]["message"]
        r = c.delete(f"/v1/jobs/{job['id']}", headers=AUTH)
        assert r.status_code == 202
        ended, _ = poll(c, job["id"])
        assert ended["state"] == "cancelled" and ended["progress"]["done"] < ended["progress"]["total"]
        r = c.get(f"/v1/jobs/{job['id']}/result", headers=AUTH)
        assert r.status_code == 410 and r.json()["error"]["code"] == "cancelled"
        assert c.post("/decode?steps=1", content=st_bytes(latents()), headers=AUTH).status_code == 200
        assert c.delete(f"/v1/jobs/{job['id']}", headers=AUTH).status_code == 204
        assert c.get(f"/v1/jobs/{job['id']}", headers=AUTH).status_code == 404


def test_bounds_name_themselves(tiny_checkpoint, tmp_path):
    with make_client(tmp_path, backend=slow_backend(tiny_checkpoint), warmup=False, jobs_max_per_key=1,
                     jobs_max_result_bytes=1) as c:
        wait_ready(c)
        first = submit(c)
        r = c.post("/v1/jobs/decode", content=st_bytes(latents()), headers=AUTH)
        assert r.status_code == 429 and "jobs_max_per_key" in r.json()["error"]["message"]
        done, _ = poll(c, first["id"])
        assert done["state"] == "failed" and done["error"]["code"] == "storage_full"
        assert "jobs_max_result_bytes" in done["error"]["message"]
        assert 'dgae_jobs{state="failed"} 1.0' in c.get("/metrics").text


def test_results_survive_a_restart_and_running_jobs_end_with_a_reason(tiny_checkpoint, tmp_path):
    backend = slow_backend(tiny_checkpoint)
    with make_client(tmp_path, backend=backend, warmup=False, shutdown_timeout_s=1) as c:
        wait_ready(c)
        small = submit(c)
        poll(c, small["id"])
        result = c.get(f"/v1/jobs/{small['id']}/result", headers=AUTH).content
        big = submit(c, side=BIG_LATENT)
        poll(c, big["id"], until=lambda j: j["state"] == "running")
    # the app shut down (SIGTERM's path): the running job did not finish within 1 s
    with make_client(tmp_path, backend=backend, warmup=False) as c:
        wait_ready(c)
        assert c.get(f"/v1/jobs/{small['id']}/result", headers=AUTH).content == result
        ended = c.get(f"/v1/jobs/{big['id']}", headers=AUTH).json()
        assert ended["state"] == "failed" and ended["error"]["code"] == "shutting_down"
        assert "shutdown_timeout_s" in ended["error"]["message"]


def test_a_running_job_that_finishes_within_the_shutdown_timeout_is_drained(tiny_checkpoint, tmp_path):
    backend = slow_backend(tiny_checkpoint)
    with make_client(tmp_path, backend=backend, warmup=False, shutdown_timeout_s=60) as c:
        wait_ready(c)
        job = submit(c)
        poll(c, job["id"], until=lambda j: j["state"] != "queued")
    with make_client(tmp_path, backend=backend, warmup=False) as c:
        wait_ready(c)
        assert c.get(f"/v1/jobs/{job['id']}", headers=AUTH).json()["state"] == "done"
        assert c.get(f"/v1/jobs/{job['id']}/result", headers=AUTH).headers["content-type"] == "image/png"


def test_a_job_left_running_by_a_killed_process_is_failed_at_start(tiny_checkpoint, tmp_path):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    record = {"id": "abc", "operation": "decode", "owner": "anonymous", "state": "running", "total": 4, "done": 1}
    (jobs / "abc.json").write_text(json.dumps(record))
    with make_client(tmp_path, tiny_checkpoint, warmup=False, api_keys=()) as c:
        wait_ready(c)
        job = c.get("/v1/jobs/abc").json()
        assert job["state"] == "failed" and job["error"]["code"] == "interrupted"
        assert "running" in job["error"]["message"]


def test_decode_passes_count_tiles_times_steps(tiny_checkpoint):
    backend = TorchBackend.from_checkpoint(tiny_checkpoint)
    side = 64  # 512 x 512 pixels: 2 x 2 tiles of 288 (tiny model)
    req = DecodeRequest.resolve(backend.config, torch.zeros(1, 4, side, side), 2, 0)
    calls = []
    backend.run_decode(req, on_pass=lambda: calls.append(1))
    assert len(calls) == backend.decode_passes(req) == 4 * 2
