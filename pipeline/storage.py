"""ClickHouse storage: one client API for the embedded engine and for a server.

Targets are URLs:

- ``chdb://<path>``: the embedded chDB engine, in this process, with its data in
  ``<path>``. Everything after ``chdb://`` is the path, so ``chdb:///var/lib/tillwatch``
  is absolute and ``chdb://./tillwatch-data`` (or ``chdb://tillwatch-data``) is relative
  to the working directory at start. One process can host one engine path.
- ``http://host:8123`` or ``https://host:8443``: a ClickHouse server. A user name may
  ride in the URL (``http://tillwatch@host:8123``); the password never does: the caller
  passes it from the environment or a file.

Only the client differs between the two: the migrations in ``pipeline/migrations`` and
every query below run unchanged on both. Tables are always qualified with the database
name so materialized views resolve the same way everywhere.

Reads return small frozen dataclasses; bulk reads return numpy columns (:class:`Points`,
:class:`Rollup`) so that a week of a thousand series never becomes a million objects.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import astuple, dataclass, field, fields
from datetime import UTC, datetime
from importlib import resources
from typing import Any, TypeVar
from urllib.parse import urlsplit

import clickhouse_connect
import numpy as np
import pyarrow as pa
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from tillwatch.anomaly import Anomaly
from tillwatch.errors import ConfigError, StorageError
from tillwatch.sample import Series

log = logging.getLogger(__name__)

DEFAULT_URL = "chdb://./tillwatch-data"
DEFAULT_DATABASE = "tillwatch"
ROLLUP_SECONDS = 300

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")
_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

# ClickHouse error codes a person can act on, and what to do about each.
_FIXES = {
    60: "the table is missing: open the storage with migrate=True to create it",
    81: "the database is missing: open the storage with migrate=True to create it",
    192: "the user is unknown: check the user name in the storage URL",
    194: "the password is wrong: check the ClickHouse password given to tillwatch",
    210: "the server refused the connection: check that ClickHouse listens on that port",
    516: "authentication failed: check the user name and the ClickHouse password",
}
_FIX_EMBEDDED = (
    "check that the data directory is writable and that this process opens no other "
    "chDB path (one embedded engine per process)"
)
_FIX_SERVER = "check that the server is up and reachable, and the user's grants"

# Per-insert settings: the token dedups a retried block; the second setting extends
# that to the rollup fed by the materialized view, which would otherwise count twice.
_DEDUP_SETTINGS = {"deduplicate_blocks_in_dependent_materialized_views": 1}


@dataclass(frozen=True, slots=True)
class Target:
    """Where the data lives, parsed from a storage URL.

    Attributes:
        display: the URL without credentials, safe to log.
        path: the embedded engine's data directory, or None for a server.
        host: the server's host name, or None for the embedded engine.
        port: the server's HTTP port.
        secure: whether to speak HTTPS.
        username: the server user.
    """

    display: str
    path: str | None = None
    host: str | None = None
    port: int = 8123
    secure: bool = False
    username: str = "default"

    @property
    def embedded(self) -> bool:
        """Whether this is the in-process chDB engine."""
        return self.path is not None


def parse_target(url: str) -> Target:
    """Parse a storage URL (see the module docstring for the forms).

    Raises:
        ConfigError: when the scheme is unknown, the path is empty, or the URL holds a
            password.
    """
    if url.startswith("chdb://"):
        path = url[len("chdb://") :]
        if not path:
            raise ConfigError(
                "storage url 'chdb://' has no path: use chdb:///abs/dir or chdb://./rel/dir"
            )
        return Target(display=url, path=path)

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"storage url {_safe_url(url)!r} is not chdb://<path> or http(s)://host:port; "
            f"the default is {DEFAULT_URL}"
        )
    if parts.password:
        raise ConfigError(
            "storage url holds a password: remove it from the URL and pass it from the "
            "environment or a file"
        )
    secure = parts.scheme == "https"
    port = parts.port or (8443 if secure else 8123)
    return Target(
        display=f"{parts.scheme}://{parts.hostname}:{port}",
        host=parts.hostname,
        port=port,
        secure=secure,
        username=parts.username or "default",
    )


def _safe_url(url: str) -> str:
    """The URL with anything before an ``@`` removed, for error messages."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}"


