"""The ``kafka://host:port[,host:port]`` stream, through kafka-python 3.

Publishing goes through a bounded local buffer in front of an idempotent producer
(``acks='all'``). One sender thread moves records from the buffer to the broker and takes
them out only once the broker acknowledged them; when a delivery fails (the broker is
away), it waits with exponential backoff, recreates the topics if the broker lost them,
and sends the same records again. So a record accepted by ``publish`` is never lost while
the process runs, and may be delivered twice (consumers are idempotent). When the buffer
is full, ``publish`` blocks, then raises StreamFull.

Consumers join a group with manual commits: the stage commits after its handler
returned, so an uncommitted record goes to another member when this one leaves.
See docs/kafka-python.md for the session timeout chosen here.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
from dataclasses import dataclass

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError, TopicAlreadyExistsError

from pipeline.stream import TOPICS, Record
from tillwatch.errors import StreamError, StreamFull
from tillwatch.telemetry import CONSUMER_LAG, STREAM_BUFFERED, STREAM_DROPPED

log = logging.getLogger(__name__)

DEFAULT_PARTITIONS = 4
DEFAULT_MAX_BUFFERED = 10_000
DEFAULT_PUBLISH_TIMEOUT = 5.0
# A samples message is one scrape's batch; 8 MiB holds ~300k samples over 10k series.
DEFAULT_MAX_MESSAGE_BYTES = 8 * 1024 * 1024
# tansu answers a JoinGroup after half the session timeout (docs/kafka-python.md).
DEFAULT_SESSION_TIMEOUT_MS = 6_000
_CHUNK = 256
_REQUEST_TIMEOUT_MS = 5_000
_BACKOFF_MAX = 5.0


@dataclass(frozen=True, slots=True)
class _Outgoing:
    topic: str
    key: bytes | None
    value: bytes


class KafkaStream:
    """The Kafka stream backend (``kafka://``).

    Args:
        bootstrap: Comma-separated ``host:port`` list of brokers.
        partitions: Partitions of each topic this stream creates.
        max_buffered: Records ``publish`` may hold before the broker acknowledged them.
        publish_timeout: Seconds ``publish`` waits for room before raising StreamFull.
        max_message_bytes: Largest record the producer sends and the consumer fetches.
        session_timeout_ms: Consumer group session timeout; also sets how long a join takes.
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        partitions: int = DEFAULT_PARTITIONS,
        max_buffered: int = DEFAULT_MAX_BUFFERED,
        publish_timeout: float = DEFAULT_PUBLISH_TIMEOUT,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        session_timeout_ms: int = DEFAULT_SESSION_TIMEOUT_MS,
    ) -> None:
        self.bootstrap = bootstrap
        self.partitions = partitions
        self.max_buffered = max_buffered
        self.publish_timeout = publish_timeout
        self.max_message_bytes = max_message_bytes
        self.session_timeout_ms = session_timeout_ms
        self._buffer: collections.deque[_Outgoing] = collections.deque()
        self._changed = threading.Condition()
        self._stopping = threading.Event()
        self._sender = _Sender(self)
        self._sender.start()

    def publish(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        """Queue one record for the broker, waiting up to ``publish_timeout`` for room.

        Raises:
            StreamFull: when the buffer stayed full past the timeout; the record is dropped.
            StreamError: when the stream is closed.
        """
        with self._changed:
            if self._stopping.is_set():
                raise StreamError(f"kafka stream to {self.bootstrap} is closed")
            room = self._changed.wait_for(
                lambda: len(self._buffer) < self.max_buffered, timeout=self.publish_timeout
            )
            if not room:
                STREAM_DROPPED.labels(topic).inc()
                raise StreamFull(
                    f"kafka stream: {len(self._buffer)} records wait for {self.bootstrap} "
                    f"(max_buffered={self.max_buffered}) after {self.publish_timeout}s; "
                    "check that the broker is up, or raise max_buffered"
                )

            self._buffer.append(_Outgoing(topic, key, value))
            STREAM_BUFFERED.labels(topic).inc()
            self._changed.notify_all()

    def flush(self, timeout: float | None = None) -> None:
        """Block until the broker acknowledged every record published so far.

        Raises:
            StreamError: when records are still unacknowledged after ``timeout`` seconds.
        """
        with self._changed:
            done = self._changed.wait_for(lambda: not self._buffer, timeout=timeout)
            if not done:
                raise StreamError(
                    f"kafka stream: {len(self._buffer)} records not acknowledged by "
                    f"{self.bootstrap} within {timeout}s; check that the broker is up"
                )

    def consumer(self, topic: str, group: str) -> KafkaConsumerMember:
        """Join ``group`` on ``topic`` (creating the topic if missing).

        Raises:
            StreamError: when the broker cannot be reached.
        """
        try:
            self.ensure_topics([topic])
            consumer = KafkaConsumer(
                topic,
                bootstrap_servers=self.bootstrap.split(","),
                group_id=group,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                session_timeout_ms=self.session_timeout_ms,
                heartbeat_interval_ms=max(self.session_timeout_ms // 6, 100),
                max_partition_fetch_bytes=self.max_message_bytes,
                request_timeout_ms=max(_REQUEST_TIMEOUT_MS, self.session_timeout_ms + 1000),
            )
        except KafkaError as error:
            raise self._unreachable(f"joining group {group} on {topic}", error) from error
        return KafkaConsumerMember(consumer, topic, group, self.session_timeout_ms)

    def close(self, timeout: float = 10.0) -> None:
        """Flush for up to ``timeout`` seconds, then stop the sender and its producer."""
        try:
            self.flush(timeout)
        except StreamError as error:
            log.warning("closing with records undelivered: %s", error)
        with self._changed:
            self._stopping.set()
            self._changed.notify_all()
        self._sender.join()

    def ensure_topics(self, topics: list[str]) -> None:
        """Create the topics that do not exist yet; existing ones are left alone.

        Raises:
            KafkaError: when the broker cannot be reached or refuses a topic.
        """
        admin = KafkaAdminClient(
            bootstrap_servers=self.bootstrap.split(","),
            request_timeout_ms=_REQUEST_TIMEOUT_MS,
            bootstrap_timeout_ms=_REQUEST_TIMEOUT_MS,
        )
        try:
            wanted = {name: {"num_partitions": self.partitions, "replication_factor": 1}
                      for name in topics}
            result = admin.create_topics(wanted, raise_errors=False, wait_for_metadata=True)
        finally:
            admin.close()

        for topic in result["topics"]:
            if topic["error_code"] not in (0, TopicAlreadyExistsError.errno):
                raise KafkaError(f"creating topic {topic['name']}: {topic['error_message']}")

    def _unreachable(self, doing: str, error: KafkaError) -> StreamError:
        return StreamError(
            f"kafka stream: {doing} failed at {self.bootstrap}: {error}; "
            "check that the broker is up and the address is right"
        )


class _Sender(threading.Thread):
    """Moves buffered records to the broker, retrying until they are acknowledged."""

    def __init__(self, stream: KafkaStream) -> None:
        super().__init__(name="tillwatch-kafka-sender", daemon=True)
        self._stream = stream
        self._producer: KafkaProducer | None = None
        self._topics_ready: set[str] = set()

    def run(self) -> None:
        delay = 0.0
        while (chunk := self._next_chunk()) is not None:
            try:
                self._deliver(chunk)
            except KafkaError as error:
                self._disconnect(error, first=not delay)
                delay = min(max(delay * 2, 0.1), _BACKOFF_MAX)
                self._stream._stopping.wait(delay)
                continue
            if delay:
                log.info("kafka %s reachable again; delivery resumed", self._stream.bootstrap)
            delay = 0.0
            self._acknowledge(chunk)
        self._close_producer()

    def _next_chunk(self) -> list[_Outgoing] | None:
        """Wait for records; return the oldest ones (left in the buffer), None at close."""
        stream = self._stream
        with stream._changed:
            stream._changed.wait_for(lambda: stream._buffer or stream._stopping.is_set())
            if stream._stopping.is_set():
                return None
            return list(itertools.islice(stream._buffer, _CHUNK))

    def _deliver(self, chunk: list[_Outgoing]) -> None:
        producer = self._connect({record.topic for record in chunk})
        futures = [producer.send(r.topic, value=r.value, key=r.key) for r in chunk]
        producer.flush(timeout=_REQUEST_TIMEOUT_MS * 2 / 1000)
        for future in futures:
            future.get(timeout=_REQUEST_TIMEOUT_MS / 1000)

    def _connect(self, topics: set[str]) -> KafkaProducer:
        missing = topics - self._topics_ready
        if missing:
            # Also the fixed topics: a broker that restarted empty has lost them all.
            self._stream.ensure_topics(sorted(missing | set(TOPICS)))
            self._topics_ready |= missing | set(TOPICS)
        if self._producer is None:
            self._producer = KafkaProducer(
                bootstrap_servers=self._stream.bootstrap.split(","),
                enable_idempotence=True,
                acks="all",
                linger_ms=5,
                max_request_size=self._stream.max_message_bytes,
                request_timeout_ms=_REQUEST_TIMEOUT_MS,
                delivery_timeout_ms=_REQUEST_TIMEOUT_MS * 2,
                max_block_ms=_REQUEST_TIMEOUT_MS,
                bootstrap_timeout_ms=_REQUEST_TIMEOUT_MS,
            )
        return self._producer

    def _acknowledge(self, chunk: list[_Outgoing]) -> None:
        stream = self._stream
        with stream._changed:
            for record in chunk:
                stream._buffer.popleft()
                STREAM_BUFFERED.labels(record.topic).dec()
            stream._changed.notify_all()

    def _disconnect(self, error: KafkaError, first: bool) -> None:
        # One WARNING per outage; the retries after it are DEBUG.
        log.log(
            logging.WARNING if first else logging.DEBUG,
            "kafka %s: delivery failed (%s); %d records kept for retry",
            # str(): a record holding the exception would keep its frames (and sockets).
            self._stream.bootstrap, str(error), len(self._stream._buffer),
        )
        # The producer reconnects by itself; only a fatal error calls for a new one.
        if not error.retriable:
            self._close_producer()
        self._topics_ready.clear()

    def _close_producer(self) -> None:
        if self._producer is None:
            return
        try:
            self._producer.close(timeout=1)
        except KafkaError as error:
            # close() flushes first and raises if batches are pending; they are ours to resend.
            log.debug("kafka producer closed with batches pending: %s", error)
        self._producer = None


class KafkaConsumerMember:
    """A member of a consumer group on one Kafka topic, committing by hand."""

    def __init__(
        self, consumer: KafkaConsumer, topic: str, group: str, session_timeout_ms: int
    ) -> None:
        self._consumer = consumer
        self._session_timeout_ms = session_timeout_ms
        self.topic = topic
        self.group = group

    def poll(self, timeout: float = 1.0, max_records: int = 500) -> list[Record]:
        """Return the next records of this member's partitions, waiting up to ``timeout``.

        While the member has no partitions (joining, rebalancing) it waits out the join:
        kafka-python 3.0.12 drops a join that completes between two polls and starts over
        (docs/kafka-python.md), so a short poll could keep the group rebalancing.
        """
        wait = timeout
        if not self._consumer.assignment():
            wait = max(timeout, self._session_timeout_ms / 1000)
        batches = self._consumer.poll(timeout_ms=int(wait * 1000), max_records=max_records)
        return [
            Record(r.topic, r.partition, r.offset, r.key, r.value)
            for batch in batches.values()
            for r in batch
        ]

    def commit(self) -> None:
        """Commit what ``poll`` returned; if the group rebalanced, the records come again."""
        try:
            self._consumer.commit()
        except KafkaError as error:
            log.warning(
                "kafka group %s on %s: commit failed (%s); the records will be redelivered",
                self.group, self.topic, str(error),
            )

    def lag(self) -> int:
        """Records on this member's partitions the group has not committed yet."""
        partitions = sorted(self._consumer.assignment())
        if not partitions:
            return 0

        ends = self._consumer.end_offsets(partitions)
        starts = self._consumer.beginning_offsets(partitions)
        lag = 0
        for tp in partitions:
            # tansu 0.6 answers "latest" with the last batch's base offset + 1; the high
            # watermark of the last fetch is right, so trust whichever is further.
            end = max(ends[tp], self._consumer.highwater(tp) or 0)
            committed = self._consumer.committed(tp)
            lag += end - (starts[tp] if committed is None else committed)
        CONSUMER_LAG.labels(self.topic, self.group).set(lag)
        return lag

    @property
    def partitions(self) -> list[int]:
        """The partitions this member owns right now."""
        return sorted(tp.partition for tp in self._consumer.assignment())

    def close(self) -> None:
        """Leave the group without committing; its partitions go to the other members."""
        self._consumer.close(autocommit=False)

