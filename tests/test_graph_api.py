"""The graph HTTP routes: parameter handling and bounds (400 with one plain-text line), Kiali's JSON and the SVG,
tenancy, failures of the data source, and the whole path from spans inserted by the real write path into the real
embedded store to the graph's numbers."""
from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
import xml.etree.ElementTree as ET

import pytest
from test_otlp_sql import insert as otlp_insert
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from meshscope.query import graph_api
from meshscope.query.graph.types import EdgeStats, NodeIdentity
from meshscope.query.graph_api import GraphService, parse_duration, parse_query_time, routes
from meshscope.store import StoreError

sys.path.insert(0, os.path.dirname(__file__))
import graph_mesh  # noqa: E402  (the data side's synthetic mesh with known truth)

S = 1_000_000_000
NOW = 1_750_000_000


def call(route_defs, path, params=None, headers=None):
    async def run():
        app = web.Application()
        app.add_routes(route_defs)
        async with TestClient(TestServer(app)) as client:
            r = await client.get(path, params=params or {}, headers=headers or {})
            return r.status, r.headers.get("Content-Type", ""), await r.read()
    return asyncio.run(run())


class Recorder:
    """A fetch that records its arguments and answers fixed edges."""

    def __init__(self, edges=None, error: Exception | None = None):
        self.calls = []
        self.edges = edges or []
        self.error = error

    def __call__(self, store, tenant, start_ns, end_ns, *, source="auto", namespaces=None):
        self.calls.append(dict(store=store, tenant=tenant, start_ns=start_ns, end_ns=end_ns, source=source,
                               namespaces=namespaces))
        if self.error:
            raise self.error
        return list(self.edges)


def fixed_edges():
    pp = NodeIdentity(cluster="east", namespace="bookinfo", workload="productpage-v1", app="productpage",
                      version="v1", service="productpage")
    rv = NodeIdentity(cluster="east", namespace="bookinfo", workload="reviews-v1", app="reviews", version="v1",
                      service="reviews")
    return [EdgeStats(NodeIdentity(kind="unknown"), pp, "http", 600, requests=600, responses={"200": 600}),
            EdgeStats(pp, rv, "http", 600, requests=1200, responses={"200": 1140, "503": 60},
                      latency_ms={"p95": 12.0, "p99": 40.0}, mtls_requests=1200)]


def service(fetch):
    return GraphService("STORE", fetch, clock=lambda: NOW + 0.7)


# ------------------------------------------------------------------------------------------- parameters
def test_defaults_and_parameters_reach_the_fetch():
    rec = Recorder(fixed_edges())
    status, ctype, body = call(service(rec).routes(), "/api/graph")
    assert status == 200 and ctype.startswith("application/json")
    c = rec.calls[-1]
    assert c == dict(store="STORE", tenant="default", start_ns=(NOW - 600) * S, end_ns=NOW * S, source="auto",
                     namespaces=None)
    import orjson
    doc = orjson.loads(body)
    assert (doc["timestamp"], doc["duration"], doc["graphType"]) == (NOW, 600, "workload")  # Kiali's server default
    status, _, _ = call(service(rec).routes(), "/api/graph", {
        "namespaces": "bookinfo, shop,bookinfo", "duration": "1h", "queryTime": str((NOW - 60) * 1000),
        "source": "spans", "graphType": "app"}, {"X-Scope-OrgID": "team-a"})
    assert status == 200
    c = rec.calls[-1]
    assert c["tenant"] == "team-a" and c["source"] == "spans" and c["namespaces"] == ["bookinfo", "shop"]
    assert (c["start_ns"], c["end_ns"]) == ((NOW - 60 - 3600) * S, (NOW - 60) * S)


@pytest.mark.parametrize("raw,secs", [(None, 600), ("", 600), ("10m", 600), ("600s", 600), ("600", 600),
                                      ("1h30m", 5400), ("2d", 172800), ("90.5", 90), ("30d", 30 * 86400)])
def test_parse_duration(raw, secs):
    assert parse_duration(raw) == secs


@pytest.mark.parametrize("raw,t", [(None, NOW), (str(NOW), NOW), (str(NOW * 1000), NOW), (str(NOW * 10**9), NOW),
                                   (f"{NOW}.9", NOW)])
def test_parse_query_time(raw, t):
    assert parse_query_time(raw, NOW + 0.2) == t


