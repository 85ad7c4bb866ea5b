"""The sample: the one record every stage speaks (see DESIGN.md).

A sample is ``(ts, signal, labels, value)``. A *series* is a signal plus its sorted
labels, written in one canonical text form::

    redis.hit_ratio{instance="cache-1:6379",service="redis"}

Its id is xxHash64 (seed 0) of the UTF-8 bytes of that text, read as an unsigned
64-bit integer. xxHash64 exists in every language and in ClickHouse's SQL
(``xxHash64(series_key)``), so any process can recompute the id. Label values escape
backslash, double quote and newline as Prometheus does, so the text is unambiguous.

Samples travel in a :class:`SampleBatch`: numpy columns for time and value and an index
into a list of :class:`Series`, so that hot paths never build one Python object per
sample.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import xxhash

from tillwatch.errors import InvalidSample

SIGNAL_PATTERN = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
LABEL_KEY_PATTERN = re.compile(r"^[a-z_][a-z0-9_]*$")
MAX_SIGNAL_LENGTH = 200
MAX_LABELS = 16
MAX_LABEL_VALUE_LENGTH = 256

# Samples must describe a plausible moment: after 2000-01-01 and before 2200-01-01.
MIN_TS = 946_684_800.0
MAX_TS = 7_258_118_400.0

_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n"})
_LABEL_PAIR = re.compile(r'([a-z_][a-z0-9_]*)="((?:[^"\\]|\\.)*)"')
_UNESCAPES = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


def series_key(signal: str, labels: Mapping[str, str]) -> str:
    """Return the canonical text of a series: the signal and its labels sorted by key."""
    pairs = ",".join(f'{key}="{labels[key].translate(_ESCAPES)}"' for key in sorted(labels))
    return f"{signal}{{{pairs}}}"


def series_id(key: str) -> int:
    """Return the stable 64-bit id of a canonical series key."""
    return xxhash.xxh64_intdigest(key.encode("utf-8"))


def parse_series_key(key: str) -> tuple[str, dict[str, str]]:
    """Split a canonical series key back into its signal and labels.

    Raises:
        InvalidSample: when the text is not a canonical key.
    """
    brace = key.find("{")
    if brace <= 0 or not key.endswith("}"):
        raise InvalidSample("bad_series_key", f"not a series key: {key[:80]!r}")

    signal, body = key[:brace], key[brace + 1 : -1]
    labels = {
        name: re.sub(r"\\[\\\"n]", lambda m: _UNESCAPES[m.group(0)], value)
        for name, value in _LABEL_PAIR.findall(body)
    }
    if series_key(signal, labels) != key:
        raise InvalidSample("bad_series_key", f"not a canonical series key: {key[:80]!r}")
    return signal, labels


def check_series(signal: str, labels: Mapping[str, str]) -> None:
    """Raise :class:`InvalidSample` unless the signal name and labels follow the grammar."""
    if len(signal) > MAX_SIGNAL_LENGTH or not SIGNAL_PATTERN.match(signal):
        raise InvalidSample(
            "bad_signal",
            f"signal {signal[:80]!r} must be dotted snake_case such as 'redis.hit_ratio'",
        )
    if len(labels) > MAX_LABELS:
        raise InvalidSample(
            "too_many_labels", f"{signal}: {len(labels)} labels, at most {MAX_LABELS}"
        )

    for key, value in labels.items():
        if not isinstance(key, str) or not LABEL_KEY_PATTERN.match(key):
            raise InvalidSample("bad_label", f"{signal}: label key {key!r} must be snake_case")
        if not isinstance(value, str) or len(value) > MAX_LABEL_VALUE_LENGTH:
            raise InvalidSample(
                "bad_label",
                f"{signal}: label {key} must be a string of <= {MAX_LABEL_VALUE_LENGTH} chars",
            )


def check_point(ts: float, value: float) -> None:
    """Raise :class:`InvalidSample` unless the time is plausible and the value finite."""
    if not math.isfinite(value):
        raise InvalidSample("non_finite_value", f"value {value!r} is not finite")
    if not MIN_TS <= ts < MAX_TS:
        raise InvalidSample("bad_timestamp", f"ts {ts!r} is not seconds since the epoch")


@dataclass(frozen=True, slots=True)
class Series:
    """One time series: a signal and its labels, with its canonical key and id."""

    signal: str
    labels: Mapping[str, str]
    key: str
    id: int

    @classmethod
    def of(cls, signal: str, labels: Mapping[str, str] | None = None) -> Series:
        """Build a validated series from a signal and labels."""
        labels = dict(labels or {})
        check_series(signal, labels)
        key = series_key(signal, labels)
        return cls(signal=signal, labels=labels, key=key, id=series_id(key))

    @classmethod
    def from_key(cls, key: str) -> Series:
        """Build a validated series from its canonical key."""
        signal, labels = parse_series_key(key)
        return cls.of(signal, labels)

    @property
    def is_kpi(self) -> bool:
        """Business KPIs live under ``kpi.``; every other signal is infrastructure."""
        return self.signal.startswith("kpi.")


@dataclass(frozen=True, slots=True)
class Sample:
    """One measured value of one series at the end of its interval."""

    ts: float
    signal: str
    labels: Mapping[str, str]
    value: float

    def validate(self) -> Series:
        """Check the sample and return its series."""
        check_point(self.ts, self.value)
        return Series.of(self.signal, self.labels)


@dataclass(slots=True)
class SampleBatch:
    """Many samples as columns: ``series[series_ix[i]]`` measured ``value[i]`` at ``ts[i]``."""

    series: list[Series]
    series_ix: np.ndarray  # uint32
    ts: np.ndarray  # float64, seconds since the epoch
    value: np.ndarray  # float64

    def __len__(self) -> int:
        return int(self.ts.shape[0])

    @classmethod
    def empty(cls) -> SampleBatch:
        return cls([], np.empty(0, np.uint32), np.empty(0, np.float64), np.empty(0, np.float64))

    @classmethod
    def from_samples(cls, samples: Iterable[Sample]) -> SampleBatch:
        """Build a batch from sample objects, validating each; raises on the first bad one."""
        builder = BatchBuilder()
        for sample in samples:
            builder.add(sample.ts, sample.signal, sample.labels, sample.value)
        return builder.build()

    def series_ids(self) -> np.ndarray:
        """The uint64 series id of every sample."""
        ids = np.fromiter((s.id for s in self.series), dtype=np.uint64, count=len(self.series))
        return ids[self.series_ix]

    def samples(self) -> Iterator[Sample]:
        """Yield the batch as sample objects (slow: for tests, logs and small batches)."""
        for ix, ts, value in zip(
            self.series_ix.tolist(), self.ts.tolist(), self.value.tolist(), strict=True
        ):
            series = self.series[ix]
            yield Sample(ts=ts, signal=series.signal, labels=series.labels, value=value)

    def select(self, mask: np.ndarray) -> SampleBatch:
        """Return the samples where ``mask`` is true, sharing the series list."""
        return SampleBatch(self.series, self.series_ix[mask], self.ts[mask], self.value[mask])


class BatchBuilder:
    """Accumulates validated samples into a :class:`SampleBatch`, interning series."""

    def __init__(self) -> None:
        self._series: list[Series] = []
        self._index: dict[str, int] = {}
        self._ix: list[int] = []
        self._ts: list[float] = []
        self._value: list[float] = []

    def __len__(self) -> int:
        return len(self._ts)

    def add(self, ts: float, signal: str, labels: Mapping[str, str], value: float) -> None:
        """Validate and append one sample.

        Raises:
            InvalidSample: when the sample breaks the sample contract.
        """
        check_point(ts, value)
        key = series_key(signal, labels)
        ix = self._index.get(key)
        if ix is None:
            check_series(signal, labels)
            ix = self._index[key] = len(self._series)
            self._series.append(Series(signal, dict(labels), key, series_id(key)))

        self._ix.append(ix)
        self._ts.append(float(ts))
        self._value.append(float(value))

    def build(self) -> SampleBatch:
        """Return the batch of everything added so far."""
        return SampleBatch(
            series=list(self._series),
            series_ix=np.asarray(self._ix, dtype=np.uint32),
            ts=np.asarray(self._ts, dtype=np.float64),
            value=np.asarray(self._value, dtype=np.float64),
        )
