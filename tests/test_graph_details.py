"""The graph's detail routes (``/api/graph/node``, ``/api/graph/edge``, ``/api/graph/namespaces``) over the real
embedded store, fed through the collector's write path with the synthetic mesh of known truth (plus error logs),
and the sharing of one edge read between the SVG, the JSON and the details."""
from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
import uuid

import orjson
import pytest
from test_graph_api import call, insert
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from meshscope.query.graph.types import EdgeStats, NodeIdentity
from meshscope.query.graph_api import GraphService, routes
from meshscope.query.logql.engine import LogQLEngine
from meshscope.query.loki_api import LokiApi

sys.path.insert(0, os.path.dirname(__file__))
import graph_mesh  # noqa: E402

S = 1_000_000_000
LOG_ERRORS = 7          # error lines of cart-v1 in the window
PAYMENT = "payment provider refused card"


def logs_request(start_ns: int) -> ExportLogsServiceRequest:
    """cart-v1: LOG_ERRORS error lines (one trace id), info lines; frontend-v1: error lines of its own."""
    req = ExportLogsServiceRequest()
    for w, lines in ((graph_mesh.CART, [(17, PAYMENT)] * LOG_ERRORS + [(9, "cart updated")] * 5 + [(13, "slow")]),
                     (graph_mesh.FRONTEND, [(17, "frontend exploded")] * 3)):
        rl = req.resource_logs.add()
        for k, v in graph_mesh.app_resource(w):
            rl.resource.attributes.add(key=k).value.string_value = v
        sl = rl.scope_logs.add()
        for i, (sev, body) in enumerate(lines):
            rec = sl.log_records.add(time_unix_nano=start_ns + (i + 1) * S, severity_number=sev)
            rec.body.string_value = body
            rec.trace_id = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")
            rec.span_id = bytes.fromhex("b7ad6b7169203331")
    return req


