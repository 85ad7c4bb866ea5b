"""Backlogs: OCA queue_job in the Odoo database, Redis lists, Kafka consumer-group lag.

One :class:`QueueCollector` reads any of three kinds of backlog; each part is optional
and configured on its own, and one collector per target kind is the intended setup (a
failing part makes the whole scrape ``queue.up = 0``). The parts:

- queue_job (REFERENCE.md section 4): depth per channel and state, oldest pending age
  (a delayed job waits from its ``eta``, not its creation), jobs started too long ago,
  failed jobs now and new failures per minute. A failed job has no failure time
  (``date_done`` stays empty), so new failures are the ids in state ``failed`` now that
  were not failed at the previous scrape, divided by the minutes between the two scrapes
  on the database clock; the first scrape only takes the baseline.
- Redis lists: ``LLEN`` of every list whose key matches a pattern (``SCAN MATCH ...
  TYPE list``). Redis deletes an empty list, so a key seen once reads 0 once it is gone.
- Kafka: per group and topic, the sum over partitions of log-end offset minus committed
  offset, with kafka-python 3.x's admin API (``list_group_offsets``,
  ``list_partition_offsets``). Groups that commit on tillwatch's own topics are found
  with ``list_groups`` and included unless ``kafka_own_groups`` is off.
"""

from __future__ import annotations

import logging
import socket
from collections import Counter as Tally
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime

import kafka.errors as kafka_errors
import psycopg
import redis
from kafka import KafkaAdminClient, TopicPartition
from kafka.admin import OffsetSpec

from collectors.base import Collector, Reading, SignalSpec
from collectors.odoo import OdooDatabase
from collectors.redis import error_code as redis_error_code
from pipeline.stream import TOPICS
from tillwatch.errors import ConfigError, SourceError
from tillwatch.sample import MAX_LABEL_VALUE_LENGTH

log = logging.getLogger(__name__)

# queue_job states that are backlog; ``failed`` is reported on its own signals.
BACKLOG_STATES = ("wait_dependencies", "pending", "enqueued", "started")
REDIS_GLOB = frozenset("*?[")

SIGNALS = (
    SignalSpec("queue.depth", "1", "queue_job jobs by channel and state (backlog states)"),
    SignalSpec("queue.oldest_pending_age_seconds", "s", "Wait of the oldest due pending job"),
    SignalSpec("queue.stuck_jobs", "1", "Jobs started longer ago than stuck_after_seconds"),
    SignalSpec("queue.failed_jobs", "1", "Jobs in state failed, by channel"),
    SignalSpec("queue.failed_per_minute", "1/min", "Jobs newly failed between two scrapes"),
    SignalSpec("queue.redis_list_length", "1", "LLEN of a Redis list, label key"),
    SignalSpec(
        "queue.consumer_lag_records", "1", "Log-end minus committed offsets, by group and topic"
    ),
)