@dataclass(frozen=True, slots=True)
class Points:
    """Samples as columns, ordered by series then time.

    Attributes:
        series_id: uint64 series id of each point.
        ts: float64 seconds since the epoch.
        value: float64 values.
    """

    series_id: np.ndarray
    ts: np.ndarray
    value: np.ndarray

    def __len__(self) -> int:
        return int(self.ts.shape[0])


@dataclass(frozen=True, slots=True)
class Rollup:
    """Downsampled points as columns, one row per series per step, ordered likewise.

    Attributes:
        series_id: uint64 series id.
        ts: float64 start of the step, seconds since the epoch.
        avg: mean of the samples in the step.
        min: smallest sample in the step.
        max: largest sample in the step.
        count: uint64 number of samples in the step.
    """

    series_id: np.ndarray
    ts: np.ndarray
    avg: np.ndarray
    min: np.ndarray
    max: np.ndarray
    count: np.ndarray

    def __len__(self) -> int:
        return int(self.ts.shape[0])


@dataclass(frozen=True, slots=True)
class IncidentRecord:
    """One state of an incident; the newest ``updated`` is the current one.

    Attributes:
        incident_id: stable id of the incident.
        opened: when it opened, seconds since the epoch.
        updated: when this state was written.
        tier: ``page``, ``ticket`` or ``info``.
        service: the service blamed.
        root_cause: the series or component believed to be the cause.
        summary: one line a person reads first.
        impact: the business impact in words, e.g. "orders/min down 40%".
        resolved: when it resolved, or None while open.
        series_ids: the series whose anomalies make up the incident.
    """

    incident_id: str
    opened: float
    updated: float
    tier: str
    service: str
    root_cause: str = ""
    summary: str = ""
    impact: str = ""
    resolved: float | None = None
    series_ids: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class AlertRecord:
    """One alert event sent for an incident.

    Attributes:
        ts: when it was sent, seconds since the epoch.
        incident_id: the incident it is about.
        tier: ``page``, ``ticket`` or ``info``.
        status: ``firing`` or ``resolved``.
        labels: the Alertmanager labels.
        annotations: the Alertmanager annotations.
    """

    ts: float
    incident_id: str
    tier: str
    status: str
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FeedbackRecord:
    """A person's verdict on an incident, e.g. ``useful``, ``noise``, ``wrong_tier``.

    Attributes:
        incident_id: the incident judged.
        ts: when, seconds since the epoch.
        verdict: the verdict keyword.
        note: free text.
    """

    incident_id: str
    ts: float
    verdict: str
    note: str = ""


Record = TypeVar("Record", Anomaly, IncidentRecord, AlertRecord, FeedbackRecord)

_LABELS = pa.map_(pa.string(), pa.string())
_MILLIS = pa.timestamp("ms", tz="UTC")

# Columns holding a time: Python floats (seconds) on our side, DateTime64 in ClickHouse.
_TIME_COLUMNS = frozenset({"ts", "opened", "updated", "resolved"})


@dataclass(frozen=True, slots=True)
class Migration:
    """One versioned schema step from ``pipeline/migrations/NNNN_name.sql``."""

    version: int
    name: str
    sql: str

    def statements(self, values: Mapping[str, str]) -> list[str]:
        """Return the file's statements with ``{placeholders}`` filled in.

        Raises:
            StorageError: when the file uses a placeholder nobody provides.
        """
        body = "\n".join(
            line for line in self.sql.splitlines() if not line.lstrip().startswith("--")
        )
        return [
            _PLACEHOLDER.sub(lambda match: self._value(match.group(1), values), text).strip()
            for text in body.split(";")
            if text.strip()
        ]

    def _value(self, name: str, values: Mapping[str, str]) -> str:
        if name not in values:
            raise StorageError(
                f"migration {self.version:04d}_{self.name}.sql uses {{{name}}}; "
                f"known placeholders are {sorted(values)}"
            )
        return values[name]


def load_migrations() -> list[Migration]:
    """Return the packaged migrations in version order."""
    folder = resources.files("pipeline") / "migrations"
    found = []
    for entry in folder.iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text()))
    return sorted(found, key=lambda migration: migration.version)


