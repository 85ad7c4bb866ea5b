"""The pipeline over recorded or simulated samples: ``tillwatch replay`` and ``demo``.

The same stages as ``tillwatch run`` (sink, detector, notifier, dead letters), joined
by the same stream, but pumped synchronously: each batch is published, then every stage
reads and handles what is waiting before the next batch goes in. Time is the samples'
time, so incidents open, re-send and resolve as they would have live, at any speed.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from alerts.tiers import AlertEvent
from estate.scenarios import calendar_events, load_scenarios, simulate
from estate.scoring import Detection, Score, format_score, score
from estate.simulator import DEFAULT_EPOCH, WEEK, Estate
from pipeline.deadletter import deadletter_record
from pipeline.replay import Pacer, Reject, ReplayChunk
from pipeline.storage import Storage
from pipeline.stream import TOPIC_DEADLETTER, Consumer, Record
from tillwatch.anomaly import Anomaly
from tillwatch.config import (
    AlertSettings,
    CalendarEventSettings,
    Settings,
    TradingHoursSettings,
)
from tillwatch.sample import SampleBatch
from tillwatch.stages import (
    ConsumingStage,
    DeadLetterStage,
    DetectorStage,
    NotifierStage,
    Resources,
    SinkStage,
    publish_batch,
)

log = logging.getLogger(__name__)

PUMP_TIMEOUT = 60.0
DEMO_DATABASE = "tillwatch_demo"


@dataclass
class OfflineRun:
    """What one offline run produced."""

    samples: int = 0
    anomalies: list[Anomaly] = field(default_factory=list)
    alert_events: list[AlertEvent] = field(default_factory=list)
    rejected: int = 0
    seconds: float = 0.0


class _Pumped:
    """A stage with its own consumer, driven by the caller instead of a thread."""

    def __init__(self, stage: ConsumingStage) -> None:
        self.stage = stage
        self.consumer: Consumer = stage.stream.consumer(stage.topic, stage.group)

    def pump(self) -> list[Record]:
        """Handle and commit everything waiting on the stage's topic."""
        handled: list[Record] = []
        deadline = time.monotonic() + PUMP_TIMEOUT
        # Ask for the lag before polling: an idle topic then costs no poll timeout.
        while time.monotonic() < deadline:
            if self.consumer.partitions and self.consumer.lag() == 0:
                break
            records = self.consumer.poll(timeout=0.05, max_records=2_000)
            if records:
                self.stage.process(records)
                self.consumer.commit()
                handled += records
        return handled


class OfflinePipeline:
    """Sink, detector and notifier over a stream, pumped batch by batch in sample time."""

    def __init__(self, settings: Settings) -> None:
        self.now = 0.0
        self.resources = Resources.open(settings)
        self.run = OfflineRun()
        stages = [
            SinkStage(self.resources),
            DetectorStage(self.resources),
            NotifierStage(self.resources, clock=lambda: self.now),
            DeadLetterStage(self.resources),
        ]
        self._pumped = [_Pumped(stage) for stage in stages]
        self.notifier: NotifierStage = stages[2]  # type: ignore[assignment]

    def feed(self, batch: SampleBatch) -> None:
        """Publish one batch and pump it through every stage."""
        if not len(batch):
            return
        publish_batch(self.resources.stream, batch)
        self.resources.stream.flush()
        self.now = float(batch.ts.max())
        self.run.samples += len(batch)

        for pumped in self._pumped:
            records = pumped.pump()
            if pumped.stage is self.notifier:
                self.run.anomalies += [Anomaly.from_json(r.value) for r in records]
        self.notifier.alerting.tick(self.now)

    def reject(self, rejects: list[Reject]) -> None:
        """Dead-letter the lines a recording reader could not use, with their reason."""
        for bad in rejects:
            record = deadletter_record(
                "replay", bad.reason, str(bad), bad.source, bad.text.encode()
            )
            self.resources.stream.publish(TOPIC_DEADLETTER, record)
        self.run.rejected += len(rejects)

    def finish(self) -> OfflineRun:
        """Close every stage (flushing storage, snapshotting detectors) and the stream."""
        self.notifier.alerting.tick(self.now)
        for pumped in self._pumped:
            pumped.stage.close()
            pumped.consumer.close()
        self.resources.close()
        self.run.alert_events = list(self.notifier.alerting.events)
        return self.run


