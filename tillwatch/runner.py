"""Runs tillwatch's stages: every stage in one process, or one role to scale out.

Stages are threads joined by the stream::

    collector --samples--> sink --> ClickHouse
                      \\--> detector --anomalies--> notifier --> Alertmanager, JSON lines

Each consuming stage polls its topic, handles the records and only then commits
(at-least-once; every handler is idempotent). SIGTERM, SIGINT or ``--duration`` drains:
collectors stop after their in-flight scrapes, the stream is flushed, then each
consuming stage in flow order reads its topic empty, handles and commits what it read,
and closes. Nothing accepted is lost.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

from prometheus_client import start_http_server

from tillwatch import logs, tracing
from tillwatch.config import Settings
from tillwatch.errors import StreamError, TillwatchError
from tillwatch.stages import STAGE_ORDER, ConsumingStage, Resources, build_stages
from tillwatch.telemetry import BATCH_SECONDS

log = logging.getLogger(__name__)


class Runner:
    """Owns the stages of one process and drains them in flow order on stop."""

    def __init__(
        self, settings: Settings, role: str = "all", stop: threading.Event | None = None
    ) -> None:
        self.settings = settings
        self.role = role
        self._stop = stop or threading.Event()
        self.resources = Resources.open(settings, role)
        self.scheduler, self.stages = build_stages(self.resources, role)

    def start(self) -> None:
        """Start consuming stages first, so nothing the collectors publish waits."""
        for stage in self.stages:
            stage.start()
        if self.scheduler is not None:
            self.scheduler.start()
        log.info("tillwatch running: role=%s, %d stage(s)", self.role, len(self.stages))

    def request_stop(self) -> None:
        """Ask the runner to drain and stop; safe from a signal handler."""
        self._stop.set()

    def wait(self, duration: float | None = None) -> int:
        """Block until stopped, a stage fails, or ``duration`` passes; then drain.

        Returns:
            The process exit status: 0 after a clean drain, 1 when a stage failed.
        """
        deadline = None if duration is None else time.monotonic() + duration
        while not self._stop.wait(0.2):
            if deadline is not None and time.monotonic() >= deadline:
                break
            if any(stage.failure for stage in self.stages):
                break
        return self.drain()

    def drain(self) -> int:
        """Stop collectors, flush the stream, then drain each stage in flow order."""
        if self.scheduler is not None:
            self.scheduler.stop()
        delivered = self._flush()

        for stage in sorted(self.stages, key=lambda s: STAGE_ORDER.index(s.role)):
            stage.drain()
            # A downstream stage reads what this one published: flush before it drains.
            delivered = self._flush() and delivered
        self.resources.close()

        failed = [stage for stage in self.stages if stage.failure]
        for stage in failed:
            log.error("stage %s failed: %s", stage.role, stage.failure)
        log.info("tillwatch stopped: role=%s, drained", self.role)
        return 0 if delivered and not failed else 1

    def _flush(self) -> bool:
        """Flush the stream; on failure say what stays undelivered and carry on draining."""
        try:
            self.resources.stream.flush(timeout=30)
        except StreamError as error:
            log.error("stream not flushed while stopping: %s", error)
            return False
        return True


def run(settings: Settings, *, role: str = "all", duration: float | None = None) -> int:
    """Set up logging, metrics and tracing, then run until a signal or ``duration``."""
    # Signals first: a SIGTERM during start-up must drain, not kill.
    stop = threading.Event()
    _on_signals(lambda *_: stop.set())

    telemetry = settings.telemetry
    logs.setup(telemetry.log_level, telemetry.log_format)
    tracing.setup(telemetry.tracing, telemetry.otlp_endpoint)
    _serve_metrics(telemetry.metrics_address)

    runner = Runner(settings, role, stop)
    try:
        runner.start()
    except TillwatchError:
        runner.drain()
        raise
    return runner.wait(duration)


def _serve_metrics(address: str | None) -> None:
    if not address:
        return
    host, _, port = address.rpartition(":")
    try:
        start_http_server(int(port), addr=host or "127.0.0.1")
    except OSError as error:
        raise TillwatchError(
            f"cannot serve /metrics on {address}: {error.strerror}; "
            'set telemetry.metrics_address to a free host:port, or to "" to disable'
        ) from error
    BATCH_SECONDS.labels(stage="collector")  # make the family visible before the first batch


def _on_signals(handler: Callable[[int, FrameType | None], None]) -> None:
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, handler)


__all__ = ["ConsumingStage", "Runner", "run"]
