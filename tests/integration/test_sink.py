"""The storage sink against the real embedded ClickHouse engine."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest
from prometheus_client import REGISTRY

from pipeline.sink import Sink
from pipeline.storage import Storage
from tillwatch.errors import StorageError
from tillwatch.sample import SampleBatch, Series

pytestmark = pytest.mark.integration

# ClickHouse applies the TTL against its own clock, so the data must be recent: a whole
# hour a day ago, so that hand-computed buckets stay aligned.
T0 = (time.time() // 3600 - 24) * 3600
NOW = T0 + 3600.0  # the sink's clock, for its own count of expired rows
DAY = 86_400.0


def _batch(n: int, start: float = T0, seed: int = 3) -> SampleBatch:
    """``n`` samples spread over five series, one second apart."""
    rng = np.random.default_rng(seed)
    signal = "postgres.replication_lag_seconds"
    series = [Series.of(signal, {"replica": f"r{i}"}) for i in range(5)]
    ix = (np.arange(n) % 5).astype(np.uint32)
    return SampleBatch(series, ix, start + np.arange(n, dtype=np.float64), rng.random(n))


def _count(storage: Storage, table: str = "samples") -> int:
    return int(storage.client.command(f"SELECT count() FROM {storage.database}.{table}"))


def _sink(storage: Storage, **options: object) -> Sink:
    options.setdefault("wall_clock", lambda: NOW)
    return Sink(storage, **options)  # type: ignore[arg-type]


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_same_token_twice_is_stored_once_and_rollups_count_it_once(storage: Storage) -> None:
    batch = _batch(40)

    with _sink(storage) as sink:
        sink.write(batch, token="tillwatch.samples/0/100-139")
        sink.flush()
        sink.write(batch, token="tillwatch.samples/0/100-139")

    rolled = storage.client.command(f"SELECT sum(samples) FROM {storage.database}.samples_5m")
    assert _count(storage) == 40
    assert int(rolled) == 40


def test_different_tokens_store_the_batch_twice(storage: Storage) -> None:
    batch = _batch(40)

    with _sink(storage) as sink:
        sink.write(batch, token="a")
        sink.flush()
        sink.write(batch, token="b")

    assert _count(storage) == 80


def test_without_a_token_the_content_is_the_identity(storage: Storage) -> None:
    with _sink(storage) as sink:
        first = sink.write(_batch(30), token=None) or sink.flush()
        again = sink.write(_batch(30), token=None) or sink.flush()
        other = sink.write(_batch(30, seed=4), token=None) or sink.flush()

    assert first.token == again.token != other.token
    assert _count(storage) == 60


def test_rows_past_the_ttl_are_reported_logged_and_counted(
    storage: Storage, caplog: pytest.LogCaptureFixture
) -> None:
    fresh = _batch(10)
    backfill = _batch(6, start=NOW - (storage.ttl_days + 2) * DAY)
    before = REGISTRY.get_sample_value("tillwatch_samples_expired_total") or 0.0

    with caplog.at_level(logging.WARNING, logger="pipeline.sink"), _sink(storage) as sink:
        sink.write(fresh)
        sink.write(backfill)
        result = sink.flush()
        clean = sink.write(_batch(4, seed=9)) or sink.flush()

    after = REGISTRY.get_sample_value("tillwatch_samples_expired_total") or 0.0
    warnings = [r for r in caplog.records if "older than the 30-day TTL" in r.getMessage()]
    assert (result.rows, result.expired, result.stored) == (16, 6, 10)
    assert clean.expired == 0
    assert after - before == 6
    assert len(warnings) == 1 and "6 of 16" in warnings[0].getMessage()
    assert _count(storage) == 14


def test_flushes_when_the_buffer_reaches_max_rows(storage: Storage) -> None:
    sink = _sink(storage, max_rows=100, max_seconds=3600.0)

    first = sink.write(_batch(60, seed=1))
    buffered = sink.buffered
    second = sink.write(_batch(60, seed=2))

    assert first is None and buffered == 60
    assert second is not None and second.rows == 120
    assert sink.buffered == 0 and _count(storage) == 120


def test_flushes_when_the_oldest_batch_is_max_seconds_old(storage: Storage) -> None:
    clock = _Clock()
    sink = _sink(storage, max_rows=10_000, max_seconds=5.0, clock=clock)

    sink.write(_batch(10))
    clock.now = 4.9
    early = sink.flush_if_due()
    clock.now = 5.0
    due = sink.flush_if_due()

    assert early is None
    assert due is not None and due.rows == 10 and _count(storage) == 10


def test_close_drains_the_buffer_and_refuses_more(storage: Storage) -> None:
    sink = _sink(storage, max_rows=10_000)
    sink.write(_batch(25))

    result = sink.close()

    assert result.rows == 25 and _count(storage) == 25
    with pytest.raises(StorageError, match="closed"):
        sink.write(_batch(5))


def test_series_are_registered_once_per_process(storage: Storage) -> None:
    with _sink(storage) as sink:
        first = sink.write(_batch(10, seed=1)) or sink.flush()
        second = sink.write(_batch(10, seed=2)) or sink.flush()

    assert (first.new_series, second.new_series) == (5, 0)
    assert _count(storage, "series") == 5


def test_a_failed_insert_is_retried_with_backoff_and_the_buffer_kept(storage: Storage) -> None:
    table = f"{storage.database}.samples"
    storage.client.command(f"DETACH TABLE {table}")
    waits: list[float] = []

    def reattach_on_second_wait(delay: float) -> None:
        waits.append(delay)
        if len(waits) == 2:
            storage.client.command(f"ATTACH TABLE {table}")

    sink = _sink(storage, retries=3, backoff_seconds=0.01, sleep=reattach_on_second_wait)
    sink.write(_batch(20), token="retried")
    result = sink.flush()

    assert waits == [0.01, 0.02]
    assert result.rows == 20 and _count(storage) == 20


def test_when_retries_run_out_flush_raises_and_keeps_the_buffer(storage: Storage) -> None:
    table = f"{storage.database}.samples"
    storage.client.command(f"DETACH TABLE {table}")
    sink = _sink(storage, retries=1, backoff_seconds=0.0, sleep=lambda _: None)
    sink.write(_batch(20), token="kept")

    with pytest.raises(StorageError) as caught:
        sink.flush()
    kept = sink.buffered
    storage.client.command(f"ATTACH TABLE {table}")
    result = sink.close()

    assert storage.target.display in str(caught.value)
    assert kept == 20 and result.rows == 20 and _count(storage) == 20
