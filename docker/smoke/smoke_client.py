"""HTTP and image checks for docker/smoke/docker_smoke.sh (run with the project's venv Python).

    smoke_client.py [--cacert CA] COMMAND ...           HTTPS URLs are verified against CA (else the system's)
    smoke_client.py wait-ready --timeout S URL...       GET URL/readyz until 200 on every URL
    smoke_client.py tls --https URL --http URL --result J
        HTTPS: /readyz 200 with the certificate verified against --cacert, and refused by a client
        that trusts only the system's CAs; plain HTTP: 308 to the same path on the HTTPS URL
    smoke_client.py compare --balancer URL --local URL --photo P --seed S --out DIR --result J
        encode P and decode it (same seed) through the balancer and through a local `dgae serve`:
        latents within LATENT_RTOL of their range, images within IMAGE_TOLERANCE_LEVELS 8-bit levels
    smoke_client.py mixed --url URL --photo P --count N --result J
        N mixed requests (encode/decode in every body and output format, health, model info),
        CONCURRENCY at a time: every one 200 with a well-formed body
    smoke_client.py traffic --url URL --photo P --stop-file F --timeout S --result J
        encode/decode requests until F exists: every one 200
    docker export CID | smoke_client.py audit-tar --ca-bundle B --forbid PREFIX... --result J
        no file under a forbidden path, no copy of B, none of B's certificates that Debian's
        ca-certificates does not ship (the machine's own CAs)

Exit status 0 on success, 1 when a check fails (the reason on stderr), 2 on a usage error. Every
result is also written as JSON (--result) with a one-line "summary".
"""
from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import io
import itertools
import json
import logging
import ssl
import sys
import tarfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import httpx
import numpy as np
from PIL import Image
from safetensors.numpy import load as st_load

log = logging.getLogger("docker-smoke")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
HTTP_OK = 200
REQUEST_TIMEOUT_S = 300.0  # above the balancer's proxy_read_timeout: nginx answers first
POLL_S = 0.25
IMAGE_TOLERANCE_LEVELS = 1  # same latent + seed -> same image within one 8-bit level
# same image -> same latents (mean mode) on the same torch build, up to float reordering: max |diff|
# relative to the latents' largest magnitude (seen here: 0, and 2.7e-5 / 1.73 = 1.6e-5)
LATENT_RTOL = 1e-4
CONCURRENCY = 4
CROP = 64  # side of the crops used for the many small requests (a multiple of every preset's f)
ODD_CROP = (52, 70)  # (h, w): not a multiple of f, exercises fit=pad and the crop back
STEPS_SMALL = 1
TRAFFIC_CONCURRENCY = 2
AUDIT_CHUNK = 8 << 20
STOCK_CA_DIR = Path("/usr/share/ca-certificates")
PEM_BEGIN, PEM_END = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
SAFETENSORS, NPY, JSON_T = "application/x-safetensors", "application/x-npy", "application/json"


class CheckFailed(Exception):
    """A smoke check did not hold (the message says which and why)."""


# What HTTPS URLs are verified against (--cacert; True: the system's CAs). Plain-HTTP URLs ignore it.
VERIFY: ssl.SSLContext | bool = True


def http_client(timeout_s: float) -> httpx.Client:
    return httpx.Client(timeout=timeout_s, verify=VERIFY)


# ---- helpers ------------------------------------------------------------------------------------
def write_result(path: Path | None, result: dict) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    log.info("%s", result["summary"])


def image_bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def load_photo(path: Path) -> Image.Image:
    try:
        return Image.open(path).convert("RGB")
    except (OSError, ValueError) as exc:
        raise CheckFailed(f"cannot read the photo {path}: {exc}") from exc


