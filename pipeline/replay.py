"""Recorded samples: read them back as batches, write them out, and pace a replay.

Two formats, both one sample per line, described in docs/simulator.md:

* JSON lines, DESIGN.md's sample schema::

      {"ts": 1767571260.0, "signal": "redis.hit_ratio",
       "labels": {"service": "redis"}, "value": 0.97}

  (one line in the file; wrapped here)

* CSV with the header ``ts,signal,labels,value`` and labels written ``k=v;k=v``; a
  backslash escapes ``;``, ``=`` and itself inside a label value.

Readers yield :class:`ReplayChunk` objects in file order: the valid samples as a
:class:`SampleBatch` and every line that failed as a :class:`Reject` naming the file, the
line and the reason, for the caller to dead-letter. A bad line never stops the read.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, TextIO

from tillwatch.errors import InvalidSample, TillwatchError
from tillwatch.sample import BatchBuilder, SampleBatch

CSV_HEADER = ("ts", "signal", "labels", "value")
DEFAULT_CHUNK = 10_000

_LABEL_PAIR = re.compile(r"((?:[^;=\\]|\\.)*)=((?:[^;=\\]|\\.)*)(?:;|$)")
_UNESCAPE = re.compile(r"\\(.)")


class ReplayError(TillwatchError):
    """A recording cannot be read at all (missing file, CSV without its header)."""

    code = "replay_unreadable"


@dataclass(frozen=True, slots=True)
class Reject:
    """One line that is not a valid sample.

    Attributes:
        source: the file name.
        line: its 1-based line number.
        reason: a stable dead-letter code such as ``bad_json`` or ``non_finite_value``.
        detail: what was wrong, for a person.
        text: the line itself, cut to 200 characters.
    """

    source: str
    line: int
    reason: str
    detail: str
    text: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.reason}: {self.detail}"


@dataclass(slots=True)
class ReplayChunk:
    """The valid samples of consecutive lines, and the lines that were rejected."""

    batch: SampleBatch
    rejects: list[Reject] = field(default_factory=list)


def read_jsonl(path: Path | str, chunk_size: int = DEFAULT_CHUNK) -> Iterator[ReplayChunk]:
    """Read a JSON-lines recording; blank lines are skipped.

    Args:
        path: the recording.
        chunk_size: samples per yielded batch at most.

    Raises:
        ReplayError: when the file cannot be opened.
    """
    with _open(path) as lines:
        records = ((n, text.rstrip("\r\n")) for n, text in enumerate(lines, start=1))
        yield from _chunks(str(path), records, _parse_json, chunk_size)


def read_csv(path: Path | str, chunk_size: int = DEFAULT_CHUNK) -> Iterator[ReplayChunk]:
    """Read a CSV recording with the header ``ts,signal,labels,value``.

    Args:
        path: the recording.
        chunk_size: samples per yielded batch at most.

    Raises:
        ReplayError: when the file cannot be opened or its first line is not the header.
    """
    with _open(path) as lines:
        header = next(lines, "").strip().lstrip("\ufeff")
        if tuple(header.split(",")) != CSV_HEADER:
            raise ReplayError(
                f"{path}:1: expected the CSV header {','.join(CSV_HEADER)!r}, found "
                f"{header[:80]!r}; add that header line"
            )
        yield from _chunks(str(path), _csv_records(lines), _parse_csv, chunk_size)


def _csv_records(lines: TextIO) -> Iterator[tuple[int, list[str] | str]]:
    """Rows with the number of the line they end on; a row the csv module cannot split
    comes back as its error text, to be rejected."""
    reader = csv.reader(lines)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            yield reader.line_num + 1, f"csv error: {error}"
            continue
        yield reader.line_num + 1, row


def read_recording(path: Path | str, chunk_size: int = DEFAULT_CHUNK) -> Iterator[ReplayChunk]:
    """Read a recording, choosing the format by extension: ``.csv`` or JSON lines."""
    reader = read_csv if str(path).lower().endswith(".csv") else read_jsonl
    return reader(path, chunk_size)


def _open(path: Path | str) -> TextIO:
    try:
        return open(path, encoding="utf-8", newline="")  # noqa: SIM115 - closed by caller
    except OSError as error:
        raise ReplayError(f"cannot open recording {path}: {error.strerror}") from error


_Parsed = tuple[float, str, Mapping[str, str], float]


def _chunks(
    source: str,
    records: Iterable[tuple[int, Any]],
    parse: Callable[[Any], _Parsed],
    chunk_size: int,
) -> Iterator[ReplayChunk]:
    builder, rejects = BatchBuilder(), []
    for number, record in records:
        if not record or (isinstance(record, str) and not record.strip()):
            continue
        try:
            builder.add(*parse(record))
        except InvalidSample as error:
            text = record if isinstance(record, str) else ",".join(record)
            rejects.append(Reject(source, number, error.code, str(error), text[:200]))
        if len(builder) >= chunk_size:
            yield ReplayChunk(builder.build(), rejects)
            builder, rejects = BatchBuilder(), []
    if len(builder) or rejects:
        yield ReplayChunk(builder.build(), rejects)


def _parse_json(text: str) -> _Parsed:
    try:
        record = json.loads(text)
    except ValueError as error:
        raise InvalidSample("bad_json", f"not JSON: {error}") from error
    if not isinstance(record, dict):
        raise InvalidSample("bad_record", "expected an object with ts, signal, labels, value")

    missing = [key for key in CSV_HEADER if key not in record]
    if missing:
        raise InvalidSample("bad_record", f"missing {', '.join(missing)}")
    labels = record["labels"]
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise InvalidSample("bad_label", f"labels must be an object of strings: {labels!r}")
    signal = record["signal"]
    if not isinstance(signal, str):
        raise InvalidSample("bad_signal", "signal must be a string")
    return _number(record["ts"], "ts"), signal, labels, _number(record["value"], "value")


def _number(raw: Any, name: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise InvalidSample("bad_number", f"{name} must be a number, found {raw!r}")
    try:
        return float(raw)
    except ValueError as error:
        raise InvalidSample("bad_number", f"{name} must be a number, found {raw!r}") from error


def _parse_csv(row: list[str] | str) -> _Parsed:
    if isinstance(row, str):
        raise InvalidSample("bad_csv", row)
    if len(row) != len(CSV_HEADER):
        raise InvalidSample(
            "bad_csv", f"expected 4 fields (ts,signal,labels,value), found {len(row)}"
        )

    ts, signal, labels, value = row
    return _number(ts, "ts"), signal, _cached_labels(labels), _number(value, "value")


@functools.lru_cache(maxsize=65_536)
def _cached_labels(text: str) -> Mapping[str, str]:
    # A recording repeats the same few thousand label sets: parse each once.
    return MappingProxyType(parse_labels(text))


def parse_labels(text: str) -> dict[str, str]:
    """Parse ``k=v;k=v`` (backslash escapes ``;``, ``=`` and ``\\``) into a dict.

    Raises:
        InvalidSample: when a pair has no ``=`` or a key repeats.
    """
    labels: dict[str, str] = {}
    position = 0
    while position < len(text):
        match = _LABEL_PAIR.match(text, position)
        if match is None or match.end() == position:
            raise InvalidSample("bad_label", f"labels {text[:80]!r}: expected k=v;k=v")
        key, value = (_UNESCAPE.sub(r"\1", part) for part in match.groups())
        if key in labels:
            raise InvalidSample("bad_label", f"labels {text[:80]!r}: {key} appears twice")
        labels[key] = value
        position = match.end()
    return labels


def format_labels(labels: Mapping[str, str]) -> str:
    """Write labels as ``k=v;k=v`` sorted by key, escaping what would be ambiguous."""
    return ";".join(f"{_escape(key)}={_escape(labels[key])}" for key in sorted(labels))


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace(";", "\\;").replace("=", "\\=")


def write_jsonl(batches: Iterable[SampleBatch], out: TextIO) -> int:
    """Write batches as JSON lines; returns the number of samples written."""
    count = 0
    for batch in batches:
        rows = _rows(batch)
        out.writelines(
            json.dumps(
                {"ts": ts, "signal": s.signal, "labels": dict(s.labels), "value": v},
                separators=(",", ":"),
                allow_nan=False,
            )
            + "\n"
            for ts, s, v in rows
        )
        count += len(batch)
    return count


def write_csv(batches: Iterable[SampleBatch], out: TextIO) -> int:
    """Write batches as CSV with its header; returns the number of samples written."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    count = 0
    for batch in batches:
        labels = [format_labels(series.labels) for series in batch.series]
        writer.writerows(
            (repr(ts), batch.series[ix].signal, labels[ix], repr(value))
            for ix, ts, value in zip(
                batch.series_ix.tolist(), batch.ts.tolist(), batch.value.tolist(), strict=True
            )
        )
        count += len(batch)
    return count


