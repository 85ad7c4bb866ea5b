"""Build tillwatch's Grafana dashboards from panel tables and write them as JSON.

Run ``python -m dashboards.build`` after changing a table below; the generated
``dashboards/*.json`` are committed, and a unit test fails when they drift from this file.

Why plain dicts rather than a dashboard SDK: the grafana-foundation-sdk has no ClickHouse
query type (a custom ``Dataquery`` subclass would be needed for every target) and its
PyPI versions are epoch-numbered per Grafana branch, so an unpinned install resolves to
an old release; grafanalib is unmaintained. The dashboard JSON model is small and
stable, and every panel here is one row of a table, so a few dicts cost less than a
dependency.

Every query reads tillwatch's tables as ``tillwatch.<table>`` (the database the compose
stack and the default configuration use) and speaks the ClickHouse plugin's macros:
``$__timeFilter``, ``$__timeInterval``, ``$__interval_s`` and ``$__conditionalAll``.
Samples carry no labels; label filters and legends join the ``series`` registry.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tillwatch.anomaly import REMINDER

DATASOURCE = {"type": "grafana-clickhouse-datasource", "uid": "tillwatch-clickhouse"}
SCHEMA_VERSION = 39  # what Grafana 11.2 writes; older models are migrated on load
FOLDER = Path(__file__).resolve().parent

# The plugin's query target format: 0 turns long (time, label, value) rows into one
# series per label value; 1 keeps rows as a table.
TIME_SERIES, TABLE = 0, 1

TIERS = "['page', 'ticket', 'info']"
TIER_COLOURS = {"page": "red", "ticket": "orange", "info": "blue", "none": "text"}
SOURCE = "splitByChar('.', signal)[1]"
# Anomaly.service: the series' service label, else the first part of its signal.
ANOMALY_SERVICE = "if(labels['service'] != '', labels['service'], splitByChar('.', signal)[1])"
# An anomaly that starts an event, not a reminder that the event goes on: the anomaly
# panels count events, and an event of a day would otherwise count 720 times.
NEW_EVENT = f"extra['{REMINDER}'] = 0"


def label(key: str) -> str:
    """SQL reading one label of a series in the ``series`` registry."""
    return f"labels['{key}']"


def is_signal(*names: str) -> str:
    """SQL condition selecting rows of the given signals."""
    if len(names) == 1:
        return f"signal = '{names[0]}'"
    return "signal IN (" + ", ".join(f"'{name}'" for name in names) + ")"


def when_chosen(condition: str, variable: str) -> str:
    """A filter the plugin drops (``1=1``) while the variable is at All."""
    return f"$__conditionalAll({condition}, ${variable})"


def chosen(expression: str, variable: str) -> str:
    """Keep rows whose expression is one of the variable's chosen values."""
    return when_chosen(f"{expression} IN (${{{variable}:singlequote}})", variable)


def series_sql(
    match: str,
    *,
    legend: Sequence[str] = (),
    per_series: str = "avg",
    across: str = "sum",
    where: Sequence[str] = (),
) -> str:
    """SQL for a time series of one or more signals, one line per legend value.

    Each series is first reduced per time bucket (``per_series``), then the series
    sharing a legend value are combined (``across``): rates add up over stores, lags
    take the worst replica.

    Args:
        match: condition on ``signal`` choosing the samples, e.g. from :func:`is_signal`.
        legend: SQL expressions over ``labels``/``signal`` naming a line; joined with
            `` / ``. Empty gives one line.
        per_series: aggregate of one series' samples inside a bucket.
        across: aggregate combining series of the same line.
        where: conditions over ``labels``/``signal``, e.g. from :func:`chosen`.

    Returns:
        The query: ``time``, then ``series`` when there is a legend, then ``value``.
    """
    name = ""
    if legend:
        parts = ", ".join(legend)
        name = f"arrayStringConcat(arrayFilter(x -> x != '', [{parts}]), ' / ') AS series, "
    filters = " AND ".join(where) or "1 = 1"
    group = "time, series" if legend else "time"
    return (
        f"SELECT time, {name}{across}(v) AS value\n"
        "FROM (\n"
        f"    SELECT $__timeInterval(ts) AS time, series_id, {per_series}(value) AS v\n"
        "    FROM tillwatch.samples\n"
        f"    WHERE {match} AND $__timeFilter(ts)\n"
        "    GROUP BY time, series_id\n"
        ") AS points\n"
        "INNER JOIN (\n"
        f"    SELECT series_id, signal, labels FROM tillwatch.series FINAL WHERE {match}\n"
        ") AS registry USING (series_id)\n"
        f"WHERE {filters}\n"
        f"GROUP BY {group}\n"
        "ORDER BY time"
    )


