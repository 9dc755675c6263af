"""Service-graph edges from Istio's standard metrics, the way Kiali reads them (``../shared/reference/mesh.md``
§1.4, §5.3), and the merge with the span-derived edges.

The metrics arrive as a collector's Prometheus receiver forwards them: cumulative monotonic Sums
(``istio_requests_total``, ``istio_tcp_*``) and cumulative Histograms (``istio_request_duration_milliseconds``,
``istio_request_bytes``, ``istio_response_bytes``), one series per (resource, label set).

* **Increase over the window** (in ClickHouse, one pass with window functions): per series, the sum of the
  differences between consecutive points inside the window, the first one taken against the last point before
  it (looked up to ``LOOKBACK_NS`` back). A drop in value or a new ``StartTimeUnix`` is a reset: the point's whole
  value is new. A series whose first point is in the window counts its whole value when its start time is in the
  window too (it began there), else that point is only the baseline. Delta-temporality points are summed.
* **Kiali's reporter de-duplication**: both proxies report each request. Per requested namespace, in Kiali's
  order: source-reported requests into the namespace that never reached a workload, destination-reported
  requests into it, source-reported requests out of it; a series whose (metric, source node, destination node,
  code, flags, destination service) was already applied is skipped. So destination-reported values win and the
  source side adds only what the destination never saw (``UH``/``NR`` failures, calls to services outside the
  mesh). ``namespaces=None`` applies the same order to everything.
* **Per edge**: requests and response codes (``0`` -> ``-``; gRPC status for gRPC unless the HTTP code is
  4xx/5xx), flags and hosts per code; latency from ``istio_request_duration_milliseconds`` buckets
  (destination-reported first, as Kiali), quantiles by ``histogram_quantile``'s interpolation; request bytes
  from ``istio_request_bytes`` (source first), response bytes from ``istio_response_bytes`` (destination first);
  mTLS = destination-reported requests with ``connection_security_policy="mutual_tls"`` over all
  destination-reported ones; TCP: connections from ``istio_tcp_connections_opened_total``, bytes source -> dest
  from ``istio_tcp_received_bytes_total`` and back from ``istio_tcp_sent_bytes_total`` (Kiali's inversion,
  istio/istio#32399), mTLS weighted by bytes.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import replace
from typing import Iterable, Sequence

from meshscope.query.graph import histogram
from meshscope.query.graph.types import UNKNOWN, EdgeStats, NodeIdentity

NS = 1_000_000_000
LOOKBACK_NS = 10 * 60 * NS  # scrape intervals are 15-60 s; a baseline older than this is not looked for

REQUESTS = "istio_requests_total"
DURATION = "istio_request_duration_milliseconds"
REQ_BYTES = "istio_request_bytes"
RESP_BYTES = "istio_response_bytes"
TCP_SENT = "istio_tcp_sent_bytes_total"
TCP_RECEIVED = "istio_tcp_received_bytes_total"
TCP_OPENED = "istio_tcp_connections_opened_total"
COUNTERS = (REQUESTS, TCP_SENT, TCP_RECEIVED, TCP_OPENED)
HISTOGRAMS = (DURATION, REQ_BYTES, RESP_BYTES)

LABELS = ("reporter", "source_cluster", "source_workload_namespace", "source_workload", "source_canonical_service",
          "source_canonical_revision", "destination_cluster", "destination_service_namespace", "destination_service",
          "destination_service_name", "destination_workload_namespace", "destination_workload",
          "destination_canonical_service", "destination_canonical_revision", "request_protocol", "response_code",
          "grpc_response_status", "response_flags", "connection_security_policy", "source_principal",
          "destination_principal")
_SRC = ("source_cluster", "source_workload_namespace", "source_workload", "source_canonical_service",
        "source_canonical_revision")
_DST = ("destination_cluster", "destination_service_namespace", "destination_service_name",
        "destination_workload_namespace", "destination_workload", "destination_canonical_service",
        "destination_canonical_revision")
_IP = re.compile(r"^\d{1,3}(\.\d{1,3}){3}(:\d+)?$|^\[?[0-9a-fA-F:]+\]?(:\d+)?$")


def _counter_sql(db: str) -> str:
    labels = ", ".join(f"Attributes['{k}'] AS `{k}`" for k in LABELS)
    return f"""