class QueueCollector(Collector):
    """Reads queue_job, Redis list and Kafka consumer-group backlogs; each part optional.

    Args:
        labels: the target's own labels, e.g. ``service="odoo-queue", instance="shop-eu"``.
        odoo_dsn: libpq DSN of a read-only role on the Odoo database; None skips queue_job.
        stuck_after_seconds: a ``started`` job older than this counts as stuck.
        redis_url: ``redis://`` URL of the server holding the lists; None skips Redis.
        redis_keys: key patterns (``SCAN MATCH`` globs) or exact keys of the lists.
        redis_max_keys: at most this many lists are reported, to bound label cardinality.
        kafka_bootstrap: ``host:port[,host:port]`` of the brokers; None skips Kafka.
        kafka_groups: consumer groups whose lag is reported on every topic they commit on.
        kafka_own_groups: also report groups that commit on tillwatch's own topics.
        connect_timeout: seconds to wait for any of the three targets.
        statement_timeout_ms: server-side limit of each queue_job query.

    Raises:
        ConfigError: when no part is configured, or a part lacks what it reads.
    """

    source = "queue"
    signals = SIGNALS

    def __init__(
        self,
        *,
        labels: Mapping[str, str],
        odoo_dsn: str | None = None,
        stuck_after_seconds: float = 1800.0,
        redis_url: str | None = None,
        redis_keys: Sequence[str] = (),
        redis_max_keys: int = 200,
        kafka_bootstrap: str | None = None,
        kafka_groups: Sequence[str] = (),
        kafka_own_groups: bool = True,
        connect_timeout: float = 5.0,
        statement_timeout_ms: int = 10_000,
    ) -> None:
        super().__init__(labels=labels)
        self.parts: list[QueueJobPart | RedisListPart | KafkaLagPart] = []
        if odoo_dsn is not None:
            db = OdooDatabase(
                dsn=odoo_dsn,
                who=self.name,
                connect_timeout=connect_timeout,
                statement_timeout_ms=statement_timeout_ms,
            )
            self.parts.append(QueueJobPart(db, stuck_after_seconds))
        if redis_url is not None:
            self.parts.append(
                RedisListPart(self.name, redis_url, redis_keys, redis_max_keys, connect_timeout)
            )
        if kafka_bootstrap is not None:
            self.parts.append(
                KafkaLagPart(
                    self.name, kafka_bootstrap, kafka_groups, kafka_own_groups, connect_timeout
                )
            )
        if not self.parts:
            raise ConfigError(
                f"{self.name}: no backlog to read; set odoo_dsn, redis_url or kafka_bootstrap"
            )

    def read(self, now: float) -> Iterable[Reading]:
        """Read every configured part.

        Raises:
            SourceError: when a part's target cannot be read.
        """
        return [reading for part in self.parts for reading in part.read()]

    def close(self) -> None:
        """Close every part's connection."""
        for part in self.parts:
            part.close()


def _label(value: str | bytes) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return text[:MAX_LABEL_VALUE_LENGTH]


class QueueJobPart:
    """OCA queue_job backlog, read from the Odoo database on the database clock."""

    def __init__(self, db: OdooDatabase, stuck_after_seconds: float) -> None:
        self.db = db
        self.stuck_after_seconds = stuck_after_seconds
        # (start, end] of the last failure window, naive UTC on the database clock.
        self.window: tuple[datetime, datetime] | None = None
        self._failed: set[int] | None = None
        self._channels: set[str] = set()

    def read(self) -> list[Reading]:
        """Read depth, ages, stuck and failed jobs in one read-only transaction."""
        with self.db.transaction() as cursor:
            db_now = self.db.utc_now(cursor)
            depth = self._depth(cursor)
            oldest = self._oldest_pending(cursor, db_now)
            stuck = self._stuck(cursor, db_now)
            failed = self._failed_ids(cursor)
        self._channels |= {channel for channel, _ in depth} | oldest.keys() | stuck.keys()
        self._channels |= set(failed.values())

        readings = self._gauges(depth, oldest, stuck, Tally(failed.values()))
        readings += self._failures(failed, db_now)
        return readings

    def close(self) -> None:
        """Close the database connection."""
        self.db.close()

    def _depth(self, cursor: psycopg.Cursor) -> dict[tuple[str, str], int]:
        cursor.execute(
            "SELECT coalesce(channel, 'root'), state, count(*) FROM queue_job"
            " WHERE state = ANY(%s) GROUP BY 1, 2",
            (list(BACKLOG_STATES),),
        )
        return {(channel, state): n for channel, state, n in cursor.fetchall()}

    def _oldest_pending(self, cursor: psycopg.Cursor, db_now: datetime) -> dict[str, float]:
        # A job delayed with eta is not late before its eta: it waits from then
        # (greatest() skips a NULL eta).
        cursor.execute(
            """
            SELECT coalesce(channel, 'root'),
                   extract(epoch FROM %s - min(greatest(date_created, eta)))
            FROM queue_job
            WHERE state = 'pending' AND (eta IS NULL OR eta <= %s)
            GROUP BY 1
            """,
            (db_now, db_now),
        )
        return {channel: max(0.0, float(age or 0)) for channel, age in cursor.fetchall()}

    def _stuck(self, cursor: psycopg.Cursor, db_now: datetime) -> dict[str, int]:
        cursor.execute(
            "SELECT coalesce(channel, 'root'), count(*) FROM queue_job"
            " WHERE state = 'started' AND date_started < %s - make_interval(secs => %s)"
            " GROUP BY 1",
            (db_now, self.stuck_after_seconds),
        )
        return dict(cursor.fetchall())

    def _failed_ids(self, cursor: psycopg.Cursor) -> dict[int, str]:
        cursor.execute(
            "SELECT id, coalesce(channel, 'root') FROM queue_job WHERE state = 'failed'"
        )
        return dict(cursor.fetchall())

    def _gauges(
        self,
        depth: dict[tuple[str, str], int],
        oldest: dict[str, float],
        stuck: dict[str, int],
        failed: Tally[str],
    ) -> list[Reading]:
        readings = []
        for channel in sorted(self._channels):
            labels = {"channel": _label(channel)}
            for state in BACKLOG_STATES:
                count = float(depth.get((channel, state), 0))
                readings.append(Reading("queue.depth", count, {**labels, "state": state}))
            readings += [
                Reading("queue.oldest_pending_age_seconds", oldest.get(channel, 0.0), labels),
                Reading("queue.stuck_jobs", float(stuck.get(channel, 0)), labels),
                Reading("queue.failed_jobs", float(failed[channel]), labels),
            ]
        return readings

    def _failures(self, failed: dict[int, str], db_now: datetime) -> list[Reading]:
        previous, start = self._failed, self.window[1] if self.window else None
        self._failed = set(failed)
        self.window = (start or db_now, db_now)
        if previous is None or start is None or db_now <= start:
            return []

        minutes = (db_now - start).total_seconds() / 60.0
        new = Tally(channel for job, channel in failed.items() if job not in previous)
        return [
            Reading(
                "queue.failed_per_minute", new[channel] / minutes, {"channel": _label(channel)}
            )
            for channel in sorted(self._channels)
        ]