@dataclass(frozen=True)
class Panel:
    """One panel: a row of a dashboard table.

    Attributes:
        title: the panel title.
        sql: the query, with ``tillwatch.`` table prefixes and plugin macros.
        unit: Grafana unit id (``s``, ``percentunit``, ``short`` ...).
        kind: Grafana panel type: ``timeseries``, ``stat``, ``table`` or
            ``state-timeline``.
        grid: x, y, width, height (24 columns; 30 px rows).
        description: what the panel answers, shown on hover.
        options: panel options merged over the kind's defaults.
        custom: ``fieldConfig.defaults.custom`` merged over the kind's defaults.
        defaults: other ``fieldConfig.defaults`` keys (mappings, thresholds, ...).
    """

    title: str
    sql: str
    unit: str
    kind: str
    grid: tuple[int, int, int, int]
    description: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)
    custom: Mapping[str, Any] = field(default_factory=dict)
    defaults: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Variable:
    """A dashboard variable: a ClickHouse query (options) or a free text box.

    Attributes:
        name: the variable name used in SQL as ``$name``.
        label: what the dashboard shows.
        sql: the options query (one column), or empty for a text box.
        description: shown on hover.
    """

    name: str
    label: str
    sql: str = ""
    description: str = ""


@dataclass(frozen=True)
class Dashboard:
    """A dashboard: identity, variables and the panel table."""

    uid: str
    title: str
    description: str
    tags: tuple[str, ...]
    variables: tuple[Variable, ...]
    panels: tuple[Panel, ...]
    filename: str


_LEGEND_DISPLAY = "${__field.labels.series}"
_TIMESERIES_OPTIONS = {
    "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
    "tooltip": {"mode": "multi", "sort": "desc"},
}
_KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    "timeseries": {
        "options": _TIMESERIES_OPTIONS,
        "custom": {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10,
                   "showPoints": "never", "spanNulls": False},
        "format": TIME_SERIES,
    },
    "state-timeline": {
        "options": {"showValue": "never", "mergeValues": True, "rowHeight": 0.8,
                    "legend": {"displayMode": "list", "placement": "bottom",
                               "showLegend": False}},
        "custom": {"fillOpacity": 80, "lineWidth": 0},
        "format": TIME_SERIES,
    },
    "stat": {
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "colorMode": "value", "graphMode": "none", "textMode": "auto"},
        "custom": {},
        "format": TABLE,
    },
    "table": {
        "options": {"showHeader": True, "cellHeight": "sm"},
        "custom": {"align": "auto", "cellOptions": {"type": "auto"}},
        "format": TABLE,
    },
}

# --- business impact --------------------------------------------------------------------

_KPI_FILTERS = (
    chosen(label("sales_channel"), "channel"),
    chosen(label("store"), "store"),
)
_ORDERS = is_signal("kpi.orders_per_minute")
_REVENUE = is_signal("kpi.revenue_per_minute")
_CHANNEL = (label("sales_channel"),)
_STORE = (label("sales_channel"), label("store"))
_STACKED = {"stacking": {"mode": "normal", "group": "A"}, "fillOpacity": 30}
_BARS = {"drawStyle": "bars", "fillOpacity": 80, "stacking": {"mode": "normal", "group": "A"}}

_SERVICE_OF_INCIDENT = chosen("service", "service")
_INCIDENT_CHOSEN = "('${incident_id}' = '' OR incident_id = '${incident_id}')"

