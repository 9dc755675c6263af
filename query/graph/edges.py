"""Service-graph edges from spans, computed inside ClickHouse, and the per-minute rollup that keeps them.

Why in ClickHouse: collectors stay stateless (no Tempo-style in-memory pairing store, no routing of a trace's
spans to one instance); the pairing is a join over ``otel_traces`` that any query or job can run again.

The rules (``../shared/reference/mesh.md`` §5.1, §5.2), per span:

* **Identity** of a span = the promoted ``Mesh*`` columns filled at insert (cluster, namespace, workload, app,
  version); a plain OTel app without Kubernetes attributes falls back to ``service.name`` for workload and app.
* **Paired edge**: a SERVER or CONSUMER span whose parent has another identity gives parent-identity → span-
  identity. Same-identity pairs collapse (app CLIENT → own sidecar CLIENT, sidecar SERVER → app SERVER, a
  Linkerd inbound proxy CLIENT → app SERVER), so sidecar and app spans of one hop give one edge; a CLIENT → SERVER
  pair of one identity where both spans come from the same kind of emitter (two sidecars, or two apps) is a real
  self-call and stays.
* **Unknown source**: a SERVER/CONSUMER span without a parent (a root) or whose parent is not stored within
  ``PARENT_LOOKBACK_NS``: the source is Kiali's ``unknown`` node, or the caller Envoy names in
  ``downstream_cluster`` (``<app>.<namespace>``, e.g. an ingress gateway) or a waypoint in ``istio.source_*``.
* **Virtual destination**: a CLIENT or PRODUCER span with no SERVER/CONSUMER/CLIENT/PRODUCER child (the call left
  the traced world) gives an edge to a node named, first found: ``service.peer.name``/``peer.service``;
  ``db.system(.name)`` [``/db.namespace``]; ``messaging.system`` [``/messaging.destination.name``]; the peer host
  (Envoy's ``upstream_cluster`` ``outbound|port||host``, ``server.address``, ``net.peer.name``); Envoy's
  ``PassthroughCluster``/``BlackHoleCluster``; the host of ``url.full``/``http.url``. ``<svc>.<ns>.svc...`` hosts
  name a Kubernetes service in that namespace; other names sit in the caller's namespace and cluster.
* **What an edge measures**: the server-side span of a pair (and the client span of a virtual edge): latency,
  response code (``-`` = no response; gRPC status for gRPC unless the HTTP code is 4xx/5xx; a span without any code
  counts as ``200``/``0``, or ``-`` when its status is ERROR), Envoy response flags (``-`` = none), request and
  response bytes (Envoy ``request_size``/``response_size``, ``http.request.body.size``/``http.response.body.size``),
  mTLS when the span says (``connection_security_policy``). The destination host comes from the client span.
* **Sampling**: each span counts 1/p requests when its W3C ``tracestate`` carries the OpenTelemetry sampling
  threshold ``ot=...th:<hex>`` (p = 1 - th/2^56, OTEP 235 / the TraceState probability-sampling spec) or the older
  p-value ``ot=...p:<n>`` (p = 2^-n). Without either a span counts 1.
* **Time**: an edge belongs to the minute of its measured span's start.

The rollup (``otel_service_edges_1m``, deploy/clickhouse/005_service_graph.sql) stores the same rows per minute;
``fetch_edges`` reads whole minutes from it and the rest from the raw spans.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from meshscope.query.graph import histogram
from meshscope.query.graph.types import UNKNOWN, EdgeStats, NodeIdentity

log = logging.getLogger("meshscope.graph")

NS = 1_000_000_000
MINUTE_NS = 60 * NS
PARENT_LOOKBACK_NS = 60 * NS   # a parent starts before its child; callers start milliseconds before callees
CHILD_LOOKAHEAD_NS = 60 * NS   # a client's child (the callee, or its own sidecar) starts right after it
ROLLUP_TABLE = "otel_service_edges_1m"
# Build the joins' hash tables from the right side as written (the parents: every span in the range, two numbers
# each; the spans that have a parent, one number each): ClickHouse 25+'s automatic swap would hash the children
# and clients instead (10M spans, 6 h: 4.0 s swapped, 2.8 s as written).
JOIN_SETTINGS = {"query_plan_join_swap_table": "false"}
# Unmatched LEFT JOIN rows must read as defaults (0, ''), not NULL, whatever the server profile says: with NULLs
# ``p_found`` and the lookups' fields would turn the collapse test NULL and drop every root edge.
JOIN_DEFAULTS = {"join_use_nulls": 0}


def _join_settings(store) -> dict:
    swap = JOIN_SETTINGS if store.knows_settings(tuple(JOIN_SETTINGS)) else {}
    return {**JOIN_DEFAULTS, **swap}


_SERVER_KINDS = "('SPAN_KIND_SERVER', 'SPAN_KIND_CONSUMER')"
_CLIENT_KINDS = "('SPAN_KIND_CLIENT', 'SPAN_KIND_PRODUCER')"
_REMOTE_KINDS = "('SPAN_KIND_SERVER', 'SPAN_KIND_CONSUMER', 'SPAN_KIND_CLIENT', 'SPAN_KIND_PRODUCER')"

IDENTITY_FIELDS = ("Kind", "Cluster", "Namespace", "Workload", "App", "Version", "Service", "Gateway", "Virtual")
KEY_COLUMNS = ([f"Src{f}" for f in IDENTITY_FIELDS] + [f"Dst{f}" for f in IDENTITY_FIELDS]
               + ["Protocol", "ResponseCode", "ResponseFlags", "DstHost", "SourcePrincipal", "DestPrincipal"])
MEASURE_MERGE = {  # per edge key: spans, requests (spans / sampling probability), latency histogram, ...
    # column -> how stored rows are summed
    "Spans": "sum(Spans)", "Requests": "sum(Requests)", "LatencyBuckets": "sumMap(LatencyBuckets)",
    "LatencySumMs": "sum(LatencySumMs)", "BytesSent": "sum(BytesSent)", "BytesReceived": "sum(BytesReceived)",
    "MtlsRequests": "sum(MtlsRequests)", "MtlsKnown": "sum(MtlsKnown)",
}
MEASURES = tuple(MEASURE_MERGE)

# ------------------------------------------------------------------------------------------------------ SQL parts


def _u(x: str) -> str:
    return f"if(({x}) = '', '{UNKNOWN}', {x})"


# OTEP 235 threshold (56-bit rejection threshold, hex with trailing zeros dropped) and the older p-value.
_TH = r"extract(TraceState, '(?:^|,)\\s*ot=(?:[^,;]*;)*th:([0-9a-f]{1,14})(?:;|,|$)')"
_PV = r"extract(TraceState, '(?:^|,)\\s*ot=(?:[^,;]*;)*p:([0-9]{1,2})(?:;|,|$)')"
MULTIPLIER_SQL = (
    f"if(TraceState = '', 1.0, multiIf("
    f"{_TH} != '', 1.0 / (1.0 - reinterpretAsUInt64(reverse(unhex(concat('00', rightPad({_TH}, 14, '0'))))) "
    f"/ 72057594037927936.0), "
    f"{_PV} != '' AND toUInt8OrZero({_PV}) <= 62, pow(2.0, toUInt8OrZero({_PV})), 1.0))"
)


_MEASURED = f"""Timestamp AS ts, Duration AS dur, MeshSecurityPolicy AS policy, {MULTIPLIER_SQL} AS mult,
        MeshRequestBytes AS bytes_sent, MeshResponseBytes AS bytes_received"""

# The span fields edge keys are derived from, by the hash that stands for them in the joins and groupings
# (deploy/clickhouse/009_span_hashes.sql): field -> the column (or expression) it is read from. A join carries
# only the hashes; rows are grouped on them; what a hash stands for is looked up once per distinct value after
# grouping (``_lookup_sql``), and the keys' expressions, regular expressions included, run once per group. Each
# hash must cover every column its fields read (tests/test_graph_edges.py checks the live table's definitions); a
# field that a hash does not cover needs a new hash column (see the schema file), never an edited one.
HASHED_FIELDS = {
    "EdgeNodeHash": {"kind": "SpanKind", "proxy": "MeshProxy", "cl": "MeshCluster", "ns": "MeshNamespace",
                     "wl0": "MeshWorkload", "sn": "ServiceName", "app0": "MeshApp", "ver": "MeshVersion",
                     "host": "MeshPeerService", "proto": "MeshProtocol"},
    "EdgeResponseHash": {"http_code": "MeshResponseCode", "grpc_code": "MeshGrpcStatus", "status": "StatusCode",
                         "flags0": "MeshResponseFlags", "sprin": "MeshSourcePrincipal",
                         "dprin": "MeshDestinationPrincipal", "caller": "if(empty(ParentSpanId), MeshCaller, '')"},
    "EdgePeerHash": {"peer_attr": "MeshPeerName", "db_sys": "MeshDbSystem", "db_ns": "MeshDbNamespace",
                     "msg_sys": "MeshMessagingSystem", "msg_dest": "MeshMessagingDestination",
                     "upstream": "MeshUpstreamCluster", "url_host": "MeshUrlHost"},
}


def _ranges_sql(ranges: Sequence[tuple[int, int]], before: int = 0, after: int = 0) -> str:
    arms = []
    for i in range(len(ranges)):
        lo = f"{{lo{i}:Int64}}" + (f" - {before}" if before else "")
        hi = f"{{hi{i}:Int64}}" + (f" + {after}" if after else "")
        arms.append(f"(Timestamp >= fromUnixTimestamp64Nano({lo}) AND Timestamp < fromUnixTimestamp64Nano({hi}))")
    return "(" + " OR ".join(arms) + ")"


def _span_identity(a: str) -> dict[str, str]:
    """Output identity columns of the grouped span fields ``<a>_*`` (a workload node)."""
    wl = f"if({a}_wl0 != '', {a}_wl0, {a}_sn)"
    app = f"if({a}_app0 != '', {a}_app0, {a}_sn)"
    return {
        "Kind": "'workload'", "Cluster": _u(f"{a}_cl"), "Namespace": _u(f"{a}_ns"), "Workload": _u(wl),
        "App": _u(app), "Version": _u(f"{a}_ver"), "Service": f"'{UNKNOWN}'",
        "Gateway": f"toUInt8({a}_proxy = 'envoy' AND (positionCaseInsensitive({wl}, 'gateway') > 0 "
                   f"OR positionCaseInsensitive({app}, 'gateway') > 0))",
        "Virtual": "''",
    }


_UNKNOWN_IDENTITY = {"Kind": "'unknown'", "Cluster": f"'{UNKNOWN}'", "Namespace": f"'{UNKNOWN}'",
                     "Workload": f"'{UNKNOWN}'", "App": f"'{UNKNOWN}'", "Version": f"'{UNKNOWN}'",
                     "Service": f"'{UNKNOWN}'", "Gateway": "toUInt8(0)", "Virtual": "''"}


def _same_identity(p: str, c: str) -> str:
    return (f"(({p}_ns = {c}_ns OR {p}_ns = '' OR {c}_ns = '') AND "
            f"if({p}_wl0 != '' AND {c}_wl0 != '', {p}_wl0 = {c}_wl0, {p}_app0 = {c}_app0 OR {p}_sn = {c}_sn))")


def _code(m: str, proto: str) -> str:
    """Kiali's response code of the measured span's grouped fields ``<m>_*``: ``-`` = no response."""
    http = f"{m}_http_code"
    http_err = f"match({http}, '^[45][0-9][0-9]$')"
    return (f"multiIf({proto} = 'tcp', '-', "
            f"{proto} = 'grpc' AND NOT {http_err}, "
            f"  multiIf({m}_grpc_code != '', {m}_grpc_code, {m}_status = 'STATUS_CODE_ERROR', '-', '0'), "
            f"{http} = '0', '-', {http} != '', {http}, {m}_status = 'STATUS_CODE_ERROR', '-', '200')")


def _keys(src: dict[str, str], dst: dict[str, str], proto: str, m: str, host: str) -> str:
    """The edge key columns (KEY_COLUMNS), derived from one group of raw fields; ``m`` = the measured span."""
    cols = [f"{e} AS Src{f}" for f, e in src.items()]
    cols += [f"{e} AS Dst{f}" for f, e in dst.items()]
    cols += [f"{proto} AS Protocol", f"{_code(m, 'Protocol')} AS ResponseCode",
             f"if({m}_flags0 != '', {m}_flags0, '-') AS ResponseFlags", f"{host} AS DstHost",
             f"{m}_sprin AS SourcePrincipal", f"{m}_dprin AS DestPrincipal"]
    return ",\n    ".join(cols)


# Per group of requests that share their raw fields and latency bucket: partial sums of the measured span ``{m}``
# (the outer query adds them); the latency buckets are the lb key x part_Requests
_PARTIAL_SQL = {
    "Spans": "count()", "Requests": "sum({m}.mult)", "LatencySumMs": "sum({m}.dur / 1e6 * {m}.mult)",
    "BytesSent": "sum({m}.bytes_sent * {m}.mult)", "BytesReceived": "sum({m}.bytes_received * {m}.mult)",
    "MtlsRequests": "sum(if({m}.policy = 'mutual_tls', {m}.mult, 0))",
    "MtlsKnown": "sum(if({m}.policy NOT IN ('', 'unknown'), {m}.mult, 0))",
}
assert set(_PARTIAL_SQL) == set(MEASURES) - {"LatencyBuckets"}
_PARTIALS = tuple(f"part_{c}" for c in _PARTIAL_SQL)


def _lookup_sql(table: str, where: str, hash_cols: Sequence[str], prefix: str, unused: Sequence[str] = ()) -> str:
    """One row per distinct combination of ``hash_cols`` among the spans ``where`` selects (one scan for all of
    them): the hashes as ``h0``, ``h1``, ... and the fields they stand for (but ``unused``), as
    ``<prefix>_<field>``. Any span with the same hashes has the same fields, so the first one found is taken
    (``LIMIT 1 BY``, cheaper than any())."""
    hashes = ", ".join(f"{h} AS h{i}" for i, h in enumerate(hash_cols))
    fields = ", ".join(f"{e} AS {prefix}_{f}" for h in hash_cols for f, e in HASHED_FIELDS[h].items()
                       if f not in unused)
    by = ", ".join(f"h{i}" for i in range(len(hash_cols)))
    return f"SELECT {hashes}, {fields} FROM {table} WHERE {where} LIMIT 1 BY {by}"


def _grouped(by: Sequence[str], m: str, from_sql: str, per_minute: bool) -> str:
    """``SELECT`` of the hashes ``by``, the latency bucket ``lb`` and the partial measures of the measured span
    ``m``, grouped on the hashes and ``lb`` (and per tenant and minute for the rollup)."""
    group = [*by, f"{histogram.bucket_sql(f'{m}.dur')} AS lb"]
    if per_minute:
        group += [f"{m}.tenant AS tenant", f"toStartOfMinute({m}.ts) AS minute"]
    cols = group + [f"{sql.format(m=m)} AS part_{c}" for c, sql in _PARTIAL_SQL.items()]
    keys = [g.rsplit(" AS ", 1)[1] for g in group]
    return f"SELECT {', '.join(cols)}\n{from_sql}\nGROUP BY {', '.join(keys)}"


def edge_groups_sql(db: str, n_ranges: int, tenant: bool, per_minute: bool = False,
                    namespaces: bool = False) -> str:
    """SQL for the edges whose measured span starts in the bound ranges ``{lo<i>:Int64}``..``{hi<i>:Int64}`` (ns),
    for ``{tenant:String}`` or for all tenants: one row per edge key (``KEY_COLUMNS``; first ``tenant`` and
    ``minute`` when ``per_minute``) with the ``MEASURES`` columns. With ``namespaces``, only edges with an end in
    ``{namespaces:Array(String)}``."""
    ranges = [(0, 0)] * n_ranges
    tf = "TenantId = {tenant:String} AND " if tenant else ""
    t = f"{db}.otel_traces"
    # Spans are joined on SpanHash/ParentHash (cityHash64(TenantId, TraceId, SpanId/ParentSpanId), written at
    # insert, deploy/clickhouse/009_span_hashes.sql): one UInt64 per side instead of hashing three strings per span
    # at every query, with the tenant folded in (a (String, UInt64) key made the joins about three times slower).
    # Both joins carry only numbers; each side's fields come back by lookup once its rows are grouped.
    server_spans = f"{tf}SpanKind IN {_SERVER_KINDS} AND {_ranges_sql(ranges)}"
    client_spans = f"{tf}SpanKind IN {_CLIENT_KINDS} AND {_ranges_sql(ranges)}"
    parent_spans = f"{tf}{_ranges_sql(ranges, before=PARENT_LOOKBACK_NS)}"
    children = f"""SELECT TenantId AS tenant, ParentHash AS parent_h, EdgeNodeHash AS node_h,
        EdgeResponseHash AS resp_h, {_MEASURED}
    FROM {t} WHERE {server_spans}"""
    # the parents' side of the join is only two numbers per span: a hash table of every span in the range
    parents = f"""SELECT SpanHash AS self_h, EdgeNodeHash AS node_h FROM {t} WHERE {parent_spans}"""
    clients = f"""SELECT TenantId AS tenant, SpanHash AS self_h, EdgeNodeHash AS node_h, EdgeResponseHash AS resp_h,
        EdgePeerHash AS peer_h, {_MEASURED}
    FROM {t} WHERE {client_spans}"""
    kids = f"""SELECT ParentHash AS parent_h
    FROM {t} WHERE {tf}SpanKind IN {_REMOTE_KINDS} AND notEmpty(ParentSpanId)
      AND {_ranges_sql(ranges, after=CHILD_LOOKAHEAD_NS)}"""
    head = "tenant, minute, " if per_minute else ""

    # paired and root edges; same-identity pairs (one hop's sidecar and app spans) collapse
    paired_groups = _grouped(["p.self_h != 0 AS p_found", "p.node_h AS p_node_h", "c.node_h AS c_node_h",
                              "c.resp_h AS c_resp_h"], "c", f"""FROM ({children}) AS c
