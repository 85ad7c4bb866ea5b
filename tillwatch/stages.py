"""The stages of the pipeline and what they share.

Each consuming stage has one job, done in :meth:`ConsumingStage.handle`: the runner calls
it from a thread per stage, and ``tillwatch replay`` / ``demo`` call it synchronously, so
both paths run the same code.

| role      | reads                  | does                                                 |
|-----------|------------------------|------------------------------------------------------|
| collector | targets                | scrapes on schedule, publishes sample batches        |
| sink      | samples, dead letters  | stores samples in ClickHouse; archives dead letters   |
| detector  | samples                | scores every series, publishes and stores anomalies  |
| notifier  | anomalies              | incidents, tiers, Alertmanager and the JSON-lines log |
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY

from alerts.incidents import IncidentBuilder
from alerts.notifier import AlertmanagerNotifier
from alerts.tiers import AlertEvent, TierTracker
from collectors.base import Collector
from collectors.exporter import LatestValues
from collectors.registry import COLLECTORS
from collectors.scheduler import Scheduler
from pipeline.codec import Decoder, encode
from pipeline.deadletter import deadletter_record, decode_samples
from pipeline.sink import Sink
from pipeline.storage import Storage
from pipeline.stream import (
    TOPIC_ANOMALIES,
    TOPIC_DEADLETTER,
    TOPIC_SAMPLES,
    Consumer,
    Record,
    Stream,
    open_stream,
)
from tillwatch.anomaly import Anomaly
from tillwatch.config import CollectorSettings, DetectorSettings, Settings
from tillwatch.errors import DecodeError, TillwatchError
from tillwatch.sample import SampleBatch, Series
from tillwatch.telemetry import BATCH_SECONDS, CONSUMER_LAG, SAMPLES_OUT, STAGE_LAG
from tillwatch.tracing import stage_span

if TYPE_CHECKING:
    from detectors.calendar import Calendar
    from detectors.rules import Rule

log = logging.getLogger(__name__)

# Drain order follows the flow; dead letters last, since every stage may produce them.
STAGE_ORDER = ("collector", "sink", "detector", "notifier", "deadletter")
ROLE_STAGES = {
    "all": ("collector", "sink", "deadletter", "detector", "notifier"),
    "collector": ("collector",),
    "sink": ("sink", "deadletter"),
    "detector": ("detector",),
    "notifier": ("notifier",),
}


@dataclass
class Resources:
    """What the stages of one process share: settings and the stream."""

    settings: Settings
    stream: Stream
    clock: Callable[[], float] = time.time
    _storages: list[Storage] = field(default_factory=list)

    @classmethod
    def open(cls, settings: Settings, role: str = "all") -> Resources:
        """Open the stream; storage is opened per stage (clients are not thread-safe)."""
        stream = open_stream(
            settings.stream.url,
            partitions=settings.stream.partitions,
            max_buffered=settings.stream.buffer_records,
            publish_timeout=settings.stream.publish_timeout_seconds,
        )
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        return cls(settings, stream)

    def storage(self) -> Storage:
        """A storage client for one stage; the first one also applies migrations."""
        config = self.settings.storage
        password = config.password.resolve().get_secret_value() if config.password else ""
        storage = Storage.open(
            config.url,
            database=config.database,
            password=password,
            ttl_days=config.ttl_days,
            migrate=not self._storages,
        )
        self._storages.append(storage)
        return storage

    def close(self) -> None:
        """Close every storage client, then the stream."""
        for storage in self._storages:
            storage.close()
        self.stream.close()


class ConsumingStage:
    """A stage that reads one topic in a consumer group, in its own thread.

    Subclasses set ``role``, ``topic`` and ``group`` and implement :meth:`handle`.
    A failure of the project's own kind stops the stage without committing, so the
    records it held are redelivered; the runner then stops the process.
    """

    role: str
    topic: str
    group: str
    drain_timeout = 60.0

    def __init__(self, resources: Resources) -> None:
        self.resources = resources
        self.stream = resources.stream
        self.failure: TillwatchError | None = None
        self._stopping = threading.Event()
        self._draining = threading.Event()
        self._drain_deadline = 0.0
        self._consumer: Consumer | None = None
        self._thread = threading.Thread(
            target=self._loop, name=f"stage-{self.role}", daemon=True
        )

    def handle(self, records: list[Record]) -> None:
        """Process records; they are committed once this returns."""
        raise NotImplementedError

    def idle(self) -> None:
        """Called when a poll returned nothing: time-based work such as flushes."""

    def close(self) -> None:
        """Flush and release what the stage holds; called once, after the last batch."""

    def start(self) -> None:
        # Join the group before returning, so records published right after start()
        # are read by this stage.
        self._consumer = self.stream.consumer(self.topic, self.group)
        self._thread.start()

    def drain(self) -> None:
        """Read the topic empty, handle and commit it, close, and wait for the thread."""
        self._drain_deadline = time.monotonic() + self.drain_timeout
        self._draining.set()
        self._thread.join()

    def process(self, records: list[Record]) -> None:
        """Handle one batch of records with its span and timing (no commit)."""
        with stage_span(self.role, len(records)), BATCH_SECONDS.labels(self.role).time():
            self.handle(records)

    def _loop(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        try:
            self._consume(consumer)
            self.close()
        except TillwatchError as error:
            self.failure = error
        finally:
            consumer.close()

    def _consume(self, consumer: Consumer) -> None:
        while not self._stopping.is_set():
            records = consumer.poll(timeout=0.2)
            if records:
                self.process(records)
                consumer.commit()
                CONSUMER_LAG.labels(self.topic, self.group).set(consumer.lag())
            elif self._draining.is_set() and self._drained(consumer):
                return
            else:
                self.idle()

    def _drained(self, consumer: Consumer) -> bool:
        # An empty poll proves nothing before the group has assigned partitions (Kafka
        # takes seconds to form a group): drained means assigned and nothing uncommitted.
        if consumer.partitions and consumer.lag() == 0:
            return True
        if time.monotonic() < self._drain_deadline:
            return False
        log.warning(
            "%s stage: still %d records behind after %.0fs of draining; they stay in the "
            "stream for the next worker of group %s",
            self.role,
            consumer.lag(),
            self.drain_timeout,
            self.group,
        )
        return True


class SinkStage(ConsumingStage):
    """Stores sample batches; commits only what the sink has written."""

    role, topic, group = "sink", TOPIC_SAMPLES, "tillwatch-sink"

    def __init__(self, resources: Resources) -> None:
        super().__init__(resources)
        config = resources.settings.storage
        self.decoder = Decoder()
        self.sink = Sink(
            resources.storage(), max_rows=config.batch_rows, max_seconds=config.flush_seconds
        )

    def handle(self, records: list[Record]) -> None:
        for batch in decode_samples(records, self.decoder, self.stream, self.role):
            self.sink.write(batch)
            _report_lag(self.role, batch, self.resources.clock)
        # Commit follows handle(): flush first so a commit never covers unstored rows.
        self.sink.flush()

    def close(self) -> None:
        self.sink.close()


class DeadLetterStage(ConsumingStage):
    """Archives dead-letter records to a JSON-lines file, so none is lost on one machine."""

    role, topic, group = "deadletter", TOPIC_DEADLETTER, "tillwatch-deadletter"

    def __init__(self, resources: Resources) -> None:
        super().__init__(resources)
        self.path = resources.settings.data_dir / "deadletter.jsonl"

    def handle(self, records: list[Record]) -> None:
        with self.path.open("ab") as archive:
            for record in records:
                archive.write(record.value.rstrip(b"\n") + b"\n")


class DetectorStage(ConsumingStage):
    """Scores every series and publishes and stores the anomalies found."""

    role, topic, group = "detector", TOPIC_SAMPLES, "tillwatch-detector"

    def __init__(self, resources: Resources) -> None:
        super().__init__(resources)
        # Imported here: the ensemble pulls in scikit-learn, which other roles never need.
        from detectors import stage as detection

        self.decoder = Decoder()
        self.state_path = resources.settings.data_dir / "detector-state.npz"
        config = resources.settings.detectors
        self.detectors = detection.DetectorStage(
            threshold=config.threshold,
            calendar=calendar_of(config),
            utc_offset_hours=config.utc_offset_hours,
            rules=rules_of(config),
        )
        if self.state_path.exists():
            self.detectors.restore(self.state_path)
        self.storage = resources.storage()

    def handle(self, records: list[Record]) -> None:
        anomalies: list[Anomaly] = []
        for batch in decode_samples(records, self.decoder, self.stream, self.role):
            anomalies += self.detectors.process(batch)
            _report_lag(self.role, batch, self.resources.clock)

        for anomaly in anomalies:
            key = anomaly.series_id.to_bytes(8, "big")
            self.stream.publish(TOPIC_ANOMALIES, anomaly.to_json(), key=key)
        if anomalies:
            self.storage.insert_anomalies(anomalies)
            SAMPLES_OUT.labels(self.role).inc(len(anomalies))

    def close(self) -> None:
        # A restarted worker resumes from this snapshot instead of warming up again.
        self.detectors.snapshot(self.state_path)


def calendar_of(config: DetectorSettings) -> Calendar:
    """The detectors' calendar (trading hours and events) from the configuration."""
    from detectors.calendar import Calendar, TradingHours

    hours = [
        TradingHours(
            h.labels,
            [(day[0], day[1]) if day else None for day in h.week],
            config.utc_offset_hours,
        )
        for h in config.trading_hours
    ]
    return Calendar.from_config([e.model_dump() for e in config.events], hours)


