-- PromQL series index (query/promql/store_source.py), Prometheus' inverted index in the store's terms.
--
-- SeriesId: one hash per stored series, MATERIALIZED at insert (old parts compute it on read). It covers what
-- makes a stored series distinct and fixes its Prometheus names and label sets: service, metric name and unit,
-- the resource and point attributes, and per kind the sum flags (monotonic, temporality: they decide the
-- Prometheus name and how points are read), the histogram temporality and bounds (the `le` set) and the summary's
-- quantiles. So a sample query groups by this one integer and reads none of the maps, flags or bounds.
-- The set index lets `SeriesId IN (...)` skip granules of other series (what the map bloom filters did for
-- attribute matchers before).

ALTER TABLE ${DB}.otel_metrics_gauge ${ON_CLUSTER}
    ADD COLUMN IF NOT EXISTS SeriesId UInt64 MATERIALIZED
        cityHash64(ServiceName, MetricName, MetricUnit, ResourceAttributes, Attributes) CODEC(ZSTD(1)),
    ADD INDEX IF NOT EXISTS idx_series_id SeriesId TYPE set(100) GRANULARITY 1;

ALTER TABLE ${DB}.otel_metrics_sum ${ON_CLUSTER}
    ADD COLUMN IF NOT EXISTS SeriesId UInt64 MATERIALIZED
        cityHash64(ServiceName, MetricName, MetricUnit, ResourceAttributes, Attributes, IsMonotonic,
                   AggregationTemporality) CODEC(ZSTD(1)),
    ADD INDEX IF NOT EXISTS idx_series_id SeriesId TYPE set(100) GRANULARITY 1;

ALTER TABLE ${DB}.otel_metrics_histogram ${ON_CLUSTER}
    ADD COLUMN IF NOT EXISTS SeriesId UInt64 MATERIALIZED
        cityHash64(ServiceName, MetricName, MetricUnit, ResourceAttributes, Attributes, AggregationTemporality,
                   ExplicitBounds) CODEC(ZSTD(1)),
    ADD INDEX IF NOT EXISTS idx_series_id SeriesId TYPE set(100) GRANULARITY 1;

ALTER TABLE ${DB}.otel_metrics_exponential_histogram ${ON_CLUSTER}
    ADD COLUMN IF NOT EXISTS SeriesId UInt64 MATERIALIZED
        cityHash64(ServiceName, MetricName, MetricUnit, ResourceAttributes, Attributes, AggregationTemporality)
        CODEC(ZSTD(1)),
    ADD INDEX IF NOT EXISTS idx_series_id SeriesId TYPE set(100) GRANULARITY 1;

ALTER TABLE ${DB}.otel_metrics_summary ${ON_CLUSTER}
    ADD COLUMN IF NOT EXISTS SeriesId UInt64 MATERIALIZED
        cityHash64(ServiceName, MetricName, MetricUnit, ResourceAttributes, Attributes, `ValueAtQuantiles.Quantile`)
        CODEC(ZSTD(1)),
    ADD INDEX IF NOT EXISTS idx_series_id SeriesId TYPE set(100) GRANULARITY 1;

