"""The ``memory://`` stream: topics, partitions and consumer groups inside one process.

Stages run as threads of one process, so one lock and one condition guard everything;
the records are batches of thousands of samples, so a publish or a poll is rare enough
that contention does not matter.

Each partition is a list of records whose first element has offset ``base``. A group keeps
a committed offset and a read position per partition; the partitions are split among the
group's members, and when a partition changes hands its position goes back to the
committed offset, which is how uncommitted records reach the next member (at-least-once).
Records every joined group has committed are trimmed; the rest count against
``max_buffered``.
"""

from __future__ import annotations

import itertools
import threading
import weakref
import zlib
from dataclasses import dataclass, field

from pipeline.stream import Record
from tillwatch.errors import StreamError, StreamFull
from tillwatch.telemetry import CONSUMER_LAG, STREAM_BUFFERED, STREAM_DROPPED

DEFAULT_PARTITIONS = 4
DEFAULT_MAX_BUFFERED = 10_000
DEFAULT_PUBLISH_TIMEOUT = 5.0


@dataclass(slots=True)
class _Partition:
    base: int = 0
    records: list[Record] = field(default_factory=list)

    @property
    def end(self) -> int:
        return self.base + len(self.records)


@dataclass(eq=False, slots=True)
class _Member:
    group: _Group
    partitions: list[int] = field(default_factory=list)
    closed: bool = False


@dataclass(eq=False, slots=True)
class _Group:
    name: str
    committed: list[int]
    position: list[int]
    members: list[_Member] = field(default_factory=list)
    owner: list[_Member | None] = field(default_factory=list)


class _Topic:
    """One topic: its partitions and the groups that joined it."""

    def __init__(self, name: str, partitions: int) -> None:
        self.name = name
        self.partitions = [_Partition() for _ in range(partitions)]
        self.groups: dict[str, _Group] = {}
        self._round_robin = itertools.cycle(range(partitions))

    def partition_of(self, key: bytes | None) -> int:
        # crc32 is stable across processes and runs, unlike hash() on bytes.
        if key is None:
            return next(self._round_robin)
        return zlib.crc32(key) % len(self.partitions)

    def buffered(self) -> int:
        return sum(len(partition.records) for partition in self.partitions)

    def append(self, key: bytes | None, value: bytes) -> None:
        index = self.partition_of(key)
        partition = self.partitions[index]
        partition.records.append(Record(self.name, index, partition.end, key, value))

    def group(self, name: str) -> _Group:
        group = self.groups.get(name)
        if group is None:
            start = [partition.base for partition in self.partitions]
            group = _Group(name, committed=start, position=list(start))
            group.owner = [None] * len(self.partitions)
            self.groups[name] = group
        return group

    def trim(self) -> None:
        """Drop the records every joined group has committed."""
        for index, partition in enumerate(self.partitions):
            done = min((g.committed[index] for g in self.groups.values()), default=None)
            if done is not None and done > partition.base:
                del partition.records[: done - partition.base]
                partition.base = done


def _rebalance(group: _Group) -> None:
    """Split the partitions among the live members; moved partitions restart at commit."""
    for member in group.members:
        member.partitions = []
    for index in range(len(group.owner)):
        owner = group.members[index % len(group.members)] if group.members else None
        if owner is not group.owner[index]:
            group.position[index] = group.committed[index]
        group.owner[index] = owner
        if owner is not None:
            owner.partitions.append(index)


