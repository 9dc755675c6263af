"""Every spelling of reference/mesh.md §2 (and the old/new semantic conventions) lands in the Mesh* columns."""

from __future__ import annotations

import os
import time
import uuid

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from test_otlp_sql import insert, set_any

from meshscope.collector.mesh_sql import MESH_COLUMNS

NOW = time.time_ns()


def one_span(resource: dict, attrs: dict, kind: int = 2) -> tuple[ExportTraceServiceRequest, str]:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    for k, v in resource.items():
        set_any(rs.resource.attributes.add(key=k).value, v)
    sp = rs.scope_spans.add().spans.add(trace_id=os.urandom(16), span_id=os.urandom(8), name="op", kind=kind,
                                        start_time_unix_nano=NOW, end_time_unix_nano=NOW + 10)
    for k, v in attrs.items():
        set_any(sp.attributes.add(key=k).value, v)
    return req, sp.span_id.hex()


def mesh_of_span(store, tmp_path, resource: dict, attrs: dict, kind: int = 2) -> dict:
    req, sid = one_span(resource, attrs, kind)
    insert(store, tmp_path, "traces", req)
    r = store.query(f"SELECT {', '.join(MESH_COLUMNS)}, SpanAttributes FROM otel.otel_traces WHERE SpanId = {{s:String}}",
                    {"s": sid}).dicts()
    assert len(r) == 1
    return r[0]


def test_istio_envoy_sidecar_span(store, tmp_path):
    m = mesh_of_span(store, tmp_path, {"service.name": "productpage.bookinfo"}, {
        "node_id": "sidecar~10.44.1.23~productpage-v1-6b746f74dc-9stvs.bookinfo~bookinfo.svc.cluster.local",
        "component": "proxy", "upstream_cluster": "outbound|9080||reviews.bookinfo.svc.cluster.local",
        "http.status_code": "503", "http.method": "GET", "response_flags": "UH",
        "guid:x-request-id": "84961386-6d84-929d-98bd-c5aee93b5c88", "istio.canonical_service": "productpage",
        "istio.canonical_revision": "v1", "istio.namespace": "bookinfo", "istio.cluster_id": "Kubernetes",
        "istio.mesh_id": "cluster.local", "peer.address": "10.44.2.5:9080",
    }, kind=3)
    assert m["MeshProxy"] == "envoy"
    assert (m["MeshCluster"], m["MeshNamespace"], m["MeshWorkload"]) == ("Kubernetes", "bookinfo", "productpage-v1")
    assert (m["MeshApp"], m["MeshVersion"]) == ("productpage", "v1")
    assert m["MeshPeerService"] == "reviews.bookinfo.svc.cluster.local"
    assert (m["MeshProtocol"], m["MeshHttpMethod"], m["MeshResponseCode"], m["MeshResponseFlags"]) == (
        "http", "GET", "503", "UH")
    assert m["MeshRequestId"] == "84961386-6d84-929d-98bd-c5aee93b5c88"
    assert m["SpanAttributes"]["node_id"].startswith("sidecar~"), "raw attributes stay"


def test_envoy_without_istio_tags_uses_node_id_and_app_dot_namespace(store, tmp_path):
    m = mesh_of_span(store, tmp_path, {"service.name": "reviews.bookinfo"}, {
        "node_id": "sidecar~10.44.1.30~reviews-v2-7d79d5bd5d-abcde.bookinfo~bookinfo.svc.cluster.local",
        "upstream_cluster": "inbound|9080||", "http.response.status_code": "200",
        "grpc.status_code": "0", "grpc.path": "/reviews.Reviews/Get"})
    assert (m["MeshNamespace"], m["MeshWorkload"], m["MeshApp"]) == ("bookinfo", "reviews-v2", "reviews")
    assert (m["MeshProtocol"], m["MeshGrpcStatus"], m["MeshResponseCode"]) == ("grpc", "0", "200")
    assert m["MeshPeerService"] == ""  # inbound cluster names no peer