LEFT JOIN ({parents}) AS p ON p.self_h = c.parent_h""", per_minute)
    collapse = (f"p_found AND {_same_identity('p', 'c')} "
                f"AND NOT (p_kind IN {_CLIENT_KINDS} AND p_proxy = c_proxy)")
    caller_parts = "splitByChar('.', c_caller)"
    caller_ok = "match(c_caller, '^[^.~ -][^.~ ]*\\\\.[^.~ ]+$')"
    caller_id = {
        "Kind": "'workload'", "Cluster": _u("c_cl"), "Namespace": f"{caller_parts}[2]",
        "Workload": f"{caller_parts}[1]", "App": f"{caller_parts}[1]", "Version": f"'{UNKNOWN}'",
        "Service": f"'{UNKNOWN}'", "Gateway": "toUInt8(positionCaseInsensitive(c_caller, 'gateway') > 0)",
        "Virtual": "''",
    }
    p_id = _span_identity("p")
    src = {f: f"if(p_found, {p_id[f]}, if({caller_ok}, {caller_id[f]}, {_UNKNOWN_IDENTITY[f]}))"
           for f in IDENTITY_FIELDS}
    proto_pair = "multiIf(c_proto != '', c_proto, p_proto != '', p_proto, 'tcp')"
    host_pair = f"if(p_found AND p_kind IN {_CLIENT_KINDS}, replaceRegexpOne(p_host, ':[0-9]+$', ''), '')"
    paired = f"""SELECT {head}{_keys(src, _span_identity('c'), proto_pair, 'c', host_pair)}, lb, {', '.join(_PARTIALS)}
