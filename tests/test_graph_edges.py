"""Service-graph edges against a synthetic mesh with known truth (tests/graph_mesh.py), on the real store.

Spans and metrics go through the real OTLP insert path (the WAL-format segment decoded by ClickHouse), so the
Mesh* columns are computed exactly as in production. Each mesh variant has its own tenant.
"""

from __future__ import annotations

import asyncio
import copy
import re
import time
import uuid

import graph_mesh as gm
import pytest
from test_otlp_sql import insert

from meshscope.query.graph import histogram
from meshscope.query.graph.edges import HASHED_FIELDS, MINUTE_NS, EdgeRollup, fetch_edges, plan
from meshscope.query.graph.istio_metrics import fetch_metric_edges, merge_edges
from meshscope.query.graph.types import NodeIdentity
from meshscope.schema import apply_schema, render, schema_files, split_statements

REQUESTS = 600
RUN = uuid.uuid4().hex[:8]


def node_key(n: NodeIdentity) -> tuple:
    if n.kind == "unknown":
        return gm.UNKNOWN_NODE
    if n.kind == "service":
        return ("svc", n.namespace, n.service)
    return ("wl", n.namespace, n.workload)


def by_key(edges) -> dict:
    out = {}
    for e in edges:
        k = (node_key(e.source), node_key(e.dest), e.protocol)
        assert k not in out, f"edge {k} twice"
        out[k] = e
    return out


