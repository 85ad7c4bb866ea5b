"""Helpers for starting real services in tests: free ports, binaries, readiness probes."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

INSTALL_HINT = "run scripts/install-system-deps.sh (or `make test`, which calls it)"


def free_port() -> int:
    """Return a loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_binary(
    name: str, install: str = INSTALL_HINT, extra_dirs: tuple[str, ...] = ()
) -> str:
    """Return the path of an executable, or fail the test saying how to install it."""
    search = os.pathsep.join(
        [*extra_dirs, str(Path(sys.executable).parent), os.environ["PATH"]]
    )
    found = shutil.which(name, path=search)
    if found is None:
        pytest.fail(f"{name} is not installed: {install}", pytrace=False)
    return found


def wait_until(probe: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll ``probe`` until it returns true; fail the test naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while time.monotonic() < deadline:
        try:
            if probe():
                return
        except OSError:
            pass
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)
    pytest.fail(f"{what} was not ready within {timeout:.0f}s", pytrace=False)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Return whether something accepts TCP connections on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0
