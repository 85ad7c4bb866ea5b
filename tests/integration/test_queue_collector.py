"""The queue collector on real queue_job rows, a real Redis and a real Kafka-protocol broker."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterator

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.structs import OffsetAndMetadata

from collectors.base import Reading, TargetState, scrape
from collectors.queue import BACKLOG_STATES, QueueCollector
from pipeline.stream import TOPIC_SAMPLES
from tests.services._support import free_port
from tests.services.kafka import KafkaBroker
from tests.services.odoo_schema import OdooDb
from tests.services.redis import RedisServer
from tillwatch.errors import ConfigError

pytestmark = pytest.mark.integration

CHECKED_SIGNALS = {
    "queue.depth",
    "queue.oldest_pending_age_seconds",
    "queue.stuck_jobs",
    "queue.failed_jobs",
    "queue.failed_per_minute",
    "queue.redis_list_length",
    "queue.consumer_lag_records",
    "queue.up",
    "queue.scrape_duration_seconds",
}

TARGET = {"service": "odoo-queue", "instance": "shop-test"}
Build = Callable[..., QueueCollector]


@pytest.fixture
def collector() -> Iterator[Build]:
    """Builds queue collectors and closes them after the test."""
    built: list[QueueCollector] = []

    def build(**options: object) -> QueueCollector:
        built.append(QueueCollector(labels=TARGET, connect_timeout=3, **options))
        return built[-1]

    yield build
    for queue in built:
        queue.close()


def by_labels(readings: list[Reading], signal: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Values of one signal keyed by their sorted labels."""
    return {tuple(sorted(r.labels.items())): r.value for r in readings if r.signal == signal}


def job(db: OdooDb, channel: str, state: str, **dates: float) -> int:
    """Insert a queue_job row; ``dates`` are ``<column>_ago`` seconds before the DB's now."""
    dates.setdefault("date_created_ago", 60)
    return db.insert(
        "queue_job", uuid=str(uuid.uuid4()), name="Export order", model_name="sale.order",
        method_name="export", state=state, priority=10, channel=channel, retry=0,
        max_retries=5, **dates,
    )  # fmt: skip


def test_depth_per_channel_and_state_is_exact(odoo_db: OdooDb, collector: Build) -> None:
    rng = random.Random(11)
    expected = {}
    for channel in ("root", "root.sale", "root.stock"):
        for state in (*BACKLOG_STATES, "done", "cancelled"):
            count = rng.randint(0, 5)
            for _ in range(count):
                job(odoo_db, channel, state)
            if state in BACKLOG_STATES:
                expected[(("channel", channel), ("state", state))] = float(count)

    readings = collector(odoo_dsn=odoo_db.ro_dsn).read(0.0)

    assert by_labels(readings, "queue.depth") == expected


def test_oldest_pending_age_waits_from_eta_and_stuck_jobs(
    odoo_db: OdooDb, collector: Build
) -> None:
    job(odoo_db, "root.sale", "pending", date_created_ago=600)
    job(odoo_db, "root.sale", "pending", date_created_ago=30)
    # Delayed jobs: one due 100 s ago (waits from its eta), one not due yet (not waiting).
    job(odoo_db, "root.mail", "pending", date_created_ago=2000, eta_ago=100)
    job(odoo_db, "root.mail", "pending", date_created_ago=3000, eta_ago=-300)
    job(odoo_db, "root.mail", "enqueued", date_created_ago=9000)
    job(odoo_db, "root.mail", "started", date_created_ago=4000, date_started_ago=3600)
    job(odoo_db, "root.mail", "started", date_created_ago=100, date_started_ago=60)

    readings = collector(odoo_dsn=odoo_db.ro_dsn, stuck_after_seconds=1800).read(0.0)

    oldest = by_labels(readings, "queue.oldest_pending_age_seconds")
    assert oldest[(("channel", "root.sale"),)] == pytest.approx(600, abs=5)
    assert oldest[(("channel", "root.mail"),)] == pytest.approx(100, abs=5)
    assert by_labels(readings, "queue.stuck_jobs") == {
        (("channel", "root.mail"),): 1.0,
        (("channel", "root.sale"),): 0.0,
    }


def test_failed_jobs_per_minute_counts_new_failures_between_scrapes(
    odoo_db: OdooDb, collector: Build
) -> None:
    old_failures = [job(odoo_db, "root.sale", "failed") for _ in range(3)]
    running = [job(odoo_db, "root.sale", "started", date_started_ago=5) for _ in range(4)]
    queue = collector(odoo_dsn=odoo_db.ro_dsn)
    first = queue.read(0.0)
    assert by_labels(first, "queue.failed_per_minute") == {}  # a rate needs two scrapes

    odoo_db.sql("UPDATE queue_job SET state = 'failed' WHERE id = ANY(%s)", (running,))
    # A requeued failure leaves the failed state: it is not a new failure.
    odoo_db.sql("UPDATE queue_job SET state = 'pending' WHERE id = %s", (old_failures[0],))
    readings = queue.read(0.0)

    start, end = queue.parts[0].window
    minutes = (end - start).total_seconds() / 60
    sale = (("channel", "root.sale"),)
    assert by_labels(readings, "queue.failed_per_minute") == {sale: pytest.approx(4 / minutes)}
    assert by_labels(readings, "queue.failed_jobs") == {sale: 3 - 1 + 4}


