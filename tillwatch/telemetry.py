"""tillwatch's own metrics, served on ``/metrics`` by prometheus-client.

Every stage counts what it took in, passed on, stored and dead-lettered, so an SRE can
watch the watcher with the same Prometheus that scrapes everything else.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

SAMPLES_IN = Counter("tillwatch_samples_in_total", "Samples a stage received", ["stage"])
SAMPLES_OUT = Counter(
    "tillwatch_samples_out_total", "Samples a stage passed on to the next", ["stage"]
)
SAMPLES_STORED = Counter("tillwatch_samples_stored_total", "Samples written to storage")
DEADLETTERED = Counter(
    "tillwatch_deadlettered_total", "Records sent to the dead-letter topic", ["stage", "reason"]
)
STREAM_DROPPED = Counter(
    "tillwatch_stream_dropped_total",
    "Records the stream had to drop because its bounded buffer stayed full",
    ["topic"],
)
STREAM_BUFFERED = Gauge(
    "tillwatch_stream_buffered_records", "Records waiting in the publish buffer", ["topic"]
)
STAGE_LAG = Gauge(
    "tillwatch_stage_lag_seconds",
    "Now minus the newest sample time a stage processed",
    ["stage"],
)
CONSUMER_LAG = Gauge(
    "tillwatch_consumer_lag_records",
    "Records published and not yet committed",
    ["topic", "group"],
)
BATCH_SECONDS = Histogram(
    "tillwatch_batch_seconds",
    "Time a stage spent on one batch",
    ["stage"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0),
)
SCRAPE_SECONDS = Histogram(
    "tillwatch_scrape_duration_seconds",
    "Time one scrape of one target took",
    ["source"],
    buckets=(0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0),
)
SCRAPE_ERRORS = Counter(
    "tillwatch_scrape_errors_total",
    "Failed scrapes by source and error code",
    ["source", "code"],
)
ALERT_EVENTS = Counter(
    "tillwatch_alert_events_total", "Tiered alert events the notifier handled", ["tier", "kind"]
)
ALERTS_PENDING = Gauge(
    "tillwatch_alerts_pending", "Alerts the notifier keeps for delivery or re-sending"
)
ALERTS_DROPPED = Counter(
    "tillwatch_alerts_dropped_total",
    "Alerts the notifier gave up on undelivered (queue full, or rejected by Alertmanager)",
    ["reason"],
)
ALERTMANAGER_POSTS = Counter(
    "tillwatch_alertmanager_posts_total",
    "POSTs of alerts to Alertmanager by outcome",
    ["outcome"],
)
SAMPLES_EXPIRED = Counter(
    "tillwatch_samples_expired_total",
    "Samples older than the storage TTL when written; ClickHouse drops them at insert",
)