def rules_of(config: DetectorSettings) -> tuple[Rule, ...]:
    """The configured rules first (the first rule matching a series judges it), then the
    built-in table unless switched off."""
    from detectors.rules import DEFAULT_RULES, BurnRateRule, ThresholdRule

    configured: list[Rule] = [
        ThresholdRule(
            r.signal,
            r.limit,
            clear=r.clear,
            min_duration=r.min_duration_seconds,
            above=r.above,
            unit=r.unit,
            labels=r.labels,
        )
        for r in config.rules
    ]
    configured += [
        BurnRateRule(b.signal, objective=b.objective, labels=b.labels)
        for b in config.burn_rates
    ]
    return (*configured, *(DEFAULT_RULES if config.builtin_rules else ()))


class NotifierStage(ConsumingStage):
    """Turns anomalies into incidents, tiers them and notifies Alertmanager."""

    role, topic, group = "notifier", TOPIC_ANOMALIES, "tillwatch-notifier"

    def __init__(self, resources: Resources, clock: Callable[[], float] | None = None) -> None:
        """Args:
        resources: the process's shared resources.
        clock: incident time; sample time in a replay. Alertmanager always gets wall time.
        """
        super().__init__(resources)
        self.clock = clock or resources.clock
        self.alerting = Alerting.from_settings(resources.settings)

    def handle(self, records: list[Record]) -> None:
        anomalies = []
        for record in records:
            try:
                anomalies.append(Anomaly.from_json(record.value))
            except DecodeError as error:
                payload = deadletter_record(
                    self.role, error.code, str(error), record.topic, record.value
                )
                self.stream.publish(TOPIC_DEADLETTER, payload)
        self.alerting.observe(anomalies)

    def idle(self) -> None:
        self.alerting.tick(self.clock())

    def close(self) -> None:
        self.alerting.tick(self.clock())
        self.alerting.notifier.close()


