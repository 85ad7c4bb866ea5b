"""Trading hours and calendar events: when a business KPI is not to be judged.

A shop's orders fall to zero when it closes; a holiday or a promotion moves them in a
way everyone expected. Such samples are masked before the seasonal and count detectors
see them: a masked sample scores neutral and teaches the profile nothing, so the closed
hours neither alarm nor drag the open hours' profile towards zero, and a promotion peak
is neither an anomaly nor learned as the new normal.

Both are matched on labels: ``{"store": "brussels"}`` applies to every series carrying
that label (the empty mapping applies to all).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import cast

import numpy as np

from detectors.base import DetectorError

DAY = 86_400.0
_EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday
Hours = tuple[float, float] | None


@dataclass(frozen=True, slots=True)
class TradingHours:
    """Opening hours of the series matching ``labels``.

    Attributes:
        labels: labels a series must carry for these hours to apply.
        week: (open, close) local hours for Monday..Sunday, None when closed all day.
            A sample describes the step ending at its time, so a sample at the opening
            hour is closed and one at the closing hour still open.
        utc_offset_hours: local time minus UTC.
    """

    labels: Mapping[str, str]
    week: Sequence[Hours]
    utc_offset_hours: float = 0.0

    def __post_init__(self) -> None:
        if len(self.week) != 7:
            raise DetectorError(
                f"trading hours for {dict(self.labels)}: expected 7 days Monday..Sunday, "
                f"found {len(self.week)}; give None for a closed day"
            )

    def closed(self, ts: np.ndarray) -> np.ndarray:
        """Whether each time falls outside the opening hours."""
        local = np.asarray(ts, dtype=float) + 3600.0 * self.utc_offset_hours
        hour = np.mod(local, DAY) / 3600.0
        weekday = (np.floor(local / DAY).astype(np.int64) + _EPOCH_WEEKDAY) % 7
        opens = np.array([h[0] if h else 0.0 for h in self.week])[weekday]
        closes = np.array([h[1] if h else 0.0 for h in self.week])[weekday]
        return ~((hour > opens) & (hour <= closes))


@dataclass(frozen=True, slots=True)
class CalendarEvent:
    """An expected departure from the usual: a holiday, a promotion, a stocktake.

    Attributes:
        name: what it is, for the explanation and logs.
        start: first second of the event, seconds since the epoch.
        end: first second after it.
        labels: labels a series must carry to be masked (empty: every KPI).
    """

    name: str
    start: float
    end: float
    labels: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_config(cls, entry: Mapping[str, object]) -> CalendarEvent:
        """Read ``{name, start, end, labels}`` with ISO-8601 times (UTC when naive).

        Raises:
            DetectorError: when a key is missing, a time does not parse or end <= start.
        """
        try:
            start = _seconds(str(entry["start"]))
            end = _seconds(str(entry["end"]))
            labels = cast(Mapping[str, str], entry.get("labels") or {})
            event = cls(str(entry["name"]), start, end, dict(labels))
        except (KeyError, ValueError) as error:
            raise DetectorError(
                f"calendar event {dict(entry)}: expected name, start and end as ISO-8601 "
                f"times (and optional labels); {error}"
            ) from error
        if end <= start:
            raise DetectorError(f"calendar event {event.name!r}: end is not after start")
        return event


@dataclass(frozen=True, slots=True)
class Calendar:
    """Every mask that applies to business KPIs."""

    hours: Sequence[TradingHours] = ()
    events: Sequence[CalendarEvent] = ()

    def masked(self, ts: np.ndarray, labels: Mapping[str, str]) -> np.ndarray:
        """Whether each sample of one series falls outside trading hours or in an event.

        Args:
            ts: sample times of the series.
            labels: the series' labels.

        Returns:
            A boolean array, True where the sample is not to be judged.
        """
        ts = np.asarray(ts, dtype=float)
        mask = np.zeros(len(ts), dtype=bool)
        for hours in self.hours:
            if _matches(hours.labels, labels):
                mask |= hours.closed(ts)
        for event in self.events:
            if _matches(event.labels, labels):
                mask |= (ts >= event.start) & (ts < event.end)
        return mask

    def events_at(self, ts: float, labels: Mapping[str, str]) -> list[str]:
        """Names of the events covering one sample."""
        return [e.name for e in self.events
                if e.start <= ts < e.end and _matches(e.labels, labels)]

    @classmethod
    def from_config(cls, events: Iterable[Mapping[str, object]] = (),
                    hours: Sequence[TradingHours] = ()) -> Calendar:
        """A calendar from config entries (see :meth:`CalendarEvent.from_config`)."""
        return cls(tuple(hours), tuple(CalendarEvent.from_config(e) for e in events))


def _matches(wanted: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in wanted.items())


def _seconds(text: str) -> float:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        return (moment - datetime(1970, 1, 1)).total_seconds()
    return moment.timestamp()
