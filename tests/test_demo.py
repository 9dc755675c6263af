"""``meshscope demo`` end to end: the simulated bookinfo mesh -> real OTel SDK exporters -> ``meshscope serve``.

One server, two demos sent concurrently under two tenants: ``default`` (seed 1, the default 10% ratings
errors) and ``faults`` (ratings always fails). After SIGTERM the stopped server's directory is read once and
every test checks a part of what the demo promises (see ``meshscope/demo.py``).
"""

from __future__ import annotations

import subprocess
import sys
import threading

import orjson
import pytest

from conftest import start_server

from meshscope.demo import (ISTIO_DURATION_BUCKETS, DemoOptions, add_demo_arguments, options_from_args, run_demo,
                            start_demo_thread)

pytestmark = [pytest.mark.slow]

PROXIES = {"istio-ingressgateway.istio-system", "productpage.bookinfo", "details.bookinfo", "reviews.bookinfo",
           "ratings.bookinfo"}
APPS = {"productpage", "details", "reviews", "ratings"}
ISTIO_LABELS = {
    "reporter", "source_workload", "source_workload_namespace", "source_principal", "source_app", "source_version",
    "source_canonical_service", "source_canonical_revision", "source_cluster", "destination_workload",
    "destination_workload_namespace", "destination_principal", "destination_app", "destination_version",
    "destination_canonical_service", "destination_canonical_revision", "destination_cluster", "destination_service",
    "destination_service_name", "destination_service_namespace", "request_protocol", "response_code",
    "grpc_response_status", "response_flags", "connection_security_policy",
}
RATINGS = "outbound|9080||ratings.bookinfo.svc.cluster.local"