def replay(
    settings: Settings,
    chunks: Iterable[ReplayChunk],
    out_dir: Path,
    *,
    pacer: Pacer | None = None,
    progress: bool = False,
) -> OfflineRun:
    """Run the pipeline over recorded chunks; write anomalies, incidents and alerts.

    Args:
        settings: the configuration (stream, storage, alerts).
        chunks: samples in time order, with the lines rejected while reading them.
        out_dir: receives ``anomalies.jsonl``, ``incidents.jsonl`` and ``alerts.jsonl``.
        pacer: paces sample time against the clock; None replays as fast as possible.
        progress: show a progress bar.

    Returns:
        What the run produced.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    journal = out_dir / "alerts.jsonl"
    journal.unlink(missing_ok=True)  # the notifier appends; a replay starts a fresh file
    settings = _with_journal(settings, journal)
    pipeline = OfflinePipeline(settings)

    started = time.perf_counter()
    for chunk in tqdm(chunks, unit="batch", disable=not progress, leave=False):
        if pacer is not None and len(chunk.batch):
            pacer.wait(float(chunk.batch.ts.min()))
        pipeline.reject(chunk.rejects)
        pipeline.feed(chunk.batch)
    run = pipeline.finish()
    run.seconds = time.perf_counter() - started

    _write_jsonl(out_dir / "anomalies.jsonl", (json.loads(a.to_json()) for a in run.anomalies))
    _write_jsonl(out_dir / "incidents.jsonl", _incident_rows(pipeline))
    log.info(
        "replayed %d samples in %.1fs: %d anomalies, %d alert events",
        run.samples,
        run.seconds,
        len(run.anomalies),
        len(pipeline.notifier.alerting.events),
    )
    return run


def _with_journal(settings: Settings, journal: Path) -> Settings:
    alerts = AlertSettings(**{**settings.alerts.model_dump(), "jsonl_path": journal})
    return settings.model_copy(update={"alerts": alerts})


def _incident_rows(pipeline: OfflinePipeline) -> Iterator[dict[str, object]]:
    """The last state of every incident, in the order they opened."""
    latest: dict[str, dict[str, object]] = {}
    for event in pipeline.notifier.alerting.events:
        row = event.incident.to_dict()
        row["tier"] = event.decision.tier
        row["status"] = event.status
        latest[event.incident.incident_id] = row
    return iter(latest.values())


def _write_jsonl(path: Path, rows: Iterable[dict[str, object]]) -> None:
    with path.open("w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, default=str) + "\n")


def detections(run_events: Iterable[AlertEvent]) -> list[Detection]:
    """One detection per alert that fired, with the tier it fired at."""
    found = []
    for event in run_events:
        if event.status == "firing":
            found.append(
                Detection(
                    ts=event.ts,
                    service=event.incident.service,
                    tier=event.decision.tier,
                    ref=event.incident.incident_id,
                )
            )
    return found


@dataclass
class DemoReport:
    """The demo's verdict: the score against ground truth, and how long it took."""

    score: Score
    run: OfflineRun
    wall_seconds: float

    def render(self) -> str:
        """The table, the false alarms, and the run's figures, for a terminal."""
        lines = [format_score(self.score), ""]
        if self.score.false_alarms:
            lines.append("false alarms:")
            lines += [
                f"  {_clock(d.ts)}  {d.tier:<6}  {d.service}  {d.ref}"
                for d in self.score.false_alarms
            ]
        lines.append(
            f"{self.run.samples:,} samples, {len(self.run.anomalies):,} anomalies, "
            f"wall time {self.wall_seconds:.1f}s"
        )
        return "\n".join(lines)


def last_full_week(now: float) -> float:
    """Monday 00:00 UTC of the last complete week before ``now``.

    The demo simulates last week, so its samples sit inside the storage TTL and the data
    left in ClickHouse reads like recent history.
    """
    weeks = math.floor((now - DEFAULT_EPOCH) / WEEK) - 1
    return DEFAULT_EPOCH + weeks * WEEK


def _demo_settings(
    settings: Settings, out_dir: Path, estate: Estate, events: list[CalendarEventSettings]
) -> Settings:
    """The demo's own database and state folder, emptied, so every run starts cold, and
    the stores' trading hours and planned events, as a user would configure their own."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "detector-state.npz").unlink(missing_ok=True)
    (out_dir / "deadletter.jsonl").unlink(missing_ok=True)
    storage = settings.storage.model_copy(update={"database": DEMO_DATABASE})

    with Storage.open(storage.url, database=DEMO_DATABASE, migrate=False) as old:
        old.client.command(f"DROP DATABASE IF EXISTS {DEMO_DATABASE}")
    hours = [
        TradingHoursSettings(
            labels={"store": store.name}, week=[list(day) if day else [] for day in store.hours]
        )
        for store in estate.stores
    ]
    detectors = settings.detectors.model_copy(
        update={"trading_hours": hours, "events": [*settings.detectors.events, *events]}
    )
    return settings.model_copy(
        update={"storage": storage, "data_dir": out_dir, "detectors": detectors}
    )


def _clock(ts: float) -> str:
    return time.strftime("%a %H:%M", time.gmtime(ts))


def demo(
    settings: Settings, out_dir: Path, *, seed: int = 7, progress: bool = True
) -> DemoReport:
    """Simulate a week with every built-in scenario, run the pipeline, score it."""
    started = time.perf_counter()
    estate = Estate(epoch=last_full_week(time.time()))
    scenarios = load_scenarios(estate=estate)
    simulator, truth = simulate(scenarios, estate, seed=seed)
    settings = _demo_settings(settings, out_dir, estate, calendar_events(scenarios, estate))

    chunks = (ReplayChunk(batch) for batch in simulator.run())
    run = replay(settings, chunks, out_dir, progress=progress)
    result = score(truth, detections(run.alert_events))
    return DemoReport(result, run, time.perf_counter() - started)
