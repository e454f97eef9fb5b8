"""Shared helpers for the service tests: payload builders, the malformed-request catalogue (run
in-process and against a real server) and a real `dgae serve` subprocess on loopback."""
from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image
from safetensors.torch import save as st_save

from formats.latents import dump_safetensors

C, F = 4, 8  # the tiny preset's latent channels and downsample factor
API_KEY = "test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
READY_TIMEOUT_S = 90
NATIVE_TIMEOUT_S = 120.0  # one native request of the protocol tests (they compare other protocols against it)
REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Limits:
    """Small limits so every 413 is cheap to trigger (mirrored into ServiceSettings / CLI flags)."""

    max_body_bytes: int = 256 * 1024
    max_pixels: int = 128 * 128
    max_request_pixels: int = 2 * 128 * 128  # two largest images
    max_items: int = 4
    max_json_values: int = 512

    def settings(self) -> dict:
        return {"max_body_bytes": self.max_body_bytes, "max_pixels": self.max_pixels,
                "max_request_pixels": self.max_request_pixels, "max_items": self.max_items,
                "max_json_values": self.max_json_values}

    def flags(self) -> list[str]:
        return [x for k, v in self.settings().items() for x in (f"--{k.replace('_', '-')}", str(v))]


def png(h: int = 32, w: int = 32, seed: int = 0, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    shape = (h, w, 3) if mode == "RGB" else (h, w)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(buf, "PNG")
    return buf.getvalue()


def flat_png(side: int, colour: tuple[int, int, int]) -> bytes:
    """A side x side RGB PNG of one colour (compresses to a few tens of KB)."""
    buf = io.BytesIO()
    Image.new("RGB", (side, side), colour).save(buf, "PNG")
    return buf.getvalue()


def bomb_png(side: int) -> bytes:
    """A few KB of PNG that declares side x side pixels."""
    buf = io.BytesIO()
    Image.new("L", (side, side)).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def latents(n: int = 1, h: int = 2, w: int = 2, c: int = C, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed))


def st_bytes(t: torch.Tensor, meta: dict | None = None) -> bytes:
    return dump_safetensors(t, meta or {})


HUGE_INT = b"9" * 5000  # past Python's 4300-digit int parsing limit: json.loads raises ValueError


