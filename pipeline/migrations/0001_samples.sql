-- Raw samples. Daily partitions let the TTL drop whole days; the sort key puts one
-- series' points side by side so DoubleDelta and Gorilla see smooth sequences.
-- The deduplication window makes insert_deduplication_token work on a plain MergeTree.
CREATE TABLE IF NOT EXISTS {database}.samples
(
    signal LowCardinality(String),
    series_id UInt64,
    ts DateTime64(3, 'UTC') CODEC(DoubleDelta, ZSTD(1)),
    value Float64 CODEC(Gorilla, ZSTD(1))
)
ENGINE = MergeTree
PARTITION BY toYYYYMMDD(ts)
ORDER BY (signal, series_id, ts)
TTL toDateTime(ts) + INTERVAL {ttl_days} DAY
SETTINGS non_replicated_deduplication_window = 1000;

-- Series registry: the labels behind each series id, for label-filtered reads.
-- Rows for the same series collapse at merge time; readers use FINAL.
CREATE TABLE IF NOT EXISTS {database}.series
(
    series_id UInt64,
    signal LowCardinality(String),
    labels Map(String, String),
    key String,
    last_seen DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(last_seen)
ORDER BY (signal, series_id);