_OPEN_NOW_SQL = f"""SELECT countIf(tier = 'page') AS page,
       countIf(tier = 'ticket') AS ticket,
       countIf(tier = 'info') AS info
FROM tillwatch.incidents FINAL
WHERE resolved IS NULL AND {_SERVICE_OF_INCIDENT}"""

_ANOMALY_COUNT_SQL = f"""SELECT count() AS anomalies
FROM tillwatch.anomalies
WHERE $__timeFilter(ts) AND {NEW_EVENT} AND {chosen(ANOMALY_SERVICE, "service")}"""

_OPEN_BY_TIER_SQL = f"""SELECT tier,
       count() AS open,
       arrayStringConcat(arraySort(groupUniqArray(service)), ', ') AS services,
       min(opened) AS oldest_opened
FROM tillwatch.incidents FINAL
WHERE resolved IS NULL AND {_SERVICE_OF_INCIDENT}
GROUP BY tier
ORDER BY indexOf({TIERS}, tier)"""

_INCIDENTS_SQL = f"""SELECT opened, tier, service,
       if(resolved IS NULL, 'open', 'resolved') AS state, summary, impact, root_cause,
       incident_id, updated
FROM tillwatch.incidents FINAL
WHERE opened <= $__toTime AND (resolved IS NULL OR resolved >= $__fromTime)
  AND {_SERVICE_OF_INCIDENT} AND {_INCIDENT_CHOSEN}
ORDER BY indexOf({TIERS}, tier), opened DESC
LIMIT 200"""

# An anomaly takes the highest tier among the incidents that held its series when it
# happened (indexOf ranks page first), or "none" when no incident held it.
_ANOMALIES_BY_TIER_SQL = f"""SELECT $__timeInterval(ts) AS time,
       if(tier = '', 'none', tier) AS series,
       count() AS value
FROM (
    SELECT a.ts AS ts, any(a.signal) AS signal, any(a.labels) AS labels,
           {TIERS}[minIf(indexOf({TIERS}, i.tier),
                         i.incident_id != '' AND a.ts >= i.opened
                         AND (i.resolved IS NULL OR a.ts <= i.resolved))] AS tier
    FROM tillwatch.anomalies AS a
    LEFT JOIN (
        SELECT incident_id, tier, opened, resolved, arrayJoin(series_ids) AS series_id
        FROM tillwatch.incidents FINAL
    ) AS i ON a.series_id = i.series_id
    WHERE $__timeFilter(a.ts) AND a.{NEW_EVENT}
    GROUP BY a.ts, a.series_id, a.detector
)
WHERE {chosen(ANOMALY_SERVICE, "service")}
GROUP BY time, series
ORDER BY time"""

_ANOMALIES_BY_SERVICE_SQL = f"""SELECT $__timeInterval(ts) AS time,
       {ANOMALY_SERVICE} AS series,
       count() AS value
FROM tillwatch.anomalies
WHERE $__timeFilter(ts) AND {NEW_EVENT} AND {chosen(ANOMALY_SERVICE, "service")}
GROUP BY time, series
ORDER BY time"""

_ALERTS_SQL = f"""SELECT ts AS time, tier, status, labels['service'] AS service,
       labels['alertname'] AS alertname, annotations['summary'] AS summary, incident_id
FROM tillwatch.alerts
WHERE $__timeFilter(ts) AND {chosen("labels['service']", "service")} AND {_INCIDENT_CHOSEN}
ORDER BY ts DESC
LIMIT 200"""

_TIER_MAPPINGS = [
    {"type": "value", "options": {
        tier: {"color": colour, "index": n} for n, (tier, colour) in
        enumerate(TIER_COLOURS.items())}},
]

