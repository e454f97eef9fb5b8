"""The committed load-balancer config (docker/nginx/dgae.conf.template), rendered the way the nginx
image renders it, with the replica block pointed at loopback: `nginx -t` passes, and a real nginx in
front of two real `dgae serve` processes (plus one replica stuck at 503, like one still loading)
spreads /encode over both, enforces the service's body limit, and routes around a killed replica;
and with stub replicas, a replica back from a crash takes over at once when the other one crashes.
TLS (issue 27): clients speak HTTPS with a certificate made by docker/make-tls-cert.sh and verified
against its CA, plain HTTP only redirects to HTTPS, and the loopback health listener answers /readyz.

Needs Debian's nginx (`apt-get install -y nginx`); skipped with the reason when it is missing."""
from __future__ import annotations

import http.server
import re
import shutil
import signal
import ssl
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from service_cases import free_port, png
from service_procs import REPO, skip_without_serve, start, start_service, stop, wait_ready

TEMPLATE = REPO / "docker" / "nginx" / "dgae.conf.template"
NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).is_file()), None)
REPLICAS_BLOCK = re.compile(r"^[ \t]*# BEGIN replicas\n(?P<body>.*?)^[ \t]*# END replicas\n", re.M | re.S)
SERVER_LINE = re.compile(r"server\s+\S+\s+resolve\s+(?P<params>[^;]*);")
VARIABLE = re.compile(r"\$\{(DGAE_[A-Z0-9_]+)\}")
BODY_LIMIT = 256 * 1024  # rendered into nginx AND given to the replicas, as compose does
REQUESTS = 6
LOG_WAIT_S, LOG_POLL_S = 10.0, 0.05  # how long to wait for nginx's access-log lines, and how often to look
TEMP_DIRS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")

pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx not installed (apt-get install -y nginx)")


def render(values: dict[str, str], replica_ports: list[int]) -> str:
    """The template with ${DGAE_*} substituted (as the image's envsubst does) and the replicas block
    replaced by one loopback server per port, keeping the committed server parameters."""
    text = TEMPLATE.read_text()
    block = REPLICAS_BLOCK.search(text)
    assert block, f"{TEMPLATE} lost its '# BEGIN replicas' / '# END replicas' block"
    params = SERVER_LINE.search(block["body"])
    assert params, f"{TEMPLATE}: the replicas block has no 'server NAME resolve ...;' line"
    servers = "".join(f"    server 127.0.0.1:{p} {params['params']};\n" for p in replica_ports)
    text = text[:block.start()] + servers + text[block.end():]
    missing = sorted(set(VARIABLE.findall(text)) - set(values))
    assert not missing, f"template uses variables the test does not set: {missing}"
    return VARIABLE.sub(lambda m: values[m.group(1)], text)


def write_config(prefix: Path, values: dict[str, str], replica_ports: list[int]) -> Path:
    prefix.mkdir(parents=True, exist_ok=True)
    (prefix / "dgae.conf").write_text(render(values, replica_ports))
    temp = "".join(f"    {name}_temp_path {prefix / name};\n" for name in TEMP_DIRS)
    main = prefix / "nginx.conf"
    main.write_text(f"worker_processes 1;\nevents {{ worker_connections 256; }}\n"
                    f"http {{\n{temp}    include {prefix / 'dgae.conf'};\n}}\n")
    return main


def nginx_cmd(prefix: Path, main: Path, *flags: str, globals_: str = "") -> list[str]:
    """nginx on our own prefix, pid file and stderr log (never the system service's)."""
    return [NGINX, "-p", str(prefix), "-c", str(main), "-e", "stderr",
            "-g", f"pid {prefix / 'nginx.pid'}; {globals_}", *flags]


MAKE_CERT = REPO / "docker" / "make-tls-cert.sh"