def _rows(batch: SampleBatch) -> Iterator[tuple[float, Any, float]]:
    for ix, ts, value in zip(
        batch.series_ix.tolist(), batch.ts.tolist(), batch.value.tolist(), strict=True
    ):
        yield ts, batch.series[ix], value


def write_recording(batches: Iterable[SampleBatch], path: Path | str) -> int:
    """Write batches to a file, choosing the format by extension: ``.csv`` or JSON lines.

    Returns:
        The number of samples written.
    """
    writer = write_csv if str(path).lower().endswith(".csv") else write_jsonl
    with open(path, "w", encoding="utf-8", newline="") as out:
        return writer(batches, out)


class Pacer:
    """Replays sample time at ``speed`` times real time.

    The first timestamp seen is pinned to the clock's reading at that moment; a later
    timestamp is due ``(ts - first) / speed`` seconds after. Speed 0 means as fast as
    possible.

    Args:
        speed: how many simulated seconds pass per real second; 0 for no pacing.
        clock: a monotonic clock in seconds, injectable for tests.
        sleep: how to wait, injectable for tests.

    Raises:
        ReplayError: when ``speed`` is negative or not finite.
    """

    def __init__(
        self,
        speed: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not math.isfinite(speed) or speed < 0:
            raise ReplayError(f"replay speed {speed!r}: expected 0 (no pacing) or a factor > 0")
        self.speed = speed
        self._clock = clock
        self._sleep = sleep
        self._origin: tuple[float, float] | None = None

    def delay(self, ts: float) -> float:
        """Seconds to wait before emitting a sample stamped ``ts`` (0 when late)."""
        if self.speed == 0:
            return 0.0
        now = self._clock()
        if self._origin is None:
            self._origin = (ts, now)

        first_ts, started = self._origin
        due = started + (ts - first_ts) / self.speed
        return max(0.0, due - now)

    def wait(self, ts: float) -> None:
        """Sleep until a sample stamped ``ts`` is due."""
        pause = self.delay(ts)
        if pause > 0:
            self._sleep(pause)


def dumps_jsonl(batches: Iterable[SampleBatch]) -> str:
    """The JSON-lines text of batches, for small recordings and tests."""
    out = io.StringIO()
    write_jsonl(batches, out)
    return out.getvalue()
