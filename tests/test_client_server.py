"""dgae_client beside the project: torch tensors in and out (recognised without importing torch; the
images match formats.images' conversion), the client's own tests and a real round trip with torch
hidden from the client's process, and a real served model: encode/decode/info/ready, server error
codes, and a retry across a 503 while the decode queue is full."""
from __future__ import annotations

import asyncio
import io
import logging
import os
import re
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from dgae_client import (ArgumentError, AsyncClient, BadRequest, Client, InvalidParameter, ServiceUnavailable,
                         Unauthorized)
from formats.images import to_uint8
from service_cases import AUTH, API_KEY, C, F, latents, png, serve, st_bytes
from test_client import (PADDED_H, PADDED_W, PHOTO_H, PHOTO_W, RETRY_AFTER_S, Script, client_for, encode_answer,
                         npy_response, sent_metadata)

SLOW_STEPS = 64             # keeps the single-slot slow server busy
SLOW_SIDE = 8               # latent side of the slow decodes (64x64 images)
POLL_S = 0.05
HTTP_TIMEOUT_S = 120.0
SUBPROCESS_TIMEOUT_S = 300
REPO_ROOT = Path(__file__).resolve().parent.parent
# Prepended to a subprocess's code: torch behaves as if it were not installed.
HIDE_TORCH = textwrap.dedent('''
    import sys

    class HideTorch:
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] == "torch":
                raise ModuleNotFoundError(f"No module named {name!r} (hidden)", name=name)
            return None

    sys.meta_path.insert(0, HideTorch())
    try:
        import torch
    except ModuleNotFoundError:
        pass
    else:
        raise SystemExit("torch is not hidden")
''')


