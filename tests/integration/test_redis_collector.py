"""The redis collector against a real redis-server, under known patterns of traffic.

Scrape times are passed explicitly (``scrape(..., now=t)``), so rates are exact: the
traffic between two scrapes is known and the interval is chosen by the test.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import redis
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from collectors.base import TargetState, scrape
from collectors.exporter import LatestValues
from collectors.redis import RedisCollector
from collectors.scheduler import Scheduler
from tests.services._support import wait_until
from tests.services.redis import RedisServer, start_redis
from tillwatch.sample import SampleBatch

pytestmark = pytest.mark.integration

# Every signal these tests assert a value of; the contract suite checks the declared set.
CHECKED_SIGNALS = {
    "redis.up",
    "redis.scrape_duration_seconds",
    "redis.hit_ratio",
    "redis.evictions_per_second",
    "redis.expired_keys_per_second",
    "redis.commands_per_second",
    "redis.memory_used_bytes",
    "redis.used_memory_ratio",
    "redis.connected_clients",
    "redis.blocked_clients",
    "redis.db_keys",
}

PASSWORD = "correct-horse-7"


def values(batch: SampleBatch, signal: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The batch's values of ``signal`` by their labels other than the target's."""
    found = {}
    for sample in batch.samples():
        if sample.signal == signal:
            own = {k: v for k, v in sample.labels.items() if k not in ("service", "instance")}
            found[tuple(sorted(own.items()))] = sample.value
    return found


def value(batch: SampleBatch, signal: str) -> float | None:
    """The one value of an unlabelled ``signal`` in the batch, or None when absent."""
    found = values(batch, signal)
    assert len(found) <= 1, found
    return found.get((), None)


def collector_for(server: RedisServer, **options: object) -> RedisCollector:
    labels = {"service": "redis", "instance": f"{server.host}:{server.port}"}
    return RedisCollector(labels=labels, host=server.host, port=server.port, **options)


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    connection = redis_server.client()
    yield connection
    connection.close()


@pytest.fixture
def collector(redis_server: RedisServer) -> Iterator[RedisCollector]:
    target = collector_for(redis_server)
    yield target
    target.close()


def lookups(client: redis.Redis, hits: int, misses: int) -> None:
    pipe = client.pipeline(transaction=False)
    for _ in range(hits):
        pipe.get("basket:1")
    for n in range(misses):
        pipe.get(f"absent:{n}")
    pipe.execute()


def test_hit_ratio_and_command_rate_over_one_interval(client, collector):
    client.set("basket:1", "3 items")
    state, t0 = TargetState(), time.time()
    first = scrape(collector, state, now=t0)
    assert value(first, "redis.up") == 1.0
    assert value(first, "redis.hit_ratio") is None, "a ratio needs two scrapes"

    lookups(client, hits=300, misses=100)
    second = scrape(collector, state, now=t0 + 10)
    assert value(second, "redis.hit_ratio") == 0.75
    # 400 GETs, plus the collector's own INFO.
    assert 40.0 <= value(second, "redis.commands_per_second") <= 40.2
    assert value(second, "redis.scrape_duration_seconds") > 0

    third = scrape(collector, state, now=t0 + 20)
    assert value(third, "redis.hit_ratio") is None, "no lookups, no ratio"


def test_gauges_follow_the_server(client, collector, redis_server):
    client.mset({"sku:1": "a", "sku:2": "b", "sku:3": "c"})
    with redis.Redis(host=redis_server.host, port=redis_server.port, db=1) as sessions:
        sessions.set("session:9", "x")
    blocker = redis_server.client()
    waiting = threading.Thread(target=blocker.blpop, args=(["jobs"],), kwargs={"timeout": 10})
    waiting.start()
    wait_until(lambda: client.info("clients")["blocked_clients"] == 1, "a blocked BLPOP")

    batch = scrape(collector, TargetState())
    assert values(batch, "redis.db_keys") == {(("db", "db0"),): 3.0, (("db", "db1"),): 1.0}
    assert value(batch, "redis.blocked_clients") == 1.0
    assert value(batch, "redis.connected_clients") == 3.0  # test, blocker, collector
    used = client.info("memory")["used_memory"]
    assert value(batch, "redis.memory_used_bytes") == pytest.approx(used, rel=0.2)
    assert value(batch, "redis.used_memory_ratio") is None, "maxmemory 0 is unlimited"

    client.lpush("jobs", "release")
    waiting.join(timeout=10)
    blocker.close()


def test_evictions_and_memory_ratio_under_a_small_maxmemory(client, collector):
    client.config_set("maxmemory", str(2 * 1024 * 1024))
    client.config_set("maxmemory-policy", "allkeys-random")
    state, t0 = TargetState(), time.time()
    scrape(collector, state, now=t0)

    pipe = client.pipeline(transaction=False)
    for n in range(3000):
        pipe.set(f"cart:{n}", "x" * 1024)
    pipe.execute()
    batch = scrape(collector, state, now=t0 + 5)

    evicted = client.info("stats")["evicted_keys"]
    assert evicted > 0
    assert value(batch, "redis.evictions_per_second") == evicted / 5
    assert 0.5 < value(batch, "redis.used_memory_ratio") <= 1.1