@pytest.mark.parametrize("params,needle", [
    ({"graphType": "pods"}, "graphType"),
    ({"duration": "abc"}, "duration"),
    ({"duration": "0"}, "duration"),
    ({"duration": "-5"}, "duration"),
    ({"duration": "31d"}, "at most 30d"),
    ({"duration": "1e400"}, "duration"),
    ({"queryTime": "yesterday"}, "queryTime"),
    ({"queryTime": "12"}, "out of range"),
    ({"queryTime": "nan"}, "queryTime"),
    ({"namespaces": ",".join(f"ns{i}" for i in range(101))}, "too many namespaces"),
    ({"namespaces": "a" * 300}, "namespace"),
    ({"responseTime": "90"}, "responseTime"),
    ({"throughputType": "both"}, "throughputType"),
    ({"source": "prometheus"}, "source"),
    ({"injectServiceNodes": "maybe"}, "injectServiceNodes"),
    ({"boxBy": "pod"}, "boxBy"),
])
def test_bad_parameters_are_400_with_one_line(params, needle):
    rec = Recorder()
    for path in ("/api/graph", "/api/graph.svg", "/api/namespaces/graph"):
        status, ctype, body = call(service(rec).routes(), path, params)
        assert status == 400, (path, params, body)
        assert ctype.startswith("text/plain")
        text = body.decode()
        assert needle in text and text.count("\n") == 1 and len(text) < 300
    assert rec.calls == []


def test_bad_tenant_is_400():
    status, _, body = call(service(Recorder()).routes(), "/api/graph", headers={"X-Scope-OrgID": "a/b"})
    assert status == 400 and b"X-Scope-OrgID" in body


# ------------------------------------------------------------------------------------------- answers
def test_kiali_path_and_svg_answer_the_same_graph():
    rec = Recorder(fixed_edges())
    import orjson
    params = {"graphType": "versionedApp", "responseTime": "99", "queryTime": str(NOW)}
    _, _, a = call(service(rec).routes(), "/api/graph", params)
    _, _, b = call(service(rec).routes(), "/api/namespaces/graph", params)
    assert a == b
    doc = orjson.loads(a)
    edge = [e["data"] for e in doc["elements"]["edges"] if e["data"].get("responseTime")][0]
    assert edge["responseTime"] == "40" and edge["isMTLS"] == "100" and edge["healthStatus"] == "Degraded"
    status, ctype, svg = call(service(rec).routes(), "/api/graph.svg", params)
    assert status == 200 and ctype.startswith("image/svg+xml")
    root = ET.fromstring(svg)
    node_ids = {g.get("data-id") for g in root.iter("{http://www.w3.org/2000/svg}g")
                if "ms-node" in (g.get("class") or "").split()}
    assert node_ids == {n["data"]["id"] for n in doc["elements"]["nodes"] if n["data"]["nodeType"] != "box"}


def test_data_source_failures_are_one_line_answers(monkeypatch):
    status, _, body = call(service(Recorder(error=StoreError("Code: 241. Memory limit exceeded"))).routes(),
                           "/api/graph")
    assert status == 503 and body.decode().count("\n") == 1 and b"Memory limit" in body
    status, _, body = call(service(Recorder(error=StoreError("Code: 62. Syntax error", retryable=False))).routes(),
                           "/api/graph.svg")
    assert status == 500
    status, _, body = call(service(Recorder(error=RuntimeError("boom\nsecond line"))).routes(), "/api/graph")
    assert status == 500 and body == b"graph query failed: RuntimeError: boom second line\n"
    status, _, body = call(service(Recorder(error=ValueError("source must be auto"))).routes(), "/api/graph")
    assert status == 400 and b"source must be auto" in body
    monkeypatch.setattr(graph_api, "_default_fetch", lambda: None)
    status, _, body = call(GraphService("STORE").routes(), "/api/graph")
    assert status == 503 and b"no data source" in body


def test_routes_helper_lists_every_path():
    paths = sorted(r.path for r in routes("STORE", Recorder()))
    assert paths == ["/api/graph", "/api/graph.svg", "/api/graph/edge", "/api/graph/namespaces", "/api/graph/node",
                     "/api/namespaces/graph"]


# ------------------------------------------------------------------------------------------- the real path
def insert(store, tmp_path, signal, requests, tenant):
    """The collector's write path: OTLP bytes in a WAL segment, one ``INSERT ... FORMAT Protobuf`` per table."""
    otlp_insert(store, tmp_path, signal, *requests, tenant=tenant)


