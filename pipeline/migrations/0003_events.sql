-- Detector verdicts, one row per anomalous sample (fields of tillwatch.anomaly.Anomaly).
CREATE TABLE IF NOT EXISTS {database}.anomalies
(
    ts DateTime64(3, 'UTC'),
    series_id UInt64,
    signal LowCardinality(String),
    labels Map(String, String),
    score Float64,
    observed Float64,
    expected Float64,
    lower Float64,
    upper Float64,
    direction LowCardinality(String),
    detector LowCardinality(String),
    explanation String,
    extra Map(String, Float64)
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (signal, series_id, ts)
TTL toDateTime(ts) + INTERVAL {rollup_ttl_days} DAY;

-- Incidents change over their life; every change is a new row, the newest
-- `updated` wins at merge time and readers use FINAL.
CREATE TABLE IF NOT EXISTS {database}.incidents
(
    incident_id String,
    opened DateTime64(3, 'UTC'),
    updated DateTime64(3, 'UTC'),
    resolved Nullable(DateTime64(3, 'UTC')),
    tier LowCardinality(String),
    service LowCardinality(String),
    root_cause String,
    summary String,
    impact String,
    series_ids Array(UInt64)
)
ENGINE = ReplacingMergeTree(updated)
ORDER BY incident_id;

-- What was sent to Alertmanager, and when.
CREATE TABLE IF NOT EXISTS {database}.alerts
(
    ts DateTime64(3, 'UTC'),
    incident_id String,
    tier LowCardinality(String),
    status LowCardinality(String),
    labels Map(String, String),
    annotations Map(String, String)
)
ENGINE = MergeTree
ORDER BY (incident_id, ts);

-- A person's verdict on an incident, for tuning detectors and tiers.
CREATE TABLE IF NOT EXISTS {database}.feedback
(
    incident_id String,
    ts DateTime64(3, 'UTC'),
    verdict LowCardinality(String),
    note String
)
ENGINE = MergeTree
ORDER BY (incident_id, ts);
