"""One node or edge of the service graph in detail, for the UI's side panel and for scripts
(``/api/graph/node``, ``/api/graph/edge``).

What the graph already knows (from the same ``Graph`` the JSON and SVG come from, so the numbers agree): RED per
direction (request rate, error share, p50/p95/p99 merged from the edges' latency histograms), TCP byte rates,
response codes with Envoy flags, health with the tolerances that decided it, and the neighbours. What only the
store knows, read for the node's identity in the graph's window: the most frequent span errors (status message,
operation, response code) and error log lines (severity ERROR and above), each with a trace id to open, and the
names that select the node's data elsewhere: the LogQL stream selector of its logs and the trace-search service.

A node's identity in the store is the edge builder's (``edges.py``): ``Mesh*`` columns, falling back to
``service.name`` for workload and app. A service node is looked up as the app of the same name in its namespace
(Kubernetes' convention, as Kiali links a service to its app); virtual nodes (databases, external hosts, the
unknown source) have no data of their own, only the callers' view the graph already shows.
"""
from __future__ import annotations

from dataclasses import dataclass

from meshscope.collector.loki_push import SEVERITY
from ..logql.values import go_quote
from .model import UNKNOWN, Edge, Graph, Node, edge_hash, is_ok, is_ok_version, response_time
from .svg import node_label

NS = 1_000_000_000
TOP = 5                    # rows per "top errors" list
MAX_BODY = 300             # characters of an error log line kept (grouping key and answer)
ERROR_SEVERITY = 17        # OpenTelemetry SeverityNumber ERROR (17-20) and FATAL (21-24)


# ------------------------------------------------------------------------------------------- from the graph
def is_error(protocol: str, code: str) -> bool:
    """Kiali's error codes: no response (``-``), HTTP 4xx/5xx, any gRPC status but OK (or an HTTP 4xx/5xx that an
    older proxy reported for gRPC)."""
    if protocol == "tcp":
        return False
    if code == "-":
        return True
    if len(code) == 3 and code[:1] in ("4", "5"):
        return True
    return protocol == "grpc" and len(code) != 3 and code not in ("0", "")


def red(edges: list[Edge]) -> dict:
    """RED over some edges of one direction: requests/s, error share, latency quantiles (ms), TCP bytes/s."""
    req = [e for e in edges if e.protocol != "tcp"]
    rate = sum(e.total for e in req)
    errors = sum(v for e in req for c, v in e.codes.items() if is_error(e.protocol, c))
    out: dict = {"requestRate": round(rate, 6), "errorRate": round(errors / rate, 6) if rate > 0 else 0.0,
                 "errors": round(errors, 6), "protocols": sorted({e.protocol for e in edges if e.total > 0})}
    parts = [p for e in req for p in e.latency]
    for key in ("p50", "p95", "p99", "avg"):
        v = response_time(parts, key) if parts else None
        out[f"{key}Ms"] = round(v, 3) if v is not None and v > 0 else None
    tcp = sum(e.total for e in edges if e.protocol == "tcp")
    if tcp > 0:
        out["tcpBytesRate"] = round(tcp, 3)
    return out


def responses(edges: list[Edge]) -> list[dict]:
    """Response codes over some edges, biggest first: rate, share of the protocol's requests, flags (rate)."""
    acc: dict[tuple[str, str], dict] = {}
    totals: dict[str, float] = {}
    for e in edges:
        if e.protocol == "tcp":
            continue
        totals[e.protocol] = totals.get(e.protocol, 0.0) + e.total
        for code, detail in e.responses.items():
            row = acc.setdefault((e.protocol, code), {"protocol": e.protocol, "code": code, "rate": 0.0, "flags": {}})
            for flag, v in detail["flags"].items():
                row["flags"][flag] = row["flags"].get(flag, 0.0) + v
        for code, v in e.codes.items():
            row = acc.setdefault((e.protocol, code), {"protocol": e.protocol, "code": code, "rate": 0.0, "flags": {}})
            row["rate"] += v
    out = []
    for (proto, code), row in acc.items():
        if row["rate"] <= 0:
            continue
        total = totals.get(proto, 0.0)
        out.append({"protocol": proto, "code": code, "rate": round(row["rate"], 6),
                    "share": round(row["rate"] / total, 6) if total > 0 else 0.0,
                    "error": is_error(proto, code),
                    "flags": {f: round(v, 6) for f, v in sorted(row["flags"].items(), key=lambda kv: -kv[1])}})
    out.sort(key=lambda r: (-r["rate"], r["protocol"], r["code"]))
    return out


def thresholds(graph: Graph) -> list[dict]:
    """The tolerances health is judged by (Kiali's defaults): error share in % per code class and protocol."""
    return [{"code": t.code, "protocol": t.protocol, "direction": t.direction, "degraded": t.degraded,
             "failure": t.failure} for t in graph.opts.tolerances]


