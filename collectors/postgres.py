"""PostgreSQL: replication lag on both ends, connections, commits, long transactions, sizes.

One collector reads one server. It asks the server whether it is in recovery on every
scrape (a failover flips the answer) and adds the primary-side view (one row per WAL
sender in ``pg_stat_replication``) or the replica-side view (replay position, WAL
receiver) to what every node reports. The queries follow REFERENCE.md section 1; the
replica lag carries postgres_exporter's idle-primary correction.

A replica that disconnects has no ``pg_stat_replication`` row, so its lag series stop;
``postgres.replicas_connected`` drops, and replicas listed in ``expected_replicas`` get
``postgres.replica_connected = 0``: a gone replica never reads as "zero lag".

The collector needs a role with ``pg_monitor`` and nothing else; see
docs/collectors-postgres-backup.md.
"""

from __future__ import annotations

import logging
from collections import Counter as Tally
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import psycopg
import psycopg.errors as pge
from psycopg.conninfo import conninfo_to_dict

from collectors.base import Collector, Counters, Reading, SignalSpec
from tillwatch.errors import ConfigError, SourceError

log = logging.getLogger(__name__)

NODE_QUERY = """
SELECT pg_is_in_recovery(),
       (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'),
       current_setting('max_connections')::float8,
       (SELECT COALESCE(max(GREATEST(0, EXTRACT(EPOCH FROM now() - xact_start))), 0)
          FROM pg_stat_activity
         WHERE xact_start IS NOT NULL AND pid <> pg_backend_pid())::float8
"""

DATABASE_QUERY = """
SELECT d.datname, s.xact_commit, s.deadlocks, pg_database_size(d.oid)
  FROM pg_database d JOIN pg_stat_database s ON s.datid = d.oid
 WHERE d.datallowconn
"""

# One row per WAL sender: a disconnected standby has none.
SENDERS_QUERY = """
SELECT application_name, client_addr::text, state,
       pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::float8,
       EXTRACT(EPOCH FROM replay_lag)::float8
  FROM pg_stat_replication
"""

# postgres_exporter's correction: a caught-up replica of an idle primary lags 0 seconds.
REPLICA_QUERY = """
SELECT pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::float8,
       CASE WHEN NOT pg_is_in_recovery() THEN 0
            WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
            WHEN pg_last_xact_replay_timestamp() IS NULL THEN NULL
            ELSE GREATEST(0, EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()))
       END::float8,
       (SELECT count(*) FROM pg_stat_wal_receiver),
       (SELECT status FROM pg_stat_wal_receiver)
"""

ALWAYS = {"node": NODE_QUERY, "databases": DATABASE_QUERY}
ROLE_QUERIES = {"senders": SENDERS_QUERY, "replica": REPLICA_QUERY}

# pg_stat_database counter -> signal carrying its per-second rate, per database.
DATABASE_RATES = {1: "postgres.commits_per_second", 2: "postgres.deadlocks_per_second"}

# Server SQLSTATE -> scrape error code; anything else is a bad response.
SQLSTATE_CODES = {
    "28P01": "auth_failed",  # invalid_password
    "28000": "auth_failed",  # invalid_authorization_specification (no such role, hba reject)
    "3D000": "auth_failed",  # invalid_catalog_name: the database to log in to does not exist
    "42501": "permission_denied",  # insufficient_privilege
    "57014": "timeout",  # query_canceled, by statement_timeout
    "57P01": "refused",  # admin_shutdown
    "57P02": "refused",  # crash_shutdown
    "57P03": "refused",  # cannot_connect_now: starting up or shutting down
    "53300": "refused",  # too_many_connections
}

# libpq reports connection failures as text without a SQLSTATE: match the text.
MESSAGE_CODES = (
    ("password authentication failed", "auth_failed"),
    ("no password supplied", "auth_failed"),
    ("permission denied", "permission_denied"),
    ("timeout expired", "timeout"),
    ("connection refused", "refused"),
    ("no such file or directory", "refused"),
    ("could not translate host name", "refused"),
    ("no route to host", "refused"),
    ("server closed the connection", "refused"),
    ("the database system is", "refused"),
)

FIXES = {
    "auth_failed": "check the role and the password given to the collector (env or file)",
    "permission_denied": "GRANT pg_monitor TO the collector's role",
    "refused": "check that PostgreSQL runs and listens there, and its pg_hba.conf",
    "timeout": "check the server's load and the network, or raise the timeouts",
    "bad_response": "check that this port is a PostgreSQL >= 10 server",
}