class MemoryStream:
    """The in-process stream backend (``memory://``).

    Args:
        partitions: Partitions per topic; a key always maps to the same one.
        max_buffered: Records a topic may hold that some joined group has not committed.
        publish_timeout: Seconds ``publish`` waits for room before raising StreamFull.
    """

    def __init__(
        self,
        *,
        partitions: int = DEFAULT_PARTITIONS,
        max_buffered: int = DEFAULT_MAX_BUFFERED,
        publish_timeout: float = DEFAULT_PUBLISH_TIMEOUT,
    ) -> None:
        self.partitions = partitions
        self.max_buffered = max_buffered
        self.publish_timeout = publish_timeout
        self._topics: dict[str, _Topic] = {}
        self._changed = threading.Condition()
        self._closed = False

    def publish(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        """Append one record, waiting up to ``publish_timeout`` while the topic is full.

        Raises:
            StreamFull: when the topic stayed full past the timeout; the record is dropped.
            StreamError: when the stream is closed.
        """
        with self._changed:
            self._check_open()
            state = self._topic(topic)
            room = self._changed.wait_for(
                lambda: state.buffered() < self.max_buffered or self._closed,
                timeout=self.publish_timeout,
            )
            self._check_open()
            if not room:
                STREAM_DROPPED.labels(topic).inc()
                raise StreamFull(
                    f"memory stream: topic {topic} holds {state.buffered()} uncommitted "
                    f"records (max_buffered={self.max_buffered}) after waiting "
                    f"{self.publish_timeout}s; consumers are behind: add workers or raise "
                    "max_buffered"
                )

            state.append(key, value)
            STREAM_BUFFERED.labels(topic).set(state.buffered())
            self._changed.notify_all()

    def flush(self, timeout: float | None = None) -> None:
        """Nothing to wait for: a published record is immediately visible to consumers."""

    def consumer(self, topic: str, group: str) -> MemoryConsumer:
        """Join ``group`` on ``topic`` as a new member; the group rebalances."""
        with self._changed:
            self._check_open()
            state = self._topic(topic).group(group)
            member = _Member(state)
            state.members.append(member)
            _rebalance(state)
            self._changed.notify_all()
        return MemoryConsumer(self, self._topics[topic], member)

    def close(self) -> None:
        """Wake every waiting publisher and consumer; later calls raise StreamError."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def _topic(self, name: str) -> _Topic:
        state = self._topics.get(name)
        if state is None:
            state = self._topics[name] = _Topic(name, self.partitions)
        return state

    def _check_open(self) -> None:
        if self._closed:
            raise StreamError("memory stream is closed; open a new one with open_stream()")


class MemoryConsumer:
    """A member of a consumer group on a :class:`MemoryStream` topic."""

    def __init__(self, stream: MemoryStream, topic: _Topic, member: _Member) -> None:
        self._stream = stream
        self._topic = topic
        self._member = member
        # A consumer dropped without close() still leaves its group, so nothing is stranded.
        self._leave = weakref.finalize(self, _leave, stream, topic, member)

    def poll(self, timeout: float = 1.0, max_records: int = 500) -> list[Record]:
        """Return records after this member's position, waiting up to ``timeout`` for some."""
        with self._stream._changed:
            self._stream._changed.wait_for(
                lambda: self._ready() or self._member.closed or self._stream._closed,
                timeout=timeout,
            )
            return self._take(max_records)

    def commit(self) -> None:
        """Commit what ``poll`` returned on the partitions this member still owns."""
        with self._stream._changed:
            group = self._member.group
            for index in self._member.partitions:
                group.committed[index] = group.position[index]

            self._topic.trim()
            STREAM_BUFFERED.labels(self._topic.name).set(self._topic.buffered())
            self._stream._changed.notify_all()

    def lag(self) -> int:
        """Records on this member's partitions that its group has not committed."""
        with self._stream._changed:
            group = self._member.group
            lag = sum(
                self._topic.partitions[index].end - group.committed[index]
                for index in self._member.partitions
            )
        CONSUMER_LAG.labels(self._topic.name, group.name).set(lag)
        return lag

    def close(self) -> None:
        """Leave the group without committing; its partitions go to the other members."""
        self._leave()

    @property
    def partitions(self) -> list[int]:
        """The partitions this member owns right now."""
        return list(self._member.partitions)

    def _ready(self) -> bool:
        group = self._member.group
        return any(
            group.position[index] < self._topic.partitions[index].end
            for index in self._member.partitions
        )

    def _take(self, max_records: int) -> list[Record]:
        group = self._member.group
        taken: list[Record] = []
        for index in self._member.partitions:
            partition = self._topic.partitions[index]
            start = group.position[index] - partition.base
            chunk = partition.records[start : start + max_records - len(taken)]
            group.position[index] += len(chunk)
            taken.extend(chunk)
        return taken


def _leave(stream: MemoryStream, topic: _Topic, member: _Member) -> None:
    with stream._changed:
        member.closed = True
        member.partitions = []
        member.group.members.remove(member)
        _rebalance(member.group)
        stream._changed.notify_all()