def test_statefulset_pod_from_node_id(store, tmp_path):
    m = mesh_of_span(store, tmp_path, {"service.name": "mysqldb.bookinfo"}, {
        "node_id": "sidecar~10.0.0.9~mysqldb-0.bookinfo~bookinfo.svc.cluster.local"})
    assert m["MeshWorkload"] == "mysqldb" and m["MeshNamespace"] == "bookinfo"


def test_linkerd_proxy_span(store, tmp_path):
    m = mesh_of_span(store, tmp_path, {
        "service.name": "linkerd-proxy", "k8s.pod.name": "web-5d8c7f9b6d-x2x9q", "k8s.namespace.name": "emojivoto",
        "app": "web-svc", "linkerd.io/proxy-deployment": "web", "k8s.pod.uid": "u-1"}, {
        "http.request.method": "POST", "http.response.status_code": "500", "server.address": "voting-svc.emojivoto",
        "server.port": 8080, "url.path": "/api/vote", "network.transport": "tcp", "direction": "outbound"}, kind=3)
    assert m["MeshProxy"] == "linkerd"
    assert (m["MeshNamespace"], m["MeshWorkload"], m["MeshApp"]) == ("emojivoto", "web", "web-svc")
    assert (m["MeshHttpMethod"], m["MeshResponseCode"], m["MeshPeerService"]) == ("POST", "500", "voting-svc.emojivoto")
    assert m["MeshProtocol"] == "http"


def test_sdk_span_with_k8s_resource(store, tmp_path):
    m = mesh_of_span(store, tmp_path, {
        "service.name": "checkout", "service.version": "1.4.2", "k8s.cluster.name": "prod-eu",
        "k8s.namespace.name": "shop", "k8s.deployment.name": "checkout", "k8s.pod.name": "checkout-5f7b9c-abcde"},
        {"http.request.method": "GET", "http.response.status_code": 200, "http.route": "/cart"})
    assert (m["MeshCluster"], m["MeshNamespace"], m["MeshWorkload"], m["MeshApp"], m["MeshVersion"]) == (
        "prod-eu", "shop", "checkout", "checkout", "1.4.2")
    assert (m["MeshProxy"], m["MeshProtocol"], m["MeshResponseCode"]) == ("", "http", "200")


def test_server_address_names_a_peer_only_on_client_spans(store, tmp_path):
    server_side = mesh_of_span(store, tmp_path, {"service.name": "reviews"}, {"server.address": "reviews"}, kind=2)
    client_side = mesh_of_span(store, tmp_path, {"service.name": "productpage"}, {"server.address": "reviews"}, kind=3)
    assert (server_side["MeshPeerService"], client_side["MeshPeerService"]) == ("", "reviews")


def test_workload_from_pod_name_when_no_owner_attribute(store, tmp_path):
    m = mesh_of_span(store, tmp_path, {"service.name": "cart", "k8s.pod.name": "cart-7c9d8b5f4b-q2w3e"}, {})
    assert m["MeshWorkload"] == "cart"