QUERIES = {
    "services": "SELECT TenantId, ServiceName, SpanKind, count() FROM otel.otel_traces GROUP BY 1, 2, 3",
    "proxy_tags": """SELECT ServiceName, countIf(SpanAttributes['node_id'] = ''),
        countIf(SpanAttributes['component'] != 'proxy'), countIf(SpanAttributes['istio.canonical_service'] = ''),
        groupUniqArray(splitByChar('~', SpanAttributes['node_id'])[1])
        FROM otel.otel_traces WHERE TenantId = 'default' AND ServiceName LIKE '%.%' GROUP BY 1""",
    "mesh": """SELECT DISTINCT ServiceName, MeshCluster, MeshNamespace, MeshWorkload, MeshApp, MeshVersion, MeshProxy
        FROM otel.otel_traces WHERE TenantId = 'default'""",
    # the first trace that went all the way to ratings and back without errors
    "chain": """SELECT SpanId, ParentSpanId, ServiceName, SpanKind, toUnixTimestamp64Nano(Timestamp), Duration,
        SpanAttributes, StatusCode, MeshDbSystem, MeshDbNamespace, MeshPeerService FROM otel.otel_traces
        WHERE TenantId = 'default' AND TraceId = (
            SELECT TraceId FROM otel.otel_traces WHERE TenantId = 'default' GROUP BY TraceId
            HAVING countIf(ServiceName = 'ratings' AND SpanKind = 'SPAN_KIND_SERVER') = 1
               AND countIf(StatusCode = 'STATUS_CODE_ERROR') = 0
               AND countIf(SpanAttributes['upstream_cluster'] = 'outbound|443||api.books.example.com') = 1
            ORDER BY TraceId LIMIT 1)""",
    "access": """SELECT LogAttributes['upstream_cluster'], LogAttributes['response_code'], LogAttributes['pod'],
        LogAttributes['namespace'], LogAttributes['cluster'], LogAttributes['mesh'], LogAttributes['request_id'],
        LogAttributes['authority'], MeshWorkload, MeshNamespace, MeshResponseCode, MeshRequestId, SeverityText,
        (TraceId, SpanId) IN (SELECT TraceId, SpanId FROM otel.otel_traces
                              WHERE TenantId = 'default' AND SpanAttributes['node_id'] != '')
        FROM otel.otel_logs WHERE TenantId = 'default' AND LogAttributes['upstream_cluster'] != ''""",
    "app_logs": """SELECT ServiceName, SeverityText, SeverityNumber, Body,
        (TraceId, SpanId) IN (SELECT TraceId, SpanId FROM otel.otel_traces
                              WHERE TenantId = 'default' AND ServiceName = 'reviews' AND SpanKind = 'SPAN_KIND_SERVER')
        FROM otel.otel_logs WHERE TenantId = 'default' AND ServiceName = 'reviews'""",
    "requests_total": """SELECT Attributes, max(Value), any(IsMonotonic), any(AggregationTemporality), any(ServiceName)
        FROM otel.otel_metrics_sum WHERE TenantId = 'default' AND MetricName = 'istio_requests_total'
        GROUP BY Attributes""",
    "histogram": """SELECT MetricName, any(ExplicitBounds), max(Count), groupUniqArray(Attributes['reporter'])
        FROM otel.otel_metrics_histogram WHERE TenantId = 'default' GROUP BY MetricName""",
    "fault_spans": """SELECT ServiceName, SpanKind, SpanAttributes['http.status_code'], SpanAttributes['response_flags'],
        SpanAttributes['error'], StatusCode, count() FROM otel.otel_traces
        WHERE TenantId = 'faults' AND (SpanAttributes['upstream_cluster'] = '%s'
           OR ServiceName IN ('ratings.bookinfo', 'reviews.bookinfo') AND SpanKind = 'SPAN_KIND_SERVER')
        GROUP BY ALL""" % RATINGS,
    "fault_db": """SELECT StatusCode, MeshDbSystem, count() FROM otel.otel_traces
        WHERE TenantId = 'faults' AND ServiceName = 'ratings' AND SpanKind = 'SPAN_KIND_CLIENT' GROUP BY ALL""",
    "fault_metrics": """SELECT Attributes['reporter'], Attributes['response_code'], Attributes['response_flags'],
        max(Value) FROM otel.otel_metrics_sum WHERE TenantId = 'faults' AND MetricName = 'istio_requests_total'
        AND Attributes['destination_service_name'] = 'ratings' GROUP BY Attributes""",
    "fault_access": """SELECT LogAttributes['response_flags'], LogAttributes['response_code'],
        LogAttributes['upstream_host'], count() FROM otel.otel_logs
        WHERE TenantId = 'faults' AND LogAttributes['upstream_cluster'] = '%s' GROUP BY ALL""" % RATINGS,
    "latency": """SELECT MeshVersion, quantileExact(0.5)(Duration) FROM otel.otel_traces
        WHERE TenantId = 'default' AND ServiceName = 'reviews' AND SpanKind = 'SPAN_KIND_SERVER' GROUP BY 1""",
    "thread": "SELECT count(), uniqExact(TraceId) FROM otel.otel_traces WHERE TenantId = 'thread'",
    "fault_logs": """SELECT ServiceName, SeverityText, count() FROM otel.otel_logs
        WHERE TenantId = 'faults' AND ServiceName IN ('reviews', 'ratings') GROUP BY ALL""",
}


def read_store_many(data_dir: str, queries: dict[str, str]) -> dict[str, list[tuple]]:
    """Like conftest.read_store, several queries in one fresh process (chDB: one path per process)."""
    code = (
        "import sys, orjson\n"
        "from meshscope.store import EmbeddedStore\n"
        "st = EmbeddedStore(sys.argv[1])\n"
        "qs = orjson.loads(sys.argv[2])\n"
        "out = {k: [list(r) for r in st.query(q).rows] for k, q in qs.items()}\n"
        "sys.stdout.buffer.write(orjson.dumps(out, default=str))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, data_dir, orjson.dumps(queries).decode()],
                         capture_output=True, timeout=120)
    if out.returncode != 0:
        raise AssertionError(out.stderr.decode(errors="replace"))
    return {k: [tuple(r) for r in v] for k, v in orjson.loads(out.stdout).items()}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    srv = start_server(str(tmp_path_factory.mktemp("demo") / "data"), "--flush-interval", "0.2")
    try:
        runs = {
            "default": DemoOptions(otlp=srv.otlp_url, duration=3, rate=20, seed=1),
            "faults": DemoOptions(otlp=srv.otlp_url, duration=3, rate=10, seed=2, error_rate=1.0, tenant="faults"),
        }
        stats: dict = {}

        def run(name: str) -> None:
            stats[name] = run_demo(runs[name])

        threads = [threading.Thread(target=run, args=(n,)) for n in runs]
        for th in threads:
            th.start()
        # and the way ``serve --demo`` runs it: in a thread until told to stop
        bg, stop = start_demo_thread(DemoOptions(otlp=srv.otlp_url, rate=10, seed=3, tenant="thread"))
        for th in threads:
            th.join(60)
        stop.set()
        bg.join(30)
        assert not bg.is_alive() and bg.stats is not None and bg.stats.requests > 0
        stats["thread"] = bg.stats
        assert set(stats) == {*runs, "thread"}, "a demo run did not finish"
        assert srv.stop() == 0, srv.log()
        yield stats, read_store_many(srv.data_dir, QUERIES)
    finally:
        srv.stop(timeout=30)


