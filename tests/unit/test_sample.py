"""The sample contract: canonical series keys, stable ids, validation."""

import math

import pytest

from tillwatch.errors import InvalidSample
from tillwatch.sample import BatchBuilder, Sample, SampleBatch, Series, parse_series_key

# Fixed vectors: computed independently with ClickHouse's xxHash64() in chDB 26.9
# (SELECT xxHash64('<key>')), so any process or SQL query reproduces these ids.
VECTORS = [
    (
        "redis.hit_ratio",
        {"service": "redis", "instance": "cache-1:6379"},
        'redis.hit_ratio{instance="cache-1:6379",service="redis"}',
        6379966705115183365,
    ),
    (
        "kpi.orders_per_minute",
        {"store": "lyon", "sales_channel": "pos", "company": "1"},
        'kpi.orders_per_minute{company="1",sales_channel="pos",store="lyon"}',
        13963149681592989409,
    ),
]


@pytest.mark.parametrize(("signal", "labels", "key", "expected_id"), VECTORS)
def test_series_id_matches_fixed_vectors(signal, labels, key, expected_id):
    series = Series.of(signal, labels)

    assert series.key == key
    assert series.id == expected_id


def test_label_order_does_not_change_the_series():
    one = Series.of("queue.depth", {"channel": "root", "state": "pending"})
    other = Series.of("queue.depth", {"state": "pending", "channel": "root"})

    assert one.id == other.id


def test_label_values_are_escaped_and_parse_back():
    series = Series.of("traefik.latency_p95_seconds", {"router": 'a"b\\c\nd'})

    assert series.key == 'traefik.latency_p95_seconds{router="a\\"b\\\\c\\nd"}'
    assert parse_series_key(series.key) == (series.signal, {"router": 'a"b\\c\nd'})


@pytest.mark.parametrize(
    ("signal", "labels", "code"),
    [
        ("RedisHitRatio", {}, "bad_signal"),
        ("redis", {}, "bad_signal"),
        ("redis.hit ratio", {}, "bad_signal"),
        ("redis.hit_ratio", {"Service": "x"}, "bad_label"),
        ("redis.hit_ratio", {"service": "x" * 300}, "bad_label"),
        ("redis.hit_ratio", {f"k{i}": "v" for i in range(17)}, "too_many_labels"),
    ],
)
def test_invalid_series_are_rejected_with_a_code(signal, labels, code):
    with pytest.raises(InvalidSample) as error:
        Series.of(signal, labels)

    assert error.value.code == code


@pytest.mark.parametrize(
    ("ts", "value", "code"),
    [
        (1.7e9, math.nan, "non_finite_value"),
        (1.7e9, math.inf, "non_finite_value"),
        (1.7e12, 1.0, "bad_timestamp"),
        (0.0, 1.0, "bad_timestamp"),
    ],
)
def test_invalid_points_are_rejected_with_a_code(ts, value, code):
    with pytest.raises(InvalidSample) as error:
        Sample(ts, "redis.hit_ratio", {}, value).validate()

    assert error.value.code == code


def test_batch_builder_interns_series_and_keeps_order():
    builder = BatchBuilder()
    builder.add(1.7e9, "redis.up", {"instance": "a"}, 1.0)
    builder.add(1.7e9, "redis.up", {"instance": "b"}, 0.0)
    builder.add(1.7e9 + 15, "redis.up", {"instance": "a"}, 1.0)
    batch = builder.build()

    assert len(batch.series) == 2
    assert batch.series_ix.tolist() == [0, 1, 0]
    assert batch.series_ids().tolist() == [
        batch.series[0].id,
        batch.series[1].id,
        batch.series[0].id,
    ]


def test_batch_round_trips_to_sample_objects():
    samples = [
        Sample(1.7e9 + i, "queue.depth", {"channel": "root"}, float(i)) for i in range(3)
    ]

    batch = SampleBatch.from_samples(samples)

    assert list(batch.samples()) == samples
