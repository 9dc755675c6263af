-- Span attributes the service graph reads for every edge (query/graph/edges.py), computed once at insert
-- instead of at every graph query: reading the SpanAttributes map for them was half the time of a raw graph
-- query. MATERIALIZED: invisible to SELECT *, computed on read for parts written before this file existed.
ALTER TABLE ${DB}.otel_traces ${ON_CLUSTER}
    ADD COLUMN IF NOT EXISTS MeshRequestBytes Float64 MATERIALIZED toFloat64OrZero(multiIf(
        SpanAttributes['request_size'] != '', SpanAttributes['request_size'],
        SpanAttributes['http.request.body.size'] != '', SpanAttributes['http.request.body.size'],
        SpanAttributes['http.request_content_length'] != '', SpanAttributes['http.request_content_length'],
        SpanAttributes['messaging.message.body.size'])) CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS MeshResponseBytes Float64 MATERIALIZED toFloat64OrZero(multiIf(
        SpanAttributes['response_size'] != '', SpanAttributes['response_size'],
        SpanAttributes['http.response.body.size'] != '', SpanAttributes['http.response.body.size'],
        SpanAttributes['http.response_content_length'])) CODEC(ZSTD(1)),
    -- Envoy's downstream cluster, else Istio's source identity as <canonical service>.<namespace>
    ADD COLUMN IF NOT EXISTS MeshCaller LowCardinality(String) MATERIALIZED if(SpanAttributes['downstream_cluster'] != '',
        SpanAttributes['downstream_cluster'],
        concat(SpanAttributes['istio.source_canonical_service'], '.', SpanAttributes['istio.source_namespace']))
        CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS MeshPeerName LowCardinality(String) MATERIALIZED if(SpanAttributes['service.peer.name'] != '',
        SpanAttributes['service.peer.name'], SpanAttributes['peer.service']) CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS MeshMessagingDestination LowCardinality(String) MATERIALIZED
        SpanAttributes['messaging.destination.name'] CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS MeshUpstreamCluster LowCardinality(String) MATERIALIZED if(SpanAttributes['upstream_cluster'] != '',
        SpanAttributes['upstream_cluster'], SpanAttributes['upstream_cluster.name']) CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS MeshUrlHost LowCardinality(String) MATERIALIZED domainWithoutWWW(if(SpanAttributes['url.full'] != '',
        SpanAttributes['url.full'], SpanAttributes['http.url'])) CODEC(ZSTD(1));