SELECT metric, {', '.join(f'`{k}`' for k in LABELS)}, sum(inc) AS value
FROM (
    SELECT MetricName AS metric, {labels},
           multiIf(AggregationTemporality = 1, Value,
                   rn = 1, if(StartTimeUnix >= fromUnixTimestamp64Nano({{lo:Int64}}), Value, 0),
                   StartTimeUnix != prev_start OR Value < prev_v, Value,
                   Value - prev_v) AS inc
    FROM (
        SELECT MetricName, Attributes, TimeUnix, StartTimeUnix, AggregationTemporality, Value,
               row_number() OVER w AS rn, lagInFrame(StartTimeUnix) OVER w AS prev_start,
               lagInFrame(Value) OVER w AS prev_v
        FROM {db}.otel_metrics_sum
        WHERE TenantId = {{tenant:String}} AND MetricName IN ({', '.join(f"'{m}'" for m in COUNTERS)})
          AND TimeUnix > fromUnixTimestamp64Nano({{lo:Int64}} - {LOOKBACK_NS})
          AND TimeUnix <= fromUnixTimestamp64Nano({{hi:Int64}})
        WINDOW w AS (PARTITION BY ServiceName, MetricName, ResourceAttributes, Attributes ORDER BY TimeUnix
                     ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
    )
    WHERE TimeUnix > fromUnixTimestamp64Nano({{lo:Int64}})
)
GROUP BY metric, {', '.join(f'`{k}`' for k in LABELS)}
HAVING value != 0
"""


def _histogram_sql(db: str) -> str:
    labels = ", ".join(f"Attributes['{k}'] AS `{k}`" for k in LABELS)
    reset = ("StartTimeUnix != prev_start OR Count < prev_count OR length(bc) != length(prev_bc) "
             "OR arrayExists((a, b) -> a < b, bc, prev_bc)")
    return f"""
SELECT metric, {', '.join(f'`{k}`' for k in LABELS)}, bounds, sumForEach(inc_buckets) AS buckets,
       sum(inc_sum) AS total, sum(inc_count) AS n
FROM (
    SELECT MetricName AS metric, {labels}, ExplicitBounds AS bounds,
           multiIf(AggregationTemporality = 1, bc,
                   rn = 1, if(StartTimeUnix >= fromUnixTimestamp64Nano({{lo:Int64}}), bc,
                              arrayMap(x -> 0., bc)),
                   {reset}, bc,
                   arrayMap((a, b) -> a - b, bc, prev_bc)) AS inc_buckets,
           multiIf(AggregationTemporality = 1, Sum, rn = 1, if(StartTimeUnix >= fromUnixTimestamp64Nano({{lo:Int64}}),
                   Sum, 0), {reset}, Sum, Sum - prev_sum) AS inc_sum,
           multiIf(AggregationTemporality = 1, Count, rn = 1, if(StartTimeUnix >= fromUnixTimestamp64Nano({{lo:Int64}}),
                   Count, 0), {reset}, Count, Count - prev_count) AS inc_count
    FROM (
        SELECT MetricName, Attributes, TimeUnix, StartTimeUnix, AggregationTemporality,
               arrayMap(x -> toFloat64(x), BucketCounts) AS bc,
               ExplicitBounds, Sum, toFloat64(Count) AS Count,
               row_number() OVER w AS rn, lagInFrame(StartTimeUnix) OVER w AS prev_start,
               lagInFrame(bc) OVER w AS prev_bc, lagInFrame(Sum) OVER w AS prev_sum,
               lagInFrame(Count) OVER w AS prev_count
        FROM {db}.otel_metrics_histogram
        WHERE TenantId = {{tenant:String}} AND MetricName IN ({', '.join(f"'{m}'" for m in HISTOGRAMS)})
          AND TimeUnix > fromUnixTimestamp64Nano({{lo:Int64}} - {LOOKBACK_NS})
          AND TimeUnix <= fromUnixTimestamp64Nano({{hi:Int64}})
        WINDOW w AS (PARTITION BY ServiceName, MetricName, ResourceAttributes, Attributes ORDER BY TimeUnix
                     ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
    )
    WHERE TimeUnix > fromUnixTimestamp64Nano({{lo:Int64}})
)
GROUP BY metric, {', '.join(f'`{k}`' for k in LABELS)}, bounds
HAVING n != 0
"""


# ------------------------------------------------------------------------------------------------ identities

def _ok(v: str) -> bool:
    return bool(v) and v != UNKNOWN


def _gateway(*names: str) -> bool:
    return any("gateway" in (n or "").lower() for n in names)


def source_identity(s: dict) -> NodeIdentity | None:
    """Kiali's source node; None for bad telemetry (a namespace but neither workload nor app)."""
    ns, wl, app = s["source_workload_namespace"], s["source_workload"], s["source_canonical_service"]
    if not (_ok(ns) or _ok(wl) or _ok(app)):
        return NodeIdentity(kind="unknown")
    if _ok(ns) and not _ok(wl) and not _ok(app):
        return None
    return NodeIdentity(cluster=s["source_cluster"] or UNKNOWN, namespace=ns or UNKNOWN, workload=wl or UNKNOWN,
                        app=app or UNKNOWN, version=s["source_canonical_revision"] or UNKNOWN, kind="workload",
                        is_gateway=_gateway(wl, app))


def dest_identity(s: dict) -> NodeIdentity | None:
    cluster = s["destination_cluster"]
    if not _ok(cluster):
        cluster = s["source_cluster"] or UNKNOWN
    wl = s["destination_workload"]
    if _ok(wl):
        ns = s["destination_workload_namespace"]
        if not _ok(ns):
            ns = s["destination_service_namespace"] or UNKNOWN
        app = s["destination_canonical_service"]
        return NodeIdentity(cluster=cluster, namespace=ns, workload=wl, app=app if _ok(app) else UNKNOWN,
                            version=s["destination_canonical_revision"] or UNKNOWN, kind="workload",
                            is_gateway=_gateway(wl, app))
    svc = s["destination_service_name"] if _ok(s["destination_service_name"]) else s["destination_service"]
    if _IP.match(svc or ""):
        return None  # Kiali drops destinations that are only an IP
    ns = s["destination_service_namespace"] if _ok(s["destination_service_namespace"]) else UNKNOWN
    return NodeIdentity(cluster=cluster, namespace=ns, service=svc if _ok(svc) else UNKNOWN, kind="service",
                        virtual="egress" if svc in ("PassthroughCluster", "BlackHoleCluster") else "host")


def response_code(s: dict) -> str:
    if s["request_protocol"] == "tcp":
        return "-"
    code = s["response_code"] or "-"
    if code == "0":
        code = "-"
    if s["request_protocol"] == "grpc":
        grpc = s["grpc_response_status"]
        if grpc and grpc != UNKNOWN and not re.match(r"^[45]\d\d$", code):
            return grpc
    return code


def _protocol(s: dict, metric: str) -> str:
    if metric in (TCP_SENT, TCP_RECEIVED, TCP_OPENED):
        return "tcp"
    p = s["request_protocol"]
    return p if p in ("http", "grpc", "tcp") else "http"


# ------------------------------------------------------------------------------------------------ selections

def _edge_hash(metric: str, s: dict) -> tuple:
    return (metric, tuple(s[k] for k in _SRC), tuple(s[k] for k in _DST), response_code(s), s["response_flags"],
            s["destination_service"])


def fetch_metric_edges(store, tenant: str, start_ns: int, end_ns: int,
                       namespaces: Sequence[str] | None = None) -> list[EdgeStats]:
    """Edges from Istio's metrics over [start_ns, end_ns): counts over the window, origin ``metrics``."""
    if end_ns <= start_ns:
        return []
    params = {"tenant": tenant, "lo": int(start_ns), "hi": int(end_ns)}
    counters = store.query(_counter_sql(store.database), params).dicts()
    if not counters:
        return []
    hists = store.query(_histogram_sql(store.database), params).dicts()
    window = (end_ns - start_ns) / NS
    edges: dict[tuple, EdgeStats] = {}
    ids: dict[int, tuple] = {}

    def edge_of(s: dict, metric: str, create: bool = True) -> EdgeStats | None:
        key = id(s)
        if key not in ids:
            src, dst = source_identity(s), dest_identity(s)
            ids[key] = (src, dst)
        src, dst = ids[key]
        if src is None or dst is None:
            return None
        k = (src, dst, _protocol(s, metric))
        e = edges.get(k)
        if e is None and create:
            e = edges[k] = EdgeStats(source=src, dest=dst, protocol=k[2], window_seconds=window, origin="metrics")
        return e

    by_metric: dict[str, list[dict]] = defaultdict(list)
    for s in counters:
        by_metric[s["metric"]].append(s)
    # traffic: one pass per counter in Kiali's order, first series of each hash wins
    for metric in (REQUESTS, TCP_OPENED, TCP_RECEIVED, TCP_SENT):
        series = by_metric.get(metric, [])
        applied: set = set()  # within one selection the same hash adds up (Prometheus summed those series)
        for group in _grouped_selections(series, namespaces):
            for h, ss in group.items():
                if h in applied:
                    continue
                applied_now = False
                for s in ss:
                    e = edge_of(s, metric)
                    if e is None:
                        continue
                    applied_now = True
                    v = float(s["value"])
                    if metric in (REQUESTS, TCP_OPENED):
                        code, flag, host = response_code(s), s["response_flags"] or "-", s["destination_service"]
                        e.requests += v
                        e.responses[code] = e.responses.get(code, 0.0) + v
                        f = e.flags.setdefault(code, {})
                        f[flag] = f.get(flag, 0.0) + v
                        if _ok(host):
                            hh = e.hosts.setdefault(code, {})
                            hh[host] = hh.get(host, 0.0) + v
                    elif metric == TCP_RECEIVED:
                        e.bytes_sent += v
                    else:
                        e.bytes_received += v
                if applied_now:
                    applied.add(h)
    # mTLS and principals: destination-reported only (Kiali's security-policy appender)
    mtls: dict[tuple, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for metric in (REQUESTS, TCP_SENT):
        for s in by_metric.get(metric, []):
            if s["reporter"] != "destination":
                continue
            e = edge_of(s, metric, create=False)  # only edges the traffic pass kept
            if e is None or (metric == TCP_SENT) != (e.protocol == "tcp"):
                continue
            m = mtls[(e.source, e.dest, e.protocol)]
            v = float(s["value"])
            m[1] += v
            if s["connection_security_policy"] == "mutual_tls":
                m[0] += v
            if _ok(s["source_principal"]) and not e.source_principal:
                e.source_principal = s["source_principal"]
            if _ok(s["destination_principal"]) and not e.dest_principal:
                e.dest_principal = s["destination_principal"]
    for k, (yes, total) in mtls.items():
        e = edges.get(k)
        if e is not None and total > 0:
            e.mtls_requests, e.mtls_known = yes, total
    _apply_histograms(edges, hists, edge_of)
    out = [e for e in edges.values() if e.requests > 0 or e.bytes_sent > 0 or e.bytes_received > 0]
    out.sort(key=lambda e: (e.source.namespace, e.source.workload, e.dest.namespace, e.dest.workload,
                            e.dest.service, e.protocol))
    return out


def _grouped_selections(series: list[dict], namespaces) -> Iterable[dict]:
    """Each selection as {edge hash: [series]}, in Kiali's order."""
    if not namespaces:
        groups = [lambda s: s["reporter"] == "source" and s["destination_workload"] == UNKNOWN
                  and s["destination_workload_namespace"] == UNKNOWN,
                  lambda s: s["reporter"] == "destination",
                  lambda s: s["reporter"] == "source"]
        for pred in groups:
            yield _by_hash(s for s in series if pred(s))
        return
    for ns in namespaces:
        pat = re.compile(rf"^.+\.{re.escape(ns)}\..+$")
        yield _by_hash(s for s in series if s["reporter"] == "source" and s["source_workload_namespace"] != ns
                       and s["destination_workload_namespace"] == UNKNOWN and s["destination_workload"] == UNKNOWN
                       and pat.match(s["destination_service"] or ""))
        yield _by_hash(s for s in series if s["reporter"] == "destination"
                       and s["destination_workload_namespace"] == ns)
        yield _by_hash(s for s in series if s["reporter"] == "source" and s["source_workload_namespace"] == ns)


def _by_hash(series: Iterable[dict]) -> dict:
    out: dict = defaultdict(list)
    for s in series:
        out[_edge_hash(s["metric"], s)].append(s)
    return out


def _apply_histograms(edges: dict, hists: list[dict], edge_of) -> None:
    """Latency (destination-reported first) and request/response bytes (source first / destination first)."""
    acc: dict = defaultdict(lambda: {"destination": {}, "source": {}})
    for s in hists:
        if s["reporter"] not in ("source", "destination"):
            continue
        e = edge_of(s, s["metric"], create=False)
        if e is None:
            continue
        slot = acc[(e.source, e.dest, e.protocol, s["metric"])][s["reporter"]]
        bounds = tuple(float(b) for b in s["bounds"])
        b = slot.setdefault(bounds, [[0.0] * (len(bounds) + 1), 0.0, 0.0])
        for i, c in enumerate(s["buckets"][:len(bounds) + 1]):
            b[0][i] += float(c)
        b[1] += float(s["total"])
        b[2] += float(s["n"])
    for (src, dst, proto, metric), by_rep in acc.items():
        e = edges[(src, dst, proto)]
        order = ("source", "destination") if metric == REQ_BYTES else ("destination", "source")
        chosen = next((by_rep[r] for r in order if by_rep[r]), None)
        if not chosen:
            continue
        if metric == DURATION:
            bounds, (counts, total, n) = max(chosen.items(), key=lambda kv: kv[1][2])
            cum, run = [], 0.0
            for bound, c in zip((*bounds, float("inf")), counts):
                run += c
                cum.append((bound, run))
            lat = {}
            for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
                v = histogram.quantile(q, cum)
                if v is not None:
                    lat[name] = v
            if n > 0:
                lat["avg"] = total / n
            e.latency_ms, e.latency_buckets = lat, cum
        elif metric == REQ_BYTES:
            e.bytes_sent = sum(v[1] for v in chosen.values())
        elif metric == RESP_BYTES:
            e.bytes_received = sum(v[1] for v in chosen.values())


# ------------------------------------------------------------------------------------------------ merge

def _key(e: EdgeStats) -> tuple:
    return (e.source, e.dest, e.protocol)


def merge_edges(span_edges: Iterable[EdgeStats], metric_edges: Iterable[EdgeStats]) -> list[EdgeStats]:
    """One list: where both know an edge, the metrics' counts, codes, flags, hosts, bytes and mTLS win and the
    spans fill what the metrics lack (latency without a duration histogram, bytes, principals, mTLS); edges only
    one side knows are kept as they are (virtual nodes, unknown sources and ingress traffic come from spans)."""
    out: dict[tuple, EdgeStats] = {}
    for e in metric_edges:
        out[_key(e)] = e
    for s in span_edges:
        k = _key(s)
        m = out.get(k)
        if m is None:
            out[k] = s
            continue
        out[k] = replace(
            m,
            latency_ms=m.latency_ms or s.latency_ms,
            latency_buckets=m.latency_buckets or s.latency_buckets,
            bytes_sent=m.bytes_sent or s.bytes_sent,
            bytes_received=m.bytes_received or s.bytes_received,
            mtls_requests=m.mtls_requests if m.mtls_requests is not None else s.mtls_requests,
            mtls_known=m.mtls_known if m.mtls_requests is not None else s.mtls_known,
            source_principal=m.source_principal or s.source_principal,
            dest_principal=m.dest_principal or s.dest_principal,
            origin="metrics")
    return sorted(out.values(), key=lambda e: (e.source.namespace, e.source.workload, e.dest.namespace,
                                               e.dest.workload, e.dest.service, e.protocol))