def image_bytes(fmt: str, h: int = 16, w: int = 16, seed: int = 0) -> bytes:
    """A random RGB image in any Pillow format (GIF, TIFF, PPM, ICO, ...)."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


def safetensors_from_header(header: dict, payload: bytes = b"") -> bytes:
    """A safetensors payload with any header (its 8-byte little-endian length, the JSON, the bytes)."""
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + payload


def npy_bytes(a: np.ndarray, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=allow_pickle)
    return buf.getvalue()


@dataclass(frozen=True)
class Bad:
    """One malformed request and the 4xx it must get; ``needle`` must appear in the message."""

    name: str
    method: str
    path: str
    status: int
    kwargs: dict = field(default_factory=dict)
    needle: str = ""
    auth: bool = True


def _chunks(total: int, size: int = 64 * 1024):
    for _ in range(0, total, size):
        yield b"\0" * size


def malformed_requests(lim: Limits) -> list[Bad]:
    ct = lambda t: {"headers": {"Content-Type": t}}  # noqa: E731
    one = latents()
    nan, inf = one.clone(), one.numpy().copy()
    nan[0, 0, 0, 0] = float("nan")
    inf[0, 1, 1, 1] = np.inf
    good_npy = npy_bytes(one.numpy())
    side = int(lim.max_pixels ** 0.5) + F  # just over the pixel limit
    pixels_latent = latents(1, side // F, side // F)
    largest = int(lim.max_pixels ** 0.5)  # one image at the per-image limit
    over_request = lim.max_request_pixels // (largest * largest) + 1  # that many pass it all together
    return [
        Bad("undecodable image names file", "POST", "/encode", 400,
            {"files": {"image": ("holiday.png", b"definitely not a png", "image/png")}}, needle="holiday.png"),
        Bad("raw garbage image", "POST", "/encode", 400, {"content": b"\x89PNG\r\n\x1a\nbroken", **ct("image/png")}),
        Bad("truncated png", "POST", "/encode", 400, {"content": png()[:60], **ct("image/png")}),
        Bad("empty raw body", "POST", "/encode", 400, {"content": b"", **ct("image/png")}, needle="empty"),
        Bad("empty file part", "POST", "/encode", 400, {"files": {"image": ("e.png", b"", "image/png")}}),
        Bad("multipart without files", "POST", "/encode", 400,
            {"content": b'--xx\r\nContent-Disposition: form-data; name="a"\r\n\r\nhi\r\n--xx--\r\n',
             **ct("multipart/form-data; boundary=xx")}, needle="file"),
        Bad("multipart without boundary", "POST", "/encode", 400, {"content": b"abc", **ct("multipart/form-data")}),
        Bad("encode text/plain", "POST", "/encode", 415, {"content": png(), **ct("text/plain")}),
        Bad("encode no content type", "POST", "/encode", 415, {"content": png()}),
        Bad("too many images", "POST", "/encode", 413,
            {"files": [("image", (f"{i}.png", png(16, 16), "image/png")) for i in range(lim.max_items + 1)]}),
        Bad("pixel bomb", "POST", "/encode", 413, {"content": bomb_png(4 * side), **ct("image/png")}),
        Bad("body over limit (content-length)", "POST", "/encode", 413,
            {"content": b"\0" * (lim.max_body_bytes + 1), **ct("image/png")}),
        Bad("body over limit (chunked)", "POST", "/decode", 413,
            {"content": _chunks(lim.max_body_bytes + 1), **ct("application/octet-stream")}),
        Bad("mixed image sizes", "POST", "/encode", 400,
            {"files": [("image", ("a.png", png(16, 16), "image/png")),
                       ("image", ("b.png", png(24, 16), "image/png"))]}),
        Bad("fit=error on odd size", "POST", "/encode?fit=error", 400, {"content": png(30, 30), **ct("image/png")},
            needle="multiple"),
        Bad("bad mode", "POST", "/encode?mode=median", 422, {"content": png(), **ct("image/png")}),
        Bad("bad fit", "POST", "/encode?fit=stretch", 422, {"content": png(), **ct("image/png")}),
        Bad("bad dtype", "POST", "/encode?dtype=int8", 422, {"content": png(), **ct("image/png")}),
        Bad("unknown encode format", "POST", "/encode?format=pickle", 422, {"content": png(), **ct("image/png")}),
        Bad("negative seed", "POST", "/encode?mode=sample&seed=-1", 422, {"content": png(), **ct("image/png")}),
        Bad("json too large", "POST", "/encode?format=json", 422,
            {"content": png(128, 128), **ct("image/png")}, needle="json"),
        Bad("truncated safetensors", "POST", "/decode", 400, {"content": st_bytes(one)[:-7]}),
        Bad("garbage tensor", "POST", "/decode", 400, {"content": b"\x07" * 64}),
        Bad("empty decode body", "POST", "/decode", 400, {"content": b""}, needle="empty"),
        Bad("wrong channel count", "POST", "/decode", 400, {"content": st_bytes(latents(c=3))}, needle=f"c={C}"),
        Bad("wrong rank", "POST", "/decode", 400, {"content": st_bytes(torch.zeros(4, 4))}, needle="rank"),
        Bad("rank 5", "POST", "/decode", 400, {"content": npy_bytes(np.zeros((1, 1, C, 2, 2), np.float32))}),
        Bad("NaN latents", "POST", "/decode", 400, {"content": st_bytes(nan)}, needle="NaN"),
        Bad("Inf latents npy", "POST", "/decode", 400, {"content": npy_bytes(inf)}, needle="infinite"),
        Bad("int64 safetensors", "POST", "/decode", 400,
            {"content": st_save({"latents": torch.zeros(1, C, 2, 2, dtype=torch.int64)})}),
        Bad("two unnamed tensors", "POST", "/decode", 400, {"content": st_save({"a": one, "b": one.clone()})}),
        Bad("npy object dtype", "POST", "/decode", 400,
            {"content": npy_bytes(np.array([{"x": 1}], dtype=object), allow_pickle=True)}),
        Bad("npy int32", "POST", "/decode", 400, {"content": npy_bytes(np.zeros((C, 2, 2), np.int32))}),
        Bad("npy truncated", "POST", "/decode", 400, {"content": good_npy[:-5]}, needle="truncated"),
        Bad("npy lying header", "POST", "/decode", 400,
            {"content": good_npy.replace(b"(1, 4, 2, 2)", b"(99999, 99999, 99999, 9)")}),
        Bad("json wrong nesting", "POST", "/decode", 400, {"json": {"latents": {"a": 1}}}),
        Bad("json ragged", "POST", "/decode", 400, {"json": {"latents": [[[1.0, 2.0], [3.0]]] * C}}),
        Bad("json strings", "POST", "/decode", 400, {"json": {"latents": [[["a", "b"], ["c", "d"]]] * C}}),
        Bad("json top-level list", "POST", "/decode", 400, {"json": [1, 2, 3]}),
        Bad("json syntax", "POST", "/decode", 400, {"content": b'{"latents": [1,', **ct("application/json")}),
        Bad("json latents with a 5000-digit integer", "POST", "/decode", 400,
            {"content": b'{"latents": [[[' + HUGE_INT + b"]]]}", **ct("application/json")}, needle="not valid JSON"),
        Bad("safetensors metadata with a 5000-digit integer", "POST", "/decode", 400,
            {"content": st_save({"latents": one}, metadata={"dgae": '{"images": ' + HUGE_INT.decode() + "}"})},
            needle="'dgae' metadata is not valid JSON"),
        Bad("safetensors metadata not JSON", "POST", "/decode", 400,
            {"content": st_save({"latents": one}, metadata={"dgae": "{not json"})}, needle="metadata"),
        Bad("safetensors metadata not an object", "POST", "/decode", 400,
            {"content": st_save({"latents": one}, metadata={"dgae": "[1, 2]"})}, needle="JSON object"),
        Bad("safetensors empty tensor with overflowing strides", "POST", "/decode", 400,
            {"content": safetensors_from_header({"latents": {"dtype": "F32", "shape": [0, 2 ** 40, 2 ** 40],
                                                             "data_offsets": [0, 0]}})}, needle="empty dimension"),
        Bad("npy header with an unterminated bracket", "POST", "/decode", 400,
            {"content": b"\x93NUMPY\x01\x00" + struct.pack("<H", 30) + b"{'descr': '<f4', 'shape': (1,\n"},
            needle="malformed .npy header"),
        Bad("image format outside the read list (ICO)", "POST", "/encode", 400,
            {"files": {"image": ("icon.ico", image_bytes("ICO"), "image/x-icon")}}, needle="supported format"),
        Bad("raw ICO body", "POST", "/encode", 415, {"content": image_bytes("ICO"), **ct("image/x-icon")}),
        Bad("json NaN", "POST", "/decode", 400,
            {"content": json.dumps({"latents": [[[float("nan")]]] * C}).encode(), **ct("application/json")}),
        Bad("decode image content type", "POST", "/decode", 415, {"content": good_npy, **ct("image/png")}),
        Bad("too many latents", "POST", "/decode", 413, {"content": st_bytes(latents(lim.max_items + 1))}),
        Bad("latents over pixel limit", "POST", "/decode", 413, {"content": st_bytes(pixels_latent)}),
        Bad("images over the request pixel limit", "POST", "/encode", 413,
            {"files": [("image", (f"{i}.png", png(largest, largest, seed=i), "image/png"))
                       for i in range(over_request)]}, needle=f"limit of {lim.max_request_pixels} pixels per request"),
        Bad("latents over the request pixel limit", "POST", "/decode", 413,
            {"content": st_bytes(latents(over_request, largest // F, largest // F))},
            needle=f"limit of {lim.max_request_pixels} pixels per request"),
        Bad("metadata wrong length", "POST", "/decode", 400,
            {"content": st_bytes(one, {"images": [{}, {}]})}, needle="metadata"),
        Bad("metadata huge original size", "POST", "/decode", 413,
            {"content": st_bytes(one, {"images": [dict(orig_height=10 ** 6, orig_width=10 ** 6, height=16, width=16,
                                                       fit="resize")]})}),
        Bad("steps 0", "POST", "/decode?steps=0", 422, {"content": good_npy}),
        Bad("steps over max", "POST", "/decode?steps=100000", 400, {"content": good_npy},
            needle="steps must be in [1,"),
        Bad("steps not int", "POST", "/decode?steps=two", 422, {"content": good_npy}),
        Bad("seed not int", "POST", "/decode?seed=abc", 422, {"content": good_npy}),
        Bad("seed too large", "POST", f"/decode?seed={2 ** 63}", 422, {"content": good_npy}, needle="seed"),
        Bad("seed count mismatch", "POST", "/decode?seed=1,2,3", 400, {"content": good_npy},
            needle="seeds for 1 items"),
        Bad("seed of 5000 digits", "POST", "/decode?seed=" + "9" * 5000, 422, {"content": good_npy},
            needle="(5002 chars)"),
        Bad("unknown parameter step", "POST", "/decode?step=8", 400, {"content": good_npy},
            needle="did you mean 'steps'"),
        Bad("unknown encode parameter", "POST", "/encode?mod=sample", 400, {"content": png(), **ct("image/png")},
            needle="did you mean 'mode'"),
        Bad("quality 0", "POST", "/decode?format=jpeg&quality=0", 422, {"content": good_npy}),
        Bad("quality 101", "POST", "/decode?format=jpeg&quality=101", 422, {"content": good_npy}),
        Bad("unknown decode format", "POST", "/decode?format=gif", 422, {"content": good_npy}),
        Bad("GET /encode", "GET", "/encode", 405),
        Bad("unknown path", "GET", "/nope", 404),
        Bad("missing API key", "POST", "/decode", 401, {"content": good_npy}, auth=False),
        Bad("wrong API key", "POST", "/decode", 401,
            {"content": good_npy, "headers": {"Authorization": "Bearer wrong"}}, auth=False),
    ]


def send(client: httpx.Client, bad: Bad) -> httpx.Response:
    kwargs = dict(bad.kwargs)
    headers = {**(AUTH if bad.auth else {}), **kwargs.pop("headers", {})}
    return client.request(bad.method, bad.path, headers=headers, **kwargs)


# --- a real `dgae serve` process ------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def serve(checkpoint: Path, log_dir: Path, *flags: str):
    """Start `python -m cli serve` on a free loopback port; wait for /readyz; always stop it."""
    port = free_port()
    log = log_dir / f"server-{port}.log"
    env = {**os.environ, "PYTHONPATH": str(REPO), "DGAE_CHECKPOINT": str(checkpoint)}
    cmd = [sys.executable, "-m", "cli", "serve", "--host", "127.0.0.1", "--port", str(port), *flags]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
    server = Server(proc, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{server.log_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(server.url + "/readyz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready in {READY_TIMEOUT_S}s:\n{server.log_text()}")
            time.sleep(0.1)
        yield server
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def native(server, route: str, content: bytes, headers: dict | None = None) -> np.ndarray:
    """The npy answer of a native route on a real server (what another protocol is compared with)."""
    r = httpx.post(server.url + route, content=content, headers={**AUTH, **(headers or {})}, timeout=NATIVE_TIMEOUT_S)
    assert r.status_code == 200, r.text
    return np.load(io.BytesIO(r.content))


def level_diff(a: np.ndarray, b: np.ndarray) -> int:
    """The largest difference between two uint8 images of one shape, in 8-bit levels."""
    assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
    return int(np.abs(a.astype(int) - b.astype(int)).max())
