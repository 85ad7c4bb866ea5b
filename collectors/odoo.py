"""Odoo business KPIs and scheduler health, read from the Odoo database.

Orders and revenue per minute by sales channel, store and company; stock-picking
delays and overdue pickings; overdue and failing scheduled actions (``ir_cron``). The
collector connects as a read-only role and reads the tables Odoo 17/18 write (see
REFERENCE.md section 6); every datetime there is naive UTC, so all windows are taken on
the database's own clock, ``now() AT TIME ZONE 'UTC'``, never on this host's.

Rates cover the interval between the previous scrape's database time and this one's;
the first scrape looks back ``first_window_seconds``. Which order states count, and
why, is written in docs/collectors-odoo-queue.md.

Where the database is out of reach, :class:`OdooRpc` reads the order KPIs through Odoo's
external API instead (JSON-RPC on 17/18, JSON-2 on 19), on this host's clock.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import requests
from psycopg.conninfo import conninfo_to_dict

from collectors.base import Collector, Reading, SignalSpec
from collectors.postgres import error_code
from tillwatch.errors import ConfigError, SourceError
from tillwatch.sample import MAX_LABEL_VALUE_LENGTH

log = logging.getLogger(__name__)

# Which order states are a sale: a confirmed sale order (``done`` exists up to 16.0)
# and a POS order once paid, posted or invoiced. Draft, sent and cancelled never count.
SALE_STATES = ("sale", "done")
POS_STATES = ("paid", "done", "invoiced")
# Pickings still to be processed; ``draft`` is not planned yet, so it cannot be late.
OPEN_PICKING_STATES = ("waiting", "confirmed", "assigned")

# Driver message fragments mapped to the stable scrape error codes.

# Labels: orders and revenue carry sales_channel (pos, website, back_office), company and,
# for pos, store; picking signals carry company; cron signals only the target's labels.
SIGNALS = (
    SignalSpec("kpi.orders_per_minute", "1/min", "Orders confirmed or paid per minute"),
    SignalSpec("kpi.revenue_per_minute", "currency/min", "Order totals per minute"),
    SignalSpec("kpi.stock_sync_delay_seconds", "s", "Mean lateness of pickings done"),
    SignalSpec("kpi.stock_sync_delay_max_seconds", "s", "Largest lateness of a picking done"),
    SignalSpec("kpi.pickings_overdue", "1", "Open pickings past their scheduled date"),
    SignalSpec("kpi.pickings_overdue_oldest_age_seconds", "s", "Oldest overdue scheduled date"),
    SignalSpec("odoo.cron_overdue", "1", "Active scheduled actions whose nextcall is overdue"),
    SignalSpec("odoo.cron_overdue_oldest_age_seconds", "s", "Age of the most overdue nextcall"),
    SignalSpec("odoo.cron_failing", "1", "Active scheduled actions failing (18.0+)"),
)


def target_of(dsn: str) -> str:
    """Return ``host:port/dbname`` of a DSN: enough to name it, never its password."""
    parts = conninfo_to_dict(dsn)
    host = parts.get("host") or parts.get("hostaddr") or "localhost"
    return f"{host}:{parts.get('port') or 5432}/{parts.get('dbname', '?')}"


def first_row(cursor: psycopg.Cursor) -> tuple:
    """Return the one row an aggregate query always returns."""
    row = cursor.fetchone()
    if row is None:
        raise SourceError("bad_response", "odoo collector: an aggregate query returned no row")
    return row


def _label(value: object) -> str:
    return str(value)[:MAX_LABEL_VALUE_LENGTH]


def _seconds(value: object) -> float:
    return 0.0 if value is None else float(value)  # type: ignore[arg-type]


class OdooDatabase:
    """One read-only connection to an Odoo database, reopened after a failure.

    Args:
        dsn: libpq connection string of a role that may SELECT the Odoo tables.
        who: the collector's name, used in error messages.
        connect_timeout: seconds to wait for the server when connecting.
        statement_timeout_ms: server-side limit for every query of a scrape.
    """

    def __init__(
        self, *, dsn: str, who: str, connect_timeout: float, statement_timeout_ms: int
    ) -> None:
        self._dsn = dsn
        self.who = who
        self.target = target_of(dsn)
        self._connect_timeout = max(1, round(connect_timeout))
        self._statement_timeout_ms = statement_timeout_ms
        self._conn: psycopg.Connection | None = None
        self._columns: dict[str, frozenset[str]] = {}

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Cursor]:
        """Yield a cursor inside one read-only transaction, mapping driver errors.

        Raises:
            SourceError: when the database cannot be reached or a query fails.
        """
        try:
            conn = self._connection()
            with conn.transaction(), conn.cursor() as cursor:
                yield cursor
        except psycopg.Error as failure:
            self.close()
            raise self._source_error(failure) from failure

    def columns(self, cursor: psycopg.Cursor, table: str) -> frozenset[str]:
        """Return the column names of ``table`` (empty when the module is not installed)."""
        if table not in self._columns:
            # pg_attribute, not information_schema: the latter hides the columns of a
            # table the role may not read, which would pass for a missing module.
            cursor.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s)"
                " AND attnum > 0 AND NOT attisdropped",
                (table,),
            )
            self._columns[table] = frozenset(row[0] for row in cursor.fetchall())
        return self._columns[table]

    @staticmethod
    def utc_now(cursor: psycopg.Cursor) -> datetime:
        """Return the database's now in naive UTC, the form of Odoo's datetime columns."""
        cursor.execute("SELECT (now() AT TIME ZONE 'UTC')::timestamp")
        return first_row(cursor)[0]

    def close(self) -> None:
        """Close the connection; the next transaction opens a new one."""
        if self._conn is not None:
            self._conn.close()
        self._conn, self._columns = None, {}

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            # Read-only at the session level: even a role with write grants cannot write.
            options = (
                "-c default_transaction_read_only=on"
                f" -c statement_timeout={self._statement_timeout_ms}"
            )
            self._conn = psycopg.connect(
                self._dsn,
                autocommit=True,
                connect_timeout=self._connect_timeout,
                options=options,
                application_name="tillwatch",
            )
            log.debug("%s connected to %s", self.who, self.target)
        return self._conn

    def _source_error(self, failure: psycopg.Error) -> SourceError:
        code = error_code(failure)
        fixes = {
            "auth_failed": "check the role, database, password and pg_hba.conf",
            "refused": "check that PostgreSQL listens there",
            "timeout": "raise statement_timeout_ms or find the slow query in pg_stat_activity",
            "permission_denied": "GRANT SELECT on the Odoo tables to the read-only role",
            "bad_response": "check that this is an Odoo 17/18 database",
        }
        first_line = str(failure).strip().splitlines()[0] if str(failure).strip() else "?"
        return SourceError(code, f"{self.who}: {self.target}: {first_line}; {fixes[code]}")




class OdooCollector(Collector):
    """Reads order throughput, picking delays and scheduler health from one Odoo database.

    Give ``dsn`` (the tested main path: orders, pickings and crons) or, where the
    database is out of reach, ``rpc`` (orders only, through Odoo's external API, windows
    on this host's clock).

    Args:
        dsn: libpq connection string of the read-only role (password from the environment
            or a passfile, never the config file).
        rpc: an :class:`OdooRpc` client, used for orders when ``dsn`` is not given.
        labels: the target's own labels, e.g. ``service="odoo", instance="shop-eu"``.
        cron_grace_seconds: a scheduled action is overdue once its nextcall is this old.
        picking_grace_seconds: an open picking is overdue once its scheduled date is
            this old.
        first_window_seconds: how far the first scrape looks back for orders and pickings.
        settle_seconds: end every window this long before the database's now, so orders
            committed a little after their ``date_order`` are still counted.
        connect_timeout: seconds to wait for PostgreSQL when connecting.
        statement_timeout_ms: server-side limit for each query.

    Raises:
        ConfigError: when neither ``dsn`` nor ``rpc`` is given.
    """

    source = "odoo"
    signals = SIGNALS

    def __init__(
        self,
        *,
        labels: Mapping[str, str],
        dsn: str | None = None,
        rpc: OdooRpc | None = None,
        cron_grace_seconds: float = 600.0,
        picking_grace_seconds: float = 0.0,
        first_window_seconds: float = 60.0,
        settle_seconds: float = 0.0,
        connect_timeout: float = 5.0,
        statement_timeout_ms: int = 10_000,
    ) -> None:
        super().__init__(labels=labels)
        if dsn is None and rpc is None:
            raise ConfigError(f"{self.name}: set dsn (the Odoo database) or rpc (its API)")
        self.db = None
        if dsn is not None:
            self.db = OdooDatabase(
                dsn=dsn,
                who=self.name,
                connect_timeout=connect_timeout,
                statement_timeout_ms=statement_timeout_ms,
            )
        self.rpc = rpc
        self.cron_grace = timedelta(seconds=cron_grace_seconds)
        self.picking_grace = timedelta(seconds=picking_grace_seconds)
        self.first_window = timedelta(seconds=first_window_seconds)
        self.settle = timedelta(seconds=settle_seconds)
        # (start, end] of the last window counted, naive UTC on the database clock.
        self.window: tuple[datetime, datetime] | None = None
        self._seen_order_series: set[tuple[tuple[str, str], ...]] = set()

    def read(self, now: float) -> Iterable[Reading]:
        """Read orders, pickings and crons in one read-only transaction.

        Raises:
            SourceError: when the database (or the API) cannot be read.
        """
        if self.db is None:
            return self._read_rpc(now)

        with self.db.transaction() as cursor:
            db_now = self.db.utc_now(cursor)
            end = db_now - self.settle
            start = self.window[1] if self.window else end - self.first_window
            readings = [
                *self._orders(cursor, start, end),
                *self._pickings(cursor, start, end, db_now),
                *self._crons(cursor, db_now),
            ]
        if end > start:
            self.window = (start, end)
        return readings

    def close(self) -> None:
        """Close the database connection or the API session."""
        if self.db is not None:
            self.db.close()
        if self.rpc is not None:
            self.rpc.close()

    def _read_rpc(self, now: float) -> list[Reading]:
        # Only reached without a database, so rpc is set (checked in __init__).
        assert self.rpc is not None
        end = datetime.fromtimestamp(now, UTC).replace(tzinfo=None) - self.settle
        start = self.window[1] if self.window else end - self.first_window
        if end <= start:
            return []

        readings = self._order_readings(self.rpc.order_totals(start, end), start, end)
        self.window = (start, end)
        return readings

    def _columns(self, cursor: psycopg.Cursor, table: str) -> frozenset[str]:
        # Only the database path reads tables, and it runs only when db is set.
        assert self.db is not None
        return self.db.columns(cursor, table)

    def _orders(self, cursor: psycopg.Cursor, start: datetime, end: datetime) -> list[Reading]:
        if end <= start:
            return []
        totals = self._pos_orders(cursor, start, end)
        totals.update(self._sale_orders(cursor, start, end))
        return self._order_readings(totals, start, end)

    def _order_readings(self, totals: dict, start: datetime, end: datetime) -> list[Reading]:
        for labels in self._seen_order_series - totals.keys():
            totals[labels] = (0, 0.0)

        minutes = (end - start).total_seconds() / 60.0
        readings = []
        for labels, (count, revenue) in sorted(totals.items()):
            self._seen_order_series.add(labels)
            readings.append(Reading("kpi.orders_per_minute", count / minutes, dict(labels)))
            readings.append(Reading("kpi.revenue_per_minute", revenue / minutes, dict(labels)))
        return readings

    def _pos_orders(self, cursor: psycopg.Cursor, start: datetime, end: datetime) -> dict:
        if not self._columns(cursor, "pos_order"):
            return {}
        # The store is the POS config behind the order's session (session_id is required).
        cursor.execute(
            """
            SELECT c.name, cfg.name, count(o.id), coalesce(sum(o.amount_total), 0)
            FROM pos_order o
            JOIN pos_session s ON s.id = o.session_id
            JOIN pos_config cfg ON cfg.id = s.config_id
            JOIN res_company c ON c.id = o.company_id
            WHERE o.date_order > %s AND o.date_order <= %s AND o.state = ANY(%s)
            GROUP BY 1, 2
            """,
            (start, end, list(POS_STATES)),
        )
        totals = {
            _pos_key(company, store): (n, float(amount))
            for company, store, n, amount in cursor.fetchall()
        }

        # A store with an open session and no sale is exactly what must show up as 0.
        cursor.execute(
            "SELECT DISTINCT c.name, cfg.name FROM pos_session s"
            " JOIN pos_config cfg ON cfg.id = s.config_id"
            " JOIN res_company c ON c.id = cfg.company_id WHERE s.state = 'opened'"
        )
        for company, store in cursor.fetchall():
            totals.setdefault(_pos_key(company, store), (0, 0.0))
        return totals

    def _sale_orders(self, cursor: psycopg.Cursor, start: datetime, end: datetime) -> dict:
        columns = self._columns(cursor, "sale_order")
        if not columns:
            return {}
        # website_sale adds website_id; without it every sale order is back office.
        channel = (
            "CASE WHEN o.website_id IS NULL THEN 'back_office' ELSE 'website' END"
            if "website_id" in columns
            else "'back_office'"
        )
        # currency_rate converts the company currency into the order's currency.
        cursor.execute(
            f"""
            SELECT {channel}, c.name, count(o.id), coalesce(sum(o.amount_total
                   / CASE WHEN o.currency_rate > 0 THEN o.currency_rate ELSE 1 END), 0)
            FROM sale_order o JOIN res_company c ON c.id = o.company_id
            WHERE o.date_order > %s AND o.date_order <= %s AND o.state = ANY(%s)
            GROUP BY 1, 2
            """,
            (start, end, list(SALE_STATES)),
        )
        return {
            (("company", _label(company)), ("sales_channel", channel_name)): (n, float(amount))
            for channel_name, company, n, amount in cursor.fetchall()
        }

    def _pickings(
        self, cursor: psycopg.Cursor, start: datetime, end: datetime, db_now: datetime
    ) -> list[Reading]:
        if not self._columns(cursor, "stock_picking"):
            return []
        readings = self._picking_delays(cursor, start, end) if end > start else []
        cursor.execute(
            """
            SELECT c.name, count(p.id), extract(epoch FROM %s - min(p.scheduled_date))
            FROM res_company c
            LEFT JOIN stock_picking p ON p.company_id = c.id AND p.state = ANY(%s)
                 AND p.scheduled_date < %s
            WHERE c.active
            GROUP BY 1 ORDER BY 1
            """,
            (db_now, list(OPEN_PICKING_STATES), db_now - self.picking_grace),
        )
        for company, overdue, oldest in cursor.fetchall():
            labels = {"company": _label(company)}
            readings.append(Reading("kpi.pickings_overdue", float(overdue), labels))
            readings.append(
                Reading("kpi.pickings_overdue_oldest_age_seconds", _seconds(oldest), labels)
            )
        return readings

    def _picking_delays(
        self, cursor: psycopg.Cursor, start: datetime, end: datetime
    ) -> list[Reading]:
        # Done ahead of schedule is no delay: clamp at zero so early pickings do not
        # hide late ones in the mean.
        cursor.execute(
            """
            SELECT c.name,
                   avg(greatest(0, extract(epoch FROM p.date_done - p.scheduled_date))),
                   max(greatest(0, extract(epoch FROM p.date_done - p.scheduled_date)))
            FROM stock_picking p JOIN res_company c ON c.id = p.company_id
            WHERE p.state = 'done' AND p.date_done > %s AND p.date_done <= %s
            GROUP BY 1 ORDER BY 1
            """,
            (start, end),
        )
        readings = []
        for company, mean, worst in cursor.fetchall():
            labels = {"company": _label(company)}
            readings += [
                Reading("kpi.stock_sync_delay_seconds", _seconds(mean), labels),
                Reading("kpi.stock_sync_delay_max_seconds", _seconds(worst), labels),
            ]
        return readings

    def _crons(self, cursor: psycopg.Cursor, db_now: datetime) -> list[Reading]:
        columns = self._columns(cursor, "ir_cron")
        # 17.0 keeps finished crons active with numbercall = 0; they never run again.
        finished = " AND numbercall != 0" if "numbercall" in columns else ""
        failing = "NULL"
        if "failure_count" in columns:
            failing = "count(*) FILTER (WHERE failure_count > 0)"
        cursor.execute(
            f"""
            SELECT count(*) FILTER (WHERE nextcall < %s),
                   extract(epoch FROM %s - min(nextcall) FILTER (WHERE nextcall < %s)),
                   {failing}
            FROM ir_cron WHERE active{finished}
            """,
            (db_now - self.cron_grace, db_now, db_now - self.cron_grace),
        )
        overdue, oldest, failures = first_row(cursor)
        readings = [
            Reading("odoo.cron_overdue", float(overdue)),
            Reading("odoo.cron_overdue_oldest_age_seconds", _seconds(oldest)),
        ]
        if failures is not None:
            readings.append(Reading("odoo.cron_failing", float(failures)))
        return readings


def _pos_key(company: str, store: str) -> tuple[tuple[str, str], ...]:
    return (("company", _label(company)), ("sales_channel", "pos"), ("store", _label(store)))


class OdooRpc:
    """Odoo's external API: legacy JSON-RPC (17.0/18.0) or JSON-2 (19.0).

    JSON-RPC posts ``execute_kw`` to ``/jsonrpc`` with the user's uid (from ``common
    login``) and API key in the arguments; JSON-2 posts named parameters to
    ``/json/2/<model>/<method>`` with the key as a bearer token (REFERENCE.md section 6).

    Args:
        url: the Odoo base URL, e.g. ``https://shop.example.com``.
        database: the database name (JSON-2 sends it as ``X-Odoo-Database``).
        api_key: an API key of a user who may read orders (from the environment).
        login: that user's login; JSON-RPC needs it to find the uid.
        api: ``"jsonrpc"`` or ``"json2"``.
        website: whether website_sale is installed, so orders split by ``website_id``.
        timeout: seconds to wait for each request.
    """

    def __init__(
        self,
        *,
        url: str,
        database: str,
        api_key: str,
        login: str = "",
        api: str = "jsonrpc",
        website: bool = True,
        timeout: float = 10.0,
    ) -> None:
        if api not in ("jsonrpc", "json2"):
            raise ConfigError(f"odoo rpc: api is {api!r}; expected 'jsonrpc' or 'json2'")
        if api == "jsonrpc" and not login:
            raise ConfigError("odoo rpc: api 'jsonrpc' needs login (the API key's user)")
        self.url, self.database, self.api = url.rstrip("/"), database, api
        self.login, self.website, self.timeout = login, website, timeout
        self._api_key = api_key
        self._session = requests.Session()
        self._uid: int | None = None
        self._ids = itertools.count(1)

    def order_totals(self, start: datetime, end: datetime) -> dict:
        """Return ``{labels: (orders, revenue)}`` for POS and sale orders in ``(start, end]``.

        Raises:
            SourceError: when the API cannot be reached or answers with an error.
        """
        window = [
            ["date_order", ">", _odoo_datetime(start)],
            ["date_order", "<=", _odoo_datetime(end)],
        ]
        pos = self.grouped_totals(
            "pos.order",
            [*window, ["state", "in", list(POS_STATES)]],
            ["company_id", "config_id"],
        )
        totals = {_pos_key(g["company_id"], g["config_id"]): (n, s) for g, n, s in pos}

        groupby = ["company_id", "website_id"] if self.website else ["company_id"]
        sales = self.grouped_totals(
            "sale.order", [*window, ["state", "in", list(SALE_STATES)]], groupby
        )
        for group, count, revenue in sales:
            channel = "website" if group.get("website_id") else "back_office"
            key = (("company", _label(group["company_id"])), ("sales_channel", channel))
            totals[key] = (count, revenue)
        return totals

    def grouped_totals(
        self, model: str, domain: list, groupby: list[str]
    ) -> list[tuple[dict[str, str], int, float]]:
        """Count records and sum ``amount_total`` per group: ``(names, count, total)``."""
        if self.api == "json2":
            # 19.0 deprecates read_group for formatted_read_group and its aggregate specs.
            rows = self._json2(
                model,
                "formatted_read_group",
                domain=domain,
                groupby=groupby,
                aggregates=["__count", "amount_total:sum"],
            )
            total_key = "amount_total:sum"
        else:
            rows = self._execute_kw(
                model, "read_group", [domain, ["amount_total:sum"], groupby], {"lazy": False}
            )
            total_key = "amount_total"
        return [
            (
                {name: _group_name(row.get(name)) for name in groupby},
                int(row["__count"]),
                float(row.get(total_key) or 0.0),
            )
            for row in _rows(rows, self.url)
        ]

    def close(self) -> None:
        """Close the HTTP session."""
        self._session.close()

    def _execute_kw(self, model: str, method: str, args: list, kwargs: dict) -> Any:
        if self._uid is None:
            uid = self._jsonrpc("common", "login", [self.database, self.login, self._api_key])
            if not isinstance(uid, int) or isinstance(uid, bool):
                raise SourceError(
                    "auth_failed",
                    f"odoo rpc: {self.url}: login {self.login!r} refused; check the API key",
                )
            self._uid = uid
        call = [self.database, self._uid, self._api_key, model, method, args, kwargs]
        return self._jsonrpc("object", "execute_kw", call)

    def _jsonrpc(self, service: str, method: str, args: list) -> Any:
        body = {
            "jsonrpc": "2.0",
            "method": "call",
            "id": next(self._ids),
            "params": {"service": service, "method": method, "args": args},
        }
        answer = self._post(f"{self.url}/jsonrpc", body, {})
        if "error" in answer:
            # JSON-RPC answers HTTP 200 and puts the server exception under error.data.
            data = answer["error"].get("data") or {}
            raise _rpc_error(
                self.url, data.get("name", ""), data.get("message", answer["error"])
            )
        return answer.get("result")

    def _json2(self, model: str, method: str, **params: Any) -> Any:
        headers = {"Authorization": f"bearer {self._api_key}", "X-Odoo-Database": self.database}
        return self._post(f"{self.url}/json/2/{model}/{method}", params, headers)

    def _post(self, url: str, body: dict, headers: dict[str, str]) -> Any:
        try:
            response = self._session.post(url, json=body, headers=headers, timeout=self.timeout)
            answer = response.json()
        except requests.Timeout as failure:
            raise SourceError(
                "timeout", f"odoo rpc: {url}: no answer in {self.timeout}s"
            ) from failure
        except requests.ConnectionError as failure:
            raise SourceError(
                "refused", f"odoo rpc: {url}: cannot connect: {failure}"
            ) from failure
        except requests.JSONDecodeError as failure:
            raise SourceError(
                "bad_response", f"odoo rpc: {url}: HTTP {response.status_code}, not JSON"
            ) from failure
        if response.status_code >= 400:
            # JSON-2 errors: HTTP 4xx/5xx with {name, message, arguments, context, debug}.
            details = answer if isinstance(answer, dict) else {}
            name, message = details.get("name", ""), details.get("message", response.reason)
            raise _rpc_error(url, name, message, response.status_code)
        return answer


def _odoo_datetime(value: datetime) -> str:
    # Odoo domains compare Datetime fields with naive-UTC text in this format.
    return value.strftime("%Y-%m-%d %H:%M:%S")


def _group_name(value: object) -> str:
    # A many2one group is [id, display_name]; an empty one is False.
    if isinstance(value, list) and len(value) == 2:
        return str(value[1])
    return "" if value in (None, False) else str(value)


def _rows(rows: object, url: str) -> list[dict]:
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise SourceError("bad_response", f"odoo rpc: {url}: expected a list of groups")
    return rows


def _rpc_error(url: str, name: str, message: object, status: int = 200) -> SourceError:
    if "AccessDenied" in name or status == 401:
        code, fix = "auth_failed", "check the login and API key (keys expire after 3 months)"
    elif "AccessError" in name or status == 403:
        code, fix = "permission_denied", "give the API user read access to sales and POS"
    else:
        code, fix = "bad_response", "see the Odoo server log"
    return SourceError(
        code, f"odoo rpc: {url}: {name or 'HTTP ' + str(status)}: {message}; {fix}"
    )