def test_redis_list_lengths_by_key(redis_server: RedisServer, collector: Build) -> None:
    client = redis_server.client()
    client.rpush("rq:queue:orders", *range(5))
    client.rpush("rq:queue:stock", *range(12))
    client.set("rq:queue:config", "not a list")
    client.rpush("unrelated", 1)
    client.rpush("celery", *range(3))
    queue = collector(redis_url=redis_server.url, redis_keys=["rq:queue:*", "celery", "absent"])

    first = by_labels(queue.read(0.0), "queue.redis_list_length")
    client.delete("rq:queue:orders")  # drained: Redis removes an empty list
    second = by_labels(queue.read(0.0), "queue.redis_list_length")
    client.close()

    assert first == {
        (("key", "absent"),): 0.0,
        (("key", "celery"),): 3.0,
        (("key", "rq:queue:orders"),): 5.0,
        (("key", "rq:queue:stock"),): 12.0,
    }
    assert second == {**first, (("key", "rq:queue:orders"),): 0.0}


def produce_one_by_one(bootstrap: str, topic: str, partition: int, count: int) -> None:
    # One record per batch: tansu's ListOffsets(latest) answers the last batch's base
    # offset + 1, which is the log end only when batches hold one record.
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    for n in range(count):
        producer.send(topic, value=b"%d" % n, partition=partition)
        producer.flush()
    producer.close()


def commit(bootstrap: str, group: str, offsets: dict[TopicPartition, int]) -> None:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    consumer.assign(list(offsets))
    consumer.commit({tp: OffsetAndMetadata(n, "", -1) for tp, n in offsets.items()})
    consumer.close()


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, partitions, 1)], raise_errors=False)
    admin.close()


def test_kafka_lag_is_produced_minus_committed(
    kafka_broker: KafkaBroker, collector: Build
) -> None:
    topic, group = f"orders-{uuid.uuid4().hex[:8]}", f"exporter-{uuid.uuid4().hex[:8]}"
    create_topic(kafka_broker.bootstrap, topic, 2)
    produce_one_by_one(kafka_broker.bootstrap, topic, 0, 7)
    produce_one_by_one(kafka_broker.bootstrap, topic, 1, 5)
    commit(
        kafka_broker.bootstrap,
        group,
        {TopicPartition(topic, 0): 3, TopicPartition(topic, 1): 5},
    )

    queue = collector(
        kafka_bootstrap=kafka_broker.bootstrap, kafka_groups=[group], kafka_own_groups=False
    )
    lag = by_labels(queue.read(0.0), "queue.consumer_lag_records")

    assert lag == {(("group", group), ("topic", topic)): (7 - 3) + (5 - 5)}


def test_kafka_lag_includes_groups_reading_tillwatch_topics(
    kafka_broker: KafkaBroker, collector: Build
) -> None:
    group = f"tillwatch-sink-{uuid.uuid4().hex[:8]}"
    create_topic(kafka_broker.bootstrap, TOPIC_SAMPLES, 1)
    samples = TopicPartition(TOPIC_SAMPLES, 0)
    probe = KafkaConsumer(bootstrap_servers=kafka_broker.bootstrap)
    log_end = probe.end_offsets([samples])[samples]
    probe.close()
    commit(kafka_broker.bootstrap, group, {samples: log_end})
    produce_one_by_one(kafka_broker.bootstrap, TOPIC_SAMPLES, 0, 4)

    queue = collector(kafka_bootstrap=kafka_broker.bootstrap)
    lag = by_labels(queue.read(0.0), "queue.consumer_lag_records")

    assert lag[(("group", group), ("topic", TOPIC_SAMPLES))] == 4.0


def test_unreachable_targets_are_up_zero_with_code_refused(collector: Build) -> None:
    for options in (
        {"redis_url": f"redis://127.0.0.1:{free_port()}/0", "redis_keys": ["q"]},
        {"kafka_bootstrap": f"127.0.0.1:{free_port()}", "kafka_groups": ["g"]},
    ):
        state = TargetState()
        batch = scrape(collector(**options), state)

        assert {s.signal: s.value for s in batch.samples()}["queue.up"] == 0.0
        assert state.error_code == "refused"


def test_scrape_is_up_and_emits_only_declared_signals(
    odoo_db: OdooDb, collector: Build
) -> None:
    job(odoo_db, "root", "pending")

    batch = scrape(collector(odoo_dsn=odoo_db.ro_dsn), TargetState())

    values = {s.signal: s.value for s in batch.samples()}
    assert values["queue.up"] == 1.0
    assert 0.0 < values["queue.scrape_duration_seconds"] < 10.0
    assert set(values) <= set(QueueCollector.declared())


def test_a_collector_without_any_part_or_without_keys_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="odoo_dsn, redis_url or kafka_bootstrap"):
        QueueCollector(labels=TARGET)
    with pytest.raises(ConfigError, match="redis_keys"):
        QueueCollector(labels=TARGET, redis_url="redis://127.0.0.1:1/0")
