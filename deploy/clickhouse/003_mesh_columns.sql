-- Promoted mesh identity (collector/mesh_sql.py fills them at insert time from Envoy/Istio, Linkerd, Zipkin and
-- OTel SDK spellings). Added with ALTER so existing data directories pick them up at the next start.

ALTER TABLE ${DB}.otel_traces ${ON_CLUSTER}
    ADD COLUMN IF NOT EXISTS MeshCluster LowCardinality(String) CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS MeshNamespace LowCardinality(String) CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS MeshWorkload LowCardinality(String) CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS MeshApp LowCardinality(String) CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS MeshVersion LowCardinality(String) CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS MeshProxy LowCardinality(String) CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS MeshPeerService LowCardinality(String) CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS MeshProtocol LowCardinality(String) CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS MeshHttpMethod LowCardinality(String) CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS MeshResponseCode LowCardinality(String) CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS MeshGrpcStatus LowCardinality(String) CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS MeshResponseFlags LowCardinality(String) CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS MeshSecurityPolicy LowCardinality(String) CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS MeshSourcePrincipal LowCardinality(String) CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS MeshDestinationPrincipal LowCardinality(String) CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS MeshRequestId LowCardinality(String) CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS MeshDbSystem LowCardinality(String) CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS MeshDbNamespace LowCardinality(String) CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS MeshMessagingSystem LowCardinality(String) CODEC(ZSTD(1));

ALTER TABLE ${DB}.otel_logs ${ON_CLUSTER}
    ADD COLUMN IF NOT EXISTS MeshCluster LowCardinality(String) CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS MeshNamespace LowCardinality(String) CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS MeshWorkload LowCardinality(String) CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS MeshApp LowCardinality(String) CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS MeshVersion LowCardinality(String) CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS MeshProxy LowCardinality(String) CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS MeshPeerService LowCardinality(String) CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS MeshProtocol LowCardinality(String) CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS MeshHttpMethod LowCardinality(String) CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS MeshResponseCode LowCardinality(String) CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS MeshGrpcStatus LowCardinality(String) CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS MeshResponseFlags LowCardinality(String) CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS MeshSecurityPolicy LowCardinality(String) CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS MeshSourcePrincipal LowCardinality(String) CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS MeshDestinationPrincipal LowCardinality(String) CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS MeshRequestId LowCardinality(String) CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS MeshDbSystem LowCardinality(String) CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS MeshDbNamespace LowCardinality(String) CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS MeshMessagingSystem LowCardinality(String) CODEC(ZSTD(1));
