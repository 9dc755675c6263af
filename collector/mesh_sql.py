"""Mesh normalisation: one answer to "who is this?" whatever spelled it.

Envoy under Istio, Linkerd proxies, Zipkin tracers and the OTel SDKs name the same
facts differently (``../shared/reference/mesh.md`` §2, §4, §5.1). We resolve them once,
at insert time, into promoted ``Mesh*`` columns, as SQL expressions over the attribute
maps, so the write path stays free of per-span Python. Raw attributes are kept as sent.

Each promoted value is the first non-empty candidate in the order listed. Empty means
unknown (the graph renders it as Kiali's ``unknown``).

Istio's OpenTelemetry access-log records carry Envoy's default text format in the body;
``ACCESS_LOG_FIELDS`` are parsed out of it into log attributes (named as in Istio's JSON
access-log format) before normalisation.
"""

from __future__ import annotations

# The columns, in table order. Traces and logs carry all of them.
MESH_COLUMNS = [
    "MeshCluster", "MeshNamespace", "MeshWorkload", "MeshApp", "MeshVersion", "MeshProxy",
    "MeshPeerService", "MeshProtocol", "MeshHttpMethod", "MeshResponseCode", "MeshGrpcStatus",
    "MeshResponseFlags", "MeshSecurityPolicy", "MeshSourcePrincipal", "MeshDestinationPrincipal",
    "MeshRequestId", "MeshDbSystem", "MeshDbNamespace", "MeshMessagingSystem",
]

# Envoy's default access-log text format (Istio EnvoyTextLogFormat), one regex group per field.
ACCESS_LOG_FIELDS = [
    "start_time", "method", "path", "protocol", "response_code", "response_flags", "response_code_details",
    "connection_termination_details", "upstream_transport_failure_reason", "bytes_received", "bytes_sent",
    "duration", "upstream_service_time", "x_forwarded_for", "user_agent", "request_id", "authority",
    "upstream_host", "upstream_cluster", "upstream_local_address", "downstream_local_address",
    "downstream_remote_address", "requested_server_name", "route_name",
]
ACCESS_LOG_REGEX = (
    r'^\[([^\]]+)\] "(\S+) (\S+) (\S+)" (\d+) (\S+) (\S+) (\S+) "([^"]*)" (\d+) (\d+) (\d+) (\S+) '
    r'"([^"]*)" "([^"]*)" "([^"]*)" "([^"]*)" "([^"]*)" (\S+) (\S+) (\S+) (\S+) (\S*) ?(\S*)\s*$'
)


