-- Five-minute rollups for reports, kept longer than raw samples. Average is
-- sum_value / samples, so buckets merge into any coarser step exactly.
-- The rollup takes the deduplication window too: a retried insert that the
-- samples table drops must not be counted twice here.
CREATE TABLE IF NOT EXISTS {database}.samples_5m
(
    signal LowCardinality(String),
    series_id UInt64,
    bucket DateTime('UTC') CODEC(DoubleDelta, ZSTD(1)),
    min_value SimpleAggregateFunction(min, Float64),
    max_value SimpleAggregateFunction(max, Float64),
    sum_value SimpleAggregateFunction(sum, Float64),
    samples SimpleAggregateFunction(sum, UInt64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(bucket)
ORDER BY (signal, series_id, bucket)
TTL bucket + INTERVAL {rollup_ttl_days} DAY
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.samples_5m_mv TO {database}.samples_5m AS
SELECT
    signal,
    series_id,
    toStartOfFiveMinutes(ts) AS bucket,
    min(value) AS min_value,
    max(value) AS max_value,
    sum(value) AS sum_value,
    count() AS samples
FROM {database}.samples
GROUP BY signal, series_id, bucket;
