"""The stream between stages: one interface, two backends.

``memory://`` keeps topics in this process (bounded, the embedded default);
``kafka://host:port[,host:port]`` speaks to Kafka through kafka-python. Both give the
same guarantees to a consumer: records of one key stay in order on one partition, and a
record is delivered again until a consumer of its group commits past it (at-least-once),
so every handler must be idempotent.

Typical consumer loop::

    consumer = stream.consumer(TOPIC_SAMPLES, group="sink")
    while running:
        records = consumer.poll(timeout=1.0)
        handle(records)          # store, detect, notify...
        consumer.commit()        # only after the handler returned
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

TOPIC_SAMPLES = "tillwatch.samples"
TOPIC_ANOMALIES = "tillwatch.anomalies"
TOPIC_ALERTS = "tillwatch.alerts"
TOPIC_DEADLETTER = "tillwatch.deadletter"
TOPICS = (TOPIC_SAMPLES, TOPIC_ANOMALIES, TOPIC_ALERTS, TOPIC_DEADLETTER)


@dataclass(frozen=True, slots=True)
class Record:
    """One message read from a topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes


class Consumer(Protocol):
    """A member of a consumer group reading one topic."""

    def poll(self, timeout: float = 1.0, max_records: int = 500) -> list[Record]:
        """Return the next records of the partitions assigned to this member (maybe none)."""
        ...

    def commit(self) -> None:
        """Mark every record returned by ``poll`` so far as processed by the group."""
        ...

    def lag(self) -> int:
        """Records published to this member's partitions and not yet committed."""
        ...

    @property
    def partitions(self) -> list[int]:
        """The partitions assigned to this member right now (empty before the group forms)."""
        ...

    def close(self) -> None:
        """Leave the group; uncommitted records go to the remaining members."""
        ...


class Stream(Protocol):
    """Publishes to and consumes from the tillwatch topics."""

    def publish(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        """Queue one record; blocks while the bounded buffer is full (backpressure).

        Raises:
            StreamFull: when the buffer stayed full past the configured timeout.
        """
        ...

    def flush(self, timeout: float | None = None) -> None:
        """Block until every queued record is acknowledged by the backend."""
        ...

    def consumer(self, topic: str, group: str) -> Consumer:
        """Join ``group`` as a new member reading ``topic``."""
        ...

    def close(self) -> None:
        """Flush and release connections."""
        ...


def open_stream(url: str, **options: object) -> Stream:
    """Open the stream backend named by ``url``: ``memory://`` or ``kafka://host:port[,...]``.

    Args:
        url: The backend and, for Kafka, its bootstrap servers.
        **options: Backend options, such as ``partitions``, ``max_buffered`` and
            ``publish_timeout``; see MemoryStream and KafkaStream.

    Returns:
        A started stream.

    Raises:
        ConfigError: when the scheme is neither memory nor kafka, or Kafka has no hosts.
    """
    from tillwatch.errors import ConfigError

    scheme, _, rest = url.partition("://")
    if scheme == "memory":
        from pipeline.memory import MemoryStream

        return MemoryStream(**options)  # type: ignore[arg-type]
    if scheme == "kafka" and rest.strip("/"):
        from pipeline.kafka import KafkaStream

        return KafkaStream(rest.strip("/"), **options)  # type: ignore[arg-type]
    raise ConfigError(
        f"stream url {url!r}: expected memory:// or kafka://host:port[,host:port]; "
        "set [stream] url in tillwatch.toml"
    )