FROM ({paired_groups}) AS g
LEFT JOIN ({_lookup_sql(t, parent_spans, ["EdgeNodeHash"], "p")}) AS pn ON pn.h0 = g.p_node_h
LEFT JOIN ({_lookup_sql(t, server_spans, ["EdgeNodeHash", "EdgeResponseHash"], "c", ("kind", "host"))}) AS cn
    ON cn.h0 = g.c_node_h AND cn.h1 = g.c_resp_h
WHERE NOT ({collapse})"""

    # virtual destinations of terminal client spans
    vtype = ("multiIf(v_peer_attr != '', 'peer', v_db_sys != '', 'db', v_msg_sys != '', 'messaging', "
             "v_host != '', 'host', v_upstream IN ('PassthroughCluster', 'BlackHoleCluster'), 'egress', "
             "v_url_host != '', 'host', '')")
    vname = ("multiIf(v_peer_attr != '', v_peer_attr, "
             "v_db_sys != '', concat(v_db_sys, if(v_db_ns != '', concat('/', v_db_ns), '')), "
             "v_msg_sys != '', concat(v_msg_sys, if(v_msg_dest != '', concat('/', v_msg_dest), '')), "
             "v_host != '', v_host, v_upstream IN ('PassthroughCluster', 'BlackHoleCluster'), v_upstream, "
             "v_url_host != '', v_url_host, '')")
    vhost = f"replaceRegexpOne({vname}, ':[0-9]+$', '')"
    k8s = f"extractGroups({vhost}, '^([^.]+)\\\\.([^.]+)\\\\.svc(?:\\\\..*)?$')"
    is_host = f"({vtype} IN ('host', 'peer'))"
    vdst = {
        "Kind": "'service'", "Cluster": _u("v_cl"),
        "Namespace": f"if({is_host} AND length({k8s}) = 2, {k8s}[2], {_u('v_ns')})",
        "Workload": f"'{UNKNOWN}'", "App": f"'{UNKNOWN}'", "Version": f"'{UNKNOWN}'",
        "Service": f"if({is_host} AND length({k8s}) = 2, {k8s}[1], {_u(vhost)})",
        "Gateway": "toUInt8(0)", "Virtual": vtype,
    }
    proto_v = "if(v_proto != '', v_proto, 'tcp')"
    virtual_groups = _grouped(["v.node_h AS v_node_h", "v.resp_h AS v_resp_h", "v.peer_h AS v_peer_h"], "v",
                              f"""FROM ({clients}) AS v