def test_everything_sent_was_acknowledged(demo):
    stats, _ = demo
    for name, st in stats.items():
        assert st.requests >= 20, (name, st)
        assert st.export_failures == 0, (name, st)
        assert st.spans_exported == st.spans > 10 * st.requests, (name, st)
        assert st.logs_exported == st.logs > st.access_logs > 0, (name, st)
        assert st.metric_points_exported > 0, (name, st)
    assert stats["faults"].ratings_errors > 0 and stats["default"].ratings_errors < stats["default"].requests


def test_spans_from_every_app_and_sidecar(demo):
    stats, r = demo
    services = {(t, s) for t, s, _, _ in r["services"]}
    for tenant in ("default", "faults"):
        assert {s for t, s in services if t == tenant} == APPS | PROXIES
    counts = {(s, k): n for t, s, k, n in r["services"] if t == "default"}
    requests = stats["default"].requests
    # one gateway SERVER span (the root) and one app SERVER span of productpage per request
    assert counts[("istio-ingressgateway.istio-system", "SPAN_KIND_SERVER")] == requests
    assert counts[("productpage", "SPAN_KIND_SERVER")] == requests
    tags = {row[0]: row[1:] for row in r["proxy_tags"]}
    assert set(tags) == PROXIES
    for svc, (no_node, not_proxy, no_istio, kinds) in tags.items():
        assert (no_node, not_proxy, no_istio) == (0, 0, 0), svc
        assert kinds == (["router"] if svc.startswith("istio-ingressgateway") else ["sidecar"]), svc


def test_mesh_columns_filled(demo):
    _, r = demo
    rows = set(r["mesh"])
    assert ("reviews.bookinfo", "Kubernetes", "bookinfo", "reviews-v2", "reviews", "v2", "envoy") in rows
    assert ("reviews", "Kubernetes", "bookinfo", "reviews-v2", "reviews", "v2", "") in rows
    assert ("istio-ingressgateway.istio-system", "Kubernetes", "istio-system", "istio-ingressgateway",
            "istio-ingressgateway", "latest", "envoy") in rows
    assert {row[3] for row in rows} == {"istio-ingressgateway", "productpage-v1", "details-v1", "reviews-v1",
                                         "reviews-v2", "reviews-v3", "ratings-v1"}


