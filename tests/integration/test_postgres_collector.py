"""The postgres collector against a real PostgreSQL 15 primary and streaming replica."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from collectors.base import TargetState, scrape
from collectors.postgres import PostgresCollector, sender_lag
from tests.readings import value, values
from tests.services._support import wait_until
from tests.services.postgres import PASSWORD, PASSWORD_ROLE, PgCluster, PgNode, database_name
from tillwatch.errors import ConfigError
from tillwatch.sample import SampleBatch

pytestmark = pytest.mark.integration

CHECKED_SIGNALS = {
    "postgres.up",
    "postgres.scrape_duration_seconds",
    "postgres.in_recovery",
    "postgres.replicas_connected",
    "postgres.replica_connected",
    "postgres.replica_lag_bytes",
    "postgres.replica_lag_seconds",
    "postgres.replication_lag_seconds",
    "postgres.apply_backlog_bytes",
    "postgres.wal_receiver_streaming",
    "postgres.connections",
    "postgres.connections_used_ratio",
    "postgres.commits_per_second",
    "postgres.deadlocks_per_second",
    "postgres.database_size_bytes",
    "postgres.oldest_transaction_age_seconds",
}


class Target:
    """A collector, its target state and a scrape shortcut."""

    def __init__(self, collector: PostgresCollector) -> None:
        self.collector = collector
        self.state = TargetState()

    def scrape(self, now: float | None = None) -> SampleBatch:
        return scrape(self.collector, self.state, now)


@pytest.fixture
def targets() -> Iterator[list[Target]]:
    made: list[Target] = []
    yield made
    for target in made:
        target.collector.close()


@pytest.fixture
def watch(targets: list[Target]):
    """Make a collector for a node; closed after the test."""

    def make(node: PgNode, **options) -> Target:
        options.setdefault("dsn", node.dsn())
        target = Target(PostgresCollector(labels={"instance": node.name}, **options))
        targets.append(target)
        return target

    return make


def test_primary_reports_its_replica_and_node_signals(pg_cluster: PgCluster, watch) -> None:
    batch = watch(pg_cluster.primary).scrape()

    assert value(batch, "postgres.up") == 1.0
    assert 0.0 <= value(batch, "postgres.scrape_duration_seconds") < 5.0
    assert value(batch, "postgres.in_recovery") == 0.0
    assert value(batch, "postgres.replicas_connected") == 1.0
    assert value(batch, "postgres.replica_connected", replica="replica") == 1.0
    assert value(batch, "postgres.replica_lag_bytes", replica="replica") >= 0.0
    connections = value(batch, "postgres.connections")
    assert connections >= 1.0
    assert value(batch, "postgres.connections_used_ratio") == pytest.approx(connections / 60)
    assert value(batch, "postgres.database_size_bytes", database="postgres") > 1_000_000
    assert values(batch, "postgres.replication_lag_seconds") == []


def test_replica_reports_recovery_and_streaming(pg_cluster: PgCluster, watch) -> None:
    batch = watch(pg_cluster.replica).scrape()

    assert value(batch, "postgres.in_recovery") == 1.0
    assert value(batch, "postgres.wal_receiver_streaming") == 1.0
    assert value(batch, "postgres.apply_backlog_bytes") >= 0.0
    assert values(batch, "postgres.replicas_connected") == []


def test_lag_rises_while_replay_is_paused_and_returns_to_zero(
    pg_cluster: PgCluster, pg_database: str, watch
) -> None:
    primary, replica = watch(pg_cluster.primary), watch(pg_cluster.replica)
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("CREATE TABLE ticket (id serial PRIMARY KEY, note text)")
        # A replayed commit gives the replica a replay timestamp to measure lag from.
        created = _wal_lsn(conn)
        wait_until(lambda: _replayed(pg_cluster.replica, created), "CREATE TABLE replayed")

        with pg_cluster.replay_paused():
            before = _wal_lsn(conn)
            conn.execute(
                "INSERT INTO ticket (note) SELECT repeat('x', 99) FROM generate_series(1, 3000)"
            )
            written = _wal_lsn(conn) - before

            lag = value(primary.scrape(), "postgres.replica_lag_bytes", replica="replica")
            assert lag >= written > 100_000
            wait_until(lambda: _backlog(replica.scrape()) > 0, "WAL received but not replayed")
            assert value(replica.scrape(), "postgres.replication_lag_seconds") > 0.0

        batches: list[SampleBatch] = []
        wait_until(lambda: _lag_bytes(_keep(batches, primary.scrape())) == 0.0, "lag 0 bytes")
        wait_until(lambda: _backlog(replica.scrape()) == 0.0, "replica apply backlog drained")

    # Caught up: replay_lag is either the last measurement, short here, or NULL read as 0.
    assert 0.0 <= value(batches[-1], "postgres.replica_lag_seconds", replica="replica") < 30.0


def test_unmeasured_replay_lag_is_zero_only_when_no_bytes_are_outstanding() -> None:
    assert [r.value for r in sender_lag("r1", 0.0, None)] == [0.0, 0.0]
    behind = list(sender_lag("r1", 8192.0, None))
    assert [(r.signal, r.value) for r in behind] == [("postgres.replica_lag_bytes", 8192.0)]
    assert list(sender_lag("r1", None, None)) == []


def test_stopped_replica_is_gone_not_lag_free(pg_cluster: PgCluster, watch) -> None:
    primary = watch(pg_cluster.primary, expected_replicas=("replica",))
    replica = watch(pg_cluster.replica)
    assert value(replica.scrape(), "postgres.up") == 1.0

    with pg_cluster.replica_stopped():
        wait_until(lambda: not pg_cluster.primary.sql("TABLE pg_stat_replication"), "no sender")
        batch = primary.scrape()
        assert value(batch, "postgres.replicas_connected") == 0.0
        assert value(batch, "postgres.replica_connected", replica="replica") == 0.0
        assert values(batch, "postgres.replica_lag_bytes") == []
        assert values(batch, "postgres.replica_lag_seconds") == []

        assert value(replica.scrape(), "postgres.up") == 0.0
        assert replica.state.error_code == "refused"

    assert value(replica.scrape(), "postgres.up") == 1.0


def test_idle_caught_up_replica_reads_zero_lag_seconds(pg_cluster: PgCluster, watch) -> None:
    pg_cluster.primary.sql("CREATE TABLE IF NOT EXISTS heartbeat (at timestamptz)")
    pg_cluster.primary.sql("INSERT INTO heartbeat VALUES (now())")
    replica = watch(pg_cluster.replica)

    wait_until(lambda: _replayed(pg_cluster.replica, _primary_lsn(pg_cluster)), "caught up")
    batches: list[SampleBatch] = []
    # Background WAL (running-xacts records) can be in flight for a moment: take a scrape
    # that saw nothing left to replay.
    wait_until(lambda: _backlog(_keep(batches, replica.scrape())) == 0.0, "no apply backlog")
    batch = batches[-1]
    naive = pg_cluster.replica.sql(
        "SELECT EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())::float8"
    )[0][0]

    # Without the correction this replica would lag by the time since the last write.
    assert naive > 0.0
    assert value(batch, "postgres.replication_lag_seconds") == 0.0


def test_commits_per_second_counts_known_commits(
    pg_cluster: PgCluster, pg_database: str, watch
) -> None:
    target = watch(pg_cluster.primary)
    database = database_name(pg_database)
    inserts, interval = 25, 10.0
    start = time.time()
    target.scrape(start)

    # No server-side PREPARE: its round trip would count as one more transaction.
    with psycopg.connect(pg_database, autocommit=True, prepare_threshold=None) as conn:
        conn.execute("CREATE TABLE sale (id int)")
        for number in range(inserts):
            conn.execute("INSERT INTO sale VALUES (%s)", (number,))

    # A backend flushes all its statistics when it exits; until then they may lag by a
    # second. Its commits: the connection's start-up, CREATE TABLE and each INSERT.
    commits = 1 + 1 + inserts
    wait_until(lambda: _commits(pg_cluster.primary, database) == commits, "commits flushed")
    batch = target.scrape(start + interval)

    rate = value(batch, "postgres.commits_per_second", database=database)
    assert rate == pytest.approx(commits / interval)
    assert value(batch, "postgres.deadlocks_per_second", database=database) == 0.0


def test_oldest_transaction_age_follows_an_open_transaction(
    pg_cluster: PgCluster, pg_database: str, watch
) -> None:
    target = watch(pg_cluster.primary)
    with psycopg.connect(pg_database) as conn:
        began = _one(conn, "SELECT now()")
        server_now = pg_cluster.primary.sql("SELECT now()")[0][0]
        age = value(target.scrape(), "postgres.oldest_transaction_age_seconds")
        assert age >= (server_now - began).total_seconds() > 0.0
        conn.rollback()

    assert value(target.scrape(), "postgres.oldest_transaction_age_seconds") < age


def test_monitoring_role_with_password(pg_cluster: PgCluster, watch, caplog) -> None:
    dsn = pg_cluster.primary.dsn(user=PASSWORD_ROLE)
    good = watch(pg_cluster.primary, dsn=dsn, password=PASSWORD)
    bad = watch(pg_cluster.primary, dsn=dsn, password="wrong-secret")

    batch = good.scrape()
    assert value(batch, "postgres.up") == 1.0
    assert value(batch, "postgres.replica_lag_bytes", replica="replica") >= 0.0

    with caplog.at_level(logging.DEBUG):
        assert value(bad.scrape(), "postgres.up") == 0.0
    assert bad.state.error_code == "auth_failed"
    assert PASSWORD_ROLE in caplog.text
    assert "wrong-secret" not in caplog.text


def test_role_without_pg_monitor_is_permission_denied(pg_cluster: PgCluster, watch) -> None:
    pg_cluster.primary.sql("DROP ROLE IF EXISTS tw_nomonitor")
    pg_cluster.primary.sql("CREATE ROLE tw_nomonitor LOGIN")
    target = watch(pg_cluster.primary, dsn=pg_cluster.primary.dsn(user="tw_nomonitor"))

    assert value(target.scrape(), "postgres.up") == 0.0
    assert target.state.error_code == "permission_denied"


def test_server_that_never_answers_is_timeout(watch, pg_cluster: PgCluster) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        dsn = f"host=127.0.0.1 port={port} dbname=postgres user=postgres"
        target = watch(pg_cluster.primary, dsn=dsn, connect_timeout=1.0)
        assert value(target.scrape(), "postgres.up") == 0.0
    assert target.state.error_code == "timeout"


def test_dsn_carrying_a_password_is_refused_at_configuration() -> None:
    with pytest.raises(ConfigError, match="carries a password") as caught:
        PostgresCollector(labels={}, dsn="host=db user=ro password=hunter2")
    assert "hunter2" not in str(caught.value)


def _wal_lsn(conn: psycopg.Connection) -> float:
    return _one(conn, "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8")


def _one(conn: psycopg.Connection, query: str) -> Any:
    row = conn.execute(query).fetchone()
    assert row is not None, query
    return row[0]


def _commits(node: PgNode, database: str) -> int:
    query = "SELECT xact_commit FROM pg_stat_database WHERE datname = %s"
    return node.sql(query, (database,))[0][0]


def _primary_lsn(cluster: PgCluster) -> float:
    query = "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8"
    return cluster.primary.sql(query)[0][0]


def _keep(batches: list[SampleBatch], batch: SampleBatch) -> SampleBatch:
    batches.append(batch)
    return batch


def _replayed(replica: PgNode, lsn: float) -> bool:
    query = "SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::float8"
    return replica.sql(query)[0][0] >= lsn


def _lag_bytes(batch: SampleBatch) -> float:
    return value(batch, "postgres.replica_lag_bytes", replica="replica")


def _backlog(batch: SampleBatch) -> float:
    return value(batch, "postgres.apply_backlog_bytes")