def _ref(graph: Graph, n: Node) -> dict:
    return {"id": n.hash, "label": node_label({"nodeType": n.node_type, "app": n.app, "version": n.version,
                                               "workload": n.workload, "service": n.service,
                                               "isServiceEntry": n.service_entry, "id": n.hash},
                                              graph.opts.graph_type) or n.hash[:12],
            "nodeType": n.node_type, "namespace": n.namespace}


def find_node(graph: Graph, node_id: str) -> Node | None:
    return next((n for n in graph.nodes.values() if n.hash == node_id), None)


def find_edge(graph: Graph, edge_id: str) -> Edge | None:
    return next((e for e in graph.edges if edge_hash(e.source.hash, e.dest.hash, e.protocol) == edge_id), None)


def _out_totals(graph: Graph) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for e in graph.edges:
        out[(e.source.id, e.protocol)] = out.get((e.source.id, e.protocol), 0.0) + e.total
    return out


def _neighbours(graph: Graph, edges: list[Edge], side: str) -> list[dict]:
    rows = []
    for e in edges:
        other = e.source if side == "source" else e.dest
        rows.append({**_ref(graph, other), "edge": edge_hash(e.source.hash, e.dest.hash, e.protocol),
                     "protocol": e.protocol, "rate": round(e.total, 6), "health": graph.edge_health(e)})
    rows.sort(key=lambda r: (-r["rate"], r["label"]))
    return rows


def node_summary(graph: Graph, node: Node) -> dict:
    """Everything the graph knows about one node."""
    inbound = [e for e in graph.edges if e.dest.id == node.id]
    outbound = [e for e in graph.edges if e.source.id == node.id]
    data = graph._node_data(node)
    health = (data.get("healthData") or {}).get("status") or {"status": "NA", "errorRatio": 0.0,
                                                                 "totalRequestRate": 0.0}
    rows_in, rows_out = responses(inbound), responses(outbound)
    codes = [dict(r, direction="inbound") for r in rows_in if r["error"]]
    codes += [dict(r, direction="outbound") for r in rows_out if r["error"]]
    codes.sort(key=lambda r: -r["rate"])
    return {
        "kind": "node", "id": node.hash, "label": _ref(graph, node)["label"], "node": data,
        "health": {**health, "thresholds": thresholds(graph)},
        "red": {"inbound": red(inbound), "outbound": red(outbound)},
        "responses": {"inbound": rows_in, "outbound": rows_out},
        "neighbours": {"inbound": _neighbours(graph, inbound, "source"),
                       "outbound": _neighbours(graph, outbound, "dest")},
        "errors": {"codes": codes[:TOP]},
    }


def edge_summary(graph: Graph, edge: Edge) -> dict:
    """Everything the graph knows about one edge."""
    data = graph._edge_data(edge, _out_totals(graph))
    status, ratio = graph.edge_status(edge)
    rows = responses([edge])
    summary = red([edge])
    return {
        "kind": "edge", "id": data["id"], "protocol": edge.protocol, "edge": data,
        "source": _ref(graph, edge.source), "target": _ref(graph, edge.dest),
        "label": f"{_ref(graph, edge.source)['label']} \u2192 {_ref(graph, edge.dest)['label']}",
        # the ratio behind the status (Kiali's tolerances), as for a node; every error is in red.errorRate
        "health": {"status": status, "errorRatio": round(ratio, 3), "thresholds": thresholds(graph)},
        "red": summary,
        "mtlsPercent": float(data["isMTLS"]) if data.get("isMTLS") else None,
        "throughput": float(data["throughput"]) if data.get("throughput") else None,
        "responses": rows,
        "errors": {"codes": [r for r in rows if r["error"]][:TOP]},
    }


# ------------------------------------------------------------------------------------------- from the store
@dataclass(frozen=True)
class Identity:
    """How a node's spans and logs are found: namespace plus workload, or app (and version)."""
    namespace: str
    workload: str = ""
    app: str = ""
    version: str = ""
    guessed: bool = False   # a service node looked up as the app of its name: links only if that app has data

    @property
    def name(self) -> str:
        return self.app or self.workload


def identity_of(node: Node, graph_type: str) -> Identity | None:
    """The store identity of a graph node; None for nodes without data of their own."""
    if node.node_type == "unknown" or node.is_egress or node.service_entry:
        return None
    ns = node.namespace if is_ok(node.namespace) else UNKNOWN
    if node.node_type == "workload" and is_ok(node.workload):
        return Identity(ns, workload=node.workload, app=node.app if is_ok(node.app) else "")
    if node.node_type == "app" and is_ok(node.app):
        if graph_type == "versionedApp" and is_ok(node.workload):
            return Identity(ns, workload=node.workload, app=node.app)
        if graph_type == "versionedApp" and is_ok_version(node.version):
            return Identity(ns, app=node.app, version=node.version)
        return Identity(ns, app=node.app)
    if node.node_type == "service" and is_ok(node.service):
        return Identity(ns, app=node.service, guessed=True)
    return None