def test_parent_child_chain_of_one_trace(demo):
    _, r = demo
    spans = {row[0]: row for row in r["chain"]}
    assert spans, "no error-free trace reached ratings"
    roots = [s for s in spans.values() if s[1] == ""]
    assert len(roots) == 1 and roots[0][2:4] == ("istio-ingressgateway.istio-system", "SPAN_KIND_SERVER")
    for s in spans.values():
        if s[1]:
            p = spans[s[1]]  # every parent is in the trace
            assert p[4] <= s[4] and s[4] + s[5] <= p[4] + p[5], (p[2:4], s[2:4])  # callee time inside caller time

    def up(span):
        out = []
        while span[1]:
            span = spans[span[1]]
            out.append((span[2], span[3]))
        return out

    ratings_server = next(s for s in spans.values() if s[2:4] == ("ratings", "SPAN_KIND_SERVER"))
    assert up(ratings_server) == [
        ("ratings.bookinfo", "SPAN_KIND_SERVER"), ("reviews.bookinfo", "SPAN_KIND_CLIENT"),
        ("reviews", "SPAN_KIND_CLIENT"), ("reviews", "SPAN_KIND_SERVER"), ("reviews.bookinfo", "SPAN_KIND_SERVER"),
        ("productpage.bookinfo", "SPAN_KIND_CLIENT"), ("productpage", "SPAN_KIND_CLIENT"),
        ("productpage", "SPAN_KIND_SERVER"), ("productpage.bookinfo", "SPAN_KIND_SERVER"),
        ("istio-ingressgateway.istio-system", "SPAN_KIND_CLIENT"),
        ("istio-ingressgateway.istio-system", "SPAN_KIND_SERVER"),
    ]
    # sidecar overhead: each sidecar span outlasts the span it wraps by well under a few ms
    srv_sidecar = spans[ratings_server[1]]
    assert 0.1e6 <= srv_sidecar[5] - ratings_server[5] <= 2e6
    attrs = srv_sidecar[6]
    assert attrs["upstream_cluster"] == "inbound|9080||" and attrs["http.status_code"] == "200"
    assert attrs["response_flags"] == "-" and attrs["node_id"].startswith("sidecar~")
    assert spans[srv_sidecar[1]][6]["upstream_cluster"] == RATINGS
    # the database: an app CLIENT span without a server side
    db = [s for s in spans.values() if s[8]]
    assert [(s[2], s[3], s[8], s[9], s[10]) for s in db] == [("ratings", "SPAN_KIND_CLIENT", "mongodb", "test", "mongodb")]
    assert not [s for s in spans.values() if s[1] == db[0][0]]
    # the external API: details' CLIENT span -> its sidecar's CLIENT span, and nothing behind it
    ext = [s for s in spans.values() if s[6].get("peer.service") == "api.books.example.com"]
    assert len(ext) == 1 and ext[0][2:4] == ("details", "SPAN_KIND_CLIENT")
    assert ext[0][6]["server.address"] == "api.books.example.com"
    (proxy,) = [s for s in spans.values() if s[1] == ext[0][0]]
    assert proxy[2:4] == ("details.bookinfo", "SPAN_KIND_CLIENT")
    assert not [s for s in spans.values() if s[1] == proxy[0]]


def test_access_logs_parsed_and_linked(demo):
    _, r = demo
    logs = r["access"]
    assert len(logs) > 100
    for (cluster, code, pod, ns, k8s_cluster, mesh, req_id, _auth, workload, mesh_ns, mesh_code, mesh_req, sev,
         linked) in logs:
        assert code.isdigit() and mesh_code == code and mesh_req == req_id != ""
        assert pod.startswith(workload + "-") and ns == mesh_ns and (k8s_cluster, mesh) == ("Kubernetes", "cluster.local")
        assert sev == "" and linked, "access logs carry the proxy span's trace and span id"
    clusters = {row[0] for row in logs}
    assert {"inbound|9080||", "outbound|9080||reviews.bookinfo.svc.cluster.local", RATINGS,
            "outbound|443||api.books.example.com"} <= clusters
    # both proxies log each request: productpage's (outbound) and reviews' (inbound)
    per_request: dict[str, set] = {}
    for row in logs:
        if row[7] == "reviews:9080":
            per_request.setdefault(row[6], set()).add((row[8], row[0]))
    assert per_request and all(len(v) == 2 and ("productpage-v1", "outbound|9080||reviews.bookinfo.svc.cluster.local")
                               in v for v in per_request.values())


def test_app_logs_carry_the_trace(demo):
    _, r = demo
    logs = r["app_logs"]
    assert logs and all(linked for *_, linked in logs)
    assert {(sev, num) for _, sev, num, _, _ in logs} <= {("INFO", 9), ("WARN", 13)}
    assert any("fetched 2 reviews for product 0" in body for *_, body, _ in logs)


