"""The scheduler: reproducible jitter, timeouts without overlap, and a clean stop.

The collectors here are small in-test sources (their reads return at once, block on an
event the test releases, or raise), since what is under test is the scheduling, not a
target. Each test uses its own source name, so the process-wide scrape metrics it reads
are its own.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

import pytest
from prometheus_client import REGISTRY

from collectors.base import Collector, Reading, SignalSpec
from collectors.scheduler import Job, Scheduler, jitter, target_name
from tests.services._support import wait_until
from tillwatch.errors import StreamFull
from tillwatch.sample import SampleBatch


class Steady(Collector):
    """Answers at once with how many times it was read."""

    source = "steady"
    signals = (SignalSpec("steady.reads_total", "1", "reads so far"),)

    def __init__(self, *, labels: dict[str, str]) -> None:
        super().__init__(labels=labels)
        self.reads = 0
        self.closed = False

    def read(self, now: float) -> Iterable[Reading]:
        self.reads += 1
        return [Reading(f"{self.source}.reads_total", float(self.reads))]

    def close(self) -> None:
        self.closed = True


class Gated(Steady):
    """Each read waits until the test opens the gate; counts reads running at once."""

    source = "gated"
    signals = (SignalSpec("gated.reads_total", "1", "reads so far"),)

    def __init__(self, *, labels: dict[str, str]) -> None:
        super().__init__(labels=labels)
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.running = self.most_running = 0

    def read(self, now: float) -> Iterable[Reading]:
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        self.entered.set()
        self.gate.wait(timeout=10)
        self.running -= 1
        return super().read(now)


class Broken(Steady):
    """A collector with a bug: it raises something other than SourceError."""

    source = "broken"
    signals = ()

    def read(self, now: float) -> Iterable[Reading]:
        raise RuntimeError("bug in the collector")


class Batches(list):
    """Collects delivered batches; answers questions about one target's samples."""

    def values(self, signal: str) -> list[float]:
        return [s.value for b in list(self) for s in b.samples() if s.signal == signal]


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_jitter_is_reproducible_within_the_interval_and_spread():
    names = [f"redis{{instance=cache-{n}:6379}}" for n in range(200)]
    phases = [jitter(name, 15.0) for name in names]
    assert phases == [jitter(name, 15.0) for name in names]
    assert all(0.0 <= phase < 15.0 for phase in phases)
    # 200 targets over 15 s: none of the five 3-second slices is empty or holds half.
    slices = [sum(1 for p in phases if k * 3 <= p < (k + 1) * 3) for k in range(5)]
    assert all(10 < count < 100 for count in slices), slices


def test_target_name_does_not_depend_on_label_order():
    one = Steady(labels={"service": "redis", "instance": "a"})
    two = Steady(labels={"instance": "a", "service": "redis"})
    assert target_name(one) == target_name(two) == "steady{instance=a,service=redis}"


def test_slots_stay_on_the_grid_and_skip_missed_ones():
    job = Job(Steady(labels={}), interval=10.0, phase=3.0)
    assert job.next_due(0.0) == 3.0
    assert job.next_due(3.0) == 13.0
    assert job.next_due(47.5) == 53.0  # a long overrun skips 23, 33 and 43


def test_an_overrunning_scrape_is_a_timeout_and_is_not_overlapped():
    slow, fast = Gated(labels={"instance": "slow"}), Steady(labels={"instance": "fast"})
    batches = Batches()
    timeouts_before = metric("tillwatch_scrape_errors_total", source="gated", code="timeout")
    scheduler = Scheduler([(slow, 0.05), (fast, 0.05)], on_batch=batches.append, timeout=0.2)
    scheduler.start()
    try:
        wait_until(lambda: batches.values("gated.up") == [0.0], "the timeout report")
        reads_at_timeout = len(batches.values("steady.up"))
        wait_until(
            lambda: len(batches.values("steady.up")) >= reads_at_timeout + 3,
            "the other target to carry on",
        )
        assert slow.reads == 0 and slow.most_running == 1, "no second scrape while one runs"

        slow.gate.set()
        wait_until(lambda: 1.0 in batches.values("gated.up"), "the next scrape after return")
    finally:
        slow.gate.set()
        scheduler.stop()

    # The overrunning read (the first) was dropped: the timeout already reported it.
    assert 1.0 not in batches.values("gated.reads_total")
    assert slow.most_running == 1
    after = metric("tillwatch_scrape_errors_total", source="gated", code="timeout")
    assert after == timeouts_before + 1