@pytest.fixture(scope="session")
def tls(tmp_path_factory) -> Path:
    """ca.pem, cert.pem, key.pem from docker/make-tls-cert.sh (what the docker smoke uses too)."""
    out = tmp_path_factory.mktemp("tls")
    done = subprocess.run([str(MAKE_CERT), str(out)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return out


def trusting(tls: Path) -> ssl.SSLContext:
    """A client context that trusts only the generated CA."""
    return ssl.create_default_context(cafile=str(tls / "ca.pem"))


class Ports:
    """The balancer's three listeners on free loopback ports."""

    def __init__(self):
        self.http, self.https, self.health = free_port(), free_port(), free_port()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.https}"


def values(ports: Ports, tls: Path) -> dict[str, str]:
    return {"DGAE_LB_LISTEN": f"127.0.0.1:{ports.http}", "DGAE_LB_TLS_LISTEN": f"127.0.0.1:{ports.https}",
            "DGAE_LB_HEALTH_LISTEN": f"127.0.0.1:{ports.health}", "DGAE_HTTPS_PORT": str(ports.https),
            "DGAE_TLS_CERT": str(tls / "cert.pem"), "DGAE_TLS_KEY": str(tls / "key.pem"),
            "DGAE_PORT": "8000", "DGAE_MAX_BODY_BYTES": str(BODY_LIMIT)}


def test_rendered_config_passes_nginx_t(tmp_path, tls):
    main = write_config(tmp_path / "nginx", values(Ports(), tls), [free_port(), free_port()])
    out = subprocess.run(nginx_cmd(tmp_path / "nginx", main, "-t"), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "test is successful" in out.stderr


def test_broken_config_fails_nginx_t(tmp_path, tls):
    """The check above can fail: a typo in the template is caught by nginx -t."""
    prefix = tmp_path / "nginx"
    main = write_config(prefix, values(Ports(), tls), [free_port()])
    conf = prefix / "dgae.conf"
    conf.write_text(conf.read_text().replace("proxy_next_upstream_tries", "proxy_next_upstream_triez"))
    out = subprocess.run(nginx_cmd(prefix, main, "-t"), capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "proxy_next_upstream_triez" in out.stderr


class NotReadyHandler(http.server.BaseHTTPRequestHandler):
    """A replica that is up but not ready (still loading): 503 to everything, like /readyz."""

    def _refuse(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        body = b'{"error": {"code": "not_ready", "message": "loading"}}'
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _refuse

    def log_message(self, *args) -> None:  # keep test output clean
        pass


@pytest.fixture(scope="module")
def cluster(tiny_checkpoint, tmp_path_factory, tls):
    skip_without_serve()
    tmp = tmp_path_factory.mktemp("lb")
    ports = [free_port(), free_port()]
    replicas = [start_service(tiny_checkpoint, p, tmp / f"replica{i}.log", DGAE_MAX_BODY_BYTES=str(BODY_LIMIT))
                for i, p in enumerate(ports)]
    loading = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotReadyHandler)
    threading.Thread(target=loading.serve_forever, daemon=True).start()
    lb = Ports()
    main = write_config(tmp / "nginx", values(lb, tls), [*ports, loading.server_address[1]])
    nginx = None
    try:
        for port, proc in zip(ports, replicas):
            wait_ready(port, [proc])
        nginx = start(nginx_cmd(tmp / "nginx", main, globals_="daemon off;"), None, tmp / "nginx.log")
        wait_ready(lb.health, [nginx])
        yield {"lb": lb.url, "ca": trusting(tls), "ports": ports, "replicas": replicas,
               "loading_port": loading.server_address[1], "nginx_log": tmp / "nginx.log"}
    finally:
        if nginx is not None:
            stop(nginx, signal.SIGQUIT)
        for proc in replicas:
            stop(proc)
        loading.shutdown()


def encode(cluster: dict, n: int) -> list[httpx.Response]:
    with httpx.Client(base_url=cluster["lb"], verify=cluster["ca"], timeout=120) as client:
        return [client.post("/encode", content=png(32, 32, seed=i), headers={"Content-Type": "image/png"})
                for i in range(n)]


def served_by(log: Path, path: str, at_least: int = 0) -> list[str]:
    """The replica (last upstream tried) of each logged request to ``path`` with status 200, once
    ``at_least`` of them are logged (or after LOG_WAIT_S): nginx writes a request's access-log line
    after it has sent the response, so a client can read the log before the line is there."""
    deadline = time.monotonic() + LOG_WAIT_S
    while True:
        out = []
        for line in log.read_text(errors="replace").splitlines():
            m = re.search(rf'"POST {re.escape(path)} HTTP/[0-9.]+" 200 .*upstream=(?P<up>.*?) upstream_status=', line)
            if m:
                out.append(m["up"].split(", ")[-1])
        if len(out) >= at_least or time.monotonic() > deadline:
            return out
        time.sleep(LOG_POLL_S)


@pytest.mark.server
def test_requests_are_spread_over_both_replicas(cluster):
    responses = encode(cluster, REQUESTS)
    assert [r.status_code for r in responses] == [200] * REQUESTS, [r.text for r in responses if r.status_code != 200]
    assert len({r.headers["X-DGAE-Shape"] for r in responses}) == 1
    replicas = set(served_by(cluster["nginx_log"], "/encode", at_least=REQUESTS))
    assert replicas == {f"127.0.0.1:{p}" for p in cluster["ports"]}, replicas  # both, never the loading one
    log = cluster["nginx_log"].read_text(errors="replace")
    assert re.search(rf"upstream=[^\n]*127\.0\.0\.1:{cluster['loading_port']}[^\n]*upstream_status=503", log), \
        "the not-ready replica was never tried: the test no longer shows that 503 is routed around"


@pytest.mark.server
def test_body_limit_and_internal_paths(cluster):
    with httpx.Client(base_url=cluster["lb"], verify=cluster["ca"], timeout=60) as client:
        too_big = client.post("/encode", content=b"\0" * (BODY_LIMIT + 1), headers={"Content-Type": "image/png"})
        assert too_big.status_code == 413
        assert client.get("/metrics").status_code == 404  # per replica, scraped directly
        assert client.get("/readyz").status_code == 200
        assert client.get("/healthz").json() == {"status": "alive"}


@pytest.mark.server
def test_open_inference_protocol_goes_through_the_balancer(cluster):
    import numpy as np  # noqa: PLC0415

    from kserve_cases import DECODER, binary_request, infer_path, read_binary_response  # noqa: PLC0415

    z = np.zeros((1, 4, 2, 2), np.float32)
    body, headers = binary_request([("latents", z, "FP32")], {"seed": 1, "binary_data_output": True})
    with httpx.Client(base_url=cluster["lb"], verify=cluster["ca"], timeout=120) as client:
        assert client.get("/v2/health/ready").status_code == 200
        r = client.post(infer_path(DECODER), content=body, headers=headers)
    assert r.status_code == 200, r.text
    _, arrays = read_binary_response(r.content, int(r.headers["Inference-Header-Content-Length"]))
    assert arrays["images"].shape == (1, 16, 16, 3)
    assert served_by(cluster["nginx_log"], infer_path(DECODER), at_least=1)


@pytest.mark.server
def test_a_killed_replica_is_routed_around(cluster):
    victim, survivor = cluster["replicas"][0], cluster["ports"][1]
    assert stop(victim, signal.SIGKILL) == -signal.SIGKILL
    before = len(served_by(cluster["nginx_log"], "/encode"))
    responses = encode(cluster, REQUESTS)
    assert [r.status_code for r in responses] == [200] * REQUESTS, [r.text for r in responses if r.status_code != 200]
    after = served_by(cluster["nginx_log"], "/encode", at_least=before + REQUESTS)
    assert set(after[before:]) == {f"127.0.0.1:{survivor}"}


class LoadingThenReadyHandler(http.server.BaseHTTPRequestHandler):
    """A replica restarting after a crash: 503 while it loads, 200 once ``server.ready`` is set."""

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        ready = self.server.ready.is_set()  # type: ignore[attr-defined]
        self.server.answered.append(200 if ready else 503)  # type: ignore[attr-defined]
        body = b'{"status": "alive"}' if ready else b'{"error": {"code": "not_ready", "message": "loading"}}'
        self.send_response(200 if ready else 503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args) -> None:
        pass


CRASH_REQUESTS = 10  # enough for least_conn to send the loading replica more than max_fails=3 of them


def test_a_replica_back_from_a_crash_takes_over_when_the_other_crashes(tmp_path, tls):
    """What docker/smoke/docker_smoke.sh hit with compose: replica A restarts after a crash and
    answers 503 while it loads (nginx retries those on B), A turns ready, then B crashes. Every
    request must still be answered, by A. With passive failure counting (max_fails=3
    fail_timeout=5s) A's 503s had marked it down, so nginx had "no live upstreams" and answered
    502 to everything until fail_timeout passed."""
    servers = []
    for ready in (False, True):  # A loading, B ready
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), LoadingThenReadyHandler)
        server.ready = threading.Event()  # type: ignore[attr-defined]
        server.answered = []  # type: ignore[attr-defined]
        if ready:
            server.ready.set()  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    a, b = servers
    lb = Ports()
    prefix = tmp_path / "nginx"
    main = write_config(prefix, values(lb, tls), [a.server_address[1], b.server_address[1]])
    nginx = start(nginx_cmd(prefix, main, globals_="daemon off;"), None, tmp_path / "nginx.log")
    try:
        wait_ready(lb.health, [nginx])
        with httpx.Client(base_url=lb.url, verify=trusting(tls), timeout=30) as client:
            while_loading = [client.get("/healthz").status_code for _ in range(CRASH_REQUESTS)]
            a.ready.set()  # type: ignore[attr-defined]
            b.shutdown()
            b.server_close()  # B crashed: connection refused from now on
            after_crash = [client.get("/healthz").status_code for _ in range(CRASH_REQUESTS)]
    finally:
        stop(nginx, signal.SIGQUIT)
        a.shutdown()
        a.server_close()
    log = (tmp_path / "nginx.log").read_text(errors="replace")[-3000:]
    assert a.answered.count(503) >= 3, "the loading replica was not tried: the test no longer shows what it claims"  # type: ignore[attr-defined]
    assert while_loading == [200] * CRASH_REQUESTS, log
    assert after_crash == [200] * CRASH_REQUESTS, f"502 while a ready replica was up:\n{log}"


# --- TLS ---------------------------------------------------------------------------------------------
class ReadyHandler(LoadingThenReadyHandler):
    """A ready replica that records the X-Forwarded-Proto the balancer sent."""

    def _answer(self) -> None:
        self.server.protos.append(self.headers.get("X-Forwarded-Proto"))  # type: ignore[attr-defined]
        super()._answer()

    do_GET = do_POST = _answer


@pytest.fixture()
def stub_lb(tmp_path, tls):
    """nginx with the committed template in front of one always-ready stub replica."""
    replica = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ReadyHandler)
    replica.ready, replica.answered, replica.protos = threading.Event(), [], []  # type: ignore[attr-defined]
    replica.ready.set()  # type: ignore[attr-defined]
    threading.Thread(target=replica.serve_forever, daemon=True).start()
    lb = Ports()
    main = write_config(tmp_path / "nginx", values(lb, tls), [replica.server_address[1]])
    nginx = start(nginx_cmd(tmp_path / "nginx", main, globals_="daemon off;"), None, tmp_path / "nginx.log")
    try:
        wait_ready(lb.health, [nginx])
        replica.answered.clear()  # type: ignore[attr-defined]  # the readiness probe's own request
        replica.protos.clear()  # type: ignore[attr-defined]
        yield lb, replica
    finally:
        stop(nginx, signal.SIGQUIT)
        replica.shutdown()
        replica.server_close()


