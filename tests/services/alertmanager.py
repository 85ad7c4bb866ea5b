"""Fixtures ``alertmanager`` and ``alertmanager_factory``: a real Alertmanager per test.

The default configuration is the project's own ``alerts/alertmanager.yml`` with two
rewrites only: every receiver posts to a webhook server the test runs (``inbox``), and
group timings shrink so a notification arrives in about a second. The routing tree and
the inhibition rules stay the real ones, which is what the tests are about.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.services._support import INSTALL_HINT, free_port, require_binary, wait_until

CONFIG = Path(__file__).resolve().parents[2] / "alerts" / "alertmanager.yml"
INSTALL = f"apt-get install prometheus-alertmanager, or {INSTALL_HINT}"

# Test timings: short enough for a fast test, long enough not to flood the inbox.
TEST_TIMINGS = {"group_wait": "100ms", "group_interval": "1s", "repeat_interval": "1h"}


@dataclass
class Notification:
    """One webhook call Alertmanager made: which receiver, and its JSON body."""

    receiver: str
    body: dict[str, Any]

    @property
    def status(self) -> str:
        return str(self.body["status"])

    @property
    def alerts(self) -> list[dict[str, Any]]:
        return list(self.body["alerts"])


@dataclass
class WebhookInbox:
    """A local HTTP server recording what each receiver got (path = receiver name)."""

    server: ThreadingHTTPServer
    received: list[Notification] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def notifications(self, receiver: str | None = None) -> list[Notification]:
        """Return what arrived so far, optionally for one receiver only."""
        with self.lock:
            return [n for n in self.received if receiver in (None, n.receiver)]

    def wait_for(
        self, predicate: Callable[[Notification], bool], what: str, timeout: float = 15.0
    ) -> Notification:
        """Wait until a notification matching ``predicate`` arrives; fail naming ``what``."""
        found: list[Notification] = []

        def arrived() -> bool:
            found[:] = [n for n in self.notifications() if predicate(n)]
            return bool(found)

        wait_until(arrived, what, timeout)
        return found[0]


def start_inbox() -> WebhookInbox:
    """Serve a webhook inbox on a free loopback port in a daemon thread."""
    inbox: WebhookInbox

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (the http.server naming)
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length))
            with inbox.lock:
                inbox.received.append(Notification(self.path.strip("/"), body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            return  # keep test output clean; the inbox itself is the record

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    inbox = WebhookInbox(server)
    # A short poll lets teardown shut the server down without waiting half a second.
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    return inbox


def rewrite_for_test(text: str, inbox_url: str) -> str:
    """Rewrite an Alertmanager config for a test: receivers to the inbox, short timings.

    Args:
        text: the configuration YAML (routing tree and inhibition rules kept as they are).
        inbox_url: the webhook inbox base URL; receiver ``x`` posts to ``<inbox_url>/x``.

    Returns:
        The rewritten YAML.
    """
    config = yaml.safe_load(text)
    config["receivers"] = [
        {
            "name": receiver["name"],
            "webhook_configs": [
                {"url": f"{inbox_url}/{receiver['name']}", "send_resolved": True}
            ],
        }
        for receiver in config["receivers"]
    ]
    _shorten(config["route"])
    return yaml.safe_dump(config, sort_keys=False)


def _shorten(route: dict[str, Any]) -> None:
    for key, value in TEST_TIMINGS.items():
        if key in route:
            route[key] = value
    for child in route.get("routes", []):
        _shorten(child)


@dataclass
class AlertmanagerServer:
    """A real Alertmanager on a loopback port, with the inbox its receivers post to."""

    port: int
    config_path: Path
    storage: Path
    inbox: WebhookInbox
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the binary (again, after :meth:`stop`) and wait for ``/-/ready``."""
        binary = require_binary("prometheus-alertmanager", INSTALL)
        command = [
            binary,
            f"--config.file={self.config_path}",
            f"--storage.path={self.storage}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--cluster.listen-address=",
            "--log.level=warn",
        ]
        log = (self.storage / "alertmanager.log").open("ab")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_until(self._ready, f"prometheus-alertmanager on port {self.port}")

    def stop(self) -> None:
        """Stop the binary; its port then refuses connections."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def alerts(self, *filters: str, **params: str) -> list[dict[str, Any]]:
        """Return ``GET /api/v2/alerts`` for label matchers such as ``'tier="page"'``."""
        query = [("filter", matcher) for matcher in filters] + list(params.items())
        response = requests.get(f"{self.url}/api/v2/alerts", params=query, timeout=5)
        response.raise_for_status()
        return list(response.json())

    def _ready(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            log = (self.storage / "alertmanager.log").read_text(errors="replace")
            message = f"prometheus-alertmanager exited at start:\n{log[-2000:]}"
            pytest.fail(message, pytrace=False)
        try:
            return requests.get(f"{self.url}/-/ready", timeout=1).status_code == 200
        except requests.ConnectionError:
            return False


StartAlertmanager = Callable[..., AlertmanagerServer]


@pytest.fixture
def alertmanager_factory(tmp_path: Path) -> Iterator[StartAlertmanager]:
    """Start Alertmanagers for a test: ``factory(config_text=None, port=None, start=True)``.

    ``config_text`` defaults to alerts/alertmanager.yml, rewritten by :func:`rewrite_for_test`;
    ``start=False`` prepares a server (port chosen, config written) without running it.
    Everything started is stopped after the test.
    """
    servers: list[AlertmanagerServer] = []
    inboxes: list[WebhookInbox] = []

    def factory(
        config_text: str | None = None, port: int | None = None, start: bool = True
    ) -> AlertmanagerServer:
        inbox = start_inbox()
        inboxes.append(inbox)
        directory = tmp_path / f"alertmanager-{len(servers)}"
        directory.mkdir()
        config_path = directory / "alertmanager.yml"
        config_path.write_text(rewrite_for_test(config_text or CONFIG.read_text(), inbox.url))

        server = AlertmanagerServer(port or free_port(), config_path, directory, inbox)
        servers.append(server)
        if start:
            server.start()
        return server

    try:
        yield factory
    finally:
        for server in servers:
            server.stop()
        for inbox in inboxes:
            inbox.server.shutdown()
            inbox.server.server_close()


@pytest.fixture
def alertmanager(alertmanager_factory: StartAlertmanager) -> AlertmanagerServer:
    """A running Alertmanager with the project's routing, its receivers on ``.inbox``."""
    return alertmanager_factory()
