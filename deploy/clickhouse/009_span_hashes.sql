-- Hashes the service graph (query/graph/edges.py) joins and groups spans on, computed once at insert.
--
-- SpanHash, ParentHash: cityHash64(TenantId, TraceId, SpanId or ParentSpanId), the keys of its span -> parent
-- joins. Without them every side of every join decompressed and hashed TraceId, SpanId and ParentSpanId (about
-- 90 bytes per span). The tenant is folded in so that spans of two tenants sharing ids never pair; a root span's
-- ParentHash is the hash of an empty parent id, which no stored span has. Random 64-bit values do not compress:
-- LZ4 keeps them cheap to read (16 bytes per span on disk).
--
-- EdgeNodeHash, EdgeResponseHash, EdgePeerHash: one hash each over the span columns the graph reads as a node
-- (kind, proxy, cluster, namespace, workload, service, app, version, peer service, protocol), as a measured
-- response (codes, status, flags, principals, the caller Envoy names for a root span), and as a virtual
-- destination (peer name, database, messaging, upstream cluster, URL host). Grouping a join's rows on these three
-- numbers instead of on the two dozen strings they stand for, and reading the strings back once per distinct
-- value, is cheaper than carrying the strings through the joins. They take few distinct values, so they
-- compress to almost nothing. tests/test_graph_edges.py checks that each covers every column edges.py groups
-- under it. Never change one of these expressions here: ADD COLUMN IF NOT EXISTS would leave existing tables
-- with the old one (and their parts with old values), so spans that differ only in a newly read field would
-- share a group. A hash that must cover more gets a new column name in a new file.
--
-- With them a raw 6 h graph over 10M spans takes 2.8 s instead of 5.1 s on two cores (bench/graph.py).
-- MATERIALIZED: invisible to SELECT *, computed on read for parts written before this file existed.
ALTER TABLE ${DB}.otel_traces ${ON_CLUSTER}
    ADD COLUMN IF NOT EXISTS SpanHash UInt64 MATERIALIZED cityHash64(TenantId, TraceId, SpanId) CODEC(LZ4),
    ADD COLUMN IF NOT EXISTS ParentHash UInt64 MATERIALIZED cityHash64(TenantId, TraceId, ParentSpanId) CODEC(LZ4),
    ADD COLUMN IF NOT EXISTS EdgeNodeHash UInt64 MATERIALIZED cityHash64(SpanKind, MeshProxy, MeshCluster,
        MeshNamespace, MeshWorkload, ServiceName, MeshApp, MeshVersion, MeshPeerService, MeshProtocol) CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS EdgeResponseHash UInt64 MATERIALIZED cityHash64(MeshResponseCode, MeshGrpcStatus,
        StatusCode, MeshResponseFlags, MeshSourcePrincipal, MeshDestinationPrincipal,
        if(empty(ParentSpanId), MeshCaller, '')) CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS EdgePeerHash UInt64 MATERIALIZED cityHash64(MeshPeerName, MeshDbSystem, MeshDbNamespace,
        MeshMessagingSystem, MeshMessagingDestination, MeshUpstreamCluster, MeshUrlHost) CODEC(ZSTD(1));