def _lit(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def first(*candidates: str) -> str:
    """SQL: the first candidate that is not the empty string, else ''."""
    arms = []
    for c in candidates:
        arms.append(f"({c}) != ''")
        arms.append(c)
    return f"multiIf({', '.join(arms)}, '')"


def _pod_to_workload(pod: str) -> str:
    # Deployment pods: <workload>-<replicaset hash>-<5 chars>; StatefulSet pods: <workload>-<ordinal>.
    return f"replaceRegexpOne(replaceRegexpOne({pod}, '-[a-z0-9]{{6,10}}-[a-z0-9]{{5}}$', ''), '-[0-9]+$', '')"


def identity_columns(ra: str, a: str, client_side: str | None = None) -> dict[str, str]:
    """Expressions for every Mesh* column from a resource map ``ra`` and an item attribute map ``a``.

    ``client_side`` is SQL that is true when the item describes the calling side (CLIENT or PRODUCER spans):
    only there do ``server.address`` and friends name a peer; on a server span they name the service itself.
    By default an item counts as client side when Envoy routed it to an outbound cluster."""

    def r(key: str) -> str:
        return f"{ra}[{_lit(key)}]"

    def s(key: str) -> str:
        return f"{a}[{_lit(key)}]"

    # Envoy node id: sidecar~10.44.1.23~productpage-v1-6b746f74dc-9stvs.bookinfo~bookinfo.svc.cluster.local
    node_pod_ns = f"splitByChar('~', {s('node_id')})[3]"
    node_pod = f"if(position({node_pod_ns}, '.') > 0, substring({node_pod_ns}, 1, position({node_pod_ns}, '.') - 1), '')"
    node_ns = f"if(position({node_pod_ns}, '.') > 0, substring({node_pod_ns}, position({node_pod_ns}, '.') + 1), '')"
    is_envoy = f"({s('node_id')} != '' OR {s('component')} = 'proxy' OR {s('upstream_cluster')} != '')"
    service = r("service.name")
    # Istio's Envoy names itself <app>.<namespace> (tracingServiceName APP_LABEL_AND_NAMESPACE).
    envoy_app_ns = f"if({is_envoy} AND match({service}, '^[^.]+\\\\.[^.]+$'), splitByChar('.', {service}), [])"
    is_linkerd = f"({service} = 'linkerd-proxy')"
    # outbound|9080||reviews.bookinfo.svc.cluster.local -> reviews.bookinfo.svc.cluster.local
    upstream = first(s("upstream_cluster"), s("upstream_cluster.name"))
    upstream_host = f"if(startsWith({upstream}, 'outbound|'), splitByChar('|', {upstream})[4], '')"
    calling = client_side or f"startsWith({upstream}, 'outbound|')"

    def peer(expr: str) -> str:
        return f"if({calling}, {expr}, '')"

    workload = first(
        r("k8s.deployment.name"), r("k8s.statefulset.name"), r("k8s.daemonset.name"), r("k8s.job.name"),
        r("k8s.cronjob.name"), r("linkerd.io/proxy-deployment"), r("workload"), s("workload"),
        _pod_to_workload(node_pod), _pod_to_workload(first(r("k8s.pod.name"), r("pod"), s("pod"))),
    )
    grpc_hint = (f"({s('rpc.system.name')} = 'grpc' OR {s('rpc.system')} = 'grpc' OR {s('grpc.status_code')} != '' "
                 f"OR {s('rpc.grpc.status_code')} != '' OR {s('grpc.path')} != '' "
                 f"OR startsWith({s('http.request.header.content-type')}, 'application/grpc'))")
    http_hint = (f"({s('http.request.method')} != '' OR {s('http.method')} != '' OR {s('http.status_code')} != '' "
                 f"OR {s('http.response.status_code')} != '' OR startsWith({s('protocol')}, 'HTTP'))")
    tcp_hint = f"({s('network.transport')} = 'tcp' OR {s('net.transport')} = 'ip_tcp')"
    return {
        "MeshCluster": first(s("istio.cluster_id"), r("k8s.cluster.name"), r("istio.cluster_id"), r("cluster"),
                             s("cluster")),
        "MeshNamespace": first(s("istio.namespace"), r("k8s.namespace.name"), node_ns, r("namespace"),
                               s("namespace"), r("service.namespace"), f"{envoy_app_ns}[2]"),
        "MeshWorkload": workload,
        "MeshApp": first(s("istio.canonical_service"), r("service.istio.io/canonical-name"),
                         r("app.kubernetes.io/name"), r("app"), s("app"), f"{envoy_app_ns}[1]",
                         f"if({is_linkerd}, '', {service})", workload),
        "MeshVersion": first(s("istio.canonical_revision"), r("service.istio.io/canonical-revision"),
                             r("app.kubernetes.io/version"), r("version"), s("version"), r("service.version")),
        "MeshProxy": f"multiIf({is_envoy}, 'envoy', {is_linkerd}, 'linkerd', '')",
        "MeshPeerService": first(s("service.peer.name"), s("peer.service"), upstream_host, peer(s("server.address")),
                                 peer(s("net.peer.name")), peer(s("authority"))),
        "MeshProtocol": f"multiIf({grpc_hint}, 'grpc', {http_hint}, 'http', {tcp_hint}, 'tcp', '')",
        "MeshHttpMethod": first(s("http.request.method"), s("http.method"), s("method")),
        "MeshResponseCode": first(s("http.response.status_code"), s("http.status_code"), s("response_code")),
        "MeshGrpcStatus": first(s("rpc.grpc.status_code"), s("grpc.status_code"), s("rpc.status_code")),
        "MeshResponseFlags": first(s("response_flags")),
        "MeshSecurityPolicy": first(s("connection_security_policy"), s("istio.connection_security_policy")),
        "MeshSourcePrincipal": first(s("source_principal"), s("istio.source_principal")),
        "MeshDestinationPrincipal": first(s("destination_principal"), s("istio.destination_principal")),
        "MeshRequestId": first(s("guid:x-request-id"), s("http.request.header.x-request-id"), s("request_id"),
                               s("x-request-id")),
        "MeshDbSystem": first(s("db.system.name"), s("db.system")),
        "MeshDbNamespace": first(s("db.namespace"), s("db.name")),
        "MeshMessagingSystem": first(s("messaging.system")),
    }


def access_log_attributes(body: str) -> str:
    """A Map of the fields of an Envoy default-format access log line (empty when the body is not one)."""
    names = "[" + ", ".join(_lit(n) for n in ACCESS_LOG_FIELDS) + "]"
    # padded to a fixed length: an unmatched body gives no groups, hence an empty map
    groups = f"arrayResize(extractGroups({body}, {_lit(ACCESS_LOG_REGEX)}), {len(ACCESS_LOG_FIELDS)}, '')"
    return (f"CAST((arrayFilter((k, v) -> v != '', {names}, {groups}), arrayFilter((v) -> v != '', {groups})), "
            f"'Map(LowCardinality(String), String)')")


def ddl_columns() -> str:
    return ",\n".join(f"    {c} LowCardinality(String) CODEC(ZSTD(1))" for c in MESH_COLUMNS)
