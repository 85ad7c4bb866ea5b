"""The collector contract: one class per source, the same shape every time.

A collector declares every signal it can emit (:class:`SignalSpec`), reads its target in
:meth:`Collector.read`, and returns interval-derived readings: gauges as they are, and
rates, ratios or quantiles computed from two consecutive scrapes with :class:`Counters`.
:func:`scrape` wraps one read: it adds ``<source>.up`` and
``<source>.scrape_duration_seconds``, turns a :class:`SourceError` into ``up = 0``, and
logs once per change of a target's state, not once per scrape.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from tillwatch.errors import InvalidSample, SourceError
from tillwatch.sample import BatchBuilder, SampleBatch

log = logging.getLogger(__name__)

# The error codes a scrape may fail with; alerts and the API key on these.
ERROR_CODES = ("auth_failed", "refused", "timeout", "permission_denied", "bad_response")


@dataclass(frozen=True, slots=True)
class SignalSpec:
    """One declared signal: its name, unit, meaning and exporter equivalent, if any."""

    name: str
    unit: str
    help: str
    exporter_name: str | None = None


@dataclass(frozen=True, slots=True)
class Reading:
    """One value read from a target, before the target's own labels are added."""

    signal: str
    value: float
    labels: Mapping[str, str] = field(default_factory=dict)


class Counters:
    """Turns monotonically increasing counters into per-second rates and deltas.

    The first observation of a counter yields nothing: a rate needs two scrapes. A value
    lower than the previous one is a counter reset (a restart, ``CONFIG RESETSTAT``): the
    delta since the reset is the new value itself.
    """

    def __init__(self) -> None:
        self._last: dict[object, tuple[float, float]] = {}

    def delta(self, key: object, value: float, ts: float) -> tuple[float, float] | None:
        """Return ``(increase, seconds)`` since the previous observation of ``key``."""
        previous = self._last.get(key)
        self._last[key] = (value, ts)
        if previous is None or ts <= previous[1]:
            return None

        last_value, last_ts = previous
        increase = value - last_value if value >= last_value else value
        return increase, ts - last_ts

    def rate(self, key: object, value: float, ts: float) -> float | None:
        """Return the per-second rate of ``key`` over the last interval."""
        step = self.delta(key, value, ts)
        return None if step is None else step[0] / step[1]


class Collector(ABC):
    """Reads one target of one source.

    Subclasses set ``source`` and ``signals`` and implement :meth:`read`. ``labels`` are
    the target's own labels (``service``, ``instance`` ...) added to every reading.
    """

    source: ClassVar[str]
    signals: ClassVar[tuple[SignalSpec, ...]]

    def __init__(self, *, labels: Mapping[str, str]) -> None:
        self.labels = dict(labels)

    @property
    def name(self) -> str:
        """Identifies the target in logs: its source and instance."""
        return f"{self.source}:{self.labels.get('instance', '?')}"

    @abstractmethod
    def read(self, now: float) -> Iterable[Reading]:
        """Read the target once.

        Raises:
            SourceError: with one of :data:`ERROR_CODES` when the target cannot be read.
        """

    def close(self) -> None:
        """Release connections; the default holds none."""

    @classmethod
    def declared(cls) -> dict[str, SignalSpec]:
        """Every signal this collector may emit, by name, ``up`` and duration included."""
        own = {spec.name: spec for spec in cls.signals}
        # setdefault: a collector may declare these itself to name an exporter equivalent.
        own.setdefault(
            f"{cls.source}.up",
            SignalSpec(f"{cls.source}.up", "1", "1 if the last scrape succeeded"),
        )
        own.setdefault(
            f"{cls.source}.scrape_duration_seconds",
            SignalSpec(f"{cls.source}.scrape_duration_seconds", "s", "time the scrape took"),
        )
        return own


class TargetState:
    """Remembers whether a target was up, so state changes are logged once."""

    def __init__(self) -> None:
        self.up: bool | None = None
        self.error_code: str | None = None

    def record(self, collector: Collector, error: SourceError | None) -> None:
        code = error.code if error else None
        if error is not None and code != self.error_code:
            log.warning("%s scrape failed (%s): %s", collector.name, code, error)
        elif error is None and self.up is False:
            log.info("%s is reachable again", collector.name)
        self.up, self.error_code = error is None, code


def scrape(collector: Collector, state: TargetState, now: float | None = None) -> SampleBatch:
    """Read one target and return its samples, ``up`` and scrape duration included."""
    started = time.monotonic()
    now = time.time() if now is None else now
    try:
        readings, error = list(collector.read(now)), None
    except SourceError as failure:
        readings, error = [], failure
    state.record(collector, error)

    duration = time.monotonic() - started
    readings.append(Reading(f"{collector.source}.up", 0.0 if error else 1.0))
    readings.append(Reading(f"{collector.source}.scrape_duration_seconds", duration))
    return _to_batch(collector, readings, now)


def _to_batch(collector: Collector, readings: list[Reading], now: float) -> SampleBatch:
    declared = collector.declared()
    builder = BatchBuilder()
    for reading in readings:
        if reading.signal not in declared:
            raise InvalidSample(
                "undeclared_signal", f"{collector.name} emitted {reading.signal}"
            )
        builder.add(now, reading.signal, {**collector.labels, **reading.labels}, reading.value)
    return builder.build()