def test_expired_keys_rate(client, collector):
    state, t0 = TargetState(), time.time()
    scrape(collector, state, now=t0)

    for n in range(50):
        client.set(f"otp:{n}", "1", px=1)
    # Reading an expired key expires it now rather than at the next active cycle.
    wait_until(lambda: all(client.get(f"otp:{n}") is None for n in range(50)), "keys to expire")
    batch = scrape(collector, state, now=t0 + 5)
    assert value(batch, "redis.expired_keys_per_second") == 50 / 5


def test_config_resetstat_is_a_counter_reset(client, collector):
    client.set("basket:1", "3 items")
    state, t0 = TargetState(), time.time()
    scrape(collector, state, now=t0)
    lookups(client, hits=300, misses=100)
    assert value(scrape(collector, state, now=t0 + 10), "redis.hit_ratio") == 0.75

    client.config_resetstat()
    lookups(client, hits=30, misses=90)
    after = scrape(collector, state, now=t0 + 20)
    assert value(after, "redis.hit_ratio") == 0.25
    assert value(after, "redis.commands_per_second") >= 0


def test_refused_when_stopped(redis_server, collector):
    redis_server.stop()
    state = TargetState()
    batch = scrape(collector, state)
    assert value(batch, "redis.up") == 0.0
    assert state.error_code == "refused"


def test_wrong_or_missing_password_is_auth_failed(client, redis_server, caplog):
    client.config_set("requirepass", PASSWORD)
    caplog.set_level(logging.DEBUG)
    for password in ("wrong-password-1", None):
        target, state = collector_for(redis_server, password=password), TargetState()
        assert value(scrape(target, state), "redis.up") == 0.0
        assert state.error_code == "auth_failed"
        target.close()

    target = collector_for(redis_server, password=PASSWORD)
    assert value(scrape(target, TargetState()), "redis.up") == 1.0
    target.close()
    assert "wrong-password-1" not in caplog.text
    assert PASSWORD not in caplog.text


def test_acl_without_info_is_permission_denied(client, redis_server):
    client.acl_setuser("watcher", enabled=True, passwords=[f"+{PASSWORD}"], commands=["+ping"])
    target = collector_for(redis_server, username="watcher", password=PASSWORD)
    state = TargetState()
    assert value(scrape(target, state), "redis.up") == 0.0
    assert state.error_code == "permission_denied"
    target.close()


def test_silent_listener_is_timeout_and_garbage_is_bad_response():
    # A socket that accepts (via the backlog) and never answers: the reply times out.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        host, port = silent.getsockname()
        labels = {"instance": "silent"}
        target = RedisCollector(labels=labels, host=host, port=port, timeout=0.3)
        state = TargetState()
        assert value(scrape(target, state), "redis.up") == 0.0
        assert state.error_code == "timeout"
        target.close()

    with socket.create_server(("127.0.0.1", 0)) as http:
        threading.Thread(target=_answer_http, args=(http,), daemon=True).start()
        host, port = http.getsockname()
        target = RedisCollector(labels={"instance": "http"}, host=host, port=port, timeout=2)
        state = TargetState()
        assert value(scrape(target, state), "redis.up") == 0.0
        assert state.error_code == "bad_response"
        target.close()


def _answer_http(server: socket.socket) -> None:
    # Every connection gets an HTTP answer, never RESP.
    while True:
        try:
            connection, _ = server.accept()
        except OSError:
            return
        with connection:
            connection.recv(65536)
            connection.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")


def test_scheduler_keeps_scraping_when_one_target_is_down(redis_server, tmp_path):
    other = start_redis(tmp_path)
    down, alive = collector_for(other), collector_for(redis_server)
    other.stop()
    refused_before = _refused()
    batches: list[SampleBatch] = []
    scheduler = Scheduler([(down, 0.1), (alive, 0.1)], on_batch=batches.append, timeout=2)

    scheduler.start()
    try:
        wait_until(
            lambda: _ups(batches, alive).count(1.0) >= 3 and len(_ups(batches, down)) >= 2,
            "scrapes of both targets",
        )
    finally:
        scheduler.stop()

    assert set(_ups(batches, down)) == {0.0}
    assert set(_ups(batches, alive)) == {1.0}
    assert _refused() >= refused_before + 2


def _refused() -> float:
    labels = {"source": "redis", "code": "refused"}
    return REGISTRY.get_sample_value("tillwatch_scrape_errors_total", labels) or 0.0


def _ups(batches: list[SampleBatch], target: RedisCollector) -> list[float]:
    return [s.value for b in list(batches) for s in b.samples()
            if s.signal == "redis.up" and s.labels["instance"] == target.labels["instance"]]


def test_exporter_serves_redis_exporter_names(client, collector):
    client.set("basket:1", "3 items")
    clock = [time.time()]
    exporter = LatestValues(max_age=60, clock=lambda: clock[0])
    state, t0 = TargetState(), clock[0]
    exporter.update(scrape(collector, state, now=t0))
    lookups(client, hits=3, misses=1)
    exporter.update(scrape(collector, state, now=t0 + 10))

    registry = CollectorRegistry()
    registry.register(exporter)
    text = generate_latest(registry).decode()
    served = {s.name: s for f in text_string_to_metric_families(text) for s in f.samples}
    assert served["redis_up"].value == 1.0
    assert served["tillwatch_redis_hit_ratio"].value == 0.75
    assert served["redis_db_keys"].labels == {**collector.labels, "db": "db0"}
    assert served["redis_connected_clients"].value >= 2

    clock[0] = t0 + 10 + 61  # the target went away: its series are no longer served
    assert "redis_up" not in generate_latest(registry).decode()