BUSINESS = Dashboard(
    uid="tillwatch",
    title="tillwatch — business impact",
    description="Are we losing orders, and which part of the platform is to blame.",
    tags=("tillwatch", "business", "kpi"),
    variables=(
        Variable("channel", "Sales channel",
                 "SELECT DISTINCT labels['sales_channel'] FROM tillwatch.series FINAL "
                 "WHERE signal = 'kpi.orders_per_minute' ORDER BY 1",
                 "Odoo sales channel: pos, website, back_office"),
        Variable("store", "Store",
                 "SELECT DISTINCT labels['store'] FROM tillwatch.series FINAL "
                 "WHERE signal = 'kpi.orders_per_minute' AND labels['store'] != '' ORDER BY 1",
                 "POS config; choosing stores leaves out channels without stores"),
        Variable("service", "Service",
                 "SELECT DISTINCT service FROM (SELECT service FROM tillwatch.incidents "
                 f"UNION ALL SELECT {ANOMALY_SERVICE} FROM tillwatch.anomalies) ORDER BY 1",
                 "The service an incident, anomaly or alert is blamed on"),
        Variable("incident_id", "Incident", "",
                 "One incident id (inc-...); alert links fill it in. Empty shows all."),
    ),
    panels=(
        Panel("Orders per minute", series_sql(_ORDERS, where=_KPI_FILTERS), "short", "stat",
              (0, 0, 6, 4), "All chosen channels and stores, latest bucket",
              options={"graphMode": "area"}),
        Panel("Revenue per minute", series_sql(_REVENUE, where=_KPI_FILTERS), "short", "stat",
              (6, 0, 6, 4), "Order totals per minute as stored (no currency conversion)",
              options={"graphMode": "area"}),
        Panel("Open incidents now", _OPEN_NOW_SQL, "short", "stat", (12, 0, 6, 4),
              "Incidents not yet resolved, by tier",
              defaults={"thresholds": {"mode": "absolute", "steps": [
                  {"color": "green", "value": None}, {"color": "red", "value": 1}]}}),
        Panel("Anomalies in range", _ANOMALY_COUNT_SQL, "short", "stat", (18, 0, 6, 4),
              "Anomaly events begun in the range; reminders of ongoing ones not counted"),
        Panel("Orders per minute by channel",
              series_sql(_ORDERS, legend=_CHANNEL, where=_KPI_FILTERS),
              "short", "timeseries", (0, 4, 12, 8), "kpi.orders_per_minute summed per channel"),
        Panel("Revenue per minute by channel",
              series_sql(_REVENUE, legend=_CHANNEL, where=_KPI_FILTERS),
              "short", "timeseries", (12, 4, 12, 8),
              "kpi.revenue_per_minute summed per channel"),
        Panel("Orders per minute by store",
              series_sql(_ORDERS, legend=_STORE,
                         where=(*_KPI_FILTERS, f"{label('store')} != ''")),
              "short", "timeseries", (0, 12, 12, 8),
              "POS orders per minute, one line per store"),
        Panel("Stock sync delay",
              series_sql(is_signal("kpi.stock_sync_delay_seconds"), legend=(label("company"),),
                         across="max"),
              "s", "timeseries", (12, 12, 12, 8),
              "Mean lateness of pickings done, per company: stock that reaches shelves late"),
        Panel("Open incidents by tier", _OPEN_BY_TIER_SQL, "short", "table", (0, 20, 8, 8),
              "Unresolved incidents now; page first"),
        Panel("Incidents in range", _INCIDENTS_SQL, "short", "table", (8, 20, 16, 8),
              "Incidents open at any time in the range, page first, newest first",
              defaults={"mappings": _TIER_MAPPINGS}),
        Panel("Anomalies by incident tier", _ANOMALIES_BY_TIER_SQL, "short", "timeseries",
              (0, 28, 12, 8), "Anomaly events begun per bucket, by the highest tier of an "
              "incident holding their series at the time; none when no incident holds them",
              custom=_BARS),
        Panel("Anomalies by service", _ANOMALIES_BY_SERVICE_SQL, "short", "timeseries",
              (12, 28, 12, 8), "Anomaly events begun per bucket by the service of their series",
              custom=_BARS),
        Panel("Recent alerts", _ALERTS_SQL, "short", "table", (0, 36, 24, 9),
              "Alert events sent to Alertmanager in the range, newest first",
              defaults={"mappings": _TIER_MAPPINGS}),
    ),
    filename="business-impact.json",
)