LEFT ANTI JOIN ({kids}) AS k ON k.parent_h = v.self_h""", per_minute)
    virtual = f"""SELECT {head}{_keys(_span_identity('v'), vdst, proto_v, 'v', f"if({is_host}, {vhost}, '')")}, lb, {', '.join(_PARTIALS)}
FROM ({virtual_groups}) AS g
LEFT JOIN ({_lookup_sql(t, client_spans, ["EdgeNodeHash", "EdgeResponseHash", "EdgePeerHash"], "v",
                        ("kind", "caller"))}) AS vn
    ON vn.h0 = g.v_node_h AND vn.h1 = g.v_resp_h AND vn.h2 = g.v_peer_h"""

    keys = ", ".join(KEY_COLUMNS)
    merged = ", ".join(f"sum({c}) AS {c[len('part_'):]}" for c in _PARTIALS)
    return (f"SELECT {head}{keys}, {merged}, sumMap(map(lb, part_Requests)) AS LatencyBuckets\n"
            f"FROM ({paired}\nUNION ALL\n{virtual})\nWHERE 1{_ns_filter(namespaces)}\nGROUP BY {head}{keys}")


def _ns_filter(namespaces) -> str:
    if not namespaces:
        return ""
    return " AND (SrcNamespace IN {namespaces:Array(String)} OR DstNamespace IN {namespaces:Array(String)})"


def _range_params(ranges: Sequence[tuple[int, int]]) -> dict[str, int]:
    p: dict[str, int] = {}
    for i, (lo, hi) in enumerate(ranges):
        p[f"lo{i}"], p[f"hi{i}"] = int(lo), int(hi)
    return p


# ------------------------------------------------------------------------------------------------ rows -> stats

@dataclass
class _Acc:
    src: NodeIdentity
    dst: NodeIdentity
    protocol: str
    requests: float = 0.0
    responses: dict = field(default_factory=dict)
    flags: dict = field(default_factory=dict)
    hosts: dict = field(default_factory=dict)
    buckets: dict = field(default_factory=dict)
    lat_sum: float = 0.0
    bytes_sent: float = 0.0
    bytes_received: float = 0.0
    mtls: float = 0.0
    mtls_known: float = 0.0
    sprin: str = ""
    dprin: str = ""


def _identity(row: dict, prefix: str) -> NodeIdentity:
    g = lambda f: row[prefix + f]  # noqa: E731
    return NodeIdentity(cluster=g("Cluster"), namespace=g("Namespace"), workload=g("Workload"), app=g("App"),
                        version=g("Version"), service=g("Service"), kind=g("Kind"), is_gateway=bool(g("Gateway")),
                        virtual=g("Virtual"))


def _accumulate(accs: dict, rows: Iterable[dict]) -> None:
    for r in rows:
        src, dst = _identity(r, "Src"), _identity(r, "Dst")
        key = (src, dst, r["Protocol"])
        a = accs.get(key)
        if a is None:
            a = accs[key] = _Acc(src, dst, r["Protocol"])
        n = float(r["Requests"])
        code, flag, host = r["ResponseCode"], r["ResponseFlags"], r["DstHost"]
        a.requests += n
        a.responses[code] = a.responses.get(code, 0.0) + n
        f = a.flags.setdefault(code, {})
        f[flag] = f.get(flag, 0.0) + n
        if host:
            h = a.hosts.setdefault(code, {})
            h[host] = h.get(host, 0.0) + n
        for b, c in (r["LatencyBuckets"] or {}).items():
            a.buckets[int(b)] = a.buckets.get(int(b), 0.0) + float(c)
        a.lat_sum += float(r["LatencySumMs"])
        a.bytes_sent += float(r["BytesSent"])
        a.bytes_received += float(r["BytesReceived"])
        a.mtls += float(r["MtlsRequests"])
        a.mtls_known += float(r["MtlsKnown"])
        a.sprin = a.sprin or r["SourcePrincipal"]
        a.dprin = a.dprin or r["DestPrincipal"]


def _finish(accs: dict, window_seconds: float) -> list[EdgeStats]:
    out = []
    for a in accs.values():
        lat: dict[str, float] = {}
        if a.buckets and a.requests > 0:
            for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
                v = histogram.sparse_quantile(q, a.buckets)
                if v is not None:
                    lat[name] = v
            lat["avg"] = a.lat_sum / a.requests
        out.append(EdgeStats(
            source=a.src, dest=a.dst, protocol=a.protocol, window_seconds=window_seconds, requests=a.requests,
            responses=a.responses, flags=a.flags, hosts=a.hosts, latency_ms=lat,
            latency_buckets=histogram.cumulative(a.buckets), bytes_sent=a.bytes_sent,
            bytes_received=a.bytes_received, mtls_requests=a.mtls if a.mtls_known > 0 else None,
            mtls_known=a.mtls_known if a.mtls_known > 0 else None, source_principal=a.sprin,
            dest_principal=a.dprin, origin="spans"))
    out.sort(key=lambda e: (e.source.namespace, e.source.workload, e.dest.namespace, e.dest.workload,
                            e.dest.service, e.protocol))
    return out


# ------------------------------------------------------------------------------------------------ reading

def _raw_rows(store, tenant: str, ranges: Sequence[tuple[int, int]], namespaces) -> list[dict]:
    if not ranges:
        return []
    sql = edge_groups_sql(store.database, len(ranges), tenant=True, namespaces=bool(namespaces))
    params: dict[str, Any] = {"tenant": tenant, **_range_params(ranges)}
    if namespaces:
        params["namespaces"] = list(namespaces)
    return store.query(sql, params, settings=_join_settings(store)).dicts()


def _covered_minutes(store, tenant: str, lo_min: int, hi_min: int) -> dict[int, int]:
    """Minute start (s) -> newest generation with a marker, for whole minutes in [lo_min, hi_min) (s)."""
    if hi_min <= lo_min:
        return {}
    r = store.query(
        f"SELECT toUnixTimestamp(Minute), max(Generation) FROM {store.database}.{ROLLUP_TABLE} "
        "WHERE TenantId = {tenant:String} AND Minute >= toDateTime({a:Int64}) AND Minute < toDateTime({b:Int64}) "
        "AND Protocol = '' GROUP BY Minute",
        {"tenant": tenant, "a": lo_min, "b": hi_min})
    return {int(m): int(g) for m, g in r.rows}


def _rollup_rows(store, tenant: str, lo_min: int, hi_min: int, namespaces) -> list[dict]:
    keys = ", ".join(KEY_COLUMNS)
    aggs = ", ".join(f"{e} AS {c}" for c, e in MEASURE_MERGE.items())
    t = f"{store.database}.{ROLLUP_TABLE}"
    window = ("TenantId = {tenant:String} AND Minute >= toDateTime({a:Int64}) AND Minute < toDateTime({b:Int64})")
    sql = (f"SELECT {keys}, {aggs} FROM {t} WHERE {window} AND Protocol != ''{_ns_filter(namespaces)} "
           f"AND (Minute, Generation) IN (SELECT Minute, max(Generation) FROM {t} WHERE {window} AND Protocol = '' "
           f"GROUP BY Minute) GROUP BY {keys}")
    params: dict[str, Any] = {"tenant": tenant, "a": lo_min, "b": hi_min}
    if namespaces:
        params["namespaces"] = list(namespaces)
    return store.query(sql, params).dicts()


def _runs(minutes: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted minute starts (s) -> contiguous [start, end) runs (s)."""
    out: list[list[int]] = []
    for m in sorted(minutes):
        if out and out[-1][1] == m:
            out[-1][1] = m + 60
        else:
            out.append([m, m + 60])
    return [(a, b) for a, b in out]