-- One row per series per hour and per table kind: series look-ups (selectors, /series, /labels, label values,
-- the metric catalogue) read this small table instead of the sample rows. Every measure is idempotent (any, min,
-- max), so a block counted twice (an insert retried, the backfill overlapping the views) changes nothing.
-- ServiceNamespace and ServiceInstanceId (job and instance, with ServiceName) are copied out of the resource so
-- that look-ups do not read the resource map. MinTime/MaxTime bound the series' points within the hour; HasStale
-- says whether any of them is a NoRecordedValue point (when none is, sample reads skip the Flags column).
-- Created with the comment below: meshscope/schema.py then fills it once from the metric tables through the
-- views' own SELECTs (stores that had metrics before this file) and sets the comment to say so.
CREATE TABLE IF NOT EXISTS ${DB}.otel_metrics_series ${ON_CLUSTER} (
    TenantId LowCardinality(String),
    MetricName LowCardinality(String),
    Kind LowCardinality(String),
    MetricUnit LowCardinality(String),
    SeriesId UInt64,
    Hour DateTime,
    ServiceName SimpleAggregateFunction(any, String),
    ServiceNamespace SimpleAggregateFunction(any, String),
    ServiceInstanceId SimpleAggregateFunction(any, String),
    ResourceAttributes SimpleAggregateFunction(any, Map(String, String)) CODEC(ZSTD(1)),
    Attributes SimpleAggregateFunction(any, Map(String, String)) CODEC(ZSTD(1)),
    IsMonotonic SimpleAggregateFunction(any, Bool),
    AggregationTemporality SimpleAggregateFunction(any, Int32),
    ExplicitBounds SimpleAggregateFunction(any, Array(Float64)),
    Quantiles SimpleAggregateFunction(any, Array(Float64)),
    MetricDescription SimpleAggregateFunction(any, String) CODEC(ZSTD(1)),
    MinTime SimpleAggregateFunction(min, DateTime64(9)),
    MaxTime SimpleAggregateFunction(max, DateTime64(9)),
    HasStale SimpleAggregateFunction(max, UInt8)
) ENGINE = ${AGGREGATING_ENGINE}
PARTITION BY toDate(Hour)
ORDER BY (TenantId, MetricName, Kind, MetricUnit, SeriesId, Hour)
TTL Hour + toIntervalDay(${TTL_DAYS})
COMMENT 'meshscope: backfill pending';

-- The views' SELECTs list the table's columns in its order (the backfill inserts them positionally).
CREATE MATERIALIZED VIEW IF NOT EXISTS ${DB}.otel_metrics_series_gauge_mv ${ON_CLUSTER}
TO ${DB}.otel_metrics_series AS
SELECT TenantId, MetricName, 'gauge' AS Kind, MetricUnit, SeriesId, toStartOfHour(toDateTime(TimeUnix)) AS Hour,
       any(ServiceName) AS ServiceName, any(src.ResourceAttributes['service.namespace']) AS ServiceNamespace,
       any(src.ResourceAttributes['service.instance.id']) AS ServiceInstanceId,
       any(ResourceAttributes) AS ResourceAttributes, any(Attributes) AS Attributes,
       false AS IsMonotonic, toInt32(2) AS AggregationTemporality, CAST([], 'Array(Float64)') AS ExplicitBounds,
       CAST([], 'Array(Float64)') AS Quantiles, any(MetricDescription) AS MetricDescription,
       min(TimeUnix) AS MinTime, max(TimeUnix) AS MaxTime, toUInt8(max(bitAnd(Flags, 1))) AS HasStale
FROM ${DB}.otel_metrics_gauge AS src
GROUP BY TenantId, MetricName, MetricUnit, SeriesId, Hour;

CREATE MATERIALIZED VIEW IF NOT EXISTS ${DB}.otel_metrics_series_sum_mv ${ON_CLUSTER}
TO ${DB}.otel_metrics_series AS
SELECT TenantId, MetricName, 'sum' AS Kind, MetricUnit, SeriesId, toStartOfHour(toDateTime(TimeUnix)) AS Hour,
       any(ServiceName) AS ServiceName, any(src.ResourceAttributes['service.namespace']) AS ServiceNamespace,
       any(src.ResourceAttributes['service.instance.id']) AS ServiceInstanceId,
       any(ResourceAttributes) AS ResourceAttributes, any(Attributes) AS Attributes,
       any(IsMonotonic) AS IsMonotonic, any(AggregationTemporality) AS AggregationTemporality,
       CAST([], 'Array(Float64)') AS ExplicitBounds, CAST([], 'Array(Float64)') AS Quantiles,
       any(MetricDescription) AS MetricDescription,
       min(TimeUnix) AS MinTime, max(TimeUnix) AS MaxTime, toUInt8(max(bitAnd(Flags, 1))) AS HasStale