# --- platform ---------------------------------------------------------------------------

_INSTANCE = chosen(label("instance"), "instance")
_BY_INSTANCE = (label("instance"),)
_UP = "signal LIKE '%.up'"
_UP_MAPPINGS = [{"type": "value", "options": {
    "0": {"text": "down", "color": "red", "index": 0},
    "1": {"text": "up", "color": "green", "index": 1}}}]
_RATIO_01 = {"min": 0, "max": 1}
_DEFAULT_RPO_SECONDS = 86_400  # the backup collector's default rpo_seconds

_SAMPLES_PER_MINUTE_SQL = """SELECT $__timeInterval(ts) AS time,
       splitByChar('.', signal)[1] AS series,
       count() * 60 / $__interval_s AS value
FROM tillwatch.samples
WHERE $__timeFilter(ts)
GROUP BY time, series
ORDER BY time"""

_SAMPLES_TOTAL_SQL = """SELECT $__timeInterval(ts) AS time,
       count() * 60 / $__interval_s AS value
FROM tillwatch.samples
WHERE $__timeFilter(ts)
GROUP BY time
ORDER BY time"""

_SERIES_REPORTING_SQL = """SELECT uniqExact(series_id) AS series
FROM tillwatch.samples
WHERE $__timeFilter(ts)"""

_NEWEST_SAMPLE_SQL = """SELECT dateDiff('second', max(ts), now64(3, 'UTC')) AS age
FROM tillwatch.samples
WHERE $__timeFilter(ts)"""

_SOURCES_DOWN_SQL = f"""SELECT countIf(latest = 0) AS down
FROM (
    SELECT series_id, argMax(value, ts) AS latest
    FROM tillwatch.samples
    WHERE {_UP} AND $__timeFilter(ts)
    GROUP BY series_id
)"""

_BACKUP_SIGNALS = is_signal("backup.last_success_age_seconds", "backup.stale")
_BACKUP_RPO_SQL = f"""SELECT labels['stanza'] AS stanza,
       labels['instance'] AS instance,
       minIf(latest, signal = 'backup.last_success_age_seconds') AS newest_backup_age,
       maxIf(latest, signal = 'backup.stale') AS past_rpo
FROM (
    SELECT series_id, argMax(value, ts) AS latest
    FROM tillwatch.samples
    WHERE {_BACKUP_SIGNALS} AND $__timeFilter(ts)
    GROUP BY series_id
) AS points
INNER JOIN (
    SELECT series_id, signal, labels FROM tillwatch.series FINAL WHERE {_BACKUP_SIGNALS}
) AS registry USING (series_id)
WHERE {_INSTANCE}
GROUP BY stanza, instance
ORDER BY past_rpo DESC, newest_backup_age DESC"""

_RPO_LINE = {"thresholdsStyle": {"mode": "line"}}
_RPO_THRESHOLDS = {"thresholds": {"mode": "absolute", "steps": [
    {"color": "green", "value": None}, {"color": "red", "value": _DEFAULT_RPO_SECONDS}]}}
_PAST_RPO_MAPPINGS = [{"type": "value", "options": {
    "0": {"text": "within RPO", "color": "green", "index": 0},
    "1": {"text": "past RPO", "color": "red", "index": 1}}}]