@pytest.fixture(scope="module")
def mesh(store, tmp_path_factory):
    tenant = f"graph-details-{uuid.uuid4().hex[:8]}"
    start = (int(time.time()) // 60 - 30) * 60 * S
    built = graph_mesh.build(start, 140, seconds=60)
    tmp = tmp_path_factory.mktemp("graph-details")
    insert(store, tmp, "traces", built.traces, tenant)
    insert(store, tmp, "metrics", built.metrics, tenant)
    insert(store, tmp, "logs", [logs_request(start)], tenant)
    return tenant, built


def get(store, path, params, tenant, status=200):
    code, ctype, body = call(routes(store), path, params, {"X-Scope-OrgID": tenant})
    assert code == status, body
    return orjson.loads(body) if ctype.startswith("application/json") else body.decode()


def window(built, graph_type="workload"):
    return {"queryTime": str(built.end_ns // S), "duration": f"{(built.end_ns - built.start_ns) // S}s",
            "source": "raw", "graphType": graph_type}


def node_ids(doc):
    def name(d):
        return "" if d["nodeType"] == "unknown" else d.get("workload") or d.get("service") or ""
    return {(n["data"]["nodeType"], name(n["data"])): n["data"]["id"] for n in doc["elements"]["nodes"]}


def test_node_details_agree_with_the_truth(store, mesh):
    tenant, built = mesh
    params = window(built)
    ids = node_ids(get(store, "/api/graph", params, tenant))
    d = get(store, "/api/graph/node", {**params, "node": ids[("workload", "cart-v1")]}, tenant)
    assert (d["kind"], d["label"], d["node"]["workload"], d["node"]["namespace"]) == ("node", "cart-v1", "cart-v1",
                                                                                      "shop")
    secs = (built.end_ns - built.start_ns) / S
    truth = built.truth[(graph_mesh.FRONTEND.node(), graph_mesh.CART.node(), "http")]
    inbound = d["red"]["inbound"]
    assert inbound["requestRate"] == pytest.approx(truth.requests / secs, abs=1e-6)
    errors = sum(n for c, n in truth.codes.items() if c[:1] in ("4", "5"))
    assert errors > 0 and inbound["errorRate"] == pytest.approx(errors / truth.requests, abs=1e-6)
    for key, q in (("p50Ms", 0.5), ("p95Ms", 0.95), ("p99Ms", 0.99)):  # log-spaced buckets are ~19 % wide
        assert inbound[key] == pytest.approx(graph_mesh.percentile(truth.latencies_ms, q), rel=0.2), key
    # 1 in 10 answered 500: Kiali's 5xx tolerance fails at 10 %
    assert d["health"]["status"] == "Failure" and d["health"]["errorRatio"] >= 10
    assert {"code": "5XX", "protocol": "http", "direction": ".*", "degraded": 0, "failure": 10} in \
        d["health"]["thresholds"]
    codes = {(r["code"], r["error"]) for r in d["responses"]["inbound"]}
    assert ("500", True) in codes and ("200", False) in codes
    assert d["errors"]["codes"][0]["code"] == "500" and d["errors"]["codes"][0]["direction"] == "inbound"
    # the store's side: error spans (app and sidecar server spans answered 500) and error logs, with trace ids
    spans = d["errors"]["spans"]
    assert spans and max(s["count"] for s in spans) == truth.codes["500"]
    assert all(len(s["traceID"]) == 32 for s in spans) and {s["code"] for s in spans} <= {"500", ""}
    assert [(l["line"], l["count"], l["traceID"]) for l in d["errors"]["logs"]] == [
        (PAYMENT, LOG_ERRORS, "0af7651916cd43dd8448eb211c80319c")]
    assert d["identity"] == {"namespace": "shop", "workload": "cart-v1", "app": "cart", "version": None}
    assert d["links"]["traces"] == {"service": "cart", "tags": {"k8s.deployment.name": "cart-v1"}}
    query = d["links"]["logs"]["query"]
    # every log stream of cart-v1 carries its namespace and deployment: those select app and access logs alike
    assert query == '{k8s_namespace_name="shop", k8s_deployment_name="cart-v1"}'
    assert {n["label"] for n in d["neighbours"]["inbound"]} == {"frontend-v1"}
    # the LogQL link selects exactly cart-v1's lines through the real Loki API
    loki = LokiApi(LogQLEngine(store)).routes()
    code, _, body = call(loki, "/loki/api/v1/query_range", {
        "query": query, "start": str(built.start_ns), "end": str(built.end_ns + 60 * S), "limit": "100"},
        {"X-Scope-OrgID": tenant})
    assert code == 200, body
    lines = [v[1] for s in orjson.loads(body)["data"]["result"] for v in s["values"]]
    assert sorted(set(lines)) == sorted({PAYMENT, "cart updated", "slow"}) and len(lines) == LOG_ERRORS + 6


def test_root_and_virtual_nodes(store, mesh):
    tenant, built = mesh
    params = window(built)
    ids = node_ids(get(store, "/api/graph", params, tenant))
    gw = get(store, "/api/graph/node", {**params, "node": ids[("workload", "istio-ingressgateway")]}, tenant)
    # the gateway is called only by the unknown source: inbound RED from that edge, outbound to the frontend
    assert gw["red"]["inbound"]["requestRate"] > 0 and gw["red"]["outbound"]["requestRate"] > 0
    assert gw["links"]["traces"]["service"] == "istio-ingressgateway.istio-system"  # an Envoy-only workload
    assert gw["errors"]["logs"] == []
    unknown = get(store, "/api/graph/node", {**params, "node": ids[("unknown", "")]}, tenant)
    assert unknown["links"] is None and unknown["identity"] is None and unknown["red"]["inbound"]["requestRate"] == 0
    ext = get(store, "/api/graph/node", {**params, "node": ids[("service", graph_mesh.EXTERNAL)]}, tenant)
    assert ext["links"] is None and ext["red"]["inbound"]["requestRate"] > 0


def test_edge_details(store, mesh):
    tenant, built = mesh
    params = window(built)
    doc = get(store, "/api/graph", params, tenant)
    ids = node_ids(doc)
    edge = next(e["data"] for e in doc["elements"]["edges"]
                if e["data"]["source"] == ids[("workload", "frontend-v1")]
                and e["data"]["target"] == ids[("workload", "cart-v1")])
    d = get(store, "/api/graph/edge", {**params, "edge": edge["id"]}, tenant)
    assert (d["kind"], d["label"], d["protocol"]) == ("edge", "frontend-v1 \u2192 cart-v1", "http")
    assert d["edge"] == edge  # the same data as the graph's JSON
    assert d["red"]["requestRate"] == pytest.approx(float(edge["traffic"]["rates"]["http"]), rel=0.01)
    assert 100 * d["red"]["errorRate"] == pytest.approx(float(edge["traffic"]["rates"]["httpPercentErr"]), abs=0.051)
    assert d["health"]["status"] == edge["healthStatus"] == "Failure"
    assert [r["code"] for r in d["errors"]["codes"]] == ["500"]
    assert d["links"]["source"]["traces"]["service"] == "frontend"
    assert d["links"]["target"]["logs"]["query"] == '{k8s_namespace_name="shop", k8s_deployment_name="cart-v1"}'


def test_namespaces_ignore_the_namespace_filter(store, mesh):
    tenant, built = mesh
    params = {**window(built), "namespaces": "istio-system"}
    doc = get(store, "/api/graph/namespaces", params, tenant)
    assert [n["name"] for n in doc["namespaces"]] == ["istio-system", "shop"]
    assert get(store, "/api/graph/namespaces", params, tenant + "-none")["namespaces"] == []


@pytest.mark.parametrize("path,params,status,needle", [
    ("/api/graph/node", {}, 400, "missing node"),
    ("/api/graph/node", {"node": "cart-v1"}, 400, "64 hex digits"),
    ("/api/graph/edge", {"edge": "zz" * 32}, 400, "64 hex digits"),
    ("/api/graph/node", {"node": "0" * 64}, 404, "no node 000000000000"),
    ("/api/graph/edge", {"edge": "0" * 64}, 404, "no edge"),
    ("/api/graph/node", {"node": "0" * 64, "duration": "abc"}, 400, "invalid duration"),
    ("/api/graph/namespaces", {"duration": "abc"}, 400, "invalid duration"),
])
def test_bad_requests_are_one_line(store, mesh, path, params, status, needle):
    tenant, built = mesh
    text = get(store, path, {**window(built), **params}, tenant, status=status)
    assert needle in text and text.count("\n") == 1


# ------------------------------------------------------------------------------------------- one read, shared
class SlowRecorder:
    """A fetch that takes a moment, so concurrent requests overlap, and counts its calls."""

    def __init__(self):
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, store, tenant, start_ns, end_ns, *, source="auto", namespaces=None):
        with self.lock:
            self.calls += 1
        time.sleep(0.2)
        pp = NodeIdentity(cluster="c", namespace="ns", workload="a-v1", app="a", version="v1")
        rv = NodeIdentity(cluster="c", namespace="ns", workload="b-v1", app="b", version="v1")
        return [EdgeStats(pp, rv, "http", end_ns / S - start_ns / S, requests=60, responses={"200": 60})]


def test_concurrent_reads_share_one_fetch_and_the_cache_keeps_it():
    rec = SlowRecorder()
    clock = [1_750_000_000.0]
    svc = GraphService("STORE", rec, clock=lambda: clock[0], cache_ttl=60)

    async def run():
        app = web.Application()
        app.add_routes(svc.routes())
        async with TestClient(TestServer(app)) as client:
            async def one(path, **params):
                r = await client.get(path, params={"duration": "10m", **params})
                return r.status, await r.read()
            first = await asyncio.gather(one("/api/graph"), one("/api/graph.svg"), one("/api/graph/namespaces"))
            doc = orjson.loads(first[0][1])
            node = doc["elements"]["nodes"][0]["data"]["id"]
            clock[0] += 3  # a later "now" within the cache's lifetime still reads the window read at first
            later = await one("/api/graph/node", node=node)  # another graph type would have other ids
            other = await one("/api/graph", duration="5m")
            return first, later, other, doc

    first, later, other, doc = asyncio.run(run())
    assert all(status == 200 for status, _ in first) and later[0] == 200 and other[0] == 200
    assert rec.calls == 2  # one for the 10m window (JSON, SVG, namespaces, node), one for 5m
    assert orjson.loads(later[1])["timestamp"] == doc["timestamp"] == 1_750_000_000
    assert orjson.loads(first[2][1])["namespaces"] == [{"name": "ns"}]


def test_injected_fetch_is_not_cached_by_default():
    rec = SlowRecorder()
    svc = GraphService("STORE", rec, clock=lambda: 1_750_000_000.0)
    for _ in range(2):
        assert call(svc.routes(), "/api/graph")[0] == 200
    assert rec.calls == 2


@pytest.mark.parametrize("graph_type", ["app", "versionedApp", "workload", "service"])
def test_every_node_and_edge_of_every_graph_type_has_details(store, mesh, graph_type):
    tenant, built = mesh
    params = window(built, graph_type)

    async def run():
        app = web.Application()
        app.add_routes(routes(store))
        async with TestClient(TestServer(app)) as client:
            async def one(path, **extra):
                r = await client.get(path, params={**params, **extra}, headers={"X-Scope-OrgID": tenant})
                return r.status, await r.read()
            status, body = await one("/api/graph")
            doc = orjson.loads(body)
            nodes = [n["data"] for n in doc["elements"]["nodes"] if n["data"]["nodeType"] != "box"]
            edges = [e["data"] for e in doc["elements"]["edges"]]
            got_nodes = [await one("/api/graph/node", node=n["id"]) for n in nodes]
            got_edges = [await one("/api/graph/edge", edge=e["id"]) for e in edges]
            return nodes, edges, got_nodes, got_edges

    nodes, edges, got_nodes, got_edges = asyncio.run(run())
    assert nodes and edges
    for n, (status, body) in zip(nodes, got_nodes):
        assert status == 200, (n, body)
        d = orjson.loads(body)
        assert d["id"] == n["id"] and d["node"] == {k: v for k, v in n.items() if k != "parent"}
        assert d["health"]["status"] == ((n.get("healthData") or {}).get("status") or {}).get("status", "NA")
    for e, (status, body) in zip(edges, got_edges):
        assert status == 200, (e, body)
        d = orjson.loads(body)
        assert d["edge"] == e and d["health"]["status"] == e["healthStatus"]