FROM ${DB}.otel_metrics_sum AS src
GROUP BY TenantId, MetricName, MetricUnit, SeriesId, Hour;

CREATE MATERIALIZED VIEW IF NOT EXISTS ${DB}.otel_metrics_series_histogram_mv ${ON_CLUSTER}
TO ${DB}.otel_metrics_series AS
SELECT TenantId, MetricName, 'histogram' AS Kind, MetricUnit, SeriesId, toStartOfHour(toDateTime(TimeUnix)) AS Hour,
       any(ServiceName) AS ServiceName, any(src.ResourceAttributes['service.namespace']) AS ServiceNamespace,
       any(src.ResourceAttributes['service.instance.id']) AS ServiceInstanceId,
       any(ResourceAttributes) AS ResourceAttributes, any(Attributes) AS Attributes,
       false AS IsMonotonic, any(AggregationTemporality) AS AggregationTemporality,
       any(ExplicitBounds) AS ExplicitBounds, CAST([], 'Array(Float64)') AS Quantiles,
       any(MetricDescription) AS MetricDescription,
       min(TimeUnix) AS MinTime, max(TimeUnix) AS MaxTime, toUInt8(max(bitAnd(Flags, 1))) AS HasStale
FROM ${DB}.otel_metrics_histogram AS src
GROUP BY TenantId, MetricName, MetricUnit, SeriesId, Hour;

CREATE MATERIALIZED VIEW IF NOT EXISTS ${DB}.otel_metrics_series_exponential_histogram_mv ${ON_CLUSTER}
TO ${DB}.otel_metrics_series AS
SELECT TenantId, MetricName, 'exponential_histogram' AS Kind, MetricUnit, SeriesId,
       toStartOfHour(toDateTime(TimeUnix)) AS Hour,
       any(ServiceName) AS ServiceName, any(src.ResourceAttributes['service.namespace']) AS ServiceNamespace,
       any(src.ResourceAttributes['service.instance.id']) AS ServiceInstanceId,
       any(ResourceAttributes) AS ResourceAttributes, any(Attributes) AS Attributes,
       false AS IsMonotonic, any(AggregationTemporality) AS AggregationTemporality,
       CAST([], 'Array(Float64)') AS ExplicitBounds, CAST([], 'Array(Float64)') AS Quantiles,
       any(MetricDescription) AS MetricDescription,
       min(TimeUnix) AS MinTime, max(TimeUnix) AS MaxTime, toUInt8(max(bitAnd(Flags, 1))) AS HasStale
FROM ${DB}.otel_metrics_exponential_histogram AS src
GROUP BY TenantId, MetricName, MetricUnit, SeriesId, Hour;

CREATE MATERIALIZED VIEW IF NOT EXISTS ${DB}.otel_metrics_series_summary_mv ${ON_CLUSTER}
TO ${DB}.otel_metrics_series AS
SELECT TenantId, MetricName, 'summary' AS Kind, MetricUnit, SeriesId, toStartOfHour(toDateTime(TimeUnix)) AS Hour,
       any(ServiceName) AS ServiceName, any(src.ResourceAttributes['service.namespace']) AS ServiceNamespace,
       any(src.ResourceAttributes['service.instance.id']) AS ServiceInstanceId,
       any(ResourceAttributes) AS ResourceAttributes, any(Attributes) AS Attributes,
       false AS IsMonotonic, toInt32(2) AS AggregationTemporality, CAST([], 'Array(Float64)') AS ExplicitBounds,
       any(`ValueAtQuantiles.Quantile`) AS Quantiles, any(MetricDescription) AS MetricDescription,
       min(TimeUnix) AS MinTime, max(TimeUnix) AS MaxTime, toUInt8(max(bitAnd(Flags, 1))) AS HasStale
FROM ${DB}.otel_metrics_summary AS src
GROUP BY TenantId, MetricName, MetricUnit, SeriesId, Hour;