PLATFORM = Dashboard(
    uid="tillwatch-platform",
    title="tillwatch — platform",
    description="The infrastructure under the shop, and tillwatch's own pipeline.",
    tags=("tillwatch", "platform", "sre"),
    variables=(
        Variable("instance", "Instance",
                 "SELECT DISTINCT labels['instance'] FROM tillwatch.series FINAL "
                 "WHERE labels['instance'] != '' ORDER BY 1",
                 "The scrape target (a database, a Redis, a Traefik ...)"),
    ),
    panels=(
        Panel("Samples stored per minute", _SAMPLES_TOTAL_SQL, "short", "stat", (0, 0, 6, 4),
              "tillwatch's own throughput: samples in the samples table per minute, "
              "the mean over the range (the current minute is still filling)",
              options={"graphMode": "area",
                       "reduceOptions": {"calcs": ["mean"], "fields": "", "values": False}}),
        Panel("Series reporting", _SERIES_REPORTING_SQL, "short", "stat", (6, 0, 6, 4),
              "Distinct series with a sample in the range"),
        Panel("Newest sample age", _NEWEST_SAMPLE_SQL, "s", "stat", (12, 0, 6, 4),
              "How far behind the stored data is; grows when collectors or the sink stall",
              defaults={"thresholds": {"mode": "absolute", "steps": [
                  {"color": "green", "value": None}, {"color": "orange", "value": 120},
                  {"color": "red", "value": 600}]}}),
        Panel("Targets down", _SOURCES_DOWN_SQL, "short", "stat", (18, 0, 6, 4),
              "Targets whose last scrape in the range failed (<source>.up = 0)",
              defaults={"thresholds": {"mode": "absolute", "steps": [
                  {"color": "green", "value": None}, {"color": "red", "value": 1}]}}),
        Panel("Scrape targets up",
              series_sql(_UP, legend=(SOURCE, label("instance")), per_series="min",
                         across="min", where=(_INSTANCE,)),
              "short", "state-timeline", (0, 4, 24, 7), "<source>.up per target",
              defaults={"mappings": _UP_MAPPINGS}),
        Panel("Replica lag",
              series_sql(is_signal("postgres.replication_lag_seconds"), legend=_BY_INSTANCE,
                         per_series="max", across="max", where=(_INSTANCE,)),
              "s", "timeseries", (0, 11, 12, 8),
              "On each replica: age of the last replayed commit"),
        Panel("Replica lag in bytes",
              series_sql(is_signal("postgres.replica_lag_bytes"),
                         legend=(label("instance"), label("replica")),
                         per_series="max", across="max", where=(_INSTANCE,)),
              "bytes", "timeseries", (12, 11, 12, 8),
              "On the primary: WAL not yet replayed by each standby"),
        Panel("Redis hit ratio",
              series_sql(is_signal("redis.hit_ratio"), legend=_BY_INSTANCE, across="min",
                         where=(_INSTANCE,)),
              "percentunit", "timeseries", (0, 19, 12, 8),
              "Keyspace hits / lookups", defaults=_RATIO_01),
        Panel("Redis evictions per second",
              series_sql(is_signal("redis.evictions_per_second"), legend=_BY_INSTANCE,
                         where=(_INSTANCE,)),
              "short", "timeseries", (12, 19, 12, 8),
              "Keys evicted by maxmemory; sessions and carts lost"),
        Panel("Traefik p95 latency by router",
              series_sql(is_signal("traefik.latency_p95_seconds"), legend=(label("router"),),
                         per_series="max", across="max", where=(_INSTANCE,)),
              "s", "timeseries", (0, 27, 12, 8),
              "95th percentile request duration, estimated from histogram buckets"),
        Panel("Traefik 5xx ratio by router",
              series_sql(is_signal("traefik.server_error_ratio"), legend=(label("router"),),
                         per_series="max", across="max", where=(_INSTANCE,)),
              "percentunit", "timeseries", (12, 27, 12, 8),
              "Share of requests answered 5xx", defaults=_RATIO_01),
        Panel("Queue depth by channel and state",
              series_sql(is_signal("queue.depth"), legend=(label("channel"), label("state")),
                         per_series="max", where=(_INSTANCE,)),
              "short", "timeseries", (0, 35, 12, 8), "queue_job backlog", custom=_STACKED),
        Panel("Backup age by stanza",
              series_sql(is_signal("backup.last_success_age_seconds"),
                         legend=(label("stanza"),), per_series="max", across="min",
                         where=(_INSTANCE,)),
              "s", "timeseries", (12, 35, 12, 8),
              f"Age of the newest backup of any type; the line is the default RPO "
              f"({_DEFAULT_RPO_SECONDS // 3600} h), stanzas may set their own",
              custom=_RPO_LINE, defaults=_RPO_THRESHOLDS),
        Panel("Backups against their RPO", _BACKUP_RPO_SQL, "s", "table", (0, 43, 12, 7),
              "Latest backup age per stanza and the collector's verdict against the "
              "stanza's own RPO (backup.stale)",
              defaults={"mappings": _PAST_RPO_MAPPINGS}),
        Panel("Samples stored per minute by signal prefix", _SAMPLES_PER_MINUTE_SQL, "short",
              "timeseries", (12, 43, 12, 7),
              "tillwatch's own pipeline: stored samples by the first part of their signal "
              "(kpi, postgres, redis ...); a prefix falling to zero is a collector stalled",
              custom=_STACKED),
    ),
    filename="platform.json",
)