class PostgresCollector(Collector):
    """Reads one PostgreSQL server, primary or replica.

    Args:
        labels: the target's labels; ``service`` defaults to ``postgres`` and ``instance``
            to ``host:port``.
        dsn: a libpq DSN (keyword string or URI) without a password.
        password: the password, read from the environment or a file by the config layer.
        expected_replicas: ``application_name`` of each standby the primary should have;
            one that is not connected reads ``postgres.replica_connected = 0``.
        connect_timeout: seconds allowed for connecting.
        statement_timeout: seconds allowed for each query.

    Raises:
        ConfigError: when the DSN does not parse or carries a password.
    """

    source = "postgres"
    signals = (
        SignalSpec("postgres.in_recovery", "1", "1 on a replica (in recovery), 0 on a primary",
                   "pg_replication_is_replica"),
        SignalSpec("postgres.replicas_connected", "1",
                   "primary: WAL senders, one per connected standby"),
        SignalSpec("postgres.replica_connected", "1",
                   "primary: 1 if the standby (label replica) has a WAL sender, 0 if an "
                   "expected standby has none"),
        SignalSpec("postgres.replica_lag_bytes", "By",
                   "primary: current WAL LSN minus the standby's replay LSN (label replica)",
                   "pg_stat_replication_pg_wal_lsn_diff"),
        SignalSpec("postgres.replica_lag_seconds", "s",
                   "primary: replay_lag of the standby (label replica); 0 when idle and "
                   "caught up"),
        SignalSpec("postgres.replication_lag_seconds", "s",
                   "replica: age of the last replayed commit, 0 when replay has caught up "
                   "with what was received", "pg_replication_lag_seconds"),
        SignalSpec("postgres.apply_backlog_bytes", "By",
                   "replica: WAL received but not yet replayed"),
        SignalSpec("postgres.wal_receiver_streaming", "1",
                   "replica: 1 if the WAL receiver is streaming, else 0 (postgres_exporter: "
                   "the status label of pg_stat_wal_receiver_*, collector off by default)"),
        SignalSpec("postgres.connections", "1", "client backends connected",
                   "pg_stat_activity_count"),
        SignalSpec("postgres.connections_used_ratio", "1",
                   "client backends / max_connections"),
        SignalSpec("postgres.commits_per_second", "1/s",
                   "committed transactions per second (label database)",
                   "pg_stat_database_xact_commit"),
        SignalSpec("postgres.deadlocks_per_second", "1/s",
                   "deadlocks detected per second (label database)",
                   "pg_stat_database_deadlocks"),
        SignalSpec("postgres.database_size_bytes", "By", "size on disk (label database)",
                   "pg_database_size_bytes"),
        SignalSpec("postgres.oldest_transaction_age_seconds", "s",
                   "age of the oldest open transaction of any other backend, 0 if none",
                   "pg_stat_activity_max_tx_duration"),
    )

    def __init__(
        self,
        *,
        labels: Mapping[str, str],
        dsn: str,
        password: str | None = None,
        expected_replicas: Sequence[str] = (),
        connect_timeout: float = 5.0,
        statement_timeout: float = 5.0,
    ) -> None:
        params = _parse_dsn(dsn)
        self.address = f"{params.get('host', 'localhost')}:{params.get('port', '5432')}"
        self.role = params.get("user", "?")
        super().__init__(labels={"service": "postgres", "instance": self.address, **labels})

        self._connect_args: dict[str, Any] = {
            "conninfo": dsn,
            "password": password,
            "connect_timeout": max(1, round(connect_timeout)),
            "options": f"-c statement_timeout={round(statement_timeout * 1000)}",
            "application_name": "tillwatch",
            "autocommit": True,
        }
        self.expected_replicas = tuple(expected_replicas)
        self._conn: psycopg.Connection | None = None
        self._counters = Counters()

    def read(self, now: float) -> Iterator[Reading]:
        """Query the server once and turn the answers into readings.

        Raises:
            SourceError: when the server cannot be reached or answers unexpectedly.
        """
        answers = self._query_all()
        in_recovery, connections, max_connections, oldest_xact = answers["node"][0]

        yield Reading("postgres.in_recovery", float(in_recovery))
        yield Reading("postgres.connections", float(connections))
        yield Reading("postgres.connections_used_ratio", connections / max_connections)
        yield Reading("postgres.oldest_transaction_age_seconds", float(oldest_xact))
        yield from self._databases(answers["databases"], now)

        if in_recovery:
            yield from self._replica(answers["replica"][0])
        else:
            yield from self._senders(answers["senders"])

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _query_all(self) -> dict[str, list[tuple]]:
        # A connection broken since the last scrape (restart, failover) gets one fresh try,
        # so the error reported is the server's state now, not a stale socket's.
        try:
            return self._run_queries()
        except psycopg.OperationalError as failure:
            if self._conn is None or not self._conn.broken:
                raise self._source_error(failure) from failure
            self.close()
        try:
            return self._run_queries()
        except psycopg.Error as failure:
            raise self._source_error(failure) from failure

    def _run_queries(self) -> dict[str, list[tuple]]:
        conn = self._connection()
        try:
            answers = {name: conn.execute(sql).fetchall() for name, sql in ALWAYS.items()}
            # pg_current_wal_lsn() fails during recovery: ask each role its own questions.
            role = "replica" if answers["node"][0][0] else "senders"
            answers[role] = conn.execute(ROLE_QUERIES[role]).fetchall()
            return answers
        except psycopg.OperationalError:
            raise
        except psycopg.Error as failure:
            raise self._source_error(failure) from failure

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            try:
                self._conn = psycopg.connect(**self._connect_args)
            except psycopg.Error as failure:
                raise self._source_error(failure) from failure
        return self._conn

    def _source_error(self, failure: psycopg.Error) -> SourceError:
        code = error_code(failure)
        # libpq's text names host and port but never the password; keep its first line.
        lines = str(failure).strip().splitlines() or [type(failure).__name__]
        detail = lines[0]
        return SourceError(
            code,
            f"postgres collector: {self.address} as {self.role}: {detail}; {FIXES[code]}",
        )

    def _databases(self, rows: list[tuple], now: float) -> Iterator[Reading]:
        for row in rows:
            labels = {"database": row[0]}
            # NULL when the database was dropped between listing it and sizing it.
            if row[3] is not None:
                yield Reading("postgres.database_size_bytes", float(row[3]), labels)
            for column, signal in DATABASE_RATES.items():
                rate = self._counters.rate((signal, row[0]), float(row[column]), now)
                if rate is not None:
                    yield Reading(signal, rate, labels)

    def _senders(self, rows: list[tuple]) -> Iterator[Reading]:
        yield Reading("postgres.replicas_connected", float(len(rows)))
        names = replica_names(rows)
        for name, (_, _, state, lag_bytes, lag_seconds) in zip(names, rows, strict=True):
            if state is None:
                raise SourceError(
                    "permission_denied",
                    f"postgres collector: {self.address} as {self.role} cannot see "
                    f"pg_stat_replication details; {FIXES['permission_denied']}",
                )
            yield from sender_lag(name, lag_bytes, lag_seconds)

        for name in sorted(set(names) | set(self.expected_replicas)):
            connected = 1.0 if name in names else 0.0
            yield Reading("postgres.replica_connected", connected, {"replica": name})

    def _replica(self, row: tuple) -> Iterator[Reading]:
        backlog, lag_seconds, receivers, status = row
        if receivers and status is None:
            raise SourceError(
                "permission_denied",
                f"postgres collector: {self.address} as {self.role} cannot see "
                f"pg_stat_wal_receiver; {FIXES['permission_denied']}",
            )

        # NULL while behind but before any commit was replayed: unknown, not zero.
        if lag_seconds is not None:
            yield Reading("postgres.replication_lag_seconds", float(lag_seconds))
        yield Reading("postgres.wal_receiver_streaming", 1.0 if status == "streaming" else 0.0)
        # NULL until the replica has received WAL by streaming (e.g. restoring from archive).
        if backlog is not None:
            yield Reading("postgres.apply_backlog_bytes", max(0.0, float(backlog)))