def without_torch(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (the repository on its path) where torch cannot be imported;
    the code's last act should be to check ``'torch' not in sys.modules``."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "-c", HIDE_TORCH + textwrap.dedent(code)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)


# --- torch tensors, recognised without importing torch ------------------------------------------------
def test_import_leaves_torch_out_of_sys_modules():
    """Issue 23's check, verbatim, in an interpreter where torch is installed."""
    out = subprocess.run([sys.executable, "-c", "import dgae_client, sys; print('torch' in sys.modules)"],
                         cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_torch_images_are_sent_as_formats_images_would_convert_them():
    x = torch.empty(2, 3, 8, 6).uniform_(-1.2, 1.2, generator=torch.Generator().manual_seed(0))
    x[0, 0, 0, :3] = torch.tensor([-1 / 255, 1 / 255, 0.5 / 127.5])  # values on rounding edges
    script = Script(npy_response(np.zeros((3, C, 1, 1), np.float32)))
    with client_for(script) as c:
        out = c.encode([x, x[1].requires_grad_()], return_tensors="pt")
    assert isinstance(out, torch.Tensor) and out.shape == (3, C, 1, 1)
    body = script.bodies[0]
    sent = [np.asarray(Image.open(io.BytesIO(body[body.index(b"\x89PNG", start):])))
            for start in (m.start() for m in re.finditer(b'name="image"', body))]
    expected = to_uint8(x)
    assert [a.shape for a in sent] == [(8, 6, 3)] * 3
    assert np.array_equal(sent[0], expected[0]) and np.array_equal(sent[1], expected[1])
    assert np.array_equal(sent[2], expected[1])


@pytest.mark.parametrize("dtype, sent", [(torch.float32, np.float32), (torch.float16, np.float16),
                                         (torch.bfloat16, np.float32), (torch.float64, np.float32)])
def test_torch_latents_are_sent_as_npy(dtype, sent):
    z = latents(2, 2, 2).to(dtype).requires_grad_()
    script = Script(npy_response(np.zeros((2, 16, 16, 3), np.uint8)))
    with client_for(script) as c:
        images = c.decode(z, return_tensors="pt")
    assert isinstance(images, torch.Tensor) and images.dtype == torch.uint8 and images.shape == (2, 16, 16, 3)
    body = np.load(io.BytesIO(script.bodies[0]))
    assert body.dtype == sent and np.array_equal(body, z.detach().float().numpy().astype(sent))


def test_integer_torch_images_are_refused_before_any_request():
    script = Script(httpx.Response(200))
    with client_for(script) as c, pytest.raises(ArgumentError, match="torch images must be float"):
        c.encode(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))
    assert script.requests == []


def test_torch_latents_keep_the_original_size_through_decode():
    """Issue 27 with return_tensors="pt": the metadata is an attribute of the tensor encode returns."""
    full = np.zeros((1, PADDED_H, PADDED_W, 3), np.uint8)
    script = Script(encode_answer(1), npy_response(full))
    with client_for(script) as c:
        z = c.encode(png(PHOTO_H, PHOTO_W), return_tensors="pt")
        images = c.decode(z, return_tensors="pt")
    assert isinstance(z, torch.Tensor) and z.metadata["images"][0]["orig_width"] == PHOTO_W
    assert isinstance(images, torch.Tensor) and tuple(images.shape) == (1, PHOTO_H, PHOTO_W, 3)
    assert sent_metadata(script.bodies[1])["images"] == z.metadata["images"]


# --- torch hidden from the client's process ---------------------------------------------------------------
def test_the_client_tests_pass_with_torch_hidden():
    """tests/test_client.py (no conftest: that one loads the model) where torch cannot be imported."""
    run = without_torch('''
        import pytest
        code = pytest.main(["-q", "--noconftest", "-p", "no:cacheprovider", "tests/test_client.py"])
        print("TORCH_LOADED", "torch" in sys.modules)
        sys.exit(code)
    ''')
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert re.search(r"\b\d+ passed\b", run.stdout) and "TORCH_LOADED False" in run.stdout, run.stdout[-2000:]


def test_return_tensors_pt_without_torch_is_a_clear_argument_error():
    run = without_torch('''
        import httpx, numpy as np
        from dgae_client import ArgumentError, Client
        transport = httpx.MockTransport(lambda request: httpx.Response(500))
        with Client("http://dgae.test", transport=transport, retries=0) as c:
            try:
                c.decode(np.zeros((1, 4, 2, 2), np.float32), return_tensors="pt")
            except ArgumentError as exc:
                print("ERROR", exc)
        print("TORCH_LOADED", "torch" in sys.modules)
    ''')
    assert run.returncode == 0, run.stderr[-4000:]
    assert "ERROR return_tensors=\"pt\" needs torch" in run.stdout and "TORCH_LOADED False" in run.stdout


# --- against a real server ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def slow_server(tiny_checkpoint, tmp_path_factory):
    """One decode computes, one waits, the rest are refused with 503 queue_full (Retry-After 1)."""
    flags = ["--api-keys", API_KEY, "--max-batch-size", "1", "--queue-size", "1", "--max-wait-ms", "0",
             "--torch-threads", "1", "--default-steps", "1", "--retry-after-s", str(RETRY_AFTER_S)]
    with serve(tiny_checkpoint, tmp_path_factory.mktemp("client"), *flags) as s:
        yield s


def metric(url: str, name: str, labels: str) -> float:
    m = re.search(rf'^{name}\{{{labels}\}} (\S+)$', httpx.get(url + "/metrics").text, re.M)
    return float(m.group(1)) if m else 0.0


@pytest.mark.server
def test_real_server_encode_decode_info_ready_and_error_codes(slow_server, tmp_path):
    photo = tmp_path / "photo.png"
    photo.write_bytes(png(40, 48, seed=2))
    with Client(slow_server.url, api_key=API_KEY) as c:
        assert c.ready()
        c.wait_ready()
        info = c.info()
        assert info["preset"] == "tiny" and info["latent_channels"] == C
        z = c.encode([photo, photo])  # fit=pad: 48x40 -> latents 6x5
        assert z.shape == (2, C, 5, 6) and z.dtype == np.float32
        images = c.decode(z, seeds=5)
        assert images.shape == (2, 5 * F, 6 * F, 3)
        pngs = c.decode(st_bytes(torch.from_numpy(z[:1])), seeds=5, image_format="png")
        assert len(pngs) == 1 and Image.open(io.BytesIO(pngs[0])).size == (6 * F, 5 * F)
        with pytest.raises(InvalidParameter) as err:
            c.decode(z, steps=0)
        assert err.value.code == "invalid_parameter" and err.value.status == 422
        with pytest.raises(BadRequest) as err:
            c.encode(b"not an image")
        assert err.value.code == "invalid_input" and "cannot decode" in err.value.message
    with Client(slow_server.url) as c, pytest.raises(Unauthorized) as err:
        c.info()
    assert err.value.code == "unauthorized"

    async def go():
        async with AsyncClient(slow_server.url, api_key=API_KEY) as c:
            return await c.encode(photo), await c.ready()

    z1, ready = asyncio.run(go())
    assert ready and np.allclose(z1, z[:1], atol=1e-5)


@pytest.mark.server
def test_a_real_round_trip_with_torch_hidden_matches_one_with_torch(slow_server, tmp_path):
    """The client alone (torch not importable in its process) encodes and decodes against a real
    served model, and gets what a client beside torch gets."""
    photo = tmp_path / "photo.png"
    photo.write_bytes(png(40, 48, seed=4))
    out = tmp_path / "out.npz"
    run = without_torch(f'''
        import numpy as np
        from dgae_client import Client
        with Client({slow_server.url!r}, api_key={API_KEY!r}) as c:
            z = c.encode({str(photo)!r})
            images = c.decode(z, seeds=5)
            [file] = c.decode(z, seeds=5, image_format="png")
        np.savez({str(out)!r}, z=z, images=images, png=np.frombuffer(file, np.uint8))
        print("TORCH_LOADED", "torch" in sys.modules)
    ''')
    assert run.returncode == 0, run.stderr[-4000:]
    assert "TORCH_LOADED False" in run.stdout
    alone = np.load(out)
    with Client(slow_server.url, api_key=API_KEY) as c:
        z = c.encode(torch.from_numpy(np.array(Image.open(photo))).permute(2, 0, 1).float() / 127.5 - 1)
        images = c.decode(z, seeds=5, return_tensors="pt")
    assert alone["z"].shape == (1, C, 5, 6) and np.allclose(alone["z"], z, atol=1e-5)
    assert alone["images"].shape == (1, 5 * F, 6 * F, 3) and alone["images"].dtype == np.uint8
    assert np.abs(alone["images"].astype(int) - images.numpy().astype(int)).max() <= 1
    assert Image.open(io.BytesIO(alone["png"].tobytes())).size == (6 * F, 5 * F)


@pytest.mark.server
def test_real_server_round_trips_a_451x300_photo_at_its_size(slow_server):
    """Issue 27 against the service: numpy latents from encode decode to 451x300 (arrays and PNG)."""
    with Client(slow_server.url, api_key=API_KEY) as c:
        z = c.encode(png(PHOTO_H, PHOTO_W, seed=3))
        assert z.shape == (1, C, PADDED_H // F, PADDED_W // F)
        assert c.decode(z, seeds=1).shape == (1, PHOTO_H, PHOTO_W, 3)
        [file] = c.decode(z, seeds=1, image_format="png")
        assert Image.open(io.BytesIO(file)).size == (PHOTO_W, PHOTO_H)
        assert c.decode(np.asarray(z).copy(), seeds=1).shape == (1, PADDED_H, PADDED_W, 3)  # no record: full size


@pytest.mark.server
def test_client_waits_retry_after_across_a_full_queue_and_succeeds(slow_server, caplog):
    """Must show 3: with one decode computing and one queued, the next request is refused 503
    queue_full; Client names that code (retries=0), and with retries waits Retry-After and succeeds."""
    import tritonclient.http as httpclient  # noqa: PLC0415 - the v2 form of the same refusal
    from tritonclient.utils import InferenceServerException  # noqa: PLC0415

    busy = st_bytes(latents(1, SLOW_SIDE, SLOW_SIDE))
    z = latents(1, 2, 2).numpy()
    rejected = 'operation="decode"'
    before = metric(slow_server.url, "dgae_queue_rejections_total", rejected)
    with ThreadPoolExecutor(2) as pool:
        futures = []
        for i in range(2):  # one after the other: the first computes before the second queues (queue_size 1)
            futures.append(pool.submit(httpx.post, f"{slow_server.url}/decode?steps={SLOW_STEPS}&seed={i}",
                                       content=busy, headers=AUTH, timeout=HTTP_TIMEOUT_S))
            while metric(slow_server.url, "dgae_pending_requests", rejected) < len(futures):
                assert not any(f.done() for f in futures), [f.result().text for f in futures if f.done()]
                time.sleep(POLL_S)
            time.sleep(POLL_S)  # the batch loop takes the request it was told of
        with Client(slow_server.url, api_key=API_KEY, retries=0) as c, pytest.raises(ServiceUnavailable) as err:
            c.decode(z, seeds=3)
        assert err.value.code == "queue_full" and err.value.status == 503
        assert err.value.retry_after_s == RETRY_AFTER_S and "queue is full" in err.value.message
        with pytest.raises(InferenceServerException) as v2_err:
            inp = httpclient.InferInput("latents", list(z.shape), "FP32")
            inp.set_data_from_numpy(z)
            httpclient.InferenceServerClient(slow_server.url.removeprefix("http://")).infer(
                "dgae-decoder", [inp], headers=dict(AUTH))
        assert v2_err.value.status() == "503" and "queue is full" in v2_err.value.message()
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, "dgae_client"), \
                Client(slow_server.url, api_key=API_KEY, retries=60, max_backoff_s=2 * RETRY_AFTER_S) as c:
            images = c.decode(z, seeds=3)
        waited = time.monotonic() - started
        assert all(f.result().status_code == 200 for f in futures)
    assert images.shape == (1, 2 * F, 2 * F, 3)
    retries = [r.getMessage() for r in caplog.records if "queue_full" in r.getMessage()]
    assert retries and all(f"Retry-After {RETRY_AFTER_S}" in m for m in retries), retries
    assert waited >= RETRY_AFTER_S * len(retries)
    assert metric(slow_server.url, "dgae_queue_rejections_total", rejected) >= before + 2 + len(retries)
    with Client(slow_server.url, api_key=API_KEY) as c:  # the same latents and seed alone: the same image
        assert np.abs(c.decode(z, seeds=3).astype(int) - images.astype(int)).max() <= 1
    print(f"\nretry across 503: {len(retries)} refusal(s) with Retry-After {RETRY_AFTER_S}, succeeded after "
          f"{waited:.2f} s")


@pytest.mark.server
def test_a_job_awaited_with_a_progress_bar_equals_the_synchronous_decode(slow_server, capsys):
    z = np.random.default_rng(0).standard_normal((1, C, 6, 5)).astype(np.float32)
    with Client(slow_server.url, api_key=API_KEY) as c:
        sync = c.decode(z, steps=2, seeds=9)
        job = c.submit_decode(z, steps=2, seeds=9)
        assert job.state in ("queued", "running", "done") and job.id
        out = c.wait(job, poll_s=0.05)
        assert c.job(job).state == "done"
    assert out.shape == sync.shape and np.abs(out.astype(int) - sync.astype(int)).max() <= 1
    bar = capsys.readouterr().err  # tqdm's bar: the job's denoiser passes (1 tile x 2 steps)
    assert "2/2" in bar and "pass" in bar


@pytest.mark.server
def test_dgae_decode_with_server_runs_a_job_and_writes_the_local_decodes_image(slow_server, tiny_checkpoint,
                                                                                tmp_path, capsys):
    from cli.main import main as dgae  # noqa: PLC0415

    latents = tmp_path / "z.safetensors"
    latents.write_bytes(st_bytes(torch.randn(1, C, 4, 6, generator=torch.Generator().manual_seed(3))))
    common = [str(latents), "--steps", "2", "--seed", "4"]
    assert dgae(["decode", *common, "-o", str(tmp_path / "remote.png"), "--server", slow_server.url,
                 "--api-key", API_KEY]) == 0
    out = capsys.readouterr()
    assert "job " in out.out and "2/2" in out.err  # submitted, then the progress bar of its passes
    assert dgae(["decode", *common, "-o", str(tmp_path / "local.png"), "--checkpoint", str(tiny_checkpoint)]) == 0
    remote, local = (np.asarray(Image.open(tmp_path / n)).astype(int) for n in ("remote.png", "local.png"))
    assert remote.shape == local.shape == (4 * F, 6 * F, 3) and np.abs(remote - local).max() <= 1
    assert dgae(["decode", *common, "-o", str(tmp_path / "x.png"), "--server", slow_server.url]) == 2  # no key
