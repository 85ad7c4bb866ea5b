"""Fixture ``redis_server``: a real redis-server on a free loopback port, one per test."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from tests.services._support import free_port, require_binary, wait_until


@dataclass
class RedisServer:
    """A running redis-server: where it listens and how to stop it."""

    host: str
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def client(self) -> redis.Redis:
        """Return a new client of this server (the test closes it with the server)."""
        return redis.Redis(host=self.host, port=self.port, socket_timeout=5)

    def stop(self) -> None:
        """Stop the server; later connections are refused."""
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


def start_redis(directory: Path) -> RedisServer:
    """Start redis-server without persistence in ``directory`` and wait for PING."""
    binary = require_binary("redis-server")
    port = free_port()
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--dir", str(directory), "--loglevel", "warning"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = RedisServer("127.0.0.1", port, process)

    probe = server.client()
    try:
        wait_until(lambda: process.poll() is None and _pings(probe), f"redis-server on {port}")
    finally:
        probe.close()
    return server


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server for one test, stopped afterwards."""
    server = start_redis(tmp_path)
    try:
        yield server
    finally:
        server.stop()