def test_https_is_verified_against_the_generated_ca(stub_lb, tls):
    lb, replica = stub_lb
    with httpx.Client(base_url=lb.url, verify=trusting(tls), timeout=30) as client:
        r = client.get("/readyz")
    assert r.status_code == 200 and r.url.scheme == "https"
    assert replica.protos == ["https"]  # type: ignore[attr-defined]
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):  # not trusted without that CA
        httpx.get(f"{lb.url}/readyz", timeout=30)


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_plain_http_only_redirects_to_https(stub_lb, method):
    lb, replica = stub_lb
    r = httpx.request(method, f"http://127.0.0.1:{lb.http}/encode?seed=3", content=b"x" if method == "POST" else None,
                      timeout=30)
    assert r.status_code == 308  # keeps the method and body when the client follows it
    assert r.headers["location"] == f"https://127.0.0.1:{lb.https}/encode?seed=3"
    assert replica.answered == []  # nothing reached a replica in plain HTTP  # type: ignore[attr-defined]


def test_the_health_listener_answers_readiness_only(stub_lb):
    lb, _ = stub_lb
    assert httpx.get(f"http://127.0.0.1:{lb.health}/readyz", timeout=30).status_code == 200
    assert httpx.post(f"http://127.0.0.1:{lb.health}/encode", content=b"x", timeout=30).status_code == 404


def test_the_docker_smokes_tls_check_passes_here_and_catches_an_unchecked_certificate(stub_lb, tls, monkeypatch):
    """docker/smoke/smoke_client.py tls, the check `make test-docker` runs through the compose balancer."""
    from test_docker_smoke import sc  # noqa: PLC0415

    lb, _ = stub_lb
    monkeypatch.setattr(sc, "VERIFY", trusting(tls))
    result = sc.tls_check(lb.url, f"http://127.0.0.1:{lb.http}")
    assert result["untrusted_client"] == "refused" and result["http_status"] == 308
    assert result["tls_version"] in ("TLSv1.2", "TLSv1.3")
    monkeypatch.setattr(sc, "VERIFY", True)
    with pytest.raises(sc.CheckFailed, match="needs --cacert"):
        sc.tls_check(lb.url, f"http://127.0.0.1:{lb.http}")