def test_istio_metrics(demo):
    stats, r = demo
    series = r["requests_total"]
    assert {a["reporter"] for a, *_ in series} == {"source", "destination"}
    for attrs, value, monotonic, temporality, service in series:
        assert set(attrs) == ISTIO_LABELS, attrs
        assert monotonic and temporality == 2 and service == "kubernetes-pods" and value >= 1

    def total(**want):
        return sum(v for a, v, *_ in series if all(a[k] == x for k, x in want.items()))

    n = stats["default"].requests
    assert total(reporter="source", source_workload="istio-ingressgateway", destination_service_name="productpage") == n
    assert total(reporter="destination", destination_workload="productpage-v1") == n
    assert total(reporter="source", source_workload="productpage-v1", destination_service_name="reviews") == n
    assert total(reporter="destination", destination_app="reviews") == n
    policies = {(a["reporter"], a["connection_security_policy"]) for a, *_ in series
                if a["destination_service_name"] == "reviews"}
    assert policies == {("source", "unknown"), ("destination", "mutual_tls")}
    hist = {row[0]: row[1:] for row in r["histogram"]}
    assert {"istio_request_duration_milliseconds", "istio_request_bytes", "istio_response_bytes"} <= set(hist)
    bounds, count, reporters = hist["istio_request_duration_milliseconds"]
    assert bounds == list(ISTIO_DURATION_BUCKETS) and count >= 1 and set(reporters) == {"source", "destination"}


def test_ratings_errors_propagate(demo):
    stats, r = demo
    rows = r["fault_spans"]
    callers = [row for row in rows if row[0] == "reviews.bookinfo" and row[1] == "SPAN_KIND_CLIENT"]
    assert callers and all(code == "503" and flags in ("URX", "UH") and err == "true" and st == "STATUS_CODE_ERROR"
                           for _, _, code, flags, err, st, _ in callers)
    ratings = [row for row in rows if row[0] == "ratings.bookinfo"]
    assert ratings and all(row[2] == "503" and row[5] == "STATUS_CODE_ERROR" for row in ratings)
    # reviews degrades instead of failing
    reviews = [row for row in rows if row[0] == "reviews.bookinfo" and row[1] == "SPAN_KIND_SERVER"]
    assert reviews and all(row[2] == "200" and row[5] != "STATUS_CODE_ERROR" for row in reviews)
    assert {(st, db) for st, db, _ in r["fault_db"]} == {("STATUS_CODE_ERROR", "mongodb")}
    metrics = r["fault_metrics"]
    assert {m[1] for m in metrics} == {"503"}
    assert {m[0] for m in metrics} == {"source", "destination"}
    assert sum(v for rep, _, _, v in metrics if rep == "source") == stats["faults"].ratings_errors
    # the access logs of the failed calls parse too: retried app failures (URX) and no healthy upstream (UH)
    access = {(flags, code, host != "-") for flags, code, host, _ in r["fault_access"]}
    assert access == {("URX", "503", True), ("UH", "503", False)}
    logs = {(s, sev): n for s, sev, n in r["fault_logs"]}
    assert logs.get(("reviews", "WARN")) and logs.get(("ratings", "ERROR")) and not logs.get(("ratings", "INFO"))


def test_latency_injection_and_background_thread(demo):
    stats, r = demo
    median = dict(r["latency"])  # ns
    assert median["v3"] > 50e6 > median["v1"], median  # --latency-ms 50 on reviews-v3 by default
    count, traces = r["thread"][0]
    assert count == stats["thread"].spans_exported and traces == stats["thread"].requests > 0


def test_cli_arguments():
    import argparse

    p = argparse.ArgumentParser()
    add_demo_arguments(p)
    o = options_from_args(p.parse_args([]))
    assert (o.otlp, o.duration, o.rate, o.error_rate, o.mtls, o.seed) == ("http://127.0.0.1:4318", 0, 5, 0.1, True, None)
    o = options_from_args(p.parse_args(["--otlp", "http://h:1", "--duration", "2", "--rate", "7", "--error-rate", "1",
                                        "--latency-ms", "0", "--no-mtls", "--seed", "3", "--db", "mysql"]))
    assert (o.otlp, o.duration, o.rate, o.error_rate, o.latency_ms, o.mtls, o.seed, o.db) == (
        "http://h:1", 2, 7, 1, 0, False, 3, "mysql")
    for bad in (["--rate", "0"], ["--error-rate", "1.5"], ["--duration", "-1"]):
        with pytest.raises(SystemExit):
            p.parse_args(bad)
