"""The memory:// stream: partitions, consumer groups, redelivery, backpressure, trimming."""

import gc
import threading

import pytest
from prometheus_client import REGISTRY

from pipeline.memory import MemoryStream
from pipeline.stream import open_stream
from tillwatch.errors import ConfigError, StreamError, StreamFull


@pytest.fixture
def topic(request: pytest.FixtureRequest) -> str:
    # Metrics are process-wide and labelled by topic, so every test gets its own topic.
    return f"test.{request.node.name}"


def _drain(consumer, expected: int) -> list:
    records: list = []
    for _ in range(50):
        records += consumer.poll(timeout=0.01)
        if len(records) >= expected:
            break
    return records


def test_open_stream_picks_the_backend_from_the_url():
    assert isinstance(open_stream("memory://", partitions=2), MemoryStream)

    with pytest.raises(ConfigError, match="expected memory:// or kafka://"):
        open_stream("redis://localhost")


def test_records_of_one_key_stay_in_order_on_one_partition(topic):
    stream = MemoryStream(partitions=4)
    consumer = stream.consumer(topic, group="g")
    for i in range(200):
        stream.publish(topic, str(i).encode(), key=f"series-{i % 10}".encode())

    records = _drain(consumer, 200)

    by_key: dict[bytes, list[int]] = {}
    partitions: dict[bytes, set[int]] = {}
    for record in records:
        by_key.setdefault(record.key, []).append(int(record.value))
        partitions.setdefault(record.key, set()).add(record.partition)
    assert len(records) == 200
    assert all(values == sorted(values) for values in by_key.values())
    assert all(len(seen) == 1 for seen in partitions.values())
    assert len({p for seen in partitions.values() for p in seen}) > 1


def test_records_without_key_spread_over_all_partitions(topic):
    stream = MemoryStream(partitions=4)
    consumer = stream.consumer(topic, group="g")
    for i in range(8):
        stream.publish(topic, str(i).encode())

    records = _drain(consumer, 8)

    assert sorted(r.partition for r in records) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_members_of_a_group_share_the_partitions(topic):
    stream = MemoryStream(partitions=4)
    first = stream.consumer(topic, group="detectors")
    second = stream.consumer(topic, group="detectors")
    for i in range(100):
        stream.publish(topic, str(i).encode(), key=str(i).encode())

    got_first, got_second = _drain(first, 1), _drain(second, 1)

    assert set(first.partitions).isdisjoint(second.partitions)
    assert sorted(first.partitions + second.partitions) == [0, 1, 2, 3]
    assert {r.partition for r in got_first} <= set(first.partitions)
    assert {r.partition for r in got_second} <= set(second.partitions)
    assert sorted(int(r.value) for r in got_first + got_second) == list(range(100))


def test_every_group_reads_every_record(topic):
    stream = MemoryStream()
    sink, detector = stream.consumer(topic, group="sink"), stream.consumer(topic, group="det")
    for i in range(30):
        stream.publish(topic, str(i).encode(), key=str(i).encode())

    assert len(_drain(sink, 30)) == 30
    assert len(_drain(detector, 30)) == 30


def test_uncommitted_records_go_to_the_remaining_member_after_close(topic):
    stream = MemoryStream(partitions=4)
    crashing = stream.consumer(topic, group="g")
    for i in range(40):
        stream.publish(topic, str(i).encode(), key=str(i).encode())
    taken = _drain(crashing, 40)
    survivor = stream.consumer(topic, group="g")

    crashing.close()
    redelivered = _drain(survivor, 40)

    assert len(taken) == 40
    assert sorted(int(r.value) for r in redelivered) == list(range(40))


def test_committed_records_are_not_redelivered(topic):
    stream = MemoryStream(partitions=2)
    first = stream.consumer(topic, group="g")
    for i in range(10):
        stream.publish(topic, str(i).encode(), key=str(i).encode())
    assert len(_drain(first, 10)) == 10
    first.commit()

    first.close()
    second = stream.consumer(topic, group="g")

    assert second.poll(timeout=0.01) == []


def test_a_dropped_consumer_leaves_its_group(topic):
    stream = MemoryStream(partitions=2)
    survivor = stream.consumer(topic, group="g")
    abandoned = stream.consumer(topic, group="g")
    for i in range(10):
        stream.publish(topic, str(i).encode(), key=str(i).encode())
    _drain(abandoned, 1)

    del abandoned
    gc.collect()

    assert survivor.partitions == [0, 1]
    assert sorted(int(r.value) for r in _drain(survivor, 10)) == list(range(10))


def _dropped(topic: str) -> float:
    return REGISTRY.get_sample_value("tillwatch_stream_dropped_total", {"topic": topic}) or 0.0


def test_full_topic_raises_stream_full_and_counts_the_drop(topic):
    stream = MemoryStream(max_buffered=3, publish_timeout=0.05)
    stream.consumer(topic, group="slow")
    for i in range(3):
        stream.publish(topic, str(i).encode())

    with pytest.raises(StreamFull, match=f"topic {topic} holds 3 uncommitted"):
        stream.publish(topic, b"one too many")
    assert _dropped(topic) == 1.0


def test_publish_waits_for_a_commit_to_make_room(topic):
    stream = MemoryStream(partitions=1, max_buffered=2, publish_timeout=10.0)
    consumer = stream.consumer(topic, group="g")
    stream.publish(topic, b"a")
    stream.publish(topic, b"b")
    publisher = threading.Thread(target=stream.publish, args=(topic, b"c"))

    publisher.start()
    publisher.join(0.1)
    blocked = publisher.is_alive()
    _drain(consumer, 2)
    consumer.commit()
    publisher.join(5.0)

    assert blocked and not publisher.is_alive()
    assert [r.value for r in _drain(consumer, 1)] == [b"c"]
    assert _dropped(topic) == 0.0


def _buffered(topic: str) -> float | None:
    return REGISTRY.get_sample_value("tillwatch_stream_buffered_records", {"topic": topic})


def test_records_are_trimmed_once_every_group_committed(topic):
    stream = MemoryStream(partitions=2)
    sink, detector = stream.consumer(topic, group="sink"), stream.consumer(topic, group="det")
    for i in range(6):
        stream.publish(topic, str(i).encode(), key=str(i).encode())

    _drain(sink, 6)
    sink.commit()
    after_one = _buffered(topic)
    _drain(detector, 6)
    detector.commit()

    assert after_one == 6.0
    assert _buffered(topic) == 0.0


def test_lag_counts_uncommitted_records(topic):
    stream = MemoryStream(partitions=2)
    consumer = stream.consumer(topic, group="g")
    for i in range(5):
        stream.publish(topic, str(i).encode(), key=str(i).encode())

    before = consumer.lag()
    _drain(consumer, 5)
    polled = consumer.lag()
    consumer.commit()

    assert (before, polled, consumer.lag()) == (5, 5, 0)
    labels = {"topic": topic, "group": "g"}
    assert REGISTRY.get_sample_value("tillwatch_consumer_lag_records", labels) == 0.0


def test_closed_stream_refuses_to_publish(topic):
    stream = MemoryStream()
    stream.close()

    with pytest.raises(StreamError, match="memory stream is closed"):
        stream.publish(topic, b"late")