class Storage:
    """Reads and writes tillwatch's tables in one ClickHouse database.

    Build one with :meth:`open`; it is not thread-safe, so give each thread its own
    (embedded clients on the same path share the engine).
    """

    def __init__(
        self,
        client: Client,
        target: Target,
        *,
        database: str = DEFAULT_DATABASE,
        ttl_days: int = 30,
        rollup_ttl_days: int = 400,
    ) -> None:
        self.client = client
        self.target = target
        self.database = database
        self.ttl_days = ttl_days
        self.rollup_ttl_days = rollup_ttl_days
        self._registered: set[int] = set()

    @classmethod
    def open(
        cls,
        url: str = DEFAULT_URL,
        *,
        database: str = DEFAULT_DATABASE,
        password: str = "",
        ttl_days: int = 30,
        rollup_ttl_days: int = 400,
        migrate: bool = True,
    ) -> Storage:
        """Connect to a target and, unless told not to, bring its schema up to date.

        Args:
            url: ``chdb://<path>`` or ``http(s)://[user@]host:port``.
            database: the database holding tillwatch's tables.
            password: the server password (ignored by the embedded engine).
            ttl_days: days raw samples are kept.
            rollup_ttl_days: days the 5-minute rollups and anomalies are kept.
            migrate: whether to create the database and apply pending migrations.

        Returns:
            A storage ready for reads and writes.

        Raises:
            ConfigError: when the URL or database name is invalid.
            StorageError: when the target cannot be reached or migrated.
        """
        if not _IDENTIFIER.match(database):
            raise ConfigError(f"storage database {database!r} must be a plain identifier")
        target = parse_target(url)
        with _mapped_errors(target, "connect"):
            client = _connect(target, password)

        storage = cls(client, target, database=database, ttl_days=ttl_days,
                      rollup_ttl_days=rollup_ttl_days)
        if migrate:
            applied = storage.migrate()
            log.info("storage %s database %s ready, %d migrations applied",
                     target.display, database, len(applied))
        return storage

    def close(self) -> None:
        """Release the client (and, embedded, this handle on the engine)."""
        self.client.close()

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- schema ---------------------------------------------------------------------

    def migrate(self) -> list[int]:
        """Create the database if needed and apply the migrations not yet recorded.

        Every statement is ``IF NOT EXISTS``, so a migration interrupted half-way is
        safely re-applied. Two processes migrating at once is not guarded against.

        Returns:
            The versions applied by this call, in order (empty when up to date).

        Raises:
            StorageError: when a statement fails.
        """
        db = self.database
        self._command(f"CREATE DATABASE IF NOT EXISTS {db}", "create the database")
        self._command(
            f"CREATE TABLE IF NOT EXISTS {db}.schema_migrations "
            "(version UInt32, name String, applied DateTime64(3, 'UTC')) "
            "ENGINE = MergeTree ORDER BY version",
            "create schema_migrations",
        )

        done = set(self.applied_migrations())
        pending = [m for m in load_migrations() if m.version not in done]
        for migration in pending:
            self._apply(migration)
        return [migration.version for migration in pending]

    def applied_migrations(self) -> list[int]:
        """Return the recorded migration versions in order (one row per version)."""
        rows = self._query(
            f"SELECT version FROM {self.database}.schema_migrations ORDER BY version",
            "read schema_migrations",
        )
        return [int(row[0]) for row in rows]

    def _apply(self, migration: Migration) -> None:
        values = {
            "database": self.database,
            "ttl_days": str(int(self.ttl_days)),
            "rollup_ttl_days": str(int(self.rollup_ttl_days)),
        }
        action = f"apply migration {migration.version:04d}_{migration.name}"
        for statement in migration.statements(values):
            self._command(statement, action)

        row = [migration.version, migration.name, datetime.now(UTC)]
        with _mapped_errors(self.target, action):
            self.client.insert(f"{self.database}.schema_migrations", [row],
                               column_names=["version", "name", "applied"])

    # -- samples --------------------------------------------------------------------

    def insert_samples(self, columns: pa.Table, token: str) -> None:
        """Insert sample columns ``signal, series_id, ts, value`` as one idempotent insert.

        Args:
            columns: an Arrow table; ``signal`` dictionary-encoded, ``ts`` a millisecond
                UTC timestamp (the :mod:`pipeline.sink` builds it).
            token: the deduplication token: an insert repeating an earlier token is
                stored once.

        Raises:
            StorageError: when the insert fails.
        """
        settings = {**_DEDUP_SETTINGS, "insert_deduplication_token": token}
        with _mapped_errors(self.target, "insert samples"):
            self.client.insert_arrow(f"{self.database}.samples", columns, settings=settings)

    def register_series(self, series: Sequence[Series], seen: float) -> int:
        """Record series not yet registered by this storage object.

        Args:
            series: series that have samples about to be stored.
            seen: the time to record as ``last_seen``, seconds since the epoch.

        Returns:
            How many series were new to this process.

        Raises:
            StorageError: when the insert fails (the series stay unregistered).
        """
        new = {s.id: s for s in series if s.id not in self._registered}
        if not new:
            return 0

        # Arrow rather than row inserts: a first flush can bring tens of thousands of series.
        columns = pa.table(
            {
                "series_id": pa.array(list(new), pa.uint64()),
                "signal": [s.signal for s in new.values()],
                "labels": pa.array([list(s.labels.items()) for s in new.values()], _LABELS),
                "key": [s.key for s in new.values()],
                "last_seen": pa.array([int(seen * 1000)] * len(new), _MILLIS),
            }
        )
        with _mapped_errors(self.target, "register series"):
            self.client.insert_arrow(f"{self.database}.series", columns)
        self._registered.update(new)
        return len(new)

    def series_points(self, series_id: int, start: float, end: float) -> Points:
        """Return one series' samples with ``start <= ts < end``, in time order."""
        sql = (
            "SELECT series_id, toUnixTimestamp64Milli(ts) / 1000 AS t, value "
            f"FROM {self.database}.samples "
            f"WHERE series_id = {{sid:UInt64}} AND {_IN_RANGE} ORDER BY ts"
        )
        params = {"sid": series_id, "start": start, "end": end}
        return Points(*self._columns(sql, params, "read a series", _POINT_COLUMNS))

    def signal_points(
        self, signal: str, labels: Mapping[str, str], start: float, end: float
    ) -> Points:
        """Return the samples of every series of ``signal`` whose labels match.

        Args:
            signal: the signal, e.g. ``redis.hit_ratio``.
            labels: equality matchers; ``{}`` matches every series of the signal.
            start: first time included, seconds since the epoch.
            end: first time excluded.

        Returns:
            The points ordered by series id, then time.
        """
        where, params = self._series_filter(signal, labels, start, end)
        sql = (
            "SELECT series_id, toUnixTimestamp64Milli(ts) / 1000 AS t, value "
            f"FROM {self.database}.samples WHERE {where} AND {_IN_RANGE} ORDER BY series_id, ts"
        )
        return Points(*self._columns(sql, params, "read a signal", _POINT_COLUMNS))

    def rollup(
        self,
        signal: str,
        labels: Mapping[str, str],
        start: float,
        end: float,
        step: int,
    ) -> Rollup:
        """Return avg, min, max and count per series per ``step`` seconds.

        Steps that are a multiple of five minutes read the ``samples_5m`` rollup (which
        outlives raw samples); others read raw samples. Steps start at multiples of
        ``step`` since the epoch; ``start`` and ``end`` select the steps whose start
        lies in ``[start, end)``, so align them to the step for whole steps.

        Raises:
            StorageError: when the step is not a positive whole number of seconds.
        """
        if step <= 0 or int(step) != step:
            raise StorageError(f"rollup step must be whole seconds above 0, not {step!r}")
        where, params = self._series_filter(signal, labels, start, end)
        params["step"] = int(step)
        sql = _ROLLUP_SQL if step % ROLLUP_SECONDS == 0 else _RAW_ROLLUP_SQL
        sql = sql.format(db=self.database, where=where, in_range=_IN_RANGE)
        return Rollup(*self._columns(sql, params, "read rollups", _ROLLUP_COLUMNS))

    def series_labels(self, signal: str) -> dict[int, dict[str, str]]:
        """Return the labels of every registered series of a signal, by series id."""
        rows = self._query(
            f"SELECT series_id, labels FROM {self.database}.series FINAL "
            "WHERE signal = {signal:String}",
            "read series",
            {"signal": signal},
        )
        return {int(sid): dict(labels) for sid, labels in rows}

    def _series_filter(
        self, signal: str, labels: Mapping[str, str], start: float, end: float
    ) -> tuple[str, dict[str, Any]]:
        """SQL selecting the series of a signal by label equality, and its parameters."""
        params: dict[str, Any] = {"signal": signal, "start": start, "end": end}
        matchers = []
        for n, (name, value) in enumerate(sorted(labels.items())):
            params[f"k{n}"], params[f"v{n}"] = name, value
            matchers.append(f" AND labels[{{k{n}:String}}] = {{v{n}:String}}")

        where = (
            "signal = {signal:String} AND series_id IN (SELECT series_id "
            f"FROM {self.database}.series WHERE signal = {{signal:String}}{''.join(matchers)})"
        )
        return where, params

    # -- events ---------------------------------------------------------------------

    def insert_anomalies(self, anomalies: Sequence[Anomaly]) -> None:
        """Store detector verdicts."""
        self._insert_records("anomalies", anomalies)

    def anomalies(self, start: float, end: float, signal: str | None = None) -> list[Anomaly]:
        """Return anomalies with ``start <= ts < end``, of one signal or all, by time."""
        where = _IN_RANGE
        if signal is not None:
            where += " AND signal = {signal:String}"
        params = {"start": start, "end": end, "signal": signal or ""}
        return self._select_records(Anomaly, "anomalies", where, "ts", params)

    def upsert_incidents(self, incidents: Sequence[IncidentRecord]) -> None:
        """Store new incident states; the newest ``updated`` per incident wins."""
        self._insert_records("incidents", incidents)

    def incidents(self, since: float = 0.0, open_only: bool = False) -> list[IncidentRecord]:
        """Return the current state of incidents updated since ``since``, by opening time."""
        where = "updated >= toDateTime64({since:Float64}, 3, 'UTC')"
        if open_only:
            where += " AND resolved IS NULL"
        return self._select_records(
            IncidentRecord, "incidents FINAL", where, "opened, incident_id", {"since": since}
        )

    def insert_alerts(self, alerts: Sequence[AlertRecord]) -> None:
        """Store alert events as they were sent."""
        self._insert_records("alerts", alerts)

    def alerts(self, incident_id: str | None = None, since: float = 0.0) -> list[AlertRecord]:
        """Return alert events since ``since``, of one incident or all, by time."""
        where = "ts >= toDateTime64({since:Float64}, 3, 'UTC')"
        if incident_id is not None:
            where += " AND incident_id = {incident:String}"
        params = {"since": since, "incident": incident_id or ""}
        return self._select_records(AlertRecord, "alerts", where, "ts", params)

    def insert_feedback(self, feedback: Sequence[FeedbackRecord]) -> None:
        """Store verdicts people gave on incidents."""
        self._insert_records("feedback", feedback)

    def feedback(self, incident_id: str) -> list[FeedbackRecord]:
        """Return the verdicts given on one incident, by time."""
        where = "incident_id = {incident:String}"
        params = {"incident": incident_id}
        return self._select_records(FeedbackRecord, "feedback", where, "ts", params)

    def _insert_records(self, table: str, records: Sequence[Any]) -> None:
        if not records:
            return
        names = [f.name for f in fields(records[0])]
        times = [n in _TIME_COLUMNS for n in names]
        rows = [
            [_to_datetime(v) if t else v for v, t in zip(astuple(r), times, strict=True)]
            for r in records
        ]
        with _mapped_errors(self.target, f"insert {table}"):
            self.client.insert(f"{self.database}.{table}", rows, column_names=names)

    def _select_records(
        self, kind: type[Record], table: str, where: str, order: str, params: dict[str, Any]
    ) -> list[Record]:
        names = [f.name for f in fields(kind)]
        select = ", ".join(
            f"toUnixTimestamp64Milli({n}) / 1000 AS {n}_s" if n in _TIME_COLUMNS else n
            for n in names
        )
        sql = f"SELECT {select} FROM {self.database}.{table} WHERE {where} ORDER BY {order}"
        rows = self._query(sql, f"read {table.split()[0]}", params)
        return [kind(**dict(zip(names, row, strict=True))) for row in rows]

    # -- driver calls -----------------------------------------------------------------

    def _command(self, sql: str, action: str) -> None:
        with _mapped_errors(self.target, action):
            self.client.command(sql)

    def _query(
        self, sql: str, action: str, params: dict[str, Any] | None = None
    ) -> Sequence[Sequence[Any]]:
        with _mapped_errors(self.target, action):
            return self.client.query(sql, parameters=params or {}).result_rows

    def _columns(
        self, sql: str, params: dict[str, Any], action: str, names: list[str]
    ) -> list[np.ndarray]:
        """Run a query and return its columns as numpy arrays, in ``names`` order."""
        with _mapped_errors(self.target, action):
            table = self.client.query_arrow(sql, parameters=params)
        if table.num_rows == 0:
            return [np.empty(0, _EMPTY_DTYPES.get(name, np.float64)) for name in names]
        return [table.column(name).to_numpy() for name in names]