DASHBOARDS = (BUSINESS, PLATFORM)


def render_target(sql: str, kind: str) -> dict[str, Any]:
    """The query target of a panel: raw SQL for the ClickHouse plugin."""
    fmt = _KIND_DEFAULTS[kind]["format"]
    return {
        "datasource": dict(DATASOURCE),
        "editorType": "sql",
        "format": fmt,
        "queryType": "timeseries" if fmt == TIME_SERIES else "table",
        "rawSql": sql,
        "refId": "A",
    }


def render_panel(panel: Panel, panel_id: int) -> dict[str, Any]:
    """The Grafana JSON of one panel."""
    kind = _KIND_DEFAULTS[panel.kind]
    x, y, w, h = panel.grid
    defaults: dict[str, Any] = {"unit": panel.unit, **panel.defaults}
    defaults["custom"] = {**kind["custom"], **panel.custom}
    if " AS series" in panel.sql and panel.kind != "table":
        defaults["displayName"] = _LEGEND_DISPLAY

    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": dict(DATASOURCE),
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {**kind["options"], **panel.options},
        "targets": [render_target(panel.sql, panel.kind)],
    }


def render_variable(variable: Variable) -> dict[str, Any]:
    """The Grafana JSON of one template variable."""
    if not variable.sql:
        return {"type": "textbox", "name": variable.name, "label": variable.label,
                "description": variable.description, "query": "",
                "current": {"text": "", "value": ""}, "hide": 0}
    return {
        "type": "query",
        "name": variable.name,
        "label": variable.label,
        "description": variable.description,
        "datasource": dict(DATASOURCE),
        "definition": variable.sql,
        "query": variable.sql,
        "refresh": 2,  # on time range change: new stores and services appear
        "includeAll": True,
        "multi": True,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
        "sort": 1,
        "hide": 0,
    }


def render_dashboard(dashboard: Dashboard) -> dict[str, Any]:
    """The Grafana JSON model of a dashboard, ready for file provisioning."""
    panels = [render_panel(panel, n) for n, panel in enumerate(dashboard.panels, start=1)]
    return {
        "id": None,
        "uid": dashboard.uid,
        "title": dashboard.title,
        "description": dashboard.description,
        "tags": list(dashboard.tags),
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "refresh": "1m",
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "links": [{"type": "dashboards", "tags": ["tillwatch"], "asDropdown": False,
                   "title": "tillwatch", "includeVars": False, "keepTime": True}],
        "annotations": {"list": []},
        "templating": {"list": [render_variable(v) for v in dashboard.variables]},
        "panels": panels,
    }


def dump(model: Mapping[str, Any]) -> str:
    """The file text of a dashboard: stable key order, so diffs stay readable."""
    return json.dumps(model, indent=2, ensure_ascii=False, sort_keys=True) + "\n"


def write(folder: Path = FOLDER) -> list[Path]:
    """Write every dashboard to ``folder``; return the files written."""
    written = []
    for dashboard in DASHBOARDS:
        path = folder / dashboard.filename
        path.write_text(dump(render_dashboard(dashboard)), encoding="utf-8")
        written.append(path)
    return written


def main() -> None:
    """Regenerate ``dashboards/*.json``."""
    for path in write():
        print(path.relative_to(FOLDER.parent))


if __name__ == "__main__":
    main()
