"""The Kiali graph model over hand-made EdgeStats whose truth is known: node ids per graph type, rates and their
string formatting, error and request shares, responses, health at its thresholds, flags, service injection and
reduction, and the JSON shape of Kiali's ``/api/namespaces/graph``."""
from __future__ import annotations

import hashlib

import pytest

from meshscope.query.graph.model import (
    DEFAULT_TOLERANCES, GraphError, GraphOptions, build_graph, histogram_quantile, node_id, rate_to_string,
    request_status,
)
from meshscope.query.graph.types import EdgeStats, NodeIdentity

W = 600.0  # window seconds


def wl(name, app=None, version="v1", ns="bookinfo", service=None, cluster="east", **kw):
    return NodeIdentity(cluster=cluster, namespace=ns, workload=name, app=app or name.rsplit("-", 1)[0],
                        version=version, service=service or (app or name.rsplit("-", 1)[0]), **kw)


UNKNOWN_SRC = NodeIdentity(kind="unknown")
PP = wl("productpage-v1", "productpage")
RV1 = wl("reviews-v1", "reviews", "v1")
RV2 = wl("reviews-v2", "reviews", "v2")
RT = wl("ratings-v1", "ratings")
DETAILS = wl("details-v1", "details")


def sha(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


def http(src, dst, codes, **kw):
    return EdgeStats(src, dst, "http", W, requests=sum(codes.values()), responses=dict(codes), **kw)


def doc_of(edges, **opts):
    return build_graph(edges, GraphOptions(**opts)).to_kiali_json()


def nodes_by(doc, key="workload"):
    return {n["data"].get(key) or n["data"].get("service") or n["data"]["nodeType"]: n["data"]
            for n in doc["elements"]["nodes"]}


def edge_between(doc, src_id, dst_id, proto=None):
    found = [e["data"] for e in doc["elements"]["edges"] if e["data"]["source"] == src_id
             and e["data"]["target"] == dst_id and (proto is None or e["data"]["traffic"]["protocol"] == proto)]
    assert len(found) == 1, found
    return found[0]


# ------------------------------------------------------------------------------------------- formatting
@pytest.mark.parametrize("precision,val,text", [
    (2, 1.0, "1.00"), (2, 20.0, "20.00"), (2, 0.05, "0.05"), (2, 0.005, "0.005"), (2, 0.0001234, "0.0001"),
    (2, 0.0000012, "0.00000"), (1, 12.345, "12.3"), (2, 1 / 3, "0.33"), (2, 0.0333, "0.03"), (2, 0, "0.00"),
])
def test_rate_to_string_matches_kiali(precision, val, text):
    assert rate_to_string(precision, val) == text


# ------------------------------------------------------------------------------------------- node ids
@pytest.mark.parametrize("args,gt,expected", [
    (("east", "unknown", "", "unknown", "unknown", "unknown", "unknown"), "workload",
     ("east_unknown_source", "unknown")),
    (("east", "ns", "unknown", "ns", "unknown", "unknown", "unknown"), "workload", ("svc_east_ns_unknown", "service")),
    (("east", "ns", "", "ns", "wl", "app", "v1"), "workload", ("wl_east_ns_wl", "workload")),
    (("east", "ns", "svc", "ns", "unknown", "unknown", ""), "workload", ("svc_east_ns_svc", "service")),
    (("east", "ns", "svc", "ns", "unknown", "unknown", ""), "service", ("svc_east_ns_svc", "service")),
    (("east", "ns", "", "ns", "wl", "app", "v1"), "versionedApp", ("vapp_east_ns_wl", "app")),
    (("east", "ns", "", "ns", "unknown", "app", "v1"), "versionedApp", ("vapp_east_ns_app_v1", "app")),
    (("east", "ns", "", "ns", "unknown", "app", "latest"), "versionedApp", ("app_east_ns_app", "app")),
    (("east", "ns", "", "ns", "wl", "app", "v1"), "app", ("app_east_ns_app", "app")),
    (("east", "ns", "", "ns", "wl", "unknown", "v1"), "app", ("wl_east_ns_wl", "workload")),
    (("east", "ns", "svc", "ns", "unknown", "unknown", ""), "app", ("svc_east_ns_svc", "service")),
    (("east", "svcns", "svc", "unknown", "wl", "app", "v1"), "workload", ("wl_east_svcns_wl", "workload")),
])
def test_node_id_rules_are_kialis(args, gt, expected):
    assert node_id(*args, gt) == expected


def test_node_id_without_any_name_is_an_error():
    with pytest.raises(ValueError):
        node_id("east", "ns", "", "ns", "unknown", "unknown", "unknown", "workload")
    with pytest.raises(ValueError):
        node_id("east", "ns", "", "ns", "unknown", "app", "v1", "workload")  # app only, workload graph


def test_json_ids_are_sha256_of_kiali_ids_and_edge_ids_chain_them():
    doc = doc_of([http(PP, RV1, {"200": 600})], graph_type="workload")
    ids = {n["data"]["workload"]: n["data"]["id"] for n in doc["elements"]["nodes"]}
    assert ids["productpage-v1"] == sha("wl_east_bookinfo_productpage-v1")
    assert ids["reviews-v1"] == sha("wl_east_bookinfo_reviews-v1")
    e = doc["elements"]["edges"][0]["data"]
    assert e["source"] == ids["productpage-v1"] and e["target"] == ids["reviews-v1"]
    assert e["id"] == sha(f"{ids['productpage-v1']}.{ids['reviews-v1']}.http")


# ------------------------------------------------------------------------------------------- rates
def test_http_rates_error_share_and_responses():
    codes = {"200": 1140, "404": 30, "503": 20, "-": 10}
    doc = doc_of([http(PP, RV1, codes, flags={"503": {"UH": 15, "UF": 5}, "-": {"DC": 10}},
                       hosts={"200": {"reviews.bookinfo.svc.cluster.local": 1140}}),
                  http(PP, RT, {"200": 600})], graph_type="workload")
    n = nodes_by(doc)
    e = edge_between(doc, n["productpage-v1"]["id"], n["reviews-v1"]["id"])
    rates = e["traffic"]["rates"]
    assert rates == {"http": "2.00", "http4xx": "0.05", "http5xx": "0.03", "httpNoResponse": "0.02",
                     "httpPercentErr": "5.0", "httpPercentReq": "66.7"}
    assert list(rates) == sorted(rates)
    resp = e["traffic"]["responses"]
    assert resp["200"] == {"flags": {"-": "95.0"}, "hosts": {"reviews.bookinfo.svc.cluster.local": "95.0"}}
    assert resp["503"]["flags"] == {"UF": "0.4", "UH": "1.2"}
    assert resp["503"]["hosts"] == {"reviews": "1.7"}  # no host given: the destination service
    assert resp["-"]["flags"] == {"DC": "0.8"}
    assert resp["404"]["flags"] == {"-": "2.5"}
    other = edge_between(doc, n["productpage-v1"]["id"], n["ratings-v1"]["id"])
    assert other["traffic"]["rates"] == {"http": "1.00", "httpPercentReq": "33.3"}
    # node traffic (graph/protocol.go): the source counts out, the destination counts in per class
    assert n["productpage-v1"]["traffic"] == [{"protocol": "http", "rates": {"httpOut": "3.00"}}]
    assert n["reviews-v1"]["traffic"] == [{"protocol": "http", "rates": {
        "httpIn": "2.00", "httpIn4xx": "0.05", "httpIn5xx": "0.03", "httpInNoResponse": "0.02"}}]


def test_3xx_is_not_an_error_and_single_edge_takes_all_requests():
    doc = doc_of([http(PP, RV1, {"200": 300, "302": 300})])
    e = doc["elements"]["edges"][0]["data"]
    assert e["traffic"]["rates"] == {"http": "1.00", "http3xx": "0.50", "httpPercentReq": "100.0"}
    assert e["healthStatus"] == "Healthy"


def test_grpc_codes_errors_and_no_response():
    es = EdgeStats(PP, RT, "grpc", W, requests=1200, responses={"0": 1080, "14": 60, "-": 30, "503": 30})
    doc = doc_of([es])
    n = nodes_by(doc)
    e = doc["elements"]["edges"][0]["data"]
    # "503" is an HTTP error code reported for gRPC by old telemetry: counted as grpcErr
    assert e["traffic"]["rates"] == {"grpc": "2.00", "grpcErr": "0.15", "grpcNoResponse": "0.05",
                                     "grpcPercentErr": "10.0", "grpcPercentReq": "100.0"}
    assert n["ratings-v1"]["traffic"] == [{"protocol": "grpc", "rates": {
        "grpcIn": "2.00", "grpcInErr": "0.15", "grpcInNoResponse": "0.05"}}]
    # 14 is 5% (Degraded), "-" 2.5% (Degraded): worst Degraded; the 503 matches no gRPC tolerance
    assert e["healthStatus"] == "Degraded"


def test_tcp_edges_carry_bytes_per_second():
    db = NodeIdentity(cluster="east", namespace="bookinfo", service="mysql", kind="service", virtual="db")
    es = EdgeStats(RT, db, "tcp", W, requests=4, bytes_sent=600 * 1024, flags={"-": {"-": 3, "DC": 1}})
    doc = doc_of([es])
    n = nodes_by(doc)
    e = doc["elements"]["edges"][0]["data"]
    assert e["traffic"]["rates"] == {"tcp": "1024.00"}
    assert e["traffic"]["responses"]["-"]["flags"] == {"-": "75.0", "DC": "25.0"}
    assert "responseTime" not in e
    assert n["ratings-v1"]["traffic"] == [{"protocol": "tcp", "rates": {"tcpOut": "1024.00"}}]
    assert n["mysql"]["traffic"] == [{"protocol": "tcp", "rates": {"tcpIn": "1024.00"}}]
    assert n["mysql"]["isServiceEntry"] == {"hosts": ["mysql"], "location": "MESH_EXTERNAL", "namespace": "bookinfo"}
    assert e["healthStatus"] == "Healthy"


def test_node_traffic_lists_protocols_in_kiali_order():
    doc = doc_of([http(PP, RT, {"200": 600}),
                  EdgeStats(PP, RT, "grpc", W, requests=600, responses={"0": 600}),
                  EdgeStats(PP, RT, "tcp", W, requests=1, bytes_sent=600)])
    n = nodes_by(doc)
    assert [t["protocol"] for t in n["productpage-v1"]["traffic"]] == ["grpc", "http", "tcp"]
    assert len(doc["elements"]["edges"]) == 3  # one edge per (source, dest, protocol)
    protos = [e["data"]["traffic"]["protocol"] for e in doc["elements"]["edges"]]
    assert protos == sorted(protos)


def test_edges_of_several_records_merge_per_protocol():
    a = http(PP, RV1, {"200": 300}, latency_ms={"p95": 10.0})
    b = http(PP, RV1, {"200": 270, "500": 30}, latency_ms={"p95": 30.0}, origin="metrics")
    doc = doc_of([a, b])
    e = doc["elements"]["edges"][0]["data"]
    assert e["traffic"]["rates"]["http"] == "1.00"
    assert e["traffic"]["rates"]["http5xx"] == "0.05"
    assert e["traffic"]["rates"]["httpPercentErr"] == "5.0"
    assert e["responseTime"] == "20"  # request-weighted estimate when no buckets


def test_unbroken_down_requests_count_in_totals_only():
    es = EdgeStats(PP, RV1, "http", W, requests=600, responses={"500": 60})
    e = doc_of([es])["elements"]["edges"][0]["data"]
    assert e["traffic"]["rates"]["http"] == "1.00"
    assert e["traffic"]["rates"]["httpPercentErr"] == "10.0"
    assert set(e["traffic"]["responses"]) == {"500"}


# ------------------------------------------------------------------------------------------- health
def _req(codes, proto="http"):
    return {proto: {c: float(v) for c, v in codes.items()}}


@pytest.mark.parametrize("codes,status", [
    ({"200": 100}, "Healthy"),
    ({"200": 99999, "500": 1}, "Degraded"),        # any 5xx degrades
    ({"200": 90.01, "500": 9.99}, "Degraded"),
    ({"200": 90, "500": 10}, "Failure"),          # failure at >= 10 %
    ({"200": 90.01, "404": 9.99}, "Healthy"),      # 4xx: below 10 % is fine
    ({"200": 90, "404": 10}, "Degraded"),
    ({"200": 80.01, "404": 19.99}, "Degraded"),
    ({"200": 80, "404": 20}, "Failure"),
    ({"200": 99.9, "-": 0.1}, "Degraded"),         # no response: any
    ({"200": 90, "-": 10}, "Failure"),
    ({"200": 95, "503": 5, "404": 15}, "Degraded"),
    ({"302": 100}, "Healthy"),
])
def test_http_health_thresholds_at_their_boundaries(codes, status):
    assert request_status(_req(codes), "inbound")[0] == status
    e = doc_of([http(PP, RV1, codes)])["elements"]["edges"][0]["data"]
    assert e["healthStatus"] == status


@pytest.mark.parametrize("codes,status", [
    ({"0": 100}, "Healthy"),
    ({"0": 99, "14": 1}, "Degraded"),
    ({"0": 90.01, "2": 9.99}, "Degraded"),
    ({"0": 90, "16": 10}, "Failure"),
    ({"0": 90, "17": 10}, "Healthy"),   # not a gRPC status the tolerance knows
    ({"0": 90, "-": 10}, "Failure"),
])
def test_grpc_health_thresholds(codes, status):
    assert request_status(_req(codes, "grpc"), "outbound")[0] == status


def test_health_without_traffic_is_na_and_ratio_is_the_worst():
    assert request_status({}, "inbound") == ("NA", 0.0, 0.0)
    st, ratio, total = request_status(_req({"200": 85, "404": 15}), "inbound")
    assert (st, round(ratio, 6), total) == ("Degraded", 15.0, 100.0)
    assert len(DEFAULT_TOLERANCES) == 4


def test_node_health_is_worst_of_inbound_and_outbound():
    doc = doc_of([http(PP, RV1, {"200": 600}), http(RV1, RT, {"200": 500, "500": 100})])
    n = nodes_by(doc)
    rv = n["reviews-v1"]["healthData"]
    assert rv["requests"]["inbound"] == {"http": {"200": 1.0}}
    assert rv["requests"]["outbound"]["http"] == pytest.approx({"200": 5 / 6, "500": 1 / 6})
    assert rv["status"]["status"] == "Failure"
    assert rv["status"]["errorRatio"] == pytest.approx(16.667, abs=1e-3)
    assert rv["workloadStatus"] is None and rv["requests"]["healthAnnotations"] == {}
    assert n["productpage-v1"]["healthData"]["status"]["status"] == "Healthy"
    assert n["ratings-v1"]["healthData"]["status"]["status"] == "Failure"


def test_unknown_node_has_no_health_and_is_an_inaccessible_root():
    doc = doc_of([http(UNKNOWN_SRC, PP, {"200": 600})])
    n = nodes_by(doc, "nodeType")
    u = n["unknown"]
    assert u["healthData"] is None
    assert u["isRoot"] is True and u["isInaccessible"] is True
    assert u["id"] == sha("unknown_unknown_source")
    assert "isRoot" not in n["workload"]


# ------------------------------------------------------------------------------------------- graph types
def _bookinfo():
    return [
        http(UNKNOWN_SRC, PP, {"200": 600}),
        http(PP, RV1, {"200": 600}, latency_ms={"p95": 10.0}),
        http(PP, RV2, {"200": 540, "503": 60}, latency_ms={"p95": 40.0}),
        http(RV2, RT, {"200": 600}, latency_ms={"p95": 5.0}),
        http(PP, DETAILS, {"200": 1200}),
    ]


def test_workload_graph_has_one_node_per_workload():
    doc = doc_of(_bookinfo(), graph_type="workload")
    types = sorted((n["data"]["nodeType"], n["data"].get("workload")) for n in doc["elements"]["nodes"])
    assert types == [("unknown", "unknown"), ("workload", "details-v1"), ("workload", "productpage-v1"),
                     ("workload", "ratings-v1"), ("workload", "reviews-v1"), ("workload", "reviews-v2")]
    wl_node = nodes_by(doc)["reviews-v2"]
    assert wl_node["app"] == "reviews" and wl_node["version"] == "v2" and "service" not in wl_node
    assert wl_node["destServices"] == [{"cluster": "east", "namespace": "bookinfo", "name": "reviews"}]
    assert len(doc["elements"]["edges"]) == 5


def test_app_graph_merges_versions_into_one_node_and_one_edge():
    doc = doc_of(_bookinfo(), graph_type="app")
    apps = {n["data"].get("app"): n["data"] for n in doc["elements"]["nodes"]}
    assert set(apps) == {"unknown", "productpage", "reviews", "ratings", "details"}
    rv = apps["reviews"]
    assert rv["id"] == sha("app_east_bookinfo_reviews")
    assert "workload" not in rv and "version" not in rv
    assert rv["traffic"] == [{"protocol": "http", "rates": {"httpIn": "2.00", "httpIn5xx": "0.10",
                                                            "httpOut": "1.00"}}]
    e = edge_between(doc, apps["productpage"]["id"], rv["id"])
    assert e["traffic"]["rates"] == {"http": "2.00", "http5xx": "0.10", "httpPercentErr": "5.0",
                                     "httpPercentReq": "50.0"}
    assert e["healthStatus"] == "Degraded"
    assert e["responseTime"] == "25"
    assert not any(n["data"]["nodeType"] == "box" for n in doc["elements"]["nodes"])  # one member per app


def test_versioned_app_graph_boxes_versions_of_an_app():
    doc = doc_of(_bookinfo(), graph_type="versionedApp", query_time=1_700_000_000)
    nodes = [n["data"] for n in doc["elements"]["nodes"]]
    assert nodes[0]["nodeType"] == "box"  # boxes first
    box = nodes[0]
    assert box["isBox"] == "app" and box["app"] == "reviews" and box["id"] == sha("box_east_bookinfo_reviews")
    members = [n for n in nodes if n.get("parent") == box["id"]]
    assert sorted(m["version"] for m in members) == ["v1", "v2"]
    assert all(m["id"] == sha(f"vapp_east_bookinfo_{m['workload']}") for m in members)
    assert box["healthData"]["status"]["status"] == "Degraded"
    assert list(members[0])[:2] == ["id", "parent"]
    assert doc["timestamp"] == 1_700_000_000 and doc["duration"] == 600 and doc["graphType"] == "versionedApp"


def test_service_injection_splits_edges_and_puts_response_time_on_the_workload_half():
    doc = doc_of(_bookinfo(), graph_type="workload", inject_service_nodes=True)
    by_type = {}
    for n in doc["elements"]["nodes"]:
        by_type.setdefault(n["data"]["nodeType"], []).append(n["data"])
    services = {s["service"]: s for s in by_type["service"]}
    assert set(services) == {"productpage", "reviews", "ratings", "details"}
    rsvc = services["reviews"]
    assert rsvc["id"] == sha("svc_east_bookinfo_reviews")
    assert rsvc["destServices"] == [{"cluster": "east", "namespace": "bookinfo", "name": "reviews"}]
    assert "workload" not in rsvc and "app" not in rsvc
    n = nodes_by(doc)
    into = edge_between(doc, n["productpage-v1"]["id"], rsvc["id"])
    assert into["traffic"]["rates"]["http"] == "2.00"
    assert "responseTime" not in into
    out_v2 = edge_between(doc, rsvc["id"], n["reviews-v2"]["id"])
    assert out_v2["responseTime"] == "40"
    assert out_v2["traffic"]["rates"] == {"http": "1.00", "http5xx": "0.10", "httpPercentErr": "10.0",
                                          "httpPercentReq": "50.0"}
    assert rsvc["traffic"] == [{"protocol": "http", "rates": {"httpIn": "2.00", "httpIn5xx": "0.10",
                                                              "httpOut": "2.00"}}]


def test_service_graph_keeps_services_and_roots_only():
    doc = doc_of(_bookinfo(), graph_type="service")
    nodes = {(n["data"]["nodeType"], n["data"].get("service")): n["data"] for n in doc["elements"]["nodes"]}
    # the unknown root calls productpage's service; every workload is reduced away
    assert set(nodes) == {("unknown", None), ("service", "productpage"), ("service", "reviews"),
                          ("service", "ratings"), ("service", "details")}
    ids = {k[1]: v["id"] for k, v in nodes.items()}
    edges = {(e["data"]["source"], e["data"]["target"]) for e in doc["elements"]["edges"]}
    assert edges == {(ids[None], ids["productpage"]), (ids["productpage"], ids["reviews"]),
                     (ids["productpage"], ids["details"]), (ids["reviews"], ids["ratings"])}
    e = edge_between(doc, ids["productpage"], ids["reviews"])
    assert e["traffic"]["rates"] == {"http": "2.00", "http5xx": "0.10", "httpPercentErr": "5.0",
                                     "httpPercentReq": "50.0"}
    assert e["responseTime"] == "25"  # meshscope: the requests' own latency (Kiali leaves service edges blank)
    assert nodes[("unknown", None)]["isRoot"] is True


def test_workload_to_workload_root_edge_survives_in_service_graph_only_to_services():
    direct = wl("loadgen", "loadgen", service="unknown")
    to_wl_without_service = NodeIdentity(cluster="east", namespace="bookinfo", workload="legacy", app="legacy")
    doc = doc_of([http(direct, PP, {"200": 60}), http(direct, to_wl_without_service, {"200": 60})],
                 graph_type="service")
    kinds = sorted((n["data"]["nodeType"], n["data"].get("workload") or n["data"].get("service"))
                   for n in doc["elements"]["nodes"])
    assert kinds == [("service", "productpage"), ("workload", "loadgen")]
    assert len(doc["elements"]["edges"]) == 1


# ------------------------------------------------------------------------------------------- flags, filters
def test_namespace_filter_keeps_touching_edges_and_marks_outsiders():
    other = wl("frontend", "frontend", ns="shop")
    far = wl("a", "a", ns="x")
    far2 = wl("b", "b", ns="y")
    doc = doc_of([http(other, PP, {"200": 60}), http(PP, RV1, {"200": 60}), http(far, far2, {"200": 60})],
                 namespaces=("bookinfo",))
    n = nodes_by(doc)
    assert set(n) == {"frontend", "productpage-v1", "reviews-v1"}
    assert n["frontend"]["isOutside"] is True and n["frontend"]["isRoot"] is True
    assert "isOutside" not in n["productpage-v1"] and "isRoot" not in n["productpage-v1"]
    # without namespaces every namespace is in, nobody is outside
    doc = doc_of([http(other, PP, {"200": 60}), http(far, far2, {"200": 60})])
    assert not any(nd["data"].get("isOutside") for nd in doc["elements"]["nodes"])
    assert len(doc["elements"]["edges"]) == 2


def test_inaccessible_egress_unknown_destination_and_gateway():
    passthrough = NodeIdentity(cluster="east", namespace="bookinfo", service="PassthroughCluster", kind="service",
                               virtual="egress")
    lost = NodeIdentity(cluster="east", namespace="unknown")  # workload, app, service all unknown
    gw = wl("istio-ingressgateway", "istio-ingressgateway", ns="istio-system", is_gateway=True)
    doc = doc_of([http(PP, passthrough, {"200": 60}), http(PP, lost, {"404": 60}), http(gw, PP, {"200": 60})])
    nodes = [n["data"] for n in doc["elements"]["nodes"]]
    svc = {d["service"]: d for d in nodes if d["nodeType"] == "service"}
    assert svc["PassthroughCluster"]["isInaccessible"] is True
    assert "isServiceEntry" not in svc["PassthroughCluster"]
    assert svc["unknown"]["isInaccessible"] is True
    assert svc["unknown"]["id"] == sha("svc_east_unknown_unknown")
    assert "status" not in svc["unknown"]["healthData"]  # Kiali computes no health for inaccessible nodes
    g = [d for d in nodes if d.get("workload") == "istio-ingressgateway"][0]
    assert g["isGateway"] == {"ingressInfo": {}, "egressInfo": {}, "gatewayAPIInfo": {}}
    assert g["isRoot"] is True


def test_source_without_workload_or_app_becomes_the_unknown_source():
    half = NodeIdentity(cluster="east", namespace="bookinfo")  # Kiali: bad source telemetry
    doc = doc_of([http(half, PP, {"200": 60})])
    types = sorted(n["data"]["nodeType"] for n in doc["elements"]["nodes"])
    assert types == ["unknown", "workload"]


# ------------------------------------------------------------------------------------------- appenders
def test_response_time_quantile_choice_and_buckets():
    buckets = [(10.0, 50.0), (50.0, 90.0), (100.0, 100.0)]
    es = http(PP, RV1, {"200": 100}, latency_ms={"p50": 9.0, "p95": 70.0, "p99": 95.0, "avg": 20.0},
              latency_buckets=buckets)
    # one record: its own figures
    for rt, expected in (("95", "70"), ("50", "9"), ("99", "95"), ("avg", "20")):
        e = doc_of([es], response_time=rt)["elements"]["edges"][0]["data"]
        assert e["responseTime"] == expected, rt
    assert doc_of([http(PP, RV1, {"200": 100}, latency_buckets=buckets)])["elements"]["edges"][0]["data"][
        "responseTime"] == "75"  # only buckets: rank 95 in (50, 100]
    # merged records with buckets: the quantile of the summed histogram
    other = http(PP, RV1, {"200": 100}, latency_buckets=[(10.0, 100.0), (50.0, 100.0), (100.0, 100.0)])
    e = doc_of([es, other], response_time="95")["elements"]["edges"][0]["data"]
    assert e["responseTime"] == "50"  # merged: le10 150, le50 190, le100 200; rank 190 ends the (10, 50] bucket
    assert "responseTime" not in doc_of([http(PP, RV1, {"200": 1})])["elements"]["edges"][0]["data"]


def test_histogram_quantile_semantics():
    assert histogram_quantile(0.5, [(1.0, 0.0)]) is None
    assert histogram_quantile(0.5, [(10.0, 10.0), (float("inf"), 10.0)]) == 5.0
    assert histogram_quantile(0.99, [(10.0, 10.0), (float("inf"), 100.0)]) == 10.0  # rank in +Inf


def test_mtls_share_principals_and_throughput():
    a = http(PP, RV1, {"200": 300}, mtls_requests=300, source_principal="spiffe://c/ns/bookinfo/sa/pp",
             dest_principal="spiffe://c/ns/bookinfo/sa/reviews", bytes_sent=60_000, bytes_received=600_000)
    b = http(PP, RV1, {"200": 300}, mtls_requests=0)
    e = doc_of([a, b])["elements"]["edges"][0]["data"]
    assert e["isMTLS"] == "50"
    assert e["sourcePrincipal"] == "spiffe://c/ns/bookinfo/sa/pp"
    assert e["destPrincipal"] == "spiffe://c/ns/bookinfo/sa/reviews"
    assert e["throughput"] == "1000"  # response bytes per second (Kiali's default throughputType)
    e = doc_of([a, b], throughput_type="request")["elements"]["edges"][0]["data"]
    assert e["throughput"] == "100"
    e = doc_of([b])["elements"]["edges"][0]["data"]
    assert "isMTLS" not in e and "throughput" not in e  # Kiali sets isMTLS only above 0
    e = doc_of([http(PP, RV1, {"200": 1})])["elements"]["edges"][0]["data"]
    assert "isMTLS" not in e  # unknown
    # the share is over requests whose policy is known (mtls_known), when the data side says
    c = http(PP, RV1, {"200": 600}, mtls_requests=150, mtls_known=200)
    assert doc_of([c])["elements"]["edges"][0]["data"]["isMTLS"] == "75"


# ------------------------------------------------------------------------------------------- shape
def test_kiali_json_shape_and_order():
    doc = doc_of(_bookinfo(), graph_type="workload", query_time=1_700_000_123, duration_s=900)
    assert list(doc) == ["timestamp", "duration", "graphType", "elements"]
    assert (doc["timestamp"], doc["duration"], doc["graphType"]) == (1_700_000_123, 900, "workload")
    assert list(doc["elements"]) == ["nodes", "edges"]
    for w in doc["elements"]["nodes"]:
        assert list(w) == ["data"]
        d = w["data"]
        assert {"id", "nodeType", "cluster", "namespace", "healthData"} <= set(d)
        assert len(d["id"]) == 64
    for w in doc["elements"]["edges"]:
        d = w["data"]
        assert list(d)[:3] == ["id", "source", "target"]
        assert {"traffic", "healthStatus"} <= set(d)
        assert d["traffic"]["protocol"] in ("http", "grpc", "tcp")
        assert all(isinstance(v, str) for v in d["traffic"]["rates"].values())
    nd = [w["data"] for w in doc["elements"]["nodes"]]
    keys = [(d["cluster"], d["namespace"], d.get("app", ""), d.get("version", ""), d.get("service", ""),
             d.get("workload", "")) for d in nd]
    assert keys == sorted(keys)
    ed = [(w["data"]["source"], w["data"]["target"]) for w in doc["elements"]["edges"]]
    assert ed == sorted(ed)


def test_build_is_deterministic_regardless_of_input_order():
    edges = _bookinfo()
    a = doc_of(edges, graph_type="versionedApp", inject_service_nodes=True)
    b = doc_of(list(reversed(edges)), graph_type="versionedApp", inject_service_nodes=True)
    assert a == b


def test_bad_options_are_refused():
    for kw in ({"graph_type": "box"}, {"response_time": "90"}, {"throughput_type": "x"}, {"box_by": ("pod",)},
               {"duration_s": 0}):
        with pytest.raises(GraphError):
            build_graph([], GraphOptions(**kw))


def test_empty_graph():
    doc = doc_of([])
    assert doc["elements"] == {"nodes": [], "edges": []}


def test_window_seconds_of_each_record_decides_its_rate():
    es = EdgeStats(PP, RV1, "http", 60.0, requests=60, responses={"200": 60})
    e = doc_of([es], duration_s=600)["elements"]["edges"][0]["data"]
    assert e["traffic"]["rates"]["http"] == "1.00"


def test_destination_service_comes_from_the_host_when_the_identity_lacks_it():
    cart = NodeIdentity(cluster="east", namespace="shop", workload="cart-v1", app="cart", version="v1")
    fe = NodeIdentity(cluster="east", namespace="shop", workload="frontend-v1", app="frontend", version="v1")
    es = http(fe, cart, {"200": 90, "500": 10},
              hosts={"200": {"cart.shop.svc.cluster.local": 90}, "500": {"cart.shop.svc.cluster.local": 10}})
    doc = doc_of([es], graph_type="workload", inject_service_nodes=True)
    svc = [n["data"] for n in doc["elements"]["nodes"] if n["data"]["nodeType"] == "service"]
    assert [s["id"] for s in svc] == [sha("svc_east_shop_cart")]
    assert nodes_by(doc)["cart-v1"]["destServices"] == [{"cluster": "east", "namespace": "shop", "name": "cart"}]
    e = doc["elements"]["edges"]
    assert len(e) == 2
    # the service graph needs the same: frontend's service is unknown, so only cart's service remains
    doc = doc_of([http(UNKNOWN_SRC, fe, {"200": 100}, hosts={"200": {"frontend.shop.svc.cluster.local": 100}}), es],
                 graph_type="service")
    names = sorted(n["data"].get("service") or n["data"]["nodeType"] for n in doc["elements"]["nodes"])
    assert names == ["cart", "frontend", "unknown"]
    assert len(doc["elements"]["edges"]) == 2
    # a bare host with a port names a service in the destination's namespace; an external host names none
    bare = http(fe, cart, {"200": 1}, hosts={"200": {"cart:8080": 1}})
    assert nodes_by(doc_of([bare]))["cart-v1"]["destServices"][0]["name"] == "cart"
    ext = http(fe, cart, {"200": 1}, hosts={"200": {"api.example.com": 1}})
    assert "destServices" not in nodes_by(doc_of([ext]))["cart-v1"]


def test_unreached_kubernetes_service_is_a_service_not_a_service_entry():
    fe = NodeIdentity(cluster="east", namespace="shop", workload="frontend-v1", app="frontend", version="v1")
    cart = NodeIdentity(cluster="east", namespace="shop", workload="cart-v1", app="cart", version="v1")
    cart_svc = NodeIdentity(cluster="east", namespace="shop", service="cart", kind="service", virtual="peer")
    host = "cart.shop.svc.cluster.local"
    uh = http(fe, cart_svc, {"503": 5}, flags={"503": {"UH": 5}}, hosts={"503": {host: 5}})
    ok = http(fe, cart, {"200": 95}, hosts={"200": {host: 95}})
    for edges in ([uh], [uh, ok]):
        doc = doc_of(edges, graph_type="workload", inject_service_nodes=True)
        svc = [n["data"] for n in doc["elements"]["nodes"] if n["data"].get("service") == "cart"]
        assert len(svc) == 1 and "isServiceEntry" not in svc[0]
    doc = doc_of([uh, ok], graph_type="workload", inject_service_nodes=True)
    n = {d["data"].get("workload") or d["data"].get("service"): d["data"] for d in doc["elements"]["nodes"]}
    e = edge_between(doc, n["frontend-v1"]["id"], n["cart"]["id"])
    assert e["traffic"]["rates"]["http"] == "0.17" and e["traffic"]["rates"]["httpPercentErr"] == "5.0"
    # an external peer stays a service entry
    ext = NodeIdentity(cluster="east", namespace="shop", service="api.example.com", kind="service", virtual="host")
    doc = doc_of([http(fe, ext, {"200": 1}, hosts={"200": {"api.example.com": 1}})])
    assert [d["data"].get("isServiceEntry") for d in doc["elements"]["nodes"] if d["data"]["nodeType"] == "service"] \
        == [{"hosts": ["api.example.com"], "location": "MESH_EXTERNAL", "namespace": "shop"}]


def test_service_graph_keeps_an_entry_workload_that_only_the_unknown_source_calls():
    gw = NodeIdentity(cluster="east", namespace="istio-system", workload="istio-ingressgateway",
                      app="istio-ingressgateway", is_gateway=True)
    doc = doc_of([http(UNKNOWN_SRC, gw, {"200": 60}), http(gw, PP, {"200": 60}), http(PP, RV1, {"200": 60})],
                 graph_type="service")
    names = {n["data"]["id"]: n["data"].get("service") or n["data"].get("workload") or "unknown"
             for n in doc["elements"]["nodes"]}
    edges = sorted((names[e["data"]["source"]], names[e["data"]["target"]]) for e in doc["elements"]["edges"])
    assert edges == [("istio-ingressgateway", "productpage"), ("productpage", "reviews"),
                     ("unknown", "istio-ingressgateway")]


def test_edge_panel_reports_the_ratio_behind_its_status():
    """The edge panel's health gives the error ratio of the tolerance that decided the status (as a node's does):
    3 % 503 is Degraded by the 5xx tolerance, the 8 % 404 trips nothing; every error counts in RED instead."""
    from meshscope.query.graph.details import edge_summary

    g = build_graph([http(PP, RV1, {"200": 89, "503": 3, "404": 8})], GraphOptions())
    edge = next(e for e in g.edges if e.dest.workload == "reviews-v1")
    d = edge_summary(g, edge)
    assert d["health"]["status"] == d["edge"]["healthStatus"] == "Degraded"
    assert d["health"]["errorRatio"] == pytest.approx(3.0)
    assert d["red"]["errorRate"] == pytest.approx(0.11)
    healthy = build_graph([http(PP, RV1, {"200": 100})], GraphOptions())
    d = edge_summary(healthy, next(e for e in healthy.edges if e.dest.workload == "reviews-v1"))
    assert (d["health"]["status"], d["health"]["errorRatio"]) == ("Healthy", 0.0)