def crops(photo: Image.Image, size: tuple[int, int], n: int) -> list[Image.Image]:
    """n distinct (h, w) crops along the photo's diagonal."""
    h, w = size
    span_x, span_y = max(photo.width - w, 0), max(photo.height - h, 0)
    return [photo.crop((span_x * i // max(n - 1, 1), span_y * i // max(n - 1, 1),
                        span_x * i // max(n - 1, 1) + w, span_y * i // max(n - 1, 1) + h)) for i in range(n)]


def latents_of(body: bytes) -> np.ndarray:
    tensors = st_load(body)
    if "latents" not in tensors:
        raise CheckFailed(f"encode answered safetensors without a 'latents' tensor: {sorted(tensors)}")
    return tensors["latents"]


def pixels(body: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB"), dtype=np.int16)


def expect_ok(resp: httpx.Response, what: str) -> httpx.Response:
    if resp.status_code != HTTP_OK:
        raise CheckFailed(f"{what}: HTTP {resp.status_code}: {resp.text[:300]}")
    return resp


def max_level_diff(a: np.ndarray, b: np.ndarray) -> int:
    if a.shape != b.shape:
        raise CheckFailed(f"decoded images differ in shape: {a.shape} vs {b.shape}")
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


# ---- wait-ready ---------------------------------------------------------------------------------
def wait_ready(urls: list[str], timeout_s: float) -> dict:
    t0 = time.monotonic()
    deadline = t0 + timeout_s
    pending, ready_at, last = list(urls), {}, {}
    with http_client(POLL_S * 8) as client:
        while pending:
            for url in list(pending):
                try:
                    resp = client.get(f"{url}/readyz")
                    last[url] = f"HTTP {resp.status_code}"
                    if resp.status_code == HTTP_OK:
                        ready_at[url] = round(time.monotonic() - t0, 2)
                        pending.remove(url)
                except httpx.HTTPError as exc:
                    last[url] = type(exc).__name__
            if pending and time.monotonic() > deadline:
                raise CheckFailed(
                    f"not ready after {timeout_s:.0f} s: " + ", ".join(f"{u} ({last.get(u)})" for u in pending)
                )
            if pending:
                time.sleep(POLL_S)
    return {
        "ready_after_s": ready_at,
        "summary": "ready: " + ", ".join(f"{u} after {s} s" for u, s in ready_at.items()),
    }


# ---- compare ------------------------------------------------------------------------------------
def encode_decode(client: httpx.Client, url: str, png: bytes, seed: int) -> tuple[bytes, bytes, dict]:
    enc = expect_ok(client.post(f"{url}/encode", params={"mode": "mean"}, content=png,
                                headers={"Content-Type": "image/png"}), f"{url}/encode")
    dec = expect_ok(client.post(f"{url}/decode", params={"seed": seed}, content=enc.content,
                                headers={"Content-Type": SAFETENSORS}), f"{url}/decode")
    headers = {k: enc.headers.get(k) for k in ("x-dgae-model", "x-dgae-checkpoint-sha256", "x-dgae-shape")}
    headers |= {k: dec.headers.get(k) for k in ("x-dgae-seeds", "x-dgae-steps")}
    return enc.content, dec.content, headers


def runtime_of(client: httpx.Client, url: str) -> dict:
    """Which runtime serves at ``url`` and why (``/v1/model``)."""
    model = expect_ok(client.get(f"{url}/v1/model"), f"GET {url}/v1/model").json()
    return {"backend": model["backend"], "device": model["device"], "reason": model["backend_reason"]}


def compare(balancer: str, local: str, photo_path: Path, seed: int, out: Path) -> dict:
    photo = load_photo(photo_path)
    png = image_bytes(photo, "PNG")
    out.mkdir(parents=True, exist_ok=True)
    with http_client(REQUEST_TIMEOUT_S) as client:
        t0 = time.monotonic()
        lb_latents, lb_image, lb_headers = encode_decode(client, balancer, png, seed)
        lb_s = time.monotonic() - t0
        t0 = time.monotonic()
        local_latents, local_image, local_headers = encode_decode(client, local, png, seed)
        local_s = time.monotonic() - t0
        runtimes = {name: runtime_of(client, url) for name, url in (("balancer", balancer), ("local", local))}
    for name, body in (("balancer_latents.safetensors", lb_latents), ("balancer.png", lb_image),
                       ("local_latents.safetensors", local_latents), ("local.png", local_image)):
        (out / name).write_bytes(body)
    if runtimes["balancer"]["backend"] != runtimes["local"]["backend"]:
        raise CheckFailed(f"the container serves with {runtimes['balancer']}, a local `dgae serve` on this machine "
                          f"with {runtimes['local']}: both use DGAE_BACKEND=auto")
    if lb_headers != local_headers:
        raise CheckFailed(f"response headers differ: balancer {lb_headers} vs local {local_headers}")
    if lb_headers["x-dgae-seeds"] != str(seed):
        raise CheckFailed(f"decode used seeds {lb_headers['x-dgae-seeds']}, asked for {seed}")
    za, zb = latents_of(lb_latents), latents_of(local_latents)
    if za.shape != zb.shape:
        raise CheckFailed(f"latents differ in shape: balancer {za.shape} vs local {zb.shape}")
    latent_diff = float(np.abs(za.astype(np.float64) - zb.astype(np.float64)).max())
    latent_bound = LATENT_RTOL * max(float(np.abs(zb).max()), np.finfo(np.float32).tiny)
    a, b = pixels(lb_image), pixels(local_image)
    if a.shape[:2] != (photo.height, photo.width):
        raise CheckFailed(f"decoded image is {a.shape[1]}x{a.shape[0]}, the photo {photo.width}x{photo.height}")
    level_diff = max_level_diff(a, b)
    result = {
        "photo": str(photo_path),
        "size": [photo.width, photo.height],
        "seed": seed,
        "latent_shape": list(za.shape),
        "latent_max_abs_diff": latent_diff,
        "latent_bound": latent_bound,
        "image_max_level_diff": level_diff,
        "image_values_differing": int((a != b).sum()),
        "image_values": int(a.size),
        "headers": lb_headers,
        "runtimes": runtimes,
        "balancer_s": round(lb_s, 2),
        "local_s": round(local_s, 2),
        "summary": (
            f"{photo_path.name} {photo.width}x{photo.height}, seed {seed}, {lb_headers['x-dgae-steps']} steps: "
            f"latents max |diff| {latent_diff:.3g} (<= {latent_bound:.3g}), decoded image max diff "
            f"{level_diff} 8-bit level(s) (<= {IMAGE_TOLERANCE_LEVELS}; {int((a != b).sum())} of {a.size} values "
            f"differ); balancer {lb_s:.1f} s, local {local_s:.1f} s; both served by "
            f"{runtimes['balancer']['backend']} ({runtimes['balancer']['reason']})"
        ),
    }
    if latent_diff > latent_bound:
        raise CheckFailed(result["summary"] + ": latents differ")
    if level_diff > IMAGE_TOLERANCE_LEVELS:
        raise CheckFailed(result["summary"] + ": images differ")
    return result


# ---- request catalogue (mixed, traffic) -----------------------------------------------------------
@dataclass
class Request:
    kind: str
    method: str
    path: str
    check: Callable[[httpx.Response], None]
    params: dict = field(default_factory=dict)
    content: bytes | None = None
    files: list | None = None
    headers: dict = field(default_factory=dict)


def _expect_shape(n: int, c: int, h: int, w: int) -> Callable[[httpx.Response], None]:
    def check(resp: httpx.Response) -> None:
        z = latents_of(resp.content)
        if tuple(z.shape[:1]) + tuple(z.shape[2:]) != (n, h, w) or z.shape[1] != c:
            raise CheckFailed(f"latents shape {z.shape}, expected ({n}, {c}, {h}, {w})")
    return check


def _expect_image(fmt: str, size: tuple[int, int]) -> Callable[[httpx.Response], None]:
    def check(resp: httpx.Response) -> None:
        img = Image.open(io.BytesIO(resp.content))
        if img.format != fmt or img.size != size:
            raise CheckFailed(f"decoded {img.format} {img.size}, expected {fmt} {size}")
    return check


def _expect_zip(n: int) -> Callable[[httpx.Response], None]:
    def check(resp: httpx.Response) -> None:
        names = zipfile.ZipFile(io.BytesIO(resp.content)).namelist()
        if len(names) != n:
            raise CheckFailed(f"zip with {len(names)} images, expected {n}")
    return check


def _expect_json(key: str) -> Callable[[httpx.Response], None]:
    def check(resp: httpx.Response) -> None:
        if key not in resp.json():
            raise CheckFailed(f"JSON without {key!r}: {resp.text[:200]}")
    return check


def catalogue(client: httpx.Client, url: str, photo: Image.Image) -> list[Request]:
    """Every kind of request the balancer must pass, built from crops of the photo. The latents for
    the decode requests come from one encode through the balancer (checked, not counted)."""
    a, b = crops(photo, (CROP, CROP), 2)
    odd = crops(photo, ODD_CROP, 1)[0]
    prep = expect_ok(client.post(f"{url}/encode", content=image_bytes(a, "PNG"), headers={"Content-Type": "image/png"}),
                     "encode (latents for the decode requests)")
    latents = prep.content
    model = expect_ok(client.get(f"{url}/v1/model"), "GET /v1/model").json()
    f, c = model["downsample_factor"], model["latent_channels"]
    npy = io.BytesIO()
    np.save(npy, latents_of(latents))
    small_json = json.dumps({"latents": latents_of(latents).tolist()}).encode()
    s = CROP // f
    return [
        Request("encode png", "POST", "/encode", _expect_shape(1, c, s, s), content=image_bytes(a, "PNG"),
                headers={"Content-Type": "image/png"}),
        Request("encode multipart x2", "POST", "/encode", _expect_shape(2, c, s, s),
                files=[("image", ("a.png", image_bytes(a, "PNG"), "image/png")),
                       ("image", ("b.jpg", image_bytes(b, "JPEG", quality=90), "image/jpeg"))]),
        Request("encode jpeg -> npy fp16", "POST", "/encode", lambda r: np.load(io.BytesIO(r.content)),
                params={"format": "npy", "dtype": "float16"}, content=image_bytes(b, "JPEG", quality=90),
                headers={"Content-Type": "image/jpeg"}),
        Request("encode odd size (pad) -> json", "POST", "/encode", _expect_json("latents"), params={"format": "json"},
                content=image_bytes(odd, "PNG"), headers={"Content-Type": "image/png"}),
        Request("decode safetensors -> png", "POST", "/decode", _expect_image("PNG", (CROP, CROP)),
                params={"seed": 7}, content=latents, headers={"Content-Type": SAFETENSORS}),
        Request("decode npy -> webp", "POST", "/decode", _expect_image("WEBP", (CROP, CROP)),
                params={"seed": 8, "format": "webp", "quality": 90, "steps": STEPS_SMALL}, content=npy.getvalue(),
                headers={"Content-Type": NPY}),
        Request("decode json -> jpeg", "POST", "/decode", _expect_image("JPEG", (CROP, CROP)),
                params={"seed": 9, "format": "jpeg", "steps": STEPS_SMALL}, content=small_json,
                headers={"Content-Type": JSON_T}),
        Request("decode x2 -> zip", "POST", "/decode", _expect_zip(2), params={"seed": 10, "steps": STEPS_SMALL},
                content=_stack_safetensors(latents), headers={"Content-Type": SAFETENSORS}),
        Request("GET /readyz", "GET", "/readyz", _expect_json("status")),
        Request("GET /healthz", "GET", "/healthz", lambda r: None),
        Request("GET /v1/model", "GET", "/v1/model", _expect_json("checkpoint_sha256")),
    ]


def _stack_safetensors(latents: bytes) -> bytes:
    from safetensors.numpy import save as st_save
    z = latents_of(latents)
    return st_save({"latents": np.concatenate([z, z[:, :, ::-1, :].copy()])})


def send(client: httpx.Client, url: str, req: Request) -> tuple[int, float, str]:
    """(status, seconds, problem or "")"""
    t0 = time.monotonic()
    try:
        resp = client.request(req.method, f"{url}{req.path}", params=req.params, content=req.content,
                              files=req.files, headers=req.headers)
    except httpx.HTTPError as exc:
        return 0, time.monotonic() - t0, f"{req.kind}: {type(exc).__name__}: {exc}"
    dt = time.monotonic() - t0
    if resp.status_code != HTTP_OK:
        return resp.status_code, dt, f"{req.kind}: HTTP {resp.status_code}: {resp.text[:200]}"
    try:
        req.check(resp)
    except (CheckFailed, ValueError, OSError, KeyError, zipfile.BadZipFile) as exc:
        return resp.status_code, dt, f"{req.kind}: bad body: {exc}"
    return resp.status_code, dt, ""


@dataclass
class Tally:
    statuses: dict = field(default_factory=dict)
    kinds: dict = field(default_factory=dict)
    problems: list = field(default_factory=list)
    latencies: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, status: int, dt: float, problem: str) -> None:
        with self.lock:
            self.statuses[str(status)] = self.statuses.get(str(status), 0) + 1
            self.kinds[kind] = self.kinds.get(kind, 0) + 1
            self.latencies.append(dt)
            if problem:
                self.problems.append(problem)

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    def result(self, what: str) -> dict:
        lat = sorted(self.latencies) or [0.0]
        return {"requests": self.requests, "statuses": self.statuses, "kinds": self.kinds,
                "problems": self.problems[:20], "latency_s": {"p50": round(lat[len(lat) // 2], 3),
                                                              "max": round(lat[-1], 3)},
                "summary": (f"{what}: {self.requests} requests, statuses {self.statuses}, "
                            f"{len(self.kinds)} kinds, p50 {lat[len(lat) // 2]:.2f} s, max {lat[-1]:.2f} s"
                            + (f", {len(self.problems)} problem(s): {self.problems[:3]}" if self.problems else ""))}


def mixed(url: str, photo_path: Path, count: int) -> dict:
    photo = load_photo(photo_path)
    tally = Tally()
    with http_client(REQUEST_TIMEOUT_S) as client:
        reqs = catalogue(client, url, photo)
        todo = list(itertools.islice(itertools.cycle(reqs), count))
        with concurrent.futures.ThreadPoolExecutor(CONCURRENCY) as pool:
            for req, (status, dt, problem) in zip(todo, pool.map(lambda r: send(client, url, r), todo)):
                tally.add(req.kind, status, dt, problem)
    result = tally.result(f"{count} mixed requests through the balancer")
    if tally.problems or tally.requests != count:
        raise CheckFailed(result["summary"])
    return result


def traffic(url: str, photo_path: Path, stop_file: Path, timeout_s: float, concurrency: int) -> dict:
    photo = load_photo(photo_path)
    tally = Tally()
    deadline = time.monotonic() + timeout_s
    timed_out = threading.Event()
    with http_client(REQUEST_TIMEOUT_S) as client:
        reqs = [r for r in catalogue(client, url, photo) if r.method == "POST"]
        kinds = itertools.cycle(reqs)
        kinds_lock = threading.Lock()

        def worker() -> None:
            while not stop_file.exists():
                if time.monotonic() > deadline:
                    timed_out.set()
                    return
                with kinds_lock:
                    req = next(kinds)
                tally.add(req.kind, *send(client, url, req))

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    result = tally.result("requests through the balancer while a replica was killed and restarted")
    if timed_out.is_set():
        raise CheckFailed(f"no stop file {stop_file} after {timeout_s:.0f} s; " + result["summary"])
    if tally.problems or not tally.requests:
        raise CheckFailed(result["summary"])
    return result


# ---- tls ----------------------------------------------------------------------------------------
HTTP_PERMANENT_REDIRECT = 308


def tls_check(https_url: str, http_url: str) -> dict:
    """The balancer's TLS: verified HTTPS, refused without the CA, plain HTTP redirected."""
    if VERIFY is True:
        raise CheckFailed("tls needs --cacert (the CA the balancer's certificate was made with)")
    with http_client(REQUEST_TIMEOUT_S) as client:
        resp = expect_ok(client.get(f"{https_url}/readyz"), f"GET {https_url}/readyz")
        stream = resp.extensions.get("network_stream")
        ssl_object = stream.get_extra_info("ssl_object") if stream is not None else None
        version = ssl_object.version() if ssl_object is not None else "?"
        redirect = client.post(f"{http_url}/encode?seed=1", content=b"x")
    try:
        httpx.get(f"{https_url}/readyz", timeout=REQUEST_TIMEOUT_S)  # the system's CAs only
        untrusted = "accepted"
    except httpx.ConnectError as exc:
        untrusted = "refused" if "CERTIFICATE_VERIFY_FAILED" in str(exc) else f"failed otherwise: {exc}"
    expected = f"{https_url}/encode?seed=1"
    location = redirect.headers.get("location")
    result = {"https": https_url, "tls_version": version, "untrusted_client": untrusted,
              "http_status": redirect.status_code, "http_location": location,
              "summary": (f"{https_url}/readyz 200 over {version}, certificate verified against the generated CA; "
                          f"a client without that CA: {untrusted}; POST {http_url}/encode -> {redirect.status_code} "
                          f"{location}")}
    if untrusted != "refused":
        raise CheckFailed(result["summary"] + ": the certificate was not checked")
    if redirect.status_code != HTTP_PERMANENT_REDIRECT or location != expected:
        raise CheckFailed(result["summary"] + f": expected {HTTP_PERMANENT_REDIRECT} to {expected}")
    return result


# ---- audit-tar ----------------------------------------------------------------------------------
def pem_blocks(text: str) -> list[str]:
    """Every certificate's base64 body (one string, no line breaks)."""
    out, body = [], None
    for line in text.splitlines():
        line = line.strip()
        if line == PEM_BEGIN:
            body = []
        elif line == PEM_END and body is not None:
            out.append("".join(body))
            body = None
        elif body is not None:
            body.append(line)
    return out


def stock_certificates(stock_dir: Path) -> set[str]:
    found: set[str] = set()
    for path in stock_dir.rglob("*.crt") if stock_dir.is_dir() else []:
        try:
            found.update(pem_blocks(path.read_text(errors="replace")))
        except OSError:
            continue
    return found


def fingerprints(bundle_text: str, stock: set[str]) -> list[bytes]:
    """Search strings for the bundle's certificates that the stock set lacks: two 64-character PEM
    lines from the middle of each (how any PEM copy of the certificate is wrapped)."""
    out = []
    for body in pem_blocks(bundle_text):
        if body in stock:
            continue
        lines = [body[i:i + 64] for i in range(0, len(body), 64)]
        full = [ln for ln in lines if len(ln) == 64]
        out += [ln.encode() for ln in full[len(full) // 2: len(full) // 2 + 2]]
    return out


def audit_tar(stream, bundle: Path, forbid: list[str], stock_dir: Path) -> dict:
    bundle_bytes = bundle.read_bytes() if bundle.is_file() else b""
    bundle_sha = hashlib.sha256(bundle_bytes).hexdigest() if bundle_bytes else ""
    patterns = (
        fingerprints(bundle_bytes.decode(errors="replace"), stock_certificates(stock_dir)) if bundle_bytes else []
    )
    overlap = max((len(p) for p in patterns), default=1) - 1
    forbid = [p.strip("/") for p in forbid]
    violations, files, scanned = [], 0, 0
    with tarfile.open(fileobj=stream, mode="r|*") as tar:
        for member in tar:
            name = member.name.lstrip("./")
            if any(name == p or name.startswith(p + "/") for p in forbid):
                violations.append(f"{name}: under a forbidden path")
            if not member.isfile():
                continue
            files += 1
            fh = tar.extractfile(member)
            sha, tail = hashlib.sha256(), b""
            same_size = bundle_bytes and member.size == len(bundle_bytes)
            while chunk := fh.read(AUDIT_CHUNK):
                scanned += len(chunk)
                if same_size:
                    sha.update(chunk)
                window = tail + chunk
                hit = next((p for p in patterns if p in window), None)
                if hit is not None:
                    violations.append(f"{name}: holds a certificate of {bundle} ({hit[:16].decode()}...)")
                    break
                tail = window[-overlap:] if overlap else b""
            if same_size and sha.hexdigest() == bundle_sha:
                violations.append(f"{name}: a copy of {bundle}")
    machine = len(patterns) // 2
    result = {"files": files, "bytes_scanned": scanned, "bundle": str(bundle), "bundle_sha256": bundle_sha,
              "machine_certificates": machine, "forbidden_paths": forbid, "violations": violations[:50],
              "summary": (f"absent: {files} files ({scanned / 1e6:.0f} MB) hold no copy of {bundle}, none of its "
                          f"{machine} certificate(s) not in Debian's ca-certificates, nothing under "
                          f"{', '.join(forbid) or '-'}") if not violations else
                         f"FOUND: {len(violations)} violation(s): {violations[:5]}"}
    if violations:
        raise CheckFailed(result["summary"])
    return result


# ---- CLI ----------------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smoke_client.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--cacert", type=Path, help="verify HTTPS against this CA certificate (PEM)")
    sub = p.add_subparsers(dest="cmd", required=True)
    tl = sub.add_parser("tls")
    tl.add_argument("--https", required=True)
    tl.add_argument("--http", required=True)
    w = sub.add_parser("wait-ready")
    w.add_argument("--timeout", type=float, required=True)
    w.add_argument("urls", nargs="+")
    c = sub.add_parser("compare")
    c.add_argument("--balancer", required=True)
    c.add_argument("--local", required=True)
    c.add_argument("--photo", type=Path, required=True)
    c.add_argument("--seed", type=int, required=True)
    c.add_argument("--out", type=Path, required=True)
    m = sub.add_parser("mixed")
    m.add_argument("--url", required=True)
    m.add_argument("--photo", type=Path, required=True)
    m.add_argument("--count", type=int, required=True)
    t = sub.add_parser("traffic")
    t.add_argument("--url", required=True)
    t.add_argument("--photo", type=Path, required=True)
    t.add_argument("--stop-file", type=Path, required=True)
    t.add_argument("--timeout", type=float, required=True)
    t.add_argument("--concurrency", type=int, default=TRAFFIC_CONCURRENCY)
    a = sub.add_parser("audit-tar")
    a.add_argument("--ca-bundle", type=Path, required=True)
    a.add_argument("--forbid", action="append", default=[])
    a.add_argument("--stock-dir", type=Path, default=STOCK_CA_DIR)
    for s in (tl, w, c, m, t, a):
        s.add_argument("--result", type=Path)
    return p


def main(argv: Iterable[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s docker-smoke client: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one line per request
    args = parser().parse_args(argv)
    if getattr(args, "count", 1) < 1 or getattr(args, "concurrency", 1) < 1:
        print("error: --count and --concurrency must be >= 1", file=sys.stderr)
        return EXIT_USAGE
    global VERIFY  # noqa: PLW0603 - one setting for every client this process makes
    try:
        if args.cacert is not None:
            VERIFY = ssl.create_default_context(cafile=str(args.cacert))
        if args.cmd == "tls":
            result = tls_check(args.https.rstrip("/"), args.http.rstrip("/"))
        elif args.cmd == "wait-ready":
            result = wait_ready(args.urls, args.timeout)
        elif args.cmd == "compare":
            result = compare(args.balancer.rstrip("/"), args.local.rstrip("/"), args.photo, args.seed, args.out)
        elif args.cmd == "mixed":
            result = mixed(args.url.rstrip("/"), args.photo, args.count)
        elif args.cmd == "traffic":
            result = traffic(args.url.rstrip("/"), args.photo, args.stop_file, args.timeout, args.concurrency)
        else:
            result = audit_tar(sys.stdin.buffer, args.ca_bundle, args.forbid, args.stock_dir)
    except (CheckFailed, httpx.HTTPError, tarfile.TarError, OSError, ssl.SSLError) as exc:
        print(f"error: {args.cmd}: {exc}", file=sys.stderr)
        write_result(args.result, {"error": str(exc), "summary": f"FAILED: {exc}"})
        return EXIT_FAILED
    write_result(args.result, result)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