def _identity_sql(ident: Identity, params: dict) -> str:
    """SQL matching rows of ``otel_traces``/``otel_logs`` with ``ident``, as edges.py derives identities."""
    conds = ["if(MeshNamespace = '', {ns:String}, MeshNamespace) = {ns:String}" if ident.namespace == UNKNOWN
             else "MeshNamespace = {ns:String}"]
    params["ns"] = ident.namespace
    if ident.workload:
        conds.append("if(MeshWorkload != '', MeshWorkload, ServiceName) = {wl:String}")
        params["wl"] = ident.workload
    else:
        conds.append("if(MeshApp != '', MeshApp, ServiceName) = {app:String}")
        params["app"] = ident.app
        if ident.version:
            conds.append("MeshVersion = {ver:String}")
            params["ver"] = ident.version
    return " AND ".join(conds)


def _window_params(tenant: str, start_ns: int, end_ns: int) -> dict:
    return {"t": tenant, "lo": int(start_ns), "hi": int(end_ns), "lo_s": int(start_ns // NS),
            "hi_s": int(-(-end_ns // NS))}


_SPAN_WINDOW = ("TenantId = {t:String} AND Timestamp >= fromUnixTimestamp64Nano({lo:Int64}) "
                "AND Timestamp < fromUnixTimestamp64Nano({hi:Int64})")
_LOG_WINDOW = ("TenantId = {t:String} AND TimestampTime >= toDateTime({lo_s:Int64}) "
               "AND TimestampTime <= toDateTime({hi_s:Int64}) AND Timestamp >= fromUnixTimestamp64Nano({lo:Int64}) "
               "AND Timestamp < fromUnixTimestamp64Nano({hi:Int64})")


def span_errors(store, tenant: str, ident: Identity, start_ns: int, end_ns: int) -> list[dict]:
    """The most frequent error spans of the node: operation, kind, status message, response code, count."""
    params = _window_params(tenant, start_ns, end_ns)
    where = f"{_SPAN_WINDOW} AND StatusCode = 'STATUS_CODE_ERROR' AND {_identity_sql(ident, params)}"
    r = store.query(
        f"SELECT SpanName, SpanKind, substringUTF8(StatusMessage, 1, {MAX_BODY}) AS msg, MeshResponseCode, "
        f"count() AS n, any(TraceId), toUnixTimestamp64Nano(max(Timestamp)) FROM {store.database}.otel_traces "
        f"WHERE {where} GROUP BY SpanName, SpanKind, msg, MeshResponseCode ORDER BY n DESC, SpanName LIMIT {TOP}",
        params)
    return [{"operation": op, "spanKind": kind.replace("SPAN_KIND_", "").lower(), "message": msg, "code": code,
             "count": int(n), "traceID": tid, "lastNs": str(last)} for op, kind, msg, code, n, tid, last in r.rows]


def log_errors(store, tenant: str, ident: Identity, start_ns: int, end_ns: int) -> list[dict]:
    """The most frequent error log lines of the node (severity ERROR or worse), with a trace id when one carries."""
    params = _window_params(tenant, start_ns, end_ns)
    # a level name counts when the push receiver would map it to ERROR or worse
    params["error_levels"] = sorted(name for name, number in SEVERITY.items() if number >= ERROR_SEVERITY)
    where = (f"{_LOG_WINDOW} AND (SeverityNumber >= {ERROR_SEVERITY} OR (SeverityNumber = 0 AND "
             f"lower(SeverityText) IN {{error_levels:Array(String)}})) AND {_identity_sql(ident, params)}")
    r = store.query(
        f"SELECT substringUTF8(Body, 1, {MAX_BODY}) AS line, count() AS n, anyIf(TraceId, TraceId != ''), "
        f"toUnixTimestamp64Nano(max(Timestamp)) FROM {store.database}.otel_logs WHERE {where} "
        f"GROUP BY line ORDER BY n DESC, line LIMIT {TOP}", params)
    return [{"line": line, "count": int(n), "traceID": tid, "lastNs": str(last)} for line, n, tid, last in r.rows]


def logql_string(s: str) -> str:
    """A LogQL double-quoted string literal (Go's escapes, as LogQL's lexer reads them)."""
    return go_quote(s)


def links(store, tenant: str, ident: Identity, start_ns: int, end_ns: int, graph_type: str) -> dict | None:
    """Where the node's logs and traces are: a LogQL selector and a trace search, named from what the store holds
    for the identity (app spans before sidecar spans), falling back to the node's own name; None for a guessed
    identity (a service node) that has no spans or logs of its own (a database, an external host)."""
    params = _window_params(tenant, start_ns, end_ns)
    ident_sql = _identity_sql(ident, params)
    r = store.query(
        f"SELECT ServiceName, MeshProxy != '' AS proxy, count() AS n, any(ResourceAttributes['k8s.deployment.name']), "
        f"any(ResourceAttributes['service.version']) FROM {store.database}.otel_traces "
        f"WHERE {_SPAN_WINDOW} AND {ident_sql} GROUP BY ServiceName, proxy ORDER BY proxy, n DESC LIMIT 1", params)
    traces: dict = {"service": ident.name}
    found = bool(r.rows)
    if r.rows:
        svc, _proxy, _n, dep, ver = r.rows[0]
        traces["service"] = svc
        # one service, several workloads: narrow the search to this one by a resource attribute it carries
        if ident.workload and dep == ident.workload and dep != svc:
            traces["tags"] = {"k8s.deployment.name": dep}
        elif ident.version and ver == ident.version:
            traces["tags"] = {"service.version": ver}
    matchers = _workload_selector(store, ident, params, ident_sql, graph_type)
    if matchers:  # the workload's app and access logs, one selector
        return {"logs": {"query": "{" + ", ".join(matchers) + "}"}, "traces": traces}
    r = store.query(
        f"SELECT ResourceAttributes['service.name'] AS svc, ResourceAttributes['k8s.namespace.name'] AS ns, "
        f"ResourceAttributes['k8s.deployment.name'] AS dep, count() AS n FROM {store.database}.otel_logs "
        f"WHERE {_LOG_WINDOW} AND {ident_sql} AND svc != '' GROUP BY svc, ns, dep ORDER BY n DESC LIMIT 1", params)
    if ident.guessed and not found and not r.rows:
        return None
    if r.rows:
        svc, ns, dep, _n = r.rows[0]
        matchers.append(f"service_name={logql_string(svc)}")
        if ns:
            matchers.append(f"k8s_namespace_name={logql_string(ns)}")
        if ident.workload and dep == ident.workload and graph_type in ("workload", "versionedApp"):
            matchers.append(f"k8s_deployment_name={logql_string(dep)}")
    else:
        matchers.append(f"service_name={logql_string(ident.name)}")
        if ident.namespace != UNKNOWN:
            matchers.append(f"k8s_namespace_name={logql_string(ident.namespace)}")
    return {"logs": {"query": "{" + ", ".join(matchers) + "}"}, "traces": traces}


def _workload_selector(store, ident: Identity, params: dict, ident_sql: str, graph_type: str) -> list[str]:
    """``k8s_namespace_name`` + ``k8s_deployment_name`` when every log stream of a workload node carries both:
    that selects the app's own logs and its sidecar's access logs (whose labels come from the mesh identity, see
    008_log_stream_mesh_identity.sql) together, where a service_name would select only one of them."""
    if not ident.workload or ident.namespace == UNKNOWN or graph_type not in ("workload", "versionedApp"):
        return []
    r = store.query(
        f"SELECT StreamLabels['k8s_namespace_name'] AS ns, StreamLabels['k8s_deployment_name'] AS dep, count() "
        f"FROM {store.database}.otel_logs WHERE {_LOG_WINDOW} AND {ident_sql} GROUP BY ns, dep", params)
    if not r.rows or any((ns, dep) != (ident.namespace, ident.workload) for ns, dep, _n in r.rows):
        return []
    return [f"k8s_namespace_name={logql_string(ident.namespace)}",
            f"k8s_deployment_name={logql_string(ident.workload)}"]


def store_details(store, tenant: str, node: Node, graph_type: str, start_ns: int, end_ns: int) -> dict:
    """The store's part of a node's details: top span and log errors, links. Empty for virtual nodes."""
    ident = identity_of(node, graph_type)
    if ident is None or store is None:
        return {"identity": None, "spans": [], "logs": [], "links": None}
    return {"identity": {"namespace": ident.namespace, "workload": ident.workload or None,
                         "app": ident.app or None, "version": ident.version or None},
            "spans": span_errors(store, tenant, ident, start_ns, end_ns),
            "logs": log_errors(store, tenant, ident, start_ns, end_ns),
            "links": links(store, tenant, ident, start_ns, end_ns, graph_type)}


__all__ = ["node_summary", "edge_summary", "find_node", "find_edge", "identity_of", "store_details", "red",
           "responses", "is_error"]
