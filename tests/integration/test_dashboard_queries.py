"""Every dashboard query, macros expanded as the ClickHouse plugin does, on the real engine.

The plugin expands ``$__conditionalAll`` and template variables in the browser, then its
backend expands the time macros; :func:`expand` does the same for the macros the
dashboards use, so the text that reaches ClickHouse here is the text Grafana would send.
The data is a known half hour: one sample per series per minute, a few incidents,
anomalies and alerts, so some panels can be checked value by value.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import pytest

from dashboards.build import DASHBOARDS, Dashboard, Panel, Variable
from pipeline.sink import Sink
from pipeline.storage import AlertRecord, IncidentRecord, Storage
from tillwatch.anomaly import REMINDER, Anomaly
from tillwatch.sample import BatchBuilder, Series

pytestmark = pytest.mark.integration

# ClickHouse applies the samples TTL against its own clock, so the half hour is recent:
# it ends on the hour an hour ago, which keeps one-minute buckets aligned.
END = (time.time() // 3600 - 1) * 3600
START = END - 1800
INTERVAL = 60
MINUTES = 30

ALL = None  # a query variable left at All
Choice = Sequence[str] | str | None

ODOO = {"service": "odoo", "instance": "shop-eu", "company": "1"}
KPI_VALUES = {
    ("kpi.orders_per_minute", "pos", "Shop A"): 10.0,
    ("kpi.orders_per_minute", "pos", "Shop B"): 5.0,
    ("kpi.orders_per_minute", "website", ""): 4.0,
    ("kpi.revenue_per_minute", "pos", "Shop A"): 250.0,
}
# One series for each platform signal the dashboards read, with every label they group by.
PLATFORM_VALUES = {
    "kpi.stock_sync_delay_seconds": 90.0,
    "postgres.replication_lag_seconds": 2.5,
    "postgres.replica_lag_bytes": 4096.0,
    "postgres.up": 1.0,
    "redis.hit_ratio": 0.97,
    "redis.evictions_per_second": 3.0,
    "redis.up": 0.0,
    "traefik.latency_p95_seconds": 0.35,
    "traefik.server_error_ratio": 0.02,
    "queue.depth": 12.0,
    "backup.last_success_age_seconds": 100_000.0,
    "backup.stale": 1.0,
}
PLATFORM_LABELS = {
    "replica": "replica-1", "router": "shop", "channel": "root", "state": "pending",
    "stanza": "main", "backup_type": "full",
}


def _series(signal: str, channel: str = "", store: str = "") -> Series:
    if signal.startswith("kpi."):
        labels = {**ODOO, "sales_channel": channel, "store": store}
        return Series.of(signal, {k: v for k, v in labels.items() if v})
    source = signal.split(".")[0]
    return Series.of(signal, {"service": source, "instance": f"{source}-1", **PLATFORM_LABELS})


SHOP_A = _series("kpi.orders_per_minute", "pos", "Shop A")
REPLICA_LAG = _series("postgres.replication_lag_seconds")
HIT_RATIO = _series("redis.hit_ratio")


# --- the plugin's expansion -----------------------------------------------------------


def _macro_args(sql: str, open_paren: int) -> tuple[list[str], int]:
    """Split the arguments of the call whose ``(`` is at ``open_paren``; return the end."""
    depth, args, start = 0, [], open_paren + 1
    for index in range(open_paren, len(sql)):
        char = sql[index]
        depth += (char == "(") - (char == ")")
        if char == "," and depth == 1:
            args.append(sql[start:index])
            start = index + 1
        if depth == 0:
            args.append(sql[start:index])
            return args, index + 1
    raise AssertionError(f"unbalanced macro call in: {sql[open_paren:open_paren + 80]}")


def _conditional_all(sql: str, choices: Mapping[str, Choice]) -> str:
    """``$__conditionalAll(cond, $var)``: ``1=1`` when the variable is at All or empty."""
    macro = "$__conditionalAll("
    while (at := sql.rfind(macro)) != -1:
        (condition, variable), end = _macro_args(sql, at + len(macro) - 1)
        choice = choices[variable.strip().lstrip("$").strip("{}")]
        kept = "1=1" if choice is ALL or choice == "" else condition
        sql = sql[:at] + kept + sql[end:]
    return sql


def _variables(
    sql: str, choices: Mapping[str, Choice], options: Mapping[str, list[str]]
) -> str:
    """Grafana's template replacement, with the plugin's format for multiple values."""

    def values(name: str) -> list[str] | str:
        choice = choices[name]
        return options[name] if choice is ALL else choice  # type: ignore[return-value]

    def replace(match: re.Match[str]) -> str:
        name, fmt = match.group(1) or match.group(3), match.group(2)
        value = values(name)
        if isinstance(value, str):
            return f"'{value}'" if fmt == "singlequote" else value
        return ",".join(f"'{v}'" for v in value)

    return re.sub(r"\$\{(\w+)(?::(\w+))?\}|\$(?!__)(\w+)", replace, sql)


def _time_macros(sql: str, start: float, end: float, interval: int) -> str:
    """The plugin backend's macros, as its Go code writes them."""
    sql = re.sub(r"\$__timeFilter\(([^()]+)\)",
                 rf"\1 >= toDateTime({int(start)}) AND \1 <= toDateTime({int(end)})", sql)
    sql = re.sub(r"\$__timeInterval\(([^()]+)\)",
                 rf"toStartOfInterval(toDateTime(\1), INTERVAL {interval} second)", sql)
    sql = sql.replace("$__fromTime", f"toDateTime({int(start)})")
    sql = sql.replace("$__toTime", f"toDateTime({int(end)})")
    return sql.replace("$__interval_s", str(interval))


def expand(
    sql: str,
    database: str,
    choices: Mapping[str, Choice] | None = None,
    options: Mapping[str, list[str]] | None = None,
) -> str:
    """The SQL Grafana would send for a panel over [START, END] at one-minute buckets."""
    choices = choices or {}
    sql = _conditional_all(sql, choices)
    sql = _variables(sql, choices, options or {})
    sql = _time_macros(sql, START, END, INTERVAL)
    assert "$" not in sql, f"unexpanded macro or variable left in:\n{sql}"
    return re.sub(r"\btillwatch\.", f"{database}.", sql)


# --- the data --------------------------------------------------------------------------


def _load_samples(storage: Storage) -> None:
    builder = BatchBuilder()
    for minute in range(MINUTES):
        ts = START + minute * INTERVAL + INTERVAL / 2
        for (signal, channel, store), value in KPI_VALUES.items():
            builder.add(ts, signal, _series(signal, channel, store).labels, value)
        for signal, value in PLATFORM_VALUES.items():
            builder.add(ts, signal, _series(signal).labels, value)

    with Sink(storage, wall_clock=lambda: END) as sink:
        sink.write(builder.build())
        sink.flush()


def _load_events(storage: Storage) -> None:
    storage.upsert_incidents([
        # The replica's lag is in both the page and its own ticket: the page wins.
        IncidentRecord("inc-page", START + 300, START + 300, "page", "odoo",
                       summary="orders down", series_ids=[SHOP_A.id, REPLICA_LAG.id]),
        IncidentRecord("inc-ticket", START + 600, START + 600, "ticket", "postgres",
                       series_ids=[REPLICA_LAG.id]),
        IncidentRecord("inc-info", START + 60, START + 60, "info", "backup"),
        IncidentRecord("inc-redis", START + 60, START + 60, "ticket", "redis",
                       series_ids=[HIT_RATIO.id]),
    ])
    # A later state resolves the Redis incident: readers must see only that one.
    storage.upsert_incidents([
        IncidentRecord("inc-redis", START + 60, START + 900, "ticket", "redis",
                       resolved=START + 900, series_ids=[HIT_RATIO.id]),
    ])
    storage.insert_anomalies([
        _anomaly(SHOP_A, START + 420),       # inside the open page incident
        _anomaly(REPLICA_LAG, START + 660),  # inside the page and the ticket
        _anomaly(HIT_RATIO, START + 700),    # inside the Redis ticket, before it resolved
        _anomaly(HIT_RATIO, START + 1000),   # after it resolved: no incident holds it
        # Reminders that two events go on: the anomaly panels count events, not these.
        _anomaly(SHOP_A, START + 540, reminder=True),
        _anomaly(HIT_RATIO, START + 1120, reminder=True),
    ])
    storage.insert_alerts([
        AlertRecord(START + 320, "inc-page", "page", "firing",
                    {"service": "odoo", "alertname": "BusinessKpiHurt"},
                    {"summary": "orders down"}),
        AlertRecord(START + 620, "inc-ticket", "ticket", "firing",
                    {"service": "postgres", "alertname": "InfrastructureAnomaly"}),
        AlertRecord(START + 900, "inc-redis", "ticket", "resolved", {"service": "redis"}),
    ])


def _anomaly(series: Series, ts: float, reminder: bool = False) -> Anomaly:
    return Anomaly(ts=ts, series_id=series.id, signal=series.signal,
                   labels=dict(series.labels), score=0.99, observed=1.0, expected=2.0,
                   lower=1.5, upper=2.5, direction="down", detector="seasonal",
                   extra={REMINDER: 1.0} if reminder else {})


@dataclass
class Estate:
    """The loaded database and a way to run a dashboard's panels and variables on it."""

    storage: Storage

    def options(self, variable: Variable) -> list[str]:
        sql = expand(variable.sql, self.storage.database)
        return [str(row[0]) for row in self.storage.client.query(sql).result_rows]

    def run(self, dashboard: Dashboard, title: str, **choices: Choice) -> list[tuple]:
        panel = _panel(dashboard, title)
        return self.rows(dashboard, panel, choices)

    def rows(self, dashboard: Dashboard, panel: Panel, choices: Mapping[str, Choice]):
        queried = [v for v in dashboard.variables if v.sql]
        everything = {v.name: ALL if v.sql else "" for v in dashboard.variables}
        options = {v.name: self.options(v) for v in queried}
        sql = expand(panel.sql, self.storage.database, {**everything, **choices}, options)
        return self.storage.client.query(sql).result_rows


def _panel(dashboard: Dashboard, title: str) -> Panel:
    return next(panel for panel in dashboard.panels if panel.title == title)


@pytest.fixture
def estate(storage: Storage) -> Iterator[Estate]:
    _load_samples(storage)
    _load_events(storage)
    yield Estate(storage)


BUSINESS, PLATFORM = DASHBOARDS


# --- tests -----------------------------------------------------------------------------


def test_every_panel_and_variable_query_runs_and_finds_the_loaded_data(estate: Estate):
    empty = []
    for dashboard in DASHBOARDS:
        for variable in dashboard.variables:
            if variable.sql and not estate.options(variable):
                empty.append(f"{dashboard.title}: variable {variable.name}")
        for panel in dashboard.panels:
            if not estate.rows(dashboard, panel, {}):
                empty.append(f"{dashboard.title}: {panel.title}")

    assert empty == []


def test_variables_offer_the_channels_stores_and_services_stored(estate: Estate):
    offered = {v.name: estate.options(v) for v in BUSINESS.variables if v.sql}

    assert offered["channel"] == ["pos", "website"]
    assert offered["store"] == ["Shop A", "Shop B"]
    assert offered["service"] == ["backup", "odoo", "postgres", "redis"]


def test_orders_per_minute_by_channel_add_up_the_stores(estate: Estate):
    every = estate.run(BUSINESS, "Orders per minute by channel")
    one_store = estate.run(BUSINESS, "Orders per minute by channel", store=["Shop A"])

    by_channel = defaultdict(set)
    for _, channel, value in every:
        by_channel[channel].add(value)
    assert by_channel == {"pos": {15.0}, "website": {4.0}}
    assert len(every) == 2 * MINUTES
    assert {(channel, value) for _, channel, value in one_store} == {("pos", 10.0)}


def test_open_incidents_by_tier_reads_the_newest_state_page_first(estate: Estate):
    rows = estate.run(BUSINESS, "Open incidents by tier")

    assert [(tier, count, services) for tier, count, services, _ in rows] == [
        ("page", 1, "odoo"), ("ticket", 1, "postgres"), ("info", 1, "backup"),
    ]


def test_anomalies_take_the_tier_of_the_incident_holding_their_series(estate: Estate):
    rows = estate.run(BUSINESS, "Anomalies by incident tier")

    totals: dict[str, int] = defaultdict(int)
    for _, tier, count in rows:
        totals[tier] += count
    assert totals == {"page": 2, "ticket": 1, "none": 1}


def test_anomaly_panels_count_events_begun_not_reminders_of_ongoing_ones(estate: Estate):
    in_range = estate.run(BUSINESS, "Anomalies in range")
    by_service = estate.run(BUSINESS, "Anomalies by service")

    totals: dict[str, int] = defaultdict(int)
    for _, service, count in by_service:
        totals[service] += count
    assert in_range == [(4,)]
    assert totals == {"odoo": 1, "postgres": 1, "redis": 2}


def test_an_alert_link_narrows_incidents_and_alerts_to_its_incident(estate: Estate):
    alerts = estate.run(BUSINESS, "Recent alerts")
    linked = estate.run(BUSINESS, "Recent alerts", service=["odoo"], incident_id="inc-page")
    incidents = estate.run(BUSINESS, "Incidents in range", incident_id="inc-page")

    assert [row[-1] for row in alerts] == ["inc-redis", "inc-ticket", "inc-page"]
    assert [(row[1], row[2], row[-1]) for row in linked] == [("page", "firing", "inc-page")]
    assert [(row[1], row[3], row[-2]) for row in incidents] == [("page", "open", "inc-page")]


def test_platform_panels_show_pipeline_throughput_down_targets_and_stale_backups(
    estate: Estate,
):
    per_source = estate.run(PLATFORM, "Samples stored per minute by signal prefix")
    down = estate.run(PLATFORM, "Targets down")
    backups = estate.run(PLATFORM, "Backups against their RPO")

    kpi_series = len(KPI_VALUES) + 1  # the stock sync delay is a KPI too
    assert {(source, value) for _, source, value in per_source if source == "kpi"} == {
        ("kpi", float(kpi_series))
    }
    assert down == [(1,)]
    assert backups == [("main", "backup-1", 100_000.0, 1.0)]
