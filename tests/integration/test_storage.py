"""Storage against the real embedded ClickHouse engine: schema, reads and events."""

from __future__ import annotations

import time
import uuid

import numpy as np
import pytest

from pipeline.sink import Sink
from pipeline.storage import (
    AlertRecord,
    FeedbackRecord,
    IncidentRecord,
    Storage,
    load_migrations,
    parse_target,
)
from tillwatch.anomaly import Anomaly
from tillwatch.errors import ConfigError, StorageError
from tillwatch.sample import SampleBatch, Series

pytestmark = pytest.mark.integration

# ClickHouse applies the TTL against its own clock, so the data must be recent: a whole
# hour a day ago, so that hand-computed buckets stay aligned.
T0 = (time.time() // 3600 - 24) * 3600


def _known_batch() -> tuple[list[Series], SampleBatch]:
    """Three series of one signal and one of another, a point every 60 s for 30 min."""
    series = [
        Series.of("redis.hit_ratio", {"service": "redis", "instance": "cache-1"}),
        Series.of("redis.hit_ratio", {"service": "redis", "instance": "cache-2"}),
        Series.of("redis.hit_ratio", {"service": "sessions", "instance": "cache-3"}),
        Series.of("queue.depth", {"service": "odoo", "channel": "root"}),
    ]
    minutes = np.arange(30)
    ix = np.repeat(np.arange(4, dtype=np.uint32), 30)
    ts = np.tile(T0 + 60.0 * minutes, 4)
    value = np.concatenate([minutes * 1.0, minutes * 2.0, minutes + 100.0, minutes * 0.0 + 7])
    return series, SampleBatch(series, ix, ts, value)


@pytest.fixture
def known(storage: Storage) -> list[Series]:
    series, batch = _known_batch()
    with Sink(storage) as sink:
        sink.write(batch, token="known")
    return series


def test_migrations_apply_once_and_record_each_version_once(
    storage: Storage, clickhouse_url: str
) -> None:
    expected = [m.version for m in load_migrations()]

    again = storage.migrate()
    reopened = Storage.open(clickhouse_url, database=storage.database)
    try:
        third = reopened.migrate()
    finally:
        reopened.close()

    assert expected == sorted(set(expected)) and len(expected) >= 3
    assert again == [] and third == []
    assert storage.applied_migrations() == expected
    tables = storage.client.query(
        "SELECT name FROM system.tables WHERE database = {db:String}",
        parameters={"db": storage.database},
    ).result_columns[0]
    for table in ("samples", "series", "samples_5m", "anomalies", "incidents", "alerts",
                  "feedback", "schema_migrations"):
        assert table in tables


def test_samples_table_carries_the_configured_ttl_codecs_and_dedup_window(
    clickhouse_url: str,
) -> None:
    database = f"ttl_{uuid.uuid4().hex[:8]}"
    week = Storage.open(clickhouse_url, database=database, ttl_days=7)
    try:
        ddl = week.client.command(f"SHOW CREATE TABLE {database}.samples")
        codecs = dict(week.client.query(
            "SELECT name, compression_codec FROM system.columns "
            "WHERE database = {db:String} AND table = 'samples'",
            parameters={"db": database},
        ).result_rows)
    finally:
        week.client.command(f"DROP DATABASE {database} SYNC")
        week.close()

    assert "toIntervalDay(7)" in ddl
    assert "non_replicated_deduplication_window = 1000" in ddl
    assert codecs["ts"].startswith("CODEC(DoubleDelta") and "ZSTD(1)" in codecs["ts"]
    assert codecs["value"].startswith("CODEC(Gorilla") and "ZSTD(1)" in codecs["value"]


def test_series_points_cover_start_inclusive_end_exclusive(
    storage: Storage, known: list[Series]
) -> None:
    points = storage.series_points(known[1].id, T0 + 120, T0 + 300)

    assert points.ts.tolist() == [T0 + 120, T0 + 180, T0 + 240]
    assert points.value.tolist() == [4.0, 6.0, 8.0]
    assert set(points.series_id.tolist()) == {known[1].id}


def test_signal_points_filter_series_by_label_equality(
    storage: Storage, known: list[Series]
) -> None:
    redis = storage.signal_points("redis.hit_ratio", {"service": "redis"}, T0, T0 + 3600)
    one = storage.signal_points(
        "redis.hit_ratio", {"service": "redis", "instance": "cache-2"}, T0, T0 + 3600
    )
    none = storage.signal_points("redis.hit_ratio", {"service": "odoo"}, T0, T0 + 3600)

    assert set(redis.series_id.tolist()) == {known[0].id, known[1].id}
    assert len(redis) == 60
    assert set(one.series_id.tolist()) == {known[1].id} and len(one) == 30
    assert len(none) == 0 and none.series_id.dtype == np.uint64


def test_rollups_match_hand_computed_buckets(storage: Storage, known: list[Series]) -> None:
    # Series cache-1 holds 0..29 at one-minute steps: 10-minute buckets hold 0..9, 10..19,
    # 20..29; 2-minute buckets hold pairs (0,1), (2,3), ...
    select = {"instance": "cache-1"}

    coarse = storage.rollup("redis.hit_ratio", select, T0, T0 + 1800, step=600)
    fine = storage.rollup("redis.hit_ratio", select, T0, T0 + 1800, step=120)

    assert coarse.ts.tolist() == [T0, T0 + 600, T0 + 1200]
    assert coarse.avg.tolist() == [4.5, 14.5, 24.5]
    assert coarse.min.tolist() == [0.0, 10.0, 20.0]
    assert coarse.max.tolist() == [9.0, 19.0, 29.0]
    assert coarse.count.tolist() == [10, 10, 10]
    assert len(fine) == 15
    assert fine.avg.tolist() == [2 * k + 0.5 for k in range(15)]
    assert set(fine.series_id.tolist()) == {known[0].id}


def test_rollups_of_five_minute_steps_come_from_the_rollup_table(storage: Storage) -> None:
    # A backfill older than the sample TTL is dropped from samples but kept by the
    # longer-lived rollup: only a rollup-table read can still see it.
    series = Series.of("queue.depth", {"service": "odoo", "channel": "backfill"})
    old = T0 - 60 * 86_400
    batch = SampleBatch([series], np.zeros(3, np.uint32), old + np.array([0.0, 60, 120]),
                        np.array([1.0, 2.0, 6.0]))
    with Sink(storage) as sink:
        sink.write(batch)

    from_rollup = storage.rollup("queue.depth", {"channel": "backfill"}, old, old + 300, 300)
    from_samples = storage.rollup("queue.depth", {"channel": "backfill"}, old, old + 300, 60)

    assert from_rollup.avg.tolist() == [3.0] and from_rollup.count.tolist() == [3]
    assert from_rollup.min.tolist() == [1.0] and from_rollup.max.tolist() == [6.0]
    assert len(from_samples) == 0


def test_series_registry_holds_labels(storage: Storage, known: list[Series]) -> None:
    labels = storage.series_labels("redis.hit_ratio")

    assert labels == {s.id: dict(s.labels) for s in known[:3]}


def test_anomalies_round_trip(storage: Storage) -> None:
    anomaly = Anomaly(
        ts=T0 + 1.5, series_id=2**63 + 5, signal="kpi.orders_per_minute",
        labels={"service": "shop"}, score=0.97, observed=3.0, expected=40.0, lower=30.0,
        upper=50.0, direction="down", detector="ewma", explanation="orders fell",
        extra={"z": -6.5},
    )
    storage.insert_anomalies([anomaly])

    assert storage.anomalies(T0, T0 + 10) == [anomaly]
    assert storage.anomalies(T0, T0 + 10, signal="redis.hit_ratio") == []
    assert storage.anomalies(T0 + 2, T0 + 10) == []


def test_incidents_keep_their_newest_state(storage: Storage) -> None:
    opened = IncidentRecord("inc-1", opened=T0, updated=T0, tier="ticket", service="postgres",
                            summary="replica lag", series_ids=[1, 2])
    paged = IncidentRecord("inc-1", opened=T0, updated=T0 + 60, tier="page", service="postgres",
                           summary="replica lag hurts checkout", impact="orders -40%",
                           series_ids=[1, 2, 3])
    other = IncidentRecord("inc-2", opened=T0 + 5, updated=T0 + 5, tier="info", service="redis",
                           resolved=T0 + 30)
    storage.upsert_incidents([opened])
    storage.upsert_incidents([paged, other])

    assert storage.incidents() == [paged, other]
    assert storage.incidents(open_only=True) == [paged]
    assert storage.incidents(since=T0 + 61) == []


def test_alerts_and_feedback_round_trip(storage: Storage) -> None:
    firing = AlertRecord(T0, "inc-1", "page", "firing", {"tier": "page"}, {"summary": "x"})
    resolved = AlertRecord(T0 + 90, "inc-1", "page", "resolved", {"tier": "page"}, {})
    elsewhere = AlertRecord(T0 + 10, "inc-2", "info", "firing")
    verdict = FeedbackRecord("inc-1", T0 + 100, "useful", "real outage")
    storage.insert_alerts([resolved, firing, elsewhere])
    storage.insert_feedback([verdict])

    assert storage.alerts("inc-1") == [firing, resolved]
    assert storage.alerts(since=T0 + 5) == [elsewhere, resolved]
    assert storage.feedback("inc-1") == [verdict]
    assert storage.feedback("inc-2") == []


def test_driver_errors_name_the_target_and_the_fix(clickhouse_url: str) -> None:
    bare = Storage.open(clickhouse_url, database="never_migrated", migrate=False)
    try:
        with pytest.raises(StorageError) as caught:
            bare.series_points(1, T0, T0 + 60)
    finally:
        bare.close()

    assert clickhouse_url in str(caught.value)
    assert "migrate=True" in str(caught.value)
    assert caught.value.code == "storage_unavailable"


@pytest.mark.parametrize(
    ("url", "path", "display"),
    [
        ("chdb:///var/lib/tillwatch", "/var/lib/tillwatch", "chdb:///var/lib/tillwatch"),
        ("chdb://./tillwatch-data", "./tillwatch-data", "chdb://./tillwatch-data"),
        ("chdb://tillwatch-data", "tillwatch-data", "chdb://tillwatch-data"),
    ],
)
def test_chdb_urls_hold_the_path_after_the_scheme(url: str, path: str, display: str) -> None:
    target = parse_target(url)

    assert target.embedded and target.path == path and target.display == display


def test_server_urls_parse_without_credentials() -> None:
    plain = parse_target("http://clickhouse:8123")
    secure = parse_target("https://tillwatch@ch.example.com")

    assert (plain.host, plain.port, plain.secure, plain.username) == (
        "clickhouse", 8123, False, "default"
    )
    assert (secure.port, secure.secure, secure.username) == (8443, True, "tillwatch")
    assert secure.display == "https://ch.example.com:8443" and not secure.embedded


@pytest.mark.parametrize("url", ["http://u:s3cret@ch:8123", "ftp://ch", "chdb://"])
def test_bad_urls_are_refused_without_echoing_secrets(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_target(url)

    assert "s3cret" not in str(caught.value)