@dataclass
class Alerting:
    """Incident builder, tier tracker and notifier, driven by anomaly time."""

    builder: IncidentBuilder
    tracker: TierTracker
    notifier: AlertmanagerNotifier
    events: list[AlertEvent] = field(default_factory=list)

    @classmethod
    def from_settings(cls, settings: Settings) -> Alerting:
        config = settings.alerts
        notifier = AlertmanagerNotifier(
            config.effective_alertmanager_url(),
            journal=config.jsonl_path,
            runbook_base_url=config.runbook_base_url,
            dashboard_base_url=config.dashboard_base_url,
        )
        return cls(IncidentBuilder(), TierTracker(), notifier)

    def observe(self, anomalies: list[Anomaly]) -> None:
        """Fold anomalies into incidents and send the alert events they cause."""
        self._send(self.tracker.apply_all(self.builder.observe_all(anomalies)))

    def tick(self, now: float) -> None:
        """Resolve quiet incidents and re-send alerts that are due."""
        self._send(self.tracker.apply_all(self.builder.advance(now)))
        self.notifier.flush()

    def _send(self, events: list[AlertEvent]) -> None:
        for event in events:
            self.notifier.notify(event)
        self.events += events


def _report_lag(stage: str, batch: SampleBatch, clock: Callable[[], float]) -> None:
    if len(batch):
        STAGE_LAG.labels(stage).set(max(0.0, clock() - float(batch.ts.max())))
        SAMPLES_OUT.labels(stage).inc(len(batch))


def build_collectors(targets: list[CollectorSettings]) -> list[tuple[Collector, float]]:
    """Instantiate every configured collector with its interval."""
    built = []
    for target in targets:
        options = dict(target.options)
        if target.password is not None:
            options["password"] = target.password.resolve().get_secret_value()
        collector = COLLECTORS[target.source](labels=target.labels, **options)
        built.append((collector, target.interval_seconds))
    return built


def publish_batch(stream: Stream, batch: SampleBatch) -> None:
    """Publish a collector's batch keyed by its target's ``up`` series (see the README)."""
    if not len(batch):
        return
    anchor: Series = next(
        (s for s in batch.series if s.signal.endswith(".up")), batch.series[0]
    )
    stream.publish(TOPIC_SAMPLES, encode(batch), key=anchor.id.to_bytes(8, "big"))


STAGES: dict[str, type[ConsumingStage]] = {
    "sink": SinkStage,
    "deadletter": DeadLetterStage,
    "detector": DetectorStage,
    "notifier": NotifierStage,
}


def build_stages(
    resources: Resources, role: str
) -> tuple[Scheduler | None, list[ConsumingStage]]:
    """The scheduler (for the collector role) and the consuming stages of ``role``."""
    names = ROLE_STAGES[role]
    stages = [STAGES[name](resources) for name in names if name in STAGES]

    scheduler = None
    if "collector" in names:
        targets = build_collectors(resources.settings.collectors)
        if not targets:
            log.warning("no collectors configured: add [[collectors]] tables to tillwatch.toml")
        scheduler = Scheduler(targets, on_batch=lambda b: _collected(resources, b))
    return scheduler, stages


def _collected(resources: Resources, batch: SampleBatch) -> None:
    """Publish a scrape, and keep its values for /metrics under exporter names."""
    publish_batch(resources.stream, batch)
    latest_values().update(batch)


@functools.cache
def latest_values() -> LatestValues:
    """The one exporter of collected values, registered on the default registry."""
    exporter = LatestValues()
    REGISTRY.register(exporter)
    return exporter