def plan(covered: Iterable[int], start_ns: int, end_ns: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Split [start_ns, end_ns) into rollup runs (s, whole covered minutes) and raw ranges (ns, the rest)."""
    cov = set(covered)
    runs = _runs(m for m in cov if start_ns <= m * NS and (m + 60) * NS <= end_ns)
    raw: list[tuple[int, int]] = []
    cur = start_ns
    for a, b in runs:
        if a * NS > cur:
            raw.append((cur, a * NS))
        cur = b * NS
    if cur < end_ns:
        raw.append((cur, end_ns))
    return runs, raw


def fetch_edges(store, tenant: str, start_ns: int, end_ns: int, *, source: str = "auto",
                namespaces: Sequence[str] | None = None) -> list[EdgeStats]:
    """Edges whose measured span starts in [start_ns, end_ns), as counts over the window.

    ``source``: ``raw`` joins the spans now; ``rollup`` reads only the whole minutes the rollup has (the ragged
    ends and minutes it has not computed are left out); ``auto`` reads the rollup's whole minutes and the raw
    spans for everything else (all of it when the rollup has nothing for the window)."""
    if source not in ("auto", "rollup", "raw"):
        raise ValueError(f"source must be auto, rollup or raw, not {source!r}")
    if end_ns <= start_ns:
        return []
    window_s = (end_ns - start_ns) / NS
    accs: dict = {}
    if source == "raw":
        _accumulate(accs, _raw_rows(store, tenant, [(start_ns, end_ns)], namespaces))
        return _finish(accs, window_s)
    lo_min = -(-start_ns // MINUTE_NS) * 60
    hi_min = (end_ns // MINUTE_NS) * 60
    covered = _covered_minutes(store, tenant, lo_min, hi_min)
    runs, raw = plan(covered, start_ns, end_ns)
    for a, b in runs:  # usually one run; a gap (a minute the job has not computed) splits it
        _accumulate(accs, _rollup_rows(store, tenant, a, b, namespaces))
    if source == "auto":
        _accumulate(accs, _raw_rows(store, tenant, raw, namespaces))
    return _finish(accs, window_s)


# ------------------------------------------------------------------------------------------------ the rollup job

def rollup_insert_sql(db: str) -> str:
    cols = ", ".join(["TenantId", "Minute", "Generation", *KEY_COLUMNS, *MEASURES])
    return (f"INSERT INTO {db}.{ROLLUP_TABLE} ({cols}) "
            f"SELECT tenant, minute, {{gen:UInt64}}, {', '.join(KEY_COLUMNS)}, {', '.join(MEASURES)} "
            f"FROM ({edge_groups_sql(db, 1, tenant=False, per_minute=True)})")


def marker_insert_sql(db: str) -> str:
    return (f"INSERT INTO {db}.{ROLLUP_TABLE} (TenantId, Minute, Generation, Protocol) "
            f"SELECT DISTINCT TenantId, toStartOfMinute(Timestamp), {{gen:UInt64}}, '' FROM {db}.otel_traces "
            f"WHERE Timestamp >= fromUnixTimestamp64Nano({{lo0:Int64}}) "
            f"AND Timestamp < fromUnixTimestamp64Nano({{hi0:Int64}})")


class EdgeRollup:
    """Recomputes the per-minute edge rollup of the last ``lookback_minutes`` whole minutes, every ``interval_s``.

    Idempotent by generations, not by in-place updates: a run writes every edge row of its minutes under a new
    ``Generation`` (a nanosecond clock reading, increasing), then one marker row per (tenant, minute), then
    deletes the rows of those minutes with older generations (a lightweight ``DELETE``; "older", not "other", so
    two jobs that overlap, e.g. two servers on one ClickHouse, never delete each other's newer result). Readers use, per minute,
    the newest generation that has a marker, so at every instant they see each minute exactly once: the previous
    computation until the new one is complete, then the new one. A run that dies half-way leaves rows of a
    generation without markers (never read; the next run deletes them) or two complete generations (the newest
    is read). Re-running the same minutes gives the same rows; spans that arrived late are counted by the next
    run that still covers their minute. Minutes older than the lookback that have spans but no rollup (the job
    was not running) are filled in the background, ``backfill_per_run`` minutes per run, up to
    ``backfill_hours`` back; until then ``fetch_edges(source="auto")`` reads them from the raw spans.
    """

    def __init__(self, store, interval_s: float = 30.0, lookback_minutes: int = 5, backfill_hours: float = 24.0,
                 backfill_per_run: int = 30) -> None:
        self.store = store
        self.interval_s = float(interval_s)
        self.lookback_minutes = max(1, int(lookback_minutes))
        self.backfill_hours = backfill_hours
        self.backfill_per_run = backfill_per_run
        self.runs = 0
        self.last_error: str | None = None
        self.last_duration_s = 0.0
        self._lock = threading.Lock()
        self._last_gen = 0

    def _generation(self) -> int:
        g = time.time_ns()
        if g <= self._last_gen:
            g = self._last_gen + 1
        self._last_gen = g
        return g

    def compute(self, lo_ns: int, hi_ns: int) -> int:
        """Recompute the whole minutes in [lo_ns, hi_ns) for every tenant. Returns the generation written."""
        lo = (lo_ns // MINUTE_NS) * MINUTE_NS
        hi = -(-hi_ns // MINUTE_NS) * MINUTE_NS
        db = self.store.database
        gen = self._generation()
        params = {"gen": gen, "lo0": lo, "hi0": hi}
        self.store.command(rollup_insert_sql(db), params, settings=_join_settings(self.store))
        self.store.command(marker_insert_sql(db), params)
        self.store.command(
            f"DELETE FROM {db}.{ROLLUP_TABLE} WHERE Minute >= toDateTime({{a:Int64}}) "
            f"AND Minute < toDateTime({{b:Int64}}) AND Generation < {{gen:UInt64}}",
            {"a": lo // NS, "b": hi // NS, "gen": gen})
        return gen

    def _backfill(self, now_ns: int) -> list[tuple[int, int]]:
        """Runs of whole minutes (ns) before the lookback that have spans and no marker, newest first."""
        db = self.store.database
        hi = (now_ns // MINUTE_NS - self.lookback_minutes) * MINUTE_NS
        lo = hi - int(self.backfill_hours * 3600) * NS
        if hi <= lo:
            return []
        r = self.store.query(
            f"SELECT m FROM (SELECT DISTINCT toUnixTimestamp(toStartOfMinute(Timestamp)) AS m FROM {db}.otel_traces "
            "WHERE Timestamp >= fromUnixTimestamp64Nano({lo:Int64}) AND Timestamp < fromUnixTimestamp64Nano({hi:Int64})) "
            f"WHERE m NOT IN (SELECT DISTINCT toUnixTimestamp(Minute) FROM {db}.{ROLLUP_TABLE} "
            "WHERE Protocol = '' AND Minute >= toDateTime({lo_s:Int64}) AND Minute < toDateTime({hi_s:Int64})) "
            "ORDER BY m DESC LIMIT {n:UInt32}",
            {"lo": lo, "hi": hi, "lo_s": lo // NS, "hi_s": hi // NS, "n": self.backfill_per_run})
        return [(a * NS, b * NS) for a, b in _runs(int(m) for (m,) in r.rows)]

    def run_once(self, now_ns: int | None = None) -> None:
        """Recompute the last ``lookback_minutes`` whole minutes before ``now_ns`` (and some backfill)."""
        now_ns = time.time_ns() if now_ns is None else int(now_ns)
        with self._lock:
            t = time.perf_counter()
            hi = (now_ns // MINUTE_NS) * MINUTE_NS
            self.compute(hi - self.lookback_minutes * MINUTE_NS, hi)
            if self.backfill_per_run > 0 and self.backfill_hours > 0 and self.runs % 10 == 0:
                for a, b in self._backfill(now_ns):
                    self.compute(a, b)
            self.runs += 1
            self.last_duration_s = time.perf_counter() - t

    async def run(self, stop: asyncio.Event) -> None:
        """Run ``run_once`` in a worker thread every ``interval_s`` until ``stop`` is set; errors are logged."""
        while not stop.is_set():
            try:
                await asyncio.to_thread(self.run_once, time.time_ns())
                self.last_error = None
            except Exception as e:  # noqa: BLE001 - a store hiccup must not end the job
                self.last_error = str(e)
                log.warning("edge rollup failed: %s", e)
            try:
                await asyncio.wait_for(stop.wait(), self.interval_s)
            except asyncio.TimeoutError:
                pass