@pytest.fixture(scope="module")
def mesh(store, tmp_path_factory):
    tenant = f"graph-api-{uuid.uuid4().hex[:8]}"
    start = (int(time.time()) // 60 - 30) * 60 * S
    built = graph_mesh.build(start, 140, seconds=60)
    tmp = tmp_path_factory.mktemp("graph-api")
    insert(store, tmp, "traces", built.traces, tenant)
    insert(store, tmp, "metrics", built.metrics, tenant)
    return tenant, built


def _get(store, path, params, tenant):
    import orjson
    status, ctype, body = call(routes(store), path, params, {"X-Scope-OrgID": tenant})
    assert status == 200, body
    return orjson.loads(body) if ctype.startswith("application/json") else body


def _window(built):
    return {"queryTime": str(built.end_ns // S), "duration": f"{(built.end_ns - built.start_ns) // S}s"}


def _name(d):
    if d["nodeType"] == "unknown":
        return ("unknown",)
    if d["nodeType"] == "service":
        return ("svc", d["namespace"], d["service"])
    return ("wl", d["namespace"], d["workload"])


def test_spans_from_the_write_path_give_the_true_graph(store, mesh):
    tenant, built = mesh
    secs = (built.end_ns - built.start_ns) // S
    doc = _get(store, "/api/graph", {**_window(built), "source": "raw", "graphType": "workload"}, tenant)
    nodes = {n["data"]["id"]: n["data"] for n in doc["elements"]["nodes"]}
    got = {(_name(nodes[e["data"]["source"]]), _name(nodes[e["data"]["target"]]), e["data"]["traffic"]["protocol"]):
           e["data"] for e in doc["elements"]["edges"]}
    checked = 0
    for (src, dst, proto), truth in built.truth.items():
        if proto == "tcp":
            continue  # spans carry no TCP bytes: the edge exists without a rate
        e = got[(src, dst, proto)]
        rates = e["traffic"]["rates"]
        assert float(rates[proto]) == pytest.approx(truth.requests / secs, abs=0.006), (src, dst)
        errors = sum(n for c, n in truth.codes.items()
                     if c == "-" or c[:1] in ("4", "5") or (proto == "grpc" and c not in ("0",)))
        if errors:
            assert float(rates[f"{proto}PercentErr"]) == pytest.approx(100 * errors / truth.requests, abs=0.051)
        else:
            assert f"{proto}PercentErr" not in rates
        checked += 1
    assert checked >= 5
    assert {k for k in got if k[2] != "tcp"} == {k for k in built.truth if k[2] != "tcp"}
    # health from Kiali's defaults: cart answers 500 to 1 in 10 (>= 10 % fails), orders gRPC 14 to 1 in 25
    fe_cart = got[(("wl", "shop", "frontend-v1"), ("wl", "shop", "cart-v1"), "http")]
    assert fe_cart["healthStatus"] == "Failure"
    assert got[(("wl", "shop", "frontend-v1"), ("wl", "shop", "orders-v1"), "grpc")]["healthStatus"] == "Degraded"
    roots = [d for d in nodes.values() if d.get("isRoot")]
    assert [d["nodeType"] for d in roots] == ["unknown"]


def test_real_graph_filters_by_namespace_and_tenant(store, mesh):
    tenant, built = mesh
    doc = _get(store, "/api/graph", {**_window(built), "source": "raw", "namespaces": "istio-system"}, tenant)
    names = {(_name(n["data"]), n["data"].get("isOutside", False)) for n in doc["elements"]["nodes"]}
    assert names == {(("unknown",), False), (("wl", "istio-system", "istio-ingressgateway"), False),
                     (("wl", "shop", "frontend-v1"), True)}
    other = _get(store, "/api/graph", {**_window(built), "source": "raw"}, tenant + "-other")
    assert other["elements"] == {"nodes": [], "edges": []}


def test_real_graph_types_metrics_and_svg(store, mesh):
    tenant, built = mesh
    svc = _get(store, "/api/graph", {**_window(built), "source": "raw", "graphType": "service"}, tenant)
    kinds = {n["data"]["nodeType"] for n in svc["elements"]["nodes"]}
    assert kinds <= {"service", "unknown", "workload"} and "service" in kinds
    app = _get(store, "/api/graph", {**_window(built), "source": "auto", "graphType": "app"}, tenant)
    assert {n["data"].get("app") for n in app["elements"]["nodes"]} >= {"frontend", "cart", "orders"}
    met = _get(store, "/api/graph", {**_window(built), "source": "metrics"}, tenant)
    edges = [e["data"] for e in met["elements"]["edges"]]
    assert edges and any(e.get("isMTLS") == "100" for e in edges)  # Istio's metrics know the security policy
    svg = _get(store, "/api/graph.svg", {**_window(built), "graphType": "versionedApp"}, tenant)
    root = ET.fromstring(svg)
    assert root.get("data-graph-type") == "versionedApp"
    assert sum(1 for g in root.iter("{http://www.w3.org/2000/svg}g") if "ms-edge" in (g.get("class") or "")) >= 5