@pytest.mark.parametrize("attrs,column,value", [
    ({"peer.service": "payments"}, "MeshPeerService", "payments"),
    ({"service.peer.name": "payments"}, "MeshPeerService", "payments"),
    ({"net.peer.name": "legacy-host"}, "MeshPeerService", "legacy-host"),
    ({"db.system": "postgresql"}, "MeshDbSystem", "postgresql"),
    ({"db.system.name": "postgresql"}, "MeshDbSystem", "postgresql"),
    ({"db.name": "orders"}, "MeshDbNamespace", "orders"),
    ({"db.namespace": "orders"}, "MeshDbNamespace", "orders"),
    ({"http.status_code": 404}, "MeshResponseCode", "404"),
    ({"http.response.status_code": 404}, "MeshResponseCode", "404"),
    ({"http.method": "PUT"}, "MeshHttpMethod", "PUT"),
    ({"http.request.method": "PUT"}, "MeshHttpMethod", "PUT"),
    ({"rpc.grpc.status_code": 14}, "MeshGrpcStatus", "14"),
    ({"rpc.system": "grpc"}, "MeshProtocol", "grpc"),
    ({"rpc.system.name": "grpc"}, "MeshProtocol", "grpc"),
    ({"messaging.system": "kafka"}, "MeshMessagingSystem", "kafka"),
    ({"http.request.header.x-request-id": "rid-1"}, "MeshRequestId", "rid-1"),
    ({"connection_security_policy": "mutual_tls"}, "MeshSecurityPolicy", "mutual_tls"),
    ({"source_principal": "spiffe://cluster.local/ns/a/sa/b"}, "MeshSourcePrincipal", "spiffe://cluster.local/ns/a/sa/b"),
])
def test_old_and_new_semantic_convention_names(store, tmp_path, attrs, column, value):
    m = mesh_of_span(store, tmp_path, {"service.name": f"svc-{uuid.uuid4().hex[:6]}"}, attrs, kind=3)
    assert m[column] == value


def test_new_name_wins_over_old_when_both_present(store, tmp_path):
    m = mesh_of_span(store, tmp_path, {"service.name": "both"}, {
        "service.peer.name": "new", "peer.service": "old", "http.response.status_code": 201, "http.status_code": 200})
    assert (m["MeshPeerService"], m["MeshResponseCode"]) == ("new", "201")


ISTIO_ACCESS_LOG = (
    '[2020-11-25T21:26:18.409Z] "GET /status/418 HTTP/1.1" 418 - via_upstream - "-" 0 135 3 1 "-" '
    '"curl/7.73.0-DEV" "84961386-6d84-929d-98bd-c5aee93b5c88" "httpbin:8000" "127.0.0.1:80" inbound|8000|| '
    '127.0.0.1:41854 10.44.1.27:80 10.44.1.23:37652 outbound_.8000_._.httpbin.foo.svc.cluster.local default')


def mesh_of_log(store, tmp_path, resource: dict, attrs: dict, body: str) -> dict:
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    for k, v in resource.items():
        set_any(rl.resource.attributes.add(key=k).value, v)
    marker = uuid.uuid4().hex
    lr = rl.scope_logs.add().log_records.add(time_unix_nano=NOW, event_name=marker)
    set_any(lr.body, body)
    for k, v in attrs.items():
        set_any(lr.attributes.add(key=k).value, v)
    insert(store, tmp_path, "logs", req)
    r = store.query(f"SELECT {', '.join(MESH_COLUMNS)}, LogAttributes, Body FROM otel.otel_logs "
                    "WHERE EventName = {m:String}", {"m": marker}).dicts()
    assert len(r) == 1
    return r[0]


def test_istio_access_log_body_is_parsed_into_attributes(store, tmp_path):
    m = mesh_of_log(store, tmp_path, {}, {
        "pod": "httpbin-74fb669cc6-9xkcs", "namespace": "foo", "cluster": "Kubernetes", "mesh": "cluster.local"},
        ISTIO_ACCESS_LOG)
    a = m["LogAttributes"]
    assert a["start_time"] == "2020-11-25T21:26:18.409Z"
    assert (a["method"], a["path"], a["protocol"], a["response_code"]) == ("GET", "/status/418", "HTTP/1.1", "418")
    assert (a["response_flags"], a["response_code_details"], a["bytes_received"], a["bytes_sent"]) == (
        "-", "via_upstream", "0", "135")
    assert (a["duration"], a["upstream_service_time"], a["user_agent"]) == ("3", "1", "curl/7.73.0-DEV")
    assert a["request_id"] == "84961386-6d84-929d-98bd-c5aee93b5c88" and a["authority"] == "httpbin:8000"
    assert (a["upstream_host"], a["upstream_cluster"]) == ("127.0.0.1:80", "inbound|8000||")
    assert a["downstream_remote_address"] == "10.44.1.23:37652"
    assert a["requested_server_name"] == "outbound_.8000_._.httpbin.foo.svc.cluster.local"
    assert a["route_name"] == "default" and a["pod"] == "httpbin-74fb669cc6-9xkcs"
    assert (m["MeshNamespace"], m["MeshWorkload"], m["MeshCluster"]) == ("foo", "httpbin", "Kubernetes")
    assert (m["MeshResponseCode"], m["MeshHttpMethod"], m["MeshRequestId"], m["MeshProtocol"]) == (
        "418", "GET", "84961386-6d84-929d-98bd-c5aee93b5c88", "http")
    assert m["Body"] == ISTIO_ACCESS_LOG, "the raw body stays"
    assert m["MeshProxy"] == "envoy"
    assert m["MeshPeerService"] == "", "an inbound access log names no peer (its authority is the service itself)"