class RedisListPart:
    """Lengths of the Redis lists whose keys match the configured patterns."""

    def __init__(
        self, who: str, url: str, keys: Sequence[str], max_keys: int, timeout: float
    ) -> None:
        if not keys:
            raise ConfigError(f"{who}: redis_url is set but redis_keys is empty; list patterns")
        self.who, self.keys, self.max_keys = who, tuple(keys), max_keys
        self.client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self._seen: set[bytes] = set()
        self._capped = False

    def read(self) -> list[Reading]:
        """SCAN for matching lists, then LLEN each one in a single pipeline.

        Raises:
            SourceError: when Redis cannot be read.
        """
        try:
            keys = self._matching_keys()
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.llen(key)
            lengths = pipe.execute()
        except redis.RedisError as failure:
            code = redis_error_code(failure)
            raise SourceError(
                code, f"{self.who}: reading Redis lists failed: {failure}"
            ) from failure
        return [
            Reading("queue.redis_list_length", float(n), {"key": _label(key)})
            for key, n in zip(keys, lengths, strict=True)
        ]

    def close(self) -> None:
        """Close the Redis connection pool."""
        self.client.close()

    def _matching_keys(self) -> list[bytes]:
        found = set(self._seen)
        for pattern in self.keys:
            if REDIS_GLOB.isdisjoint(pattern):
                found.add(pattern.encode())
                continue
            found.update(self.client.scan_iter(match=pattern, count=500, _type="list"))

        keys = sorted(found)
        if len(keys) > self.max_keys and not self._capped:
            log.warning(
                "%s: %s Redis lists match, reporting the first %s; narrow redis_keys",
                self.who,
                len(keys),
                self.max_keys,
            )
            self._capped = True
        keys = keys[: self.max_keys]
        self._seen = set(keys)
        return keys