def sender_lag(
    name: str, lag_bytes: float | None, lag_seconds: float | None
) -> Iterator[Reading]:
    """Readings for one WAL sender's lag: bytes when known, seconds only when meaningful."""
    labels = {"replica": name}
    # replay_lsn is NULL while a standby is still starting to stream: no lag to report yet.
    if lag_bytes is None:
        return
    yield Reading("postgres.replica_lag_bytes", max(0.0, float(lag_bytes)), labels)

    # replay_lag turns NULL once an idle standby has caught up; NULL with bytes still
    # outstanding means "not measured", which must not read as zero.
    if lag_seconds is not None:
        yield Reading("postgres.replica_lag_seconds", float(lag_seconds), labels)
    elif lag_bytes <= 0:
        yield Reading("postgres.replica_lag_seconds", 0.0, labels)


def replica_names(rows: list[tuple]) -> list[str]:
    """Name each WAL sender by its application_name, adding the client address to repeats."""
    repeats = Tally(row[0] for row in rows)
    return [
        row[0] if repeats[row[0]] == 1 else f"{row[0]}@{row[1] or 'local'}" for row in rows
    ]


def error_code(failure: psycopg.Error) -> str:
    """Map a psycopg error to one of the stable scrape error codes."""
    if isinstance(failure, pge.ConnectionTimeout):
        return "timeout"
    if failure.sqlstate in SQLSTATE_CODES:
        return SQLSTATE_CODES[failure.sqlstate]

    text = str(failure).lower()
    for fragment, code in MESSAGE_CODES:
        if fragment in text:
            return code
    return "bad_response" if failure.sqlstate else _connection_code(failure)


def _connection_code(failure: psycopg.Error) -> str:
    # No SQLSTATE and no known text: a connection-level failure is still "cannot reach".
    return "refused" if isinstance(failure, psycopg.OperationalError) else "bad_response"


def _parse_dsn(dsn: str) -> dict[str, str]:
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as failure:
        raise ConfigError(
            "postgres collector: the DSN does not parse; expected a libpq keyword string "
            "or postgresql:// URI"
        ) from failure
    if params.get("password"):
        raise ConfigError(
            "postgres collector: the DSN carries a password; remove it and pass the "
            "password through the environment or a secrets file"
        )
    return {key: str(value) for key, value in params.items() if value is not None}