def test_plain_log_lines_get_no_access_log_attributes(store, tmp_path):
    m = mesh_of_log(store, tmp_path, {"service.name": "api", "k8s.namespace.name": "shop"}, {"user": "u1"},
                    "[INFO] user logged in")
    assert m["LogAttributes"] == {"user": "u1"}
    assert (m["MeshNamespace"], m["MeshApp"]) == ("shop", "api")


def test_loki_style_labels_on_logs(store, tmp_path):
    m = mesh_of_log(store, tmp_path, {"namespace": "payments", "pod": "ledger-0", "app": "ledger", "job": "x"}, {},
                    "level=info msg=hello")
    assert (m["MeshNamespace"], m["MeshWorkload"], m["MeshApp"]) == ("payments", "ledger", "ledger")


def stream_labels_of_log(store, tmp_path, resource: dict, attrs: dict, body: str) -> dict:
    mesh_of_log(store, tmp_path, resource, attrs, body)
    rows = store.query("SELECT StreamLabels, mapKeys(StreamLabels) FROM otel.otel_logs WHERE Body = {b:String} "
                       "AND LogAttributes['pod'] = {p:String}", {"b": body, "p": attrs.get("pod", "")}).rows
    assert len(rows) == 1, rows
    keys = list(rows[0][1])
    assert len(keys) == len(set(keys)), f"a stream label twice: {keys}"  # a Map may hold a key twice; dict() hides it
    return dict(rows[0][0])


def test_access_logs_without_a_resource_get_stream_labels_from_the_mesh_identity(store, tmp_path):
    """Istio's OTel access logger sends no resource (mesh.md §2.3): the stream must still be nameable."""
    pod = f"httpbin-74fb669cc6-{uuid.uuid4().hex[:5]}"
    labels = stream_labels_of_log(store, tmp_path, {}, {
        "pod": pod, "namespace": "foo", "cluster": "Kubernetes", "mesh": "cluster.local"}, ISTIO_ACCESS_LOG)
    assert labels == {"service_name": "httpbin", "k8s_namespace_name": "foo", "k8s_deployment_name": "httpbin",
                      "k8s_pod_name": pod}


def test_resource_identity_wins_over_the_mesh_fallback(store, tmp_path):
    labels = stream_labels_of_log(store, tmp_path, {"service.name": "api", "k8s.namespace.name": "shop"},
                                  {"pod": "other-0", "namespace": "elsewhere"}, f"hello {uuid.uuid4().hex}")
    assert labels == {"service_name": "api", "k8s_namespace_name": "shop"}
    # a resource without service.name keeps its own keys; the mesh fills only what is missing
    labels = stream_labels_of_log(store, tmp_path, {"k8s.namespace.name": "shop", "k8s.pod.name": "cart-7f9c8d6b5-x1z2q"},
                                  {}, f"hi {uuid.uuid4().hex}")
    assert labels["k8s_namespace_name"] == "shop" and labels["k8s_pod_name"] == "cart-7f9c8d6b5-x1z2q"
    assert labels["service_name"] == "cart"  # (each key once: checked in stream_labels_of_log)
