-- LogQL stream labels, following Loki 3's OTLP convention: a chosen set of resource attributes with every
-- character outside [A-Za-z0-9_] turned into '_' (service.name -> service_name), plus `level` from the severity.
-- Rows pushed through the Loki push API (scope 'loki-push') keep all their labels, which the receiver stored as
-- resource attributes. Everything else is structured metadata, computed at query time (query/logql/streams.py).
-- Both columns are MATERIALIZED: computed once at insert, invisible to SELECT *. 008 extends the label
-- expression for logs without a service.name (mesh access logs).
ALTER TABLE ${DB}.otel_logs ${ON_CLUSTER}
    ADD COLUMN IF NOT EXISTS StreamLabels Map(LowCardinality(String), String) MATERIALIZED mapSort(mapConcat(
        mapApply((k, v) -> (replaceRegexpAll(k, '[^A-Za-z0-9_]', '_'), v),
            mapFilter((k, v) -> v != '' AND if(ScopeName = 'loki-push',
                    k != 'service.name' OR NOT mapContains(ResourceAttributes, 'service_name'),
                    k IN ('service.name', 'service.namespace', 'service.instance.id', 'deployment.environment',
                          'deployment.environment.name', 'cloud.region', 'cloud.availability_zone',
                          'k8s.cluster.name', 'k8s.namespace.name', 'k8s.pod.name', 'k8s.container.name',
                          'container.name', 'k8s.replicaset.name', 'k8s.deployment.name', 'k8s.statefulset.name',
                          'k8s.daemonset.name', 'k8s.cronjob.name', 'k8s.job.name')),
                ResourceAttributes)),
        if(ScopeName = 'loki-push' OR (SeverityNumber = 0 AND SeverityText = ''),
            map(),
            map('level', multiIf(SeverityNumber = 0, lower(SeverityText), SeverityNumber <= 4, 'trace',
                                 SeverityNumber <= 8, 'debug', SeverityNumber <= 12, 'info',
                                 SeverityNumber <= 16, 'warn', SeverityNumber <= 20, 'error', 'fatal')))))
        CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS StreamFingerprint UInt64 MATERIALIZED
        cityHash64(mapKeys(StreamLabels), mapValues(StreamLabels)) CODEC(ZSTD(1));

-- One row per stream per hour: label look-ups (/labels, /series), index stats and the selector -> streams step
-- of every log query read this small table instead of otel_logs.
CREATE TABLE IF NOT EXISTS ${DB}.otel_log_streams ${ON_CLUSTER} (
    TenantId LowCardinality(String),
    Hour DateTime,
    StreamFingerprint UInt64,
    ServiceName SimpleAggregateFunction(any, String),
    StreamLabels SimpleAggregateFunction(any, Map(String, String)),
    Entries SimpleAggregateFunction(sum, UInt64),
    Bytes SimpleAggregateFunction(sum, UInt64)
) ENGINE = ${AGGREGATING_ENGINE}
PARTITION BY toDate(Hour)
ORDER BY (TenantId, Hour, StreamFingerprint)
TTL Hour + toIntervalDay(${TTL_DAYS});

CREATE MATERIALIZED VIEW IF NOT EXISTS ${DB}.otel_log_streams_mv ${ON_CLUSTER} TO ${DB}.otel_log_streams AS
SELECT TenantId, toStartOfHour(TimestampTime) AS Hour, StreamFingerprint,
       any(ServiceName) AS ServiceName, any(StreamLabels) AS StreamLabels,
       count() AS Entries, sum(length(Body)) AS Bytes
FROM ${DB}.otel_logs
GROUP BY TenantId, Hour, StreamFingerprint;