_EMPTY_DTYPES = {"series_id": np.uint64, "count": np.uint64}
_POINT_COLUMNS = ["series_id", "t", "value"]
_ROLLUP_COLUMNS = ["series_id", "t", "avg", "min", "max", "count"]
# Bounds as DateTime64 values, not floats, so the primary key on ts prunes the scan.
_IN_RANGE = (
    "ts >= toDateTime64({start:Float64}, 3, 'UTC') "
    "AND ts < toDateTime64({end:Float64}, 3, 'UTC')"
)

_ROLLUP_SQL = """
SELECT series_id,
       toFloat64(toUnixTimestamp(
           toStartOfInterval(bucket, INTERVAL {{step:UInt32}} SECOND))) AS t,
       sum(sum_value) / sum(samples) AS avg,
       min(min_value) AS min,
       max(max_value) AS max,
       sum(samples) AS count
FROM {db}.samples_5m
WHERE {where}
  AND bucket >= toDateTime({{start:Float64}}, 'UTC')
  AND bucket < toDateTime({{end:Float64}}, 'UTC')
GROUP BY series_id, t
ORDER BY series_id, t
"""

_RAW_ROLLUP_SQL = """
SELECT series_id,
       toFloat64(toUnixTimestamp(
           toStartOfInterval(ts, INTERVAL {{step:UInt32}} SECOND))) AS t,
       avg(value) AS avg,
       min(value) AS min,
       max(value) AS max,
       count() AS count
FROM {db}.samples
WHERE {where} AND {in_range}
GROUP BY series_id, t
ORDER BY series_id, t
"""


def _connect(target: Target, password: str) -> Client:
    """Build the one thing that differs between targets: the client."""
    if target.embedded:
        return clickhouse_connect.get_client(interface="chdb", path=target.path)
    return clickhouse_connect.get_client(
        host=target.host,
        port=target.port,
        username=target.username,
        password=password,
        secure=target.secure,
    )


def _to_datetime(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


@contextmanager
def _mapped_errors(target: Target, action: str) -> Iterator[None]:
    """Turn a driver error into a :class:`StorageError` naming the target and the fix."""
    try:
        yield
    except ClickHouseError as error:
        code = getattr(error, "code", None) or 0
        fix = _FIXES.get(int(code)) or (_FIX_EMBEDDED if target.embedded else _FIX_SERVER)
        text = str(error).strip()
        detail = text.splitlines()[0][:300] if text else type(error).__name__
        raise StorageError(
            f"ClickHouse at {target.display}: cannot {action}: {detail}; {fix}"
        ) from error


__all__: list[str] = [
    "DEFAULT_URL",
    "AlertRecord",
    "FeedbackRecord",
    "IncidentRecord",
    "Migration",
    "Points",
    "Rollup",
    "Storage",
    "Target",
    "load_migrations",
    "parse_target",
]