class KafkaLagPart:
    """Consumer-group lag: log-end offset minus committed offset, per group and topic."""

    def __init__(
        self, who: str, bootstrap: str, groups: Sequence[str], own_groups: bool, timeout: float
    ) -> None:
        if not groups and not own_groups:
            raise ConfigError(
                f"{who}: kafka_bootstrap is set but no group to watch;"
                " set kafka_groups or kafka_own_groups"
            )
        self.who, self.bootstrap = who, bootstrap
        self.groups, self.own_groups = tuple(groups), own_groups
        self.timeout_ms = int(timeout * 1000)
        self._admin: KafkaAdminClient | None = None

    def read(self) -> list[Reading]:
        """Fetch committed and log-end offsets and sum the lag per group and topic.

        Raises:
            SourceError: when the brokers cannot be read.
        """
        try:
            committed = self._committed(self._client())
            ends = self._log_ends(committed)
        except kafka_errors.KafkaError as failure:
            self.close()
            raise SourceError(
                _kafka_error_code(failure), f"{self.who}: {self.bootstrap}: {failure}"
            ) from failure
        return _lag_readings(committed, ends)

    def close(self) -> None:
        """Close the admin client; the next read opens a new one."""
        if self._admin is not None:
            self._admin.close()
        self._admin = None

    def _client(self) -> KafkaAdminClient:
        if self._admin is None:
            self._require_a_broker()
            self._admin = KafkaAdminClient(
                bootstrap_servers=self.bootstrap.split(","),
                client_id="tillwatch-lag",
                bootstrap_timeout_ms=self.timeout_ms,
                request_timeout_ms=self.timeout_ms,
            )
        return self._admin

    def _require_a_broker(self) -> None:
        # kafka-python 3.0.12 reports an unreachable bootstrap list as a timeout and leaks
        # the sockets of its failed attempts; one TCP connect tells refused from timeout.
        failures = []
        for address in self.bootstrap.split(","):
            host, _, port = address.strip().rpartition(":")
            try:
                socket.create_connection(
                    (host, int(port)), timeout=self.timeout_ms / 1000
                ).close()
                return
            except OSError as failure:
                failures.append(failure)
        code = "timeout" if all(isinstance(f, TimeoutError) for f in failures) else "refused"
        raise SourceError(
            code,
            f"{self.who}: no broker of {self.bootstrap} accepts connections: {failures[-1]}",
        )

    def _committed(self, admin: KafkaAdminClient) -> dict[str, dict[TopicPartition, int]]:
        committed = {group: _offsets(admin, group) for group in self.groups}
        if self.own_groups:
            others = {g["group_id"] for g in admin.list_groups()} - set(self.groups)
            for group in sorted(others):
                ours = {tp: n for tp, n in _offsets(admin, group).items() if tp.topic in TOPICS}
                if ours:
                    committed[group] = ours
        return committed

    def _log_ends(self, committed: dict[str, dict[TopicPartition, int]]) -> dict:
        partitions = {tp for offsets in committed.values() for tp in offsets}
        if not partitions:
            return {}
        specs = {tp: OffsetSpec.LATEST for tp in partitions}
        found = self._client().list_partition_offsets(specs)
        return {tp: answer.offset for tp, answer in found.items()}


def _offsets(admin: KafkaAdminClient, group: str) -> dict[TopicPartition, int]:
    # One group per request: brokers older than OffsetFetch v8 take one group at a time.
    answer = admin.list_group_offsets({group: None}).get(group, {})
    return {tp: meta.offset for tp, meta in answer.items() if meta.offset >= 0}


def _lag_readings(
    committed: dict[str, dict[TopicPartition, int]], ends: dict[TopicPartition, int]
) -> list[Reading]:
    lag: Tally[tuple[str, str]] = Tally()
    for group, offsets in committed.items():
        for tp, offset in offsets.items():
            lag[(group, tp.topic)] += max(0, ends.get(tp, offset) - offset)
    return [
        Reading("queue.consumer_lag_records", float(n), {"group": group, "topic": topic})
        for (group, topic), n in sorted(lag.items())
    ]


def _kafka_error_code(failure: kafka_errors.KafkaError) -> str:
    if isinstance(failure, kafka_errors.AuthorizationError):
        return "permission_denied"
    if isinstance(failure, kafka_errors.SaslAuthenticationFailedError):
        return "auth_failed"
    # kafka-python reports an unreachable bootstrap list as a timeout "Unable to bootstrap".
    if "bootstrap" in str(failure).lower() or isinstance(
        failure, kafka_errors.KafkaConnectionError
    ):
        return "refused"
    if isinstance(failure, kafka_errors.KafkaTimeoutError | kafka_errors.RequestTimedOutError):
        return "timeout"
    return "bad_response"
