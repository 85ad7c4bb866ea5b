"""The storage sink: sample batches in, idempotent ClickHouse inserts out.

The sink buffers :class:`~tillwatch.sample.SampleBatch` objects and writes them as one
insert when the buffer holds ``max_rows`` samples or its oldest batch is ``max_seconds``
old. Each insert carries an ``insert_deduplication_token`` built from the identities of
the batches in it, so an insert repeated after a failure is stored once.

A batch's identity is the token its caller passes (a stream consumer passes
``topic/partition/first-last offset``) or else a hash of its content. Redelivery after a
crash is deduplicated when the redelivered batches are flushed together as before; a
consumer gets that by calling :meth:`Sink.flush` before each commit.

Typical consumer loop::

    sink = Sink(storage)
    while running:
        records = consumer.poll(timeout=1.0)
        for record in records:
            token = f"{record.topic}/{record.partition}/{record.offset}"
            sink.write(decode(record), token=token)
        sink.flush()
        consumer.commit()
    sink.close()

ClickHouse drops rows older than the table TTL at insert time without an error; the
sink counts them, returns the count, logs one warning per flush that had any and adds
them to ``tillwatch_samples_expired_total``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import xxhash

from pipeline.storage import Storage
from tillwatch.errors import StorageError
from tillwatch.sample import SampleBatch, Series
from tillwatch.telemetry import BATCH_SECONDS, SAMPLES_EXPIRED, SAMPLES_STORED

log = logging.getLogger(__name__)

_DAY = 86_400.0
_TS_TYPE = pa.timestamp("ms", tz="UTC")


@dataclass(frozen=True, slots=True)
class FlushResult:
    """What one flush wrote.

    Attributes:
        rows: samples sent to ClickHouse.
        expired: of those, samples older than the TTL, which ClickHouse dropped.
        new_series: series registered for the first time by this process.
        token: the insert deduplication token used ("" when nothing was written).
    """

    rows: int = 0
    expired: int = 0
    new_series: int = 0
    token: str = ""

    @property
    def stored(self) -> int:
        """Samples kept by ClickHouse (unless the insert repeated an earlier token)."""
        return self.rows - self.expired


@dataclass(slots=True)
class _Buffer:
    """Batches waiting for the next insert, already converted to insert columns."""

    series: dict[int, Series] = field(default_factory=dict)
    codes: list[np.ndarray] = field(default_factory=list)
    ids: list[np.ndarray] = field(default_factory=list)
    ts_ms: list[np.ndarray] = field(default_factory=list)
    values: list[np.ndarray] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    rows: int = 0
    since: float = 0.0


class Sink:
    """Buffers sample batches and writes them to :class:`~pipeline.storage.Storage`.

    Not thread-safe: one sink per consumer thread.
    """

    def __init__(
        self,
        storage: Storage,
        *,
        max_rows: int = 200_000,
        max_seconds: float = 1.0,
        retries: int = 4,
        backoff_seconds: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """Create a sink.

        Args:
            storage: where to write.
            max_rows: flush once the buffer holds this many samples.
            max_seconds: flush once the oldest buffered batch is this old (checked on
                :meth:`write` and :meth:`flush_if_due`).
            retries: attempts after the first failed one before :meth:`flush` raises.
            backoff_seconds: wait before the first retry; doubles on each retry.
            clock: monotonic time, for buffer age.
            wall_clock: seconds since the epoch, for the TTL cutoff and ``last_seen``.
            sleep: how to wait between retries.
        """
        self.storage = storage
        self.max_rows = max_rows
        self.max_seconds = max_seconds
        self.retries = retries
        self.backoff_seconds = backoff_seconds
        self._clock = clock
        self._wall_clock = wall_clock
        self._sleep = sleep
        self._signals: dict[str, int] = {}
        self._buffer = _Buffer()
        self._last_series: tuple[list[Series], np.ndarray, np.ndarray, _Buffer] | None = None
        self._closed = False

    @property
    def buffered(self) -> int:
        """Samples waiting for the next flush."""
        return self._buffer.rows

    def write(self, batch: SampleBatch, token: str | None = None) -> FlushResult | None:
        """Buffer a batch, flushing when the buffer is full or old enough.

        Args:
            batch: the samples.
            token: the batch's identity, e.g. ``tillwatch.samples/3/1200-1299``; a hash
                of the content when None.

        Returns:
            The flush result when this call flushed, else None.

        Raises:
            StorageError: when the sink is closed, or a flush failed after its retries
                (the buffer is kept for the next attempt).
        """
        if self._closed:
            raise StorageError("storage sink is closed: create a new Sink to write again")
        if len(batch):
            self._append(batch, token)
        return self.flush_if_due()

    def flush_if_due(self) -> FlushResult | None:
        """Flush when the buffer is full or its oldest batch is ``max_seconds`` old."""
        buffer = self._buffer
        full = buffer.rows >= self.max_rows
        old = buffer.rows > 0 and self._clock() - buffer.since >= self.max_seconds
        return self.flush() if full or old else None

    def flush(self) -> FlushResult:
        """Write everything buffered as one insert, retrying with backoff.

        Returns:
            What was written (all zero when the buffer was empty).

        Raises:
            StorageError: when every attempt failed; the buffer is kept.
        """
        buffer = self._buffer
        if buffer.rows == 0:
            return FlushResult()

        started = time.perf_counter()
        token = _combined_token(buffer.tokens)
        columns = self._columns(buffer)
        ts_ms = columns.column("ts").to_numpy().view(np.int64)
        expired = self._count_expired(ts_ms)
        new_series = self._insert_with_retries(buffer, columns, token)

        self._buffer = _Buffer()
        self._account(buffer.rows, expired, ts_ms, time.perf_counter() - started)
        return FlushResult(buffer.rows, expired, new_series, token)

    def close(self) -> FlushResult:
        """Flush what is buffered and refuse further writes.

        Raises:
            StorageError: when the final flush failed; the sink stays open to retry.
        """
        result = self.flush()
        self._closed = True
        return result

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _append(self, batch: SampleBatch, token: str | None) -> None:
        """Convert a batch to insert columns and add it to the buffer."""
        buffer = self._buffer
        if buffer.rows == 0:
            buffer.since = self._clock()
        series_ids, series_codes = self._series_columns(batch.series, buffer)
        ids = series_ids[batch.series_ix]
        ts_ms = np.rint(batch.ts * 1000.0).astype(np.int64)

        buffer.codes.append(series_codes[batch.series_ix])
        buffer.ids.append(ids)
        buffer.ts_ms.append(ts_ms)
        buffer.values.append(np.array(batch.value, np.float64))
        buffer.tokens.append(token or _content_token(ids, ts_ms, buffer.values[-1]))
        buffer.rows += len(batch)

    def _series_columns(
        self, series: list[Series], buffer: _Buffer
    ) -> tuple[np.ndarray, np.ndarray]:
        """Series ids and signal codes of a batch's series list, noting them for registry.

        Batches cut from one decoded message share its series list, so the last list's
        columns are kept: the per-series Python work is the sink's costliest step.
        """
        cached = self._last_series
        if cached is not None and cached[0] is series and cached[3] is buffer:
            return cached[1], cached[2]

        for signal in {s.signal for s in series} - self._signals.keys():
            self._signals[signal] = len(self._signals)
        codes = self._signals
        ids = np.array([s.id for s in series], np.uint64)
        signal_codes = np.array([codes[s.signal] for s in series], np.int32)
        buffer.series.update(zip(ids.tolist(), series, strict=True))
        self._last_series = (series, ids, signal_codes, buffer)
        return ids, signal_codes

    def _columns(self, buffer: _Buffer) -> pa.Table:
        """The buffer as one Arrow table; the signal stays dictionary-encoded (fastest)."""
        codes = pa.array(np.concatenate(buffer.codes))
        names = pa.array(list(self._signals), pa.string())
        signal = pa.DictionaryArray.from_arrays(codes, names)
        return pa.table(
            {
                "signal": signal,
                "series_id": np.concatenate(buffer.ids),
                "ts": pa.array(np.concatenate(buffer.ts_ms), _TS_TYPE),
                "value": np.concatenate(buffer.values),
            }
        )

    def _count_expired(self, ts_ms: np.ndarray) -> int:
        cutoff_ms = (self._wall_clock() - self.storage.ttl_days * _DAY) * 1000.0
        return int(np.count_nonzero(ts_ms < cutoff_ms))

    def _insert_with_retries(self, buffer: _Buffer, columns: pa.Table, token: str) -> int:
        """Register new series and insert the samples; return how many series were new."""
        attempt = 0
        while True:
            try:
                new_series = self.storage.register_series(
                    list(buffer.series.values()), self._wall_clock()
                )
                self.storage.insert_samples(columns, token)
                return new_series
            except StorageError as error:
                if attempt >= self.retries:
                    raise
                delay = self.backoff_seconds * 2**attempt
                attempt += 1
                log.warning(
                    "storage sink: insert of %d samples failed, retry %d/%d in %.1fs: %s",
                    buffer.rows, attempt, self.retries, delay, error,
                )
                self._sleep(delay)

    def _account(self, rows: int, expired: int, ts_ms: np.ndarray, elapsed: float) -> None:
        """Update metrics, and warn when ClickHouse dropped expired rows."""
        SAMPLES_STORED.inc(rows - expired)
        BATCH_SECONDS.labels(stage="sink").observe(elapsed)
        if not expired:
            return

        SAMPLES_EXPIRED.inc(expired)
        oldest = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(ts_ms.min()) / 1000))
        log.warning(
            "storage sink: %d of %d samples (oldest %s) are older than the %d-day TTL of %s "
            "and were dropped by ClickHouse; raise ttl_days to keep backfills that old",
            expired, rows, oldest, self.storage.ttl_days, self.storage.target.display,
        )


def _content_token(ids: np.ndarray, ts_ms: np.ndarray, values: np.ndarray) -> str:
    """A batch identity from its content: equal batches give equal tokens."""
    digest = xxhash.xxh3_128()
    for column in (ids, ts_ms, values):
        digest.update(np.ascontiguousarray(column).data)
    return f"content:{digest.hexdigest()}"


def _combined_token(tokens: list[str]) -> str:
    """One insert token for the buffered batches, bounded in length."""
    if len(tokens) == 1 and len(tokens[0]) <= 200:
        return tokens[0]
    joined = "\x1f".join(tokens).encode("utf-8")
    return f"batches:{xxhash.xxh3_128_hexdigest(joined)}"