def test_stop_waits_for_scrapes_in_flight_and_closes_collectors():
    slow = Gated(labels={"instance": "stopping"})
    batches = Batches()
    scheduler = Scheduler([(slow, 0.01)], on_batch=batches.append, timeout=5)
    scheduler.start()
    assert slow.entered.wait(timeout=5)

    stopper = threading.Thread(target=scheduler.stop)
    stopper.start()
    stopper.join(timeout=0.2)
    assert stopper.is_alive(), "stop returned while a scrape was in flight"
    slow.gate.set()
    stopper.join(timeout=5)

    assert not stopper.is_alive()
    assert batches.values("gated.up") == [1.0], "the in-flight scrape's batch was delivered"
    assert slow.closed


def test_a_collector_bug_is_counted_and_the_target_stays_scheduled(caplog):
    broken, batches = Broken(labels={"instance": "bug"}), Batches()
    before = metric("tillwatch_scrape_errors_total", source="broken", code="collector_error")
    scheduler = Scheduler([(broken, 0.02)], on_batch=batches.append, timeout=5)
    scheduler.start()
    try:
        wait_until(lambda: len(batches.values("broken.up")) >= 2, "two scrapes of a bad target")
    finally:
        scheduler.stop()

    assert set(batches.values("broken.up")) == {0.0}
    assert metric("tillwatch_scrape_errors_total", source="broken", code="collector_error") >= (
        before + 2
    )
    assert "bug in the collector" in caplog.text


def test_scrape_durations_are_observed_per_source():
    steady, batches = Steady(labels={"instance": "observed"}), Batches()
    before = metric("tillwatch_scrape_duration_seconds_count", source="steady")
    scheduler = Scheduler([(steady, 0.02)], on_batch=batches.append)
    scheduler.start()
    try:
        wait_until(lambda: len(batches.values("steady.up")) >= 3, "three scrapes")
    finally:
        scheduler.stop()
    assert metric("tillwatch_scrape_duration_seconds_count", source="steady") >= before + 3


@pytest.mark.parametrize("interval", [0.02, 0.05])
def test_each_target_keeps_its_interval(interval):
    steady, batches = Steady(labels={"instance": f"every-{interval}"}), Batches()
    scheduler = Scheduler([(steady, interval)], on_batch=batches.append)
    scheduler.start()
    try:
        wait_until(lambda: len(batches) >= 6, "six scrapes")
    finally:
        scheduler.stop()

    stamps = sorted(b.ts[0] for b in list(batches))
    gaps = [later - earlier for earlier, later in zip(stamps, stamps[1:], strict=False)]
    assert min(gaps) > interval * 0.5, gaps
    assert sorted(gaps)[len(gaps) // 2] == pytest.approx(interval, rel=0.5)


def test_a_failing_callback_loses_its_batch_not_the_scheduler(caplog):
    steady, delivered = Steady(labels={"instance": "full-stream"}), Batches()

    def publish(batch: SampleBatch) -> None:
        delivered.append(batch)
        if len(delivered) == 1:
            raise StreamFull("samples topic: buffer stayed full for 5 s")

    scheduler = Scheduler([(steady, 0.02)], on_batch=publish)
    scheduler.start()
    try:
        wait_until(lambda: len(delivered) >= 3, "batches after the failed publish")
    finally:
        scheduler.stop()
    assert "buffer stayed full" in caplog.text
