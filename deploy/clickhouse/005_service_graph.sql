-- Service graph: one row per (tenant, minute, edge, response code, flags, destination host), written by the
-- rollup job in query/graph/edges.py (EdgeRollup) from the span self-join, so a graph over hours sums a few
-- thousand rows instead of joining millions of spans. Every measure is mergeable by addition: counts (already
-- multiplied by 1/sampling probability), byte sums, mTLS counts and a sparse latency histogram with fixed
-- log-spaced buckets (bucket i has the upper bound 2^((i-40)/4) ms), so any window is a SUM over its minutes.
--
-- Idempotent recomputation: each run of the job writes its minutes under a new Generation (edge rows first, then
-- one marker row per tenant and minute with Protocol = ''), then deletes the older generations of those minutes.
-- Readers take, per minute, the newest generation that has a marker, so they never see a half-written or a
-- doubled minute, and a minute without a marker is read from the raw spans instead.

CREATE TABLE IF NOT EXISTS ${DB}.otel_service_edges_1m ${ON_CLUSTER} (
    TenantId LowCardinality(String) DEFAULT 'default',
    Minute DateTime CODEC(Delta(4), ZSTD(1)),
    Generation UInt64 CODEC(Delta(8), ZSTD(1)),
    SrcKind LowCardinality(String),
    SrcCluster LowCardinality(String),
    SrcNamespace LowCardinality(String),
    SrcWorkload LowCardinality(String),
    SrcApp LowCardinality(String),
    SrcVersion LowCardinality(String),
    SrcService LowCardinality(String),
    SrcGateway UInt8,
    SrcVirtual LowCardinality(String),
    DstKind LowCardinality(String),
    DstCluster LowCardinality(String),
    DstNamespace LowCardinality(String),
    DstWorkload LowCardinality(String),
    DstApp LowCardinality(String),
    DstVersion LowCardinality(String),
    DstService LowCardinality(String),
    DstGateway UInt8,
    DstVirtual LowCardinality(String),
    Protocol LowCardinality(String),
    ResponseCode LowCardinality(String),
    ResponseFlags LowCardinality(String),
    DstHost LowCardinality(String),
    SourcePrincipal LowCardinality(String),
    DestPrincipal LowCardinality(String),
    Spans UInt64 CODEC(ZSTD(1)),
    Requests Float64 CODEC(ZSTD(1)),
    LatencyBuckets Map(UInt16, Float64) CODEC(ZSTD(1)),
    LatencySumMs Float64 CODEC(ZSTD(1)),
    BytesSent Float64 CODEC(ZSTD(1)),
    BytesReceived Float64 CODEC(ZSTD(1)),
    MtlsRequests Float64 CODEC(ZSTD(1)),
    MtlsKnown Float64 CODEC(ZSTD(1))
) ENGINE = ${ENGINE}
PARTITION BY toDate(Minute)
ORDER BY (TenantId, Minute, Generation, SrcNamespace, SrcWorkload, DstNamespace, DstWorkload, DstService)
TTL Minute + toIntervalDay(${TTL_DAYS})
SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1;

-- Raw-span reads of a few minutes (the rollup job, and the ragged ends of a graph window) otherwise scan the
-- Timestamp column of every part that a merge stretched over the day: otel_traces is sorted by service and span
-- name first, so within a granule the time range is narrow and a minmax index skips most of them.
ALTER TABLE ${DB}.otel_traces ${ON_CLUSTER} ADD INDEX IF NOT EXISTS idx_timestamp Timestamp TYPE minmax GRANULARITY 1;