@pytest.fixture(scope="module")
def meshes(store, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("graph")
    start = (time.time_ns() // MINUTE_NS - 12) * MINUTE_NS
    out = {}
    for name, n, kw in (("sidecars", REQUESTS, {}), ("apps", REQUESTS, {"sidecar_spans": False}),
                        ("sampled", 800, {"sample_every": 4})):
        tenant = f"graph-{name}-{RUN}"
        b = gm.build(start, n, **kw)
        insert(store, tmp, "traces", *b.traces, tenant=tenant)
        if name == "sidecars":
            insert(store, tmp, "metrics", *b.metrics, tenant=tenant)
        out[name] = (tenant, b)
    return out


def assert_p95_within_a_bucket(got: float, truth: float) -> None:
    assert abs(histogram.bucket_of(got) - histogram.bucket_of(truth)) <= 1, (got, truth)


@pytest.mark.parametrize("variant", ["sidecars", "apps"])
def test_span_edges_match_truth(store, meshes, variant):
    tenant, b = meshes[variant]
    got = by_key(fetch_edges(store, tenant, b.start_ns, b.end_ns, source="raw"))
    assert set(got) == set(b.truth), "one edge per hop: sidecar and app spans collapse"
    for k, t in b.truth.items():
        e = got[k]
        assert e.requests == pytest.approx(t.requests, rel=0.01), k
        assert e.responses == pytest.approx(dict(t.codes)), k
        assert {c: sum(f.values()) for c, f in e.flags.items()} == pytest.approx(dict(t.codes)), k
        flags: dict = {}
        for f in e.flags.values():
            for fl, n in f.items():
                flags[fl] = flags.get(fl, 0) + n
        assert flags == pytest.approx(dict(t.flags)), k
        assert_p95_within_a_bucket(e.latency_ms["p95"], gm.percentile(t.latencies_ms, 0.95))
        assert e.latency_ms["avg"] == pytest.approx(sum(t.latencies_ms) / len(t.latencies_ms), rel=0.02), k
        assert e.latency_buckets[-1][1] == pytest.approx(t.requests)
        assert e.window_seconds == (b.end_ns - b.start_ns) / 1e9 and e.origin == "spans"
    # error share by class on the frontend -> cart edge: 40 of 380 answered 500
    fc = got[(gm.FRONTEND.node(), gm.CART.node(), "http")]
    assert fc.responses["500"] / fc.requests == pytest.approx(40 / 380)
    # gRPC status codes, not HTTP, on the gRPC edge
    fo = got[(gm.FRONTEND.node(), gm.ORDERS.node(), "grpc")]
    assert fo.responses == {"0": 576.0, "14": 24.0}
    # virtual nodes: database, external host, the service a UH failure never left
    db = got[(gm.ORDERS.node(), gm.DB_NODE, "tcp")].dest
    assert (db.kind, db.virtual, db.cluster, db.workload) == ("service", "db", gm.CLUSTER, "unknown")
    ext = got[(gm.CART.node(), gm.EXTERNAL_NODE, "http")].dest
    assert (ext.kind, ext.virtual, ext.service) == ("service", "host", gm.EXTERNAL)
    uh = got[(gm.FRONTEND.node(), gm.CART_SVC_NODE, "http")]
    assert (uh.dest.kind, uh.dest.service, uh.dest.namespace) == ("service", "cart", gm.NS)
    if variant == "sidecars":
        assert uh.flags == {"503": {"UH": 30.0}}
        assert uh.hosts == {"503": {gm.CART.fqdn: 30.0}}
        assert fc.hosts["200"] == {gm.CART.fqdn: 340.0 * REQUESTS / 400}
        assert fc.bytes_received == pytest.approx(400 * 570)  # Envoy's response_size on cart's inbound span
    # root requests: Kiali's unknown source into the ingress gateway, which is flagged as a gateway
    root = got[(gm.UNKNOWN_NODE, gm.GATEWAY.node(), "http")]
    assert root.source == NodeIdentity(kind="unknown") and root.dest.is_gateway
    gw = got[(gm.GATEWAY.node(), gm.FRONTEND.node(), "http")]
    assert gw.source.is_gateway and not gw.dest.is_gateway
    assert (gw.source.cluster, gw.source.app, gw.source.version) == (gm.CLUSTER, "istio-ingressgateway", "latest")
    assert (gw.dest.app, gw.dest.version) == ("frontend", "v1")
    # spans know no mTLS
    assert all(e.mtls_requests is None for e in got.values())


def test_sampling_ratio_scales_counts(store, meshes):
    tenant, b = meshes["sampled"]
    assert b.spans * 4 == gm.build(b.start_ns, 800).spans
    got = by_key(fetch_edges(store, tenant, b.start_ns, b.end_ns, source="raw"))
    assert set(got) == set(b.truth)
    for k, t in b.truth.items():
        assert got[k].requests == pytest.approx(t.requests, rel=0.01), k
        assert got[k].responses == pytest.approx(dict(t.codes), rel=0.01), k
        assert_p95_within_a_bucket(got[k].latency_ms["p95"], gm.percentile(t.latencies_ms, 0.95))


def _istio_bucket(v: float) -> int:
    return next((i for i, b in enumerate(gm.ISTIO_BUCKETS) if v <= b), len(gm.ISTIO_BUCKETS))


def test_metric_edges_match_truth(store, meshes):
    tenant, b = meshes["sidecars"]
    got = by_key(fetch_metric_edges(store, tenant, b.start_ns, b.end_ns))
    assert set(got) == set(b.metric_truth)
    for k, t in b.metric_truth.items():
        e = got[k]
        assert e.origin == "metrics"
        assert e.requests == pytest.approx(t.requests, rel=0.01), k  # exact despite frontend's counter reset
        if k[2] != "tcp":
            assert e.responses == pytest.approx(dict(t.codes)), k
            truth_lat = b.truth[k].latencies_ms
            assert abs(_istio_bucket(e.latency_ms["p95"]) - _istio_bucket(gm.percentile(truth_lat, 0.95))) <= 1, k
    fc = got[(gm.FRONTEND.node(), gm.CART.node(), "http")]
    assert fc.flags == {"200": {"-": 340.0 * 1.5}, "500": {"-": 60.0}}
    assert fc.bytes_sent == pytest.approx(570 * 300) and fc.bytes_received == pytest.approx(570 * 400)
    uh = got[(gm.FRONTEND.node(), gm.CART_SVC_NODE, "http")]
    assert uh.flags == {"503": {"UH": 30.0}} and uh.dest.virtual == "host" and uh.dest.cluster == gm.CLUSTER
    # mTLS: every destination-reported request was mutual TLS; source-only edges do not know
    for k in [(gm.FRONTEND.node(), gm.CART.node(), "http"), (gm.FRONTEND.node(), gm.ORDERS.node(), "grpc"),
              (gm.GATEWAY.node(), gm.FRONTEND.node(), "http")]:
        assert got[k].mtls_requests == got[k].mtls_known == pytest.approx(got[k].requests), k
    assert fc.source_principal == gm.FRONTEND.principal and fc.dest_principal == gm.CART.principal
    assert uh.mtls_requests is None and got[(gm.CART.node(), gm.EXTERNAL_NODE, "http")].mtls_requests is None
    db = got[(gm.ORDERS.node(), gm.DB_METRIC_NODE, "tcp")]
    assert (db.bytes_sent, db.bytes_received) == (180.0 * REQUESTS, 320.0 * REQUESTS)
    assert db.responses == {"-": 1.0}


def test_metrics_and_spans_agree_on_topology(store, meshes):
    tenant, b = meshes["sidecars"]
    spans = fetch_edges(store, tenant, b.start_ns, b.end_ns, source="raw")
    metrics = fetch_metric_edges(store, tenant, b.start_ns, b.end_ns)

    def topo(edges, from_spans):
        out = set()
        for e in edges:
            s, d = node_key(e.source), node_key(e.dest)
            if from_spans and s == gm.UNKNOWN_NODE and e.dest.is_gateway:
                continue  # gateways report no metrics for their downstream side: Kiali draws them as roots
            if from_spans and e.dest.virtual == "db":
                d = gm.DB_METRIC_NODE  # the database's span name (db.system.name/db.namespace) vs its service
            out.add((s, d, e.protocol))
        return out
    assert topo(spans, True) == topo(metrics, False)
    # the identities themselves agree, not only the keys
    sp = {(e.source, e.dest, e.protocol) for e in spans}
    assert {(e.source, e.dest, e.protocol) for e in metrics if e.dest.virtual != "host" or e.protocol != "tcp"} <= sp


def test_merge_edges(store, meshes):
    tenant, b = meshes["sidecars"]
    spans = fetch_edges(store, tenant, b.start_ns, b.end_ns, source="raw")
    metrics = fetch_metric_edges(store, tenant, b.start_ns, b.end_ns)
    merged = by_key(merge_edges(spans, metrics))
    fc = merged[(gm.FRONTEND.node(), gm.CART.node(), "http")]
    assert fc.origin == "metrics" and fc.mtls_requests == pytest.approx(570)
    root = merged[(gm.UNKNOWN_NODE, gm.GATEWAY.node(), "http")]
    assert root.origin == "spans" and root.requests == REQUESTS
    assert merged[(gm.ORDERS.node(), gm.DB_NODE, "tcp")].origin == "spans"
    assert len(merged) == len(spans) + 1  # the database under its service name, from the metrics


def test_namespaces_filter(store, meshes):
    tenant, b = meshes["sidecars"]
    got = fetch_edges(store, tenant, b.start_ns, b.end_ns, source="raw", namespaces=["istio-system"])
    assert {(node_key(e.source), node_key(e.dest)) for e in got} == {
        (gm.UNKNOWN_NODE, gm.GATEWAY.node()), (gm.GATEWAY.node(), gm.FRONTEND.node())}
    m = fetch_metric_edges(store, tenant, b.start_ns, b.end_ns, namespaces=["istio-system"])
    assert {(node_key(e.source), node_key(e.dest)) for e in m} == {(gm.GATEWAY.node(), gm.FRONTEND.node())}


def _summary(edges) -> dict:
    return {k: (round(e.requests, 6), {c: round(v, 6) for c, v in e.responses.items()},
                {n: round(v, 6) for n, v in e.latency_ms.items()}, e.latency_buckets, round(e.bytes_received, 3))
            for k, e in by_key(edges).items()}


def _rollup_rows(store, tenant) -> list:
    return store.query(
        "SELECT Minute, SrcWorkload, DstWorkload, DstService, Protocol, ResponseCode, Requests "
        "FROM otel.otel_service_edges_1m WHERE TenantId = {t:String} ORDER BY ALL", {"t": tenant}).rows


def test_rollup_equals_raw_and_is_idempotent(store, meshes):
    tenant, b = meshes["sidecars"]
    first_min = b.start_ns // MINUTE_NS * MINUTE_NS
    last_min = -(-b.end_ns // MINUTE_NS) * MINUTE_NS + MINUTE_NS  # the spans of the last request spill over
    now = last_min + 30 * 10**9
    job = EdgeRollup(store, lookback_minutes=(now - first_min) // MINUTE_NS + 1, backfill_hours=0)
    job.run_once(now)
    rows = _rollup_rows(store, tenant)
    assert rows
    rollup = fetch_edges(store, tenant, first_min, last_min, source="rollup")
    raw = fetch_edges(store, tenant, first_min, last_min, source="raw")
    assert _summary(rollup) == _summary(raw)
    assert by_key(rollup).keys() == b.truth.keys()
    job.run_once(now)
    job.run_once(now)
    assert _rollup_rows(store, tenant) == rows, "re-running replaces, never adds"
    markers = store.query("SELECT Minute, count() FROM otel.otel_service_edges_1m WHERE TenantId = {t:String} "
                          "AND Protocol = '' GROUP BY Minute HAVING count() != 1", {"t": tenant}).rows
    assert markers == []
    # auto: the rollup's whole minutes plus raw spans for the ragged ends give the raw answer
    lo, hi = b.start_ns + 7 * 10**9, b.end_ns - 3 * 10**9
    assert _summary(fetch_edges(store, tenant, lo, hi, source="auto")) == _summary(
        fetch_edges(store, tenant, lo, hi, source="raw"))
    rollup_only = by_key(fetch_edges(store, tenant, lo, hi, source="rollup"))
    raw_ragged = by_key(fetch_edges(store, tenant, lo, hi, source="raw"))
    k = (gm.FRONTEND.node(), gm.CART.node(), "http")
    assert rollup_only[k].requests < raw_ragged[k].requests, "rollup alone leaves the ragged ends out"


def test_late_spans_are_counted_after_a_rerun(store, tmp_path):
    tenant = f"graph-late-{RUN}"
    start = (time.time_ns() // MINUTE_NS - 20) * MINUTE_NS
    early = gm.build(start, 200, seconds=120, salt=b"early", with_metrics=False)
    late = gm.build(start, 100, seconds=120, salt=b"late", with_metrics=False)
    insert(store, tmp_path, "traces", *early.traces, tenant=tenant)
    lo, hi = start, start + 4 * MINUTE_NS
    job = EdgeRollup(store, lookback_minutes=6, backfill_hours=0)
    job.run_once(hi + MINUTE_NS)
    k = (gm.GATEWAY.node(), gm.FRONTEND.node(), "http")
    assert by_key(fetch_edges(store, tenant, lo, hi, source="rollup"))[k].requests == 200
    insert(store, tmp_path, "traces", *late.traces, tenant=tenant)
    assert by_key(fetch_edges(store, tenant, lo, hi, source="rollup"))[k].requests == 200
    job.run_once(hi + MINUTE_NS)
    got = by_key(fetch_edges(store, tenant, lo, hi, source="rollup"))
    assert got[k].requests == 300
    assert _summary(got.values()) == _summary(fetch_edges(store, tenant, lo, hi, source="raw"))


def test_backfill_and_async_run(store, tmp_path):
    tenant = f"graph-backfill-{RUN}"
    start = (time.time_ns() // MINUTE_NS - 40) * MINUTE_NS
    b = gm.build(start, 100, seconds=60, salt=b"backfill", with_metrics=False)
    insert(store, tmp_path, "traces", *b.traces, tenant=tenant)
    lo, hi = start, start + 2 * MINUTE_NS
    assert fetch_edges(store, tenant, lo, hi, source="rollup") == []
    # ``auto`` with no rollup for the window falls back to the raw spans
    assert by_key(fetch_edges(store, tenant, lo, hi))[(gm.GATEWAY.node(), gm.FRONTEND.node(), "http")].requests == 100
    job = EdgeRollup(store, interval_s=0.05, lookback_minutes=2, backfill_hours=1, backfill_per_run=120)

    async def go():
        stop = asyncio.Event()
        task = asyncio.create_task(job.run(stop))
        while job.runs < 1:
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(task, 60)
    asyncio.run(go())
    assert job.last_error is None
    got = by_key(fetch_edges(store, tenant, lo, hi, source="rollup"))
    assert got[(gm.GATEWAY.node(), gm.FRONTEND.node(), "http")].requests == 100


def test_plan_splits_window():
    m = 60
    covered = {600, 660, 780}
    runs, raw = plan(covered, 590 * 10**9, 850 * 10**9)
    assert runs == [(600, 720), (780, 840)]
    assert raw == [(590 * 10**9, 600 * 10**9), (720 * 10**9, 780 * 10**9), (840 * 10**9, 850 * 10**9)]
    assert plan(set(), 0, m * 10**9) == ([], [(0, m * 10**9)])


def _attribute_spans() -> "ExportTraceServiceRequest":
    """One client span per attribute spelling the promoted columns read, for those the synthetic mesh never sets."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    req = ExportTraceServiceRequest()
    ss = req.resource_spans.add()
    ss.resource.attributes.add(key="service.name").value.string_value = "attrs"
    scope = ss.scope_spans.add()
    now = time.time_ns()
    for i, attrs in enumerate([
        {"service.peer.name": "billing"}, {"peer.service": "legacy-billing"},
        {"messaging.system": "kafka", "messaging.destination.name": "orders"},
        {"downstream_cluster": "istio-ingressgateway.istio-system"},
        {"istio.source_canonical_service": "reviews", "istio.source_namespace": "bookinfo"},
        {"http.url": "https://www.example.com/a"}, {"upstream_cluster.name": "outbound|80||ratings.default"},
        {"http.request.body.size": "12", "http.response.body.size": "34"},
    ]):
        sp = scope.spans.add(trace_id=uuid.uuid4().bytes, span_id=uuid.uuid4().bytes[:8], name=f"call {i}", kind=3,
                             start_time_unix_nano=now, end_time_unix_nano=now + 1_000_000)
        for k, v in attrs.items():
            sp.attributes.add(key=k).value.string_value = v
    return req


def test_promoted_edge_columns_equal_the_attributes_they_come_from(store, meshes, tmp_path):
    """007_edge_columns.sql computes the graph's span attributes at insert; they must equal the map reads they
    replace (written here independently), and every one is non-empty somewhere."""
    extra = f"graph-attrs-{RUN}"
    insert(store, tmp_path, "traces", _attribute_spans(), tenant=extra)
    tenants = [t for t, _ in meshes.values()] + [extra]
    a = "SpanAttributes"
    first = lambda *keys: "multiIf(" + ", ".join(f"{a}['{k}'] != '', {a}['{k}']" for k in keys) + ", '')"  # noqa: E731
    row = store.query(f"""
        SELECT count(),
            countIf(MeshRequestBytes != toFloat64OrZero({first('request_size', 'http.request.body.size',
                    'http.request_content_length', 'messaging.message.body.size')})),
            countIf(MeshResponseBytes != toFloat64OrZero({first('response_size', 'http.response.body.size',
                    'http.response_content_length')})),
            countIf(MeshPeerName != {first('service.peer.name', 'peer.service')}),
            countIf(MeshUpstreamCluster != {first('upstream_cluster', 'upstream_cluster.name')}),
            countIf(MeshUrlHost != domainWithoutWWW({first('url.full', 'http.url')})),
            countIf(MeshMessagingDestination != {a}['messaging.destination.name']),
            countIf(MeshCaller != if({a}['downstream_cluster'] != '', {a}['downstream_cluster'],
                    concat({a}['istio.source_canonical_service'], '.', {a}['istio.source_namespace']))),
            countIf(MeshRequestBytes > 0), countIf(MeshResponseBytes > 0), countIf(MeshPeerName != ''),
            countIf(MeshUpstreamCluster != ''), countIf(MeshUrlHost != ''), countIf(MeshMessagingDestination != ''),
            countIf(MeshCaller NOT IN ('', '.'))
        FROM {store.database}.otel_traces WHERE TenantId IN {{t:Array(String)}}""", parameters={"t": tenants}).rows[0]
    total, mismatches, non_empty = row[0], list(row[1:8]), list(row[8:])
    assert total > 0 and all(n > 0 for n in non_empty), row
    assert mismatches == [0] * 7, row
    got = dict(store.query(f"SELECT SpanName, tuple(MeshPeerName, MeshMessagingDestination, MeshCaller, MeshUrlHost, "
                           f"MeshUpstreamCluster, MeshRequestBytes, MeshResponseBytes) FROM {store.database}.otel_traces "
                           "WHERE TenantId = {t:String}", {"t": extra}).rows)
    assert got["call 1"][0] == "legacy-billing" and got["call 2"][1] == "orders"
    assert got["call 3"][2] == "istio-ingressgateway.istio-system" and got["call 4"][2] == "reviews.bookinfo"
    assert got["call 5"][3] == "example.com" and got["call 6"][4] == "outbound|80||ratings.default"
    assert got["call 7"][5:] == (12.0, 34.0)


def test_tenants_sharing_span_ids_are_never_joined(store, tmp_path):
    """The joins match spans by a hash of (tenant, trace, span): a tenant whose SERVER spans have the ids of another
    tenant's spans must not borrow that tenant's callers, neither raw nor in the rollup (which runs for all)."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    start = (time.time_ns() // MINUTE_NS - 30) * MINUTE_NS
    b = gm.build(start, 50, seconds=60, salt=b"tenants", with_metrics=False)
    full, servers_only = f"graph-tenant-full-{RUN}", f"graph-tenant-servers-{RUN}"
    insert(store, tmp_path, "traces", *b.traces, tenant=full)
    stripped = []
    for req in b.traces:
        r = ExportTraceServiceRequest()
        r.CopyFrom(req)
        for rs in r.resource_spans:
            for ss in rs.scope_spans:
                keep = [s for s in ss.spans if s.kind == 2]  # SPAN_KIND_SERVER
                del ss.spans[:]
                ss.spans.extend(keep)
        stripped.append(r)
    insert(store, tmp_path, "traces", *stripped, tenant=servers_only)
    lo, hi = start, start + 4 * MINUTE_NS
    EdgeRollup(store, lookback_minutes=6, backfill_hours=0).run_once(hi + MINUTE_NS)
    for source in ("raw", "rollup"):
        with_callers = by_key(fetch_edges(store, full, lo, hi, source=source))
        assert (gm.FRONTEND.node(), gm.CART.node(), "http") in with_callers, source
        alone = fetch_edges(store, servers_only, lo, hi, source=source)
        assert alone, source
        # Without its parents every SERVER span is a root: its source is unknown or the caller Envoy named.
        assert all(e.source.kind == "unknown" or e.source.workload != gm.FRONTEND.node()[2] for e in alone), source
        assert not any(node_key(e.source) == gm.FRONTEND.node() for e in alone), source


def _columns(sql: str) -> set[str]:
    """Column names in an SQL expression (ours start with a capital letter; functions do not)."""
    return set(re.findall(r"\b[A-Z][A-Za-z0-9_]*\b", sql))


def test_edge_hashes_cover_the_fields_grouped_under_them(store, meshes):
    """Requests are grouped on EdgeNodeHash, EdgeResponseHash and EdgePeerHash and each group's fields are read
    from one span of it (edges.HASHED_FIELDS): every column a field reads must be inside its hash as the table
    defines it, and in stored spans each value of a hash stands for one combination of its fields."""
    defined = dict(store.query("SELECT name, default_expression FROM system.columns WHERE database = {d:String} "
                               "AND table = 'otel_traces' AND default_kind = 'MATERIALIZED'",
                               {"d": store.database}).rows)
    for col, fields in HASHED_FIELDS.items():
        assert defined.get(col, "").startswith("cityHash64("), f"{col} is not a hash column of otel_traces"
        inside = _columns(defined[col])
        for field, expr in fields.items():
            used = _columns(expr)
            assert used and used <= inside, f"{col} does not cover {sorted(used - inside)} of field {field}"
    tenants = [t for t, _ in meshes.values()]
    for col, fields in HASHED_FIELDS.items():
        values, ambiguous = store.query(
            f"SELECT count(), countIf(u > 1) FROM (SELECT {col}, uniqExact(tuple({', '.join(fields.values())})) "
            f"AS u FROM {store.database}.otel_traces WHERE TenantId IN {{t:Array(String)}} GROUP BY {col})",
            {"t": tenants}).rows[0]
        assert values > 1 and ambiguous == 0, (col, values, ambiguous)


def test_spans_stored_before_the_hash_columns_give_the_same_edges(store, meshes, tmp_path):
    """Parts written before 009_span_hashes.sql have no hash columns on disk: ClickHouse computes them on read,
    and the graph over such spans is the graph over spans inserted with them."""
    tenant, b = meshes["sidecars"]
    old = copy.copy(store)
    old.database = f"pre009_{RUN}"
    try:
        for name, text in schema_files():
            if name < "009":
                for stmt in split_statements(render(text, old.database, 7)):
                    old.command(stmt)
        insert(old, tmp_path, "traces", *b.traces, tenant=tenant)
        cols = {r[0] for r in old.query("SELECT name FROM system.columns WHERE database = {d:String} "
                                        "AND table = 'otel_traces'", {"d": old.database}).rows}
        assert "SpanHash" not in cols and "EdgeNodeHash" not in cols
        apply_schema(old)
        lo, hi = b.start_ns // MINUTE_NS * MINUTE_NS, -(-b.end_ns // MINUTE_NS) * MINUTE_NS + MINUTE_NS
        upgraded = fetch_edges(old, tenant, lo, hi, source="raw")
        assert by_key(upgraded).keys() == b.truth.keys()
        assert _summary(upgraded) == _summary(fetch_edges(store, tenant, lo, hi, source="raw"))
    finally:
        old.command(f"DROP DATABASE IF EXISTS {old.database}")


def test_callers_internal_parents_virtual_kinds_and_p_values(store, tmp_path):
    """What the synthetic mesh never sends: a root SERVER span whose Envoy names its caller (the caller is the
    source) and a non-root one whose parent is missing (unknown, whatever it names), a SERVER span under an
    INTERNAL span of another workload, CLIENT/PRODUCER spans to a peer service, a queue, a database and Envoy's
    PassthroughCluster, and the older ``ot=p:<n>`` sampling mark."""
    tenant = f"graph-cases-{RUN}"
    start = (time.time_ns() // MINUTE_NS - 40) * MINUTE_NS
    batch = gm.Workload("batch-v1", "batch", "v1")
    http = {"http.request.method": "GET", "http.response.status_code": 200}
    spans, sampled = gm._Spans(""), gm._Spans("ot=p:2")
    ids = iter(range(1, 100))

    def sid() -> bytes:
        return next(ids).to_bytes(8, "big")

    def trace() -> bytes:
        return uuid.uuid4().bytes

    t = start + 10 * 10**9
    spans.add(gm.app_resource(gm.FRONTEND), trace(), sid(), b"", 2, "GET /", t, t + 5 * gm.MS,
              {**http, "downstream_cluster": "istio-ingressgateway.istio-system"})
    spans.add(gm.app_resource(gm.CART), trace(), sid(), b"\xaa" * 8, 2, "GET /cart", t, t + 5 * gm.MS,
              {**http, "downstream_cluster": "frontend.shop"})
    tid, parent = trace(), sid()
    spans.add(gm.app_resource(batch), tid, parent, b"", 1, "nightly", t, t + 50 * gm.MS, {})
    spans.add(gm.app_resource(gm.ORDERS), tid, sid(), parent, 2, "POST /orders", t + gm.MS, t + 9 * gm.MS, http)
    for kind, attrs in ((3, {**http, "peer.service": "billing"}),
                        (4, {"messaging.system": "kafka", "messaging.destination.name": "orders"}),
                        (3, {"db.system": "redis"}),
                        (3, {**http, "upstream_cluster": "PassthroughCluster"})):
        spans.add(gm.app_resource(gm.FRONTEND), trace(), sid(), b"", kind, "call", t, t + 2 * gm.MS, attrs)
    sampled.add(gm.app_resource(gm.ORDERS), trace(), sid(), b"", 2, "GET /orders", t, t + 3 * gm.MS, http)
    insert(store, tmp_path, "traces", *spans.requests(), *sampled.requests(), tenant=tenant)

    lo, hi = start, start + MINUTE_NS
    EdgeRollup(store, lookback_minutes=45, backfill_hours=0).run_once(hi + MINUTE_NS)
    shop = gm.NS
    want = {
        (("wl", "istio-system", "istio-ingressgateway"), gm.FRONTEND.node(), "http"): 1.0,
        (gm.UNKNOWN_NODE, gm.CART.node(), "http"): 1.0,
        (batch.node(), gm.ORDERS.node(), "http"): 1.0,
        (gm.UNKNOWN_NODE, gm.ORDERS.node(), "http"): 4.0,  # p:2 = one span in four kept
        (gm.FRONTEND.node(), ("svc", shop, "billing"), "http"): 1.0,
        (gm.FRONTEND.node(), ("svc", shop, "kafka/orders"), "tcp"): 1.0,
        (gm.FRONTEND.node(), ("svc", shop, "redis"), "tcp"): 1.0,
        (gm.FRONTEND.node(), ("svc", shop, "PassthroughCluster"), "http"): 1.0,
    }
    for source in ("raw", "rollup"):
        got = by_key(fetch_edges(store, tenant, lo, hi, source=source))
        assert {k: e.requests for k, e in got.items()} == want, source
        caller = got[(("wl", "istio-system", "istio-ingressgateway"), gm.FRONTEND.node(), "http")]
        assert caller.source.is_gateway and caller.source.kind == "workload", source
        virtual = {k[1]: e.dest.virtual for k, e in got.items() if e.dest.kind == "service"}
        assert virtual == {("svc", shop, "billing"): "peer", ("svc", shop, "kafka/orders"): "messaging",
                           ("svc", shop, "redis"): "db", ("svc", shop, "PassthroughCluster"): "egress"}, source
