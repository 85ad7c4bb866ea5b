"""Redis: cache effectiveness, memory pressure and clients, from one ``INFO`` per scrape.

Counters from ``INFO stats`` become per-second rates and an interval hit ratio with
:class:`~collectors.base.Counters`, which also absorbs ``CONFIG RESETSTAT`` and restarts.
Which INFO field feeds which signal is the table :data:`RATES` and :data:`GAUGES`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

import redis
import redis.exceptions as rx
from redis.backoff import NoBackoff
from redis.retry import Retry

from collectors.base import Collector, Counters, Reading, SignalSpec
from tillwatch.errors import SourceError

log = logging.getLogger(__name__)

# INFO counter -> signal carrying its per-second rate.
RATES = {
    "evicted_keys": "redis.evictions_per_second",
    "expired_keys": "redis.expired_keys_per_second",
    "total_commands_processed": "redis.commands_per_second",
}

# INFO gauge -> signal carrying it as is.
GAUGES = {
    "used_memory": "redis.memory_used_bytes",
    "connected_clients": "redis.connected_clients",
    "blocked_clients": "redis.blocked_clients",
}


class RedisCollector(Collector):
    """Reads one Redis server.

    Args:
        labels: the target's labels (``service``, ``instance`` ...).
        host: server host name or address.
        port: server port.
        password: the password, read from the environment or a file by the config layer.
        username: the ACL user, when not ``default``.
        timeout: seconds allowed for connecting and for each reply.
    """

    source = "redis"
    signals = (
        SignalSpec("redis.up", "1", "1 if the last scrape succeeded", "redis_up"),
        SignalSpec("redis.hit_ratio", "1", "keyspace hits / lookups over the interval"),
        SignalSpec("redis.evictions_per_second", "1/s", "keys evicted by maxmemory per second"),
        SignalSpec("redis.expired_keys_per_second", "1/s", "keys expired by TTL per second"),
        SignalSpec("redis.commands_per_second", "1/s", "commands processed per second"),
        SignalSpec(
            "redis.memory_used_bytes", "By", "bytes Redis allocated", "redis_memory_used_bytes"
        ),
        SignalSpec("redis.used_memory_ratio", "1", "used_memory / maxmemory, if maxmemory set"),
        SignalSpec(
            "redis.connected_clients", "1", "client connections", "redis_connected_clients"
        ),
        SignalSpec(
            "redis.blocked_clients", "1", "clients in a blocking call", "redis_blocked_clients"
        ),
        SignalSpec("redis.db_keys", "1", "keys per database (label db)", "redis_db_keys"),
    )

    def __init__(
        self,
        *,
        labels: Mapping[str, str],
        host: str,
        port: int = 6379,
        password: str | None = None,
        username: str | None = None,
        timeout: float = 2.0,
    ) -> None:
        super().__init__(labels=labels)
        self.address = f"{host}:{port}"
        self._client = redis.Redis(
            host=host,
            port=port,
            username=username,
            password=password,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # One attempt per scrape: a retry would only stretch a failing scrape.
            retry=Retry(NoBackoff(), 0),
            client_name="tillwatch",
        )
        self._counters = Counters()

    def read(self, now: float) -> Iterator[Reading]:
        """Run ``INFO`` once and turn it into readings.

        Raises:
            SourceError: when the server cannot be reached or answers unexpectedly.
        """
        info = self._info()
        try:
            yield from self._hit_ratio(info, now)
            yield from self._rates(info, now)
            yield from self._gauges(info)
            yield from self._keyspace(info)
        except (KeyError, TypeError, ValueError) as missing:
            raise SourceError(
                "bad_response",
                f"redis collector: INFO from {self.address} lacks or garbles {missing}; "
                "expected Redis >= 4 INFO fields",
            ) from missing

    def close(self) -> None:
        self._client.close()

    def _info(self) -> dict[str, Any]:
        try:
            return self._client.info()
        except rx.RedisError as failure:
            raise SourceError(error_code(failure), self._explain(failure)) from failure

    def _explain(self, failure: rx.RedisError) -> str:
        fixes = {
            "auth_failed": "check the password given to the collector (env or file)",
            "permission_denied": "grant the collector's ACL user +info",
            "refused": "check that redis-server runs and listens there",
            "timeout": "check the server's load and the network, or raise the timeout",
            "bad_response": "check that this port is a Redis server",
        }
        code = error_code(failure)
        return f"redis collector: INFO on {self.address} failed: {failure}; {fixes[code]}"

    def _hit_ratio(self, info: Mapping[str, Any], now: float) -> Iterator[Reading]:
        hits = self._counters.delta("keyspace_hits", float(info["keyspace_hits"]), now)
        misses = self._counters.delta("keyspace_misses", float(info["keyspace_misses"]), now)
        if hits is None or misses is None:
            return

        # An interval without lookups has no ratio; 0 would read as "every lookup missed".
        lookups = hits[0] + misses[0]
        if lookups > 0:
            yield Reading("redis.hit_ratio", hits[0] / lookups)

    def _rates(self, info: Mapping[str, Any], now: float) -> Iterator[Reading]:
        for field, signal in RATES.items():
            rate = self._counters.rate(field, float(info[field]), now)
            if rate is not None:
                yield Reading(signal, rate)

    def _gauges(self, info: Mapping[str, Any]) -> Iterator[Reading]:
        for field, signal in GAUGES.items():
            yield Reading(signal, float(info[field]))

        # maxmemory 0 means "no limit": there is no ratio to report.
        maxmemory = float(info.get("maxmemory", 0))
        if maxmemory > 0:
            yield Reading("redis.used_memory_ratio", float(info["used_memory"]) / maxmemory)

    def _keyspace(self, info: Mapping[str, Any]) -> Iterator[Reading]:
        for name, stats in info.items():
            if name.startswith("db") and name[2:].isdigit() and isinstance(stats, dict):
                yield Reading("redis.db_keys", float(stats["keys"]), {"db": name})


def error_code(failure: rx.RedisError) -> str:
    """Map a redis-py error to one of the stable scrape error codes."""
    # Order matters: authentication errors are connection errors in redis-py.
    if isinstance(failure, rx.AuthenticationError | rx.AuthenticationWrongNumberOfArgsError):
        return "auth_failed"
    if isinstance(failure, rx.NoPermissionError | rx.AuthorizationError):
        return "permission_denied"
    if isinstance(failure, rx.TimeoutError):
        return "timeout"
    if isinstance(failure, rx.ConnectionError) and not isinstance(failure, rx.BusyLoadingError):
        return "refused"
    return "bad_response"
