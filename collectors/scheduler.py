"""Runs many collectors, each on its own interval, without one target stalling another.

One scheduler thread decides what is due; a bounded thread pool does the scrapes. Each
target's scrapes sit on a fixed grid, ``phase + k * interval``, where the phase is a
jitter derived from the target's name: targets spread over the interval instead of all
firing together, and the same target always gets the same phase, so runs reproduce.

A target never has two scrapes in flight. A scrape that overruns ``timeout`` is reported
at once as ``<source>.up = 0`` (code ``timeout``); the next one starts only after it has
returned, and its late result is dropped because the timeout already spoke for it.

Batches reach ``on_batch`` from the scheduler thread only, one at a time and in the order
the scrapes finished, so the callback needs no locking of its own.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import xxhash

from collectors.base import Collector, TargetState, scrape
from tillwatch.errors import SourceError, TillwatchError
from tillwatch.sample import BatchBuilder, SampleBatch
from tillwatch.telemetry import SCRAPE_ERRORS, SCRAPE_SECONDS

log = logging.getLogger(__name__)

# Error code counted when a collector raises something other than SourceError: a bug.
COLLECTOR_BUG = "collector_error"


def jitter(name: str, interval: float) -> float:
    """Return the phase of a target within its interval, in ``[0, interval)``.

    Args:
        name: the target's stable name (source, instance and labels).
        interval: seconds between two scrapes of the target.

    Returns:
        The same offset for the same name and interval in every run and process.
    """
    fraction = xxhash.xxh64_intdigest(name.encode("utf-8")) / 2.0**64
    return fraction * interval


def target_name(collector: Collector) -> str:
    """Return the name a target's jitter derives from: its source and sorted labels."""
    labels = ",".join(f"{key}={collector.labels[key]}" for key in sorted(collector.labels))
    return f"{collector.source}{{{labels}}}"


@dataclass(eq=False)
class Job:
    """One target under the scheduler: its collector, grid and in-flight scrape."""

    collector: Collector
    interval: float
    phase: float
    state: TargetState = field(default_factory=TargetState)
    running: bool = False
    started: float | None = None  # monotonic time the worker began, None while queued
    timed_out: bool = False

    def next_due(self, now: float) -> float:
        """The first slot of this target's grid strictly after ``now``."""
        slots = (now - self.phase) // self.interval + 1
        return self.phase + max(slots, 0) * self.interval


class Scheduler:
    """Scrapes collectors on their intervals and hands each batch to ``on_batch``.

    The scheduler owns the collectors it is given: :meth:`stop` closes them.

    Args:
        targets: ``(collector, interval_seconds)`` pairs.
        on_batch: receives every batch, failures (``up = 0``) included.
        workers: size of the scrape thread pool; bounds concurrent scrapes.
        timeout: seconds after which a running scrape is reported as ``timeout``.
    """

    def __init__(
        self,
        targets: Iterable[tuple[Collector, float]],
        *,
        on_batch: Callable[[SampleBatch], None],
        workers: int = 8,
        timeout: float = 10.0,
    ) -> None:
        self.on_batch = on_batch
        self.timeout = timeout
        self._jobs = [Job(c, i, jitter(target_name(c), i)) for c, i in targets]
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="scrape")
        self._finished: queue.SimpleQueue[tuple[Job, SampleBatch]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
        self._origin = 0.0

    def start(self) -> None:
        """Start scheduling; the first scrape of each target comes at its phase."""
        self._origin = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        """Stop scheduling, wait for scrapes in flight, deliver their batches, close all."""
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()
        self._pool.shutdown(wait=True, cancel_futures=True)

        self._deliver_finished()
        for job in self._jobs:
            job.collector.close()

    def _loop(self) -> None:
        due = [(job.phase, n, job) for n, job in enumerate(self._jobs)]
        heapq.heapify(due)
        sequence = itertools.count(len(due))
        while not self._stopping.is_set():
            for job in self._deliver_finished():
                heapq.heappush(due, (self._due_after(job), next(sequence), job))
            self._report_timeouts()
            self._submit_due(due)

            self._wake.wait(self._sleep_for(due))
            self._wake.clear()

    def _clock(self) -> float:
        return time.monotonic() - self._origin

    def _submit_due(self, due: list[tuple[float, int, Job]]) -> None:
        now = self._clock()
        while due and due[0][0] <= now and not self._stopping.is_set():
            job = heapq.heappop(due)[2]
            job.running, job.started, job.timed_out = True, None, False
            self._pool.submit(self._run, job)

    def _sleep_for(self, due: list[tuple[float, int, Job]]) -> float:
        now = self._clock()
        wake_at = [due[0][0]] if due else []
        wake_at += [job.started + self.timeout for job in self._jobs
                    if job.running and job.started is not None and not job.timed_out]
        return max(0.0, min(wake_at, default=now + 1.0) - now)

    def _due_after(self, job: Job) -> float:
        # A scrape that ran past its slot skips the slots it missed rather than bursting.
        return job.next_due(self._clock())

    def _run(self, job: Job) -> None:
        job.started = self._clock()
        self._wake.set()
        try:
            batch = scrape(job.collector, job.state)
        except Exception:
            # Not a target failure but a bug (an undeclared signal, a parsing slip): make
            # it loud, count it, and keep the target scheduled with up = 0.
            log.exception("%s: collector raised instead of a SourceError", job.collector.name)
            SCRAPE_ERRORS.labels(job.collector.source, COLLECTOR_BUG).inc()
            batch = failure_batch(job.collector, time.time(), self._clock() - job.started)
        else:
            self._count(job, self._clock() - job.started)
        self._finished.put((job, batch))
        self._wake.set()

    def _count(self, job: Job, duration: float) -> None:
        SCRAPE_SECONDS.labels(job.collector.source).observe(duration)
        if job.state.error_code is not None:
            SCRAPE_ERRORS.labels(job.collector.source, job.state.error_code).inc()

    def _deliver_finished(self) -> list[Job]:
        done = []
        while not self._finished.empty():
            job, batch = self._finished.get_nowait()
            job.running = False
            if not job.timed_out:
                self._deliver(batch)
            done.append(job)
        return done

    def _report_timeouts(self) -> None:
        now = self._clock()
        for job in self._jobs:
            if not job.running or job.started is None or job.timed_out:
                continue
            if now - job.started >= self.timeout:
                self._time_out(job, now - job.started)

    def _time_out(self, job: Job, elapsed: float) -> None:
        job.timed_out = True
        message = (
            f"{job.collector.name}: scrape still running after {elapsed:.1f}s "
            f"(timeout {self.timeout:g}s); the next scrape waits until it returns"
        )
        job.state.record(job.collector, SourceError("timeout", message))
        SCRAPE_ERRORS.labels(job.collector.source, "timeout").inc()
        self._deliver(failure_batch(job.collector, time.time(), elapsed))

    def _deliver(self, batch: SampleBatch) -> None:
        try:
            self.on_batch(batch)
        except TillwatchError as failure:
            # A full or failing stream loses this batch, not the scheduler thread.
            log.warning("dropped a batch of %d samples: %s", len(batch), failure)


def failure_batch(collector: Collector, now: float, duration: float) -> SampleBatch:
    """Return the batch of a scrape that produced nothing: ``up = 0`` and its duration."""
    builder = BatchBuilder()
    builder.add(now, f"{collector.source}.up", collector.labels, 0.0)
    builder.add(now, f"{collector.source}.scrape_duration_seconds", collector.labels, duration)
    return builder.build()
