"""A synthetic Istio mesh with known truth, for the service-graph tests and the graph benchmark.

Topology (namespace ``shop``, cluster ``east``), one trace per request:

    client -> istio-ingressgateway (istio-system) -> frontend-v1 -> cart-v1 -> api.example.com (1 in 5, external)
                                                              \\-> orders-v1 (gRPC) -> postgresql (database)

* frontend -> cart: 1 request in 20 never reaches cart (Envoy ``503 UH`` at frontend's sidecar), and cart answers
  500 to 1 in 10 of the others; orders answers gRPC 14 (UNAVAILABLE) to 1 in 25 requests.
* Every workload runs a sidecar. ``sidecar_spans=False`` leaves the proxies' spans out (apps trace, proxies only
  report metrics); the gateway is Envoy only, so it always traces.
* ``sample_every=k`` keeps one block of 100 traces in k and marks every span with ``tracestate: ot=th:<threshold>``
  for p=1/k (k a power of two, so the threshold is exact); with ``requests`` a multiple of 100*k exactly 1/k of
  every kind of request is kept.
* Metrics: ``istio_requests_total``, ``istio_request_duration_milliseconds``, ``istio_request_bytes``,
  ``istio_response_bytes`` from both reporters, and TCP counters for the database, cumulative, scraped every
  15 s, with one counter reset (frontend's proxy restarts half-way).

``truth`` holds, per edge, what the graph must show: requests, codes, flags, the measured latencies.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

CLUSTER = "east"
NS = "shop"
MS = 1_000_000
S = 1_000_000_000
SERVER, CLIENT = 2, 3
ISTIO_BUCKETS = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000,
                 1800000, 3600000)
BYTES_BUCKETS = (1, 10, 100, 1000, 10000, 100000, 1000000, 10000000, 100000000, 1000000000)


def _set(v: AnyValue, py) -> None:
    if isinstance(py, bool):
        v.bool_value = py
    elif isinstance(py, int):
        v.int_value = py
    elif isinstance(py, float):
        v.double_value = py
    else:
        v.string_value = str(py)


@dataclass(frozen=True)
class Workload:
    name: str
    app: str
    version: str
    namespace: str = NS
    router: bool = False

    @property
    def pod(self) -> str:
        h = hashlib.sha1(self.name.encode()).hexdigest()
        return f"{self.name}-{h[:9]}-{h[9:14]}"

    @property
    def fqdn(self) -> str:
        return f"{self.app}.{self.namespace}.svc.cluster.local"

    @property
    def revision(self) -> str:
        return self.version or "latest"

    @property
    def principal(self) -> str:
        return f"spiffe://cluster.local/ns/{self.namespace}/sa/{self.app}"

    def node(self) -> tuple:
        return ("wl", self.namespace, self.name)


GATEWAY = Workload("istio-ingressgateway", "istio-ingressgateway", "", "istio-system", router=True)
FRONTEND = Workload("frontend-v1", "frontend", "v1")
CART = Workload("cart-v1", "cart", "v1")
ORDERS = Workload("orders-v1", "orders", "v1")
EXTERNAL = "api.example.com"
UNKNOWN_NODE = ("unknown",)
CART_SVC_NODE = ("svc", NS, "cart")
EXTERNAL_NODE = ("svc", NS, EXTERNAL)
DB_NODE = ("svc", NS, "postgresql/orders")  # spans name a database by db.system.name/db.namespace
DB_METRIC_NODE = ("svc", NS, "postgres")      # Istio names it by its Kubernetes service


@dataclass
class EdgeTruth:
    requests: int = 0
    codes: Counter = field(default_factory=Counter)
    flags: Counter = field(default_factory=Counter)
    latencies_ms: list = field(default_factory=list)


@dataclass
class Built:
    traces: list            # ExportTraceServiceRequest
    metrics: list           # ExportMetricsServiceRequest
    truth: dict             # (src node, dst node, protocol) -> EdgeTruth (logical requests, before sampling)
    metric_truth: dict      # same, as Kiali counts from the metrics (destination-reported first)
    start_ns: int
    end_ns: int
    spans: int = 0


class _Spans:
    def __init__(self, trace_state: str):
        self.by_resource: dict = defaultdict(list)
        self.trace_state = trace_state
        self.count = 0

    def add(self, resource: tuple, trace_id: bytes, span_id: bytes, parent: bytes, kind: int, name: str,
            start: int, end: int, attrs: dict, error: bool = False) -> None:
        self.by_resource[resource].append((trace_id, span_id, parent, kind, name, start, end, attrs, error))
        self.count += 1

    def requests(self, per_request: int = 20000) -> list:
        out = []
        for res, spans in self.by_resource.items():
            for i in range(0, len(spans), per_request):
                req = ExportTraceServiceRequest()
                rs = req.resource_spans.add()
                for k, v in res:
                    _set(rs.resource.attributes.add(key=k).value, v)
                ss = rs.scope_spans.add()
                ss.scope.name = "synthetic"
                for (tid, sid, pid, kind, name, start, end, attrs, error) in spans[i:i + per_request]:
                    sp = ss.spans.add(trace_id=tid, span_id=sid, parent_span_id=pid, kind=kind, name=name,
                                      start_time_unix_nano=start, end_time_unix_nano=end,
                                      trace_state=self.trace_state)
                    for k, v in attrs.items():
                        _set(sp.attributes.add(key=k).value, v)
                    if error:
                        sp.status.code = 2
                out.append(req)
        return out


def app_resource(w: Workload) -> tuple:
    return (("service.name", w.app), ("service.version", w.version), ("k8s.namespace.name", w.namespace),
            ("k8s.deployment.name", w.name), ("k8s.pod.name", w.pod), ("k8s.cluster.name", CLUSTER))


def proxy_resource(w: Workload) -> tuple:
    return (("service.name", f"{w.app}.{w.namespace}"),)


def envoy_tags(w: Workload, cluster: str, status: int, flags: str = "-", grpc: int | None = None,
               req_size: int = 0, resp_size: int = 0) -> dict:
    kind = "router" if w.router else "sidecar"
    a = {"node_id": f"{kind}~10.0.0.1~{w.pod}.{w.namespace}~{w.namespace}.svc.cluster.local", "component": "proxy",
         "upstream_cluster": cluster, "http.method": "GET", "http.status_code": str(status), "response_flags": flags,
         "request_size": str(req_size), "response_size": str(resp_size),
         "istio.canonical_service": w.app, "istio.canonical_revision": w.revision, "istio.namespace": w.namespace,
         "istio.cluster_id": CLUSTER, "istio.mesh_id": "cluster.local"}
    if grpc is not None:
        a["grpc.status_code"] = str(grpc)
    if status >= 500 or status == 0:
        a["error"] = "true"
    return a


def _ids(trace_no: int, salt: bytes) -> tuple[bytes, callable]:
    tid = hashlib.md5(salt + struct.pack(">Q", trace_no)).digest()
    counter = [0]

    def next_span() -> bytes:
        counter[0] += 1
        return hashlib.md5(tid + struct.pack(">I", counter[0])).digest()[:8]
    return tid, next_span


class _Metrics:
    """Cumulative Istio metrics per proxy: {(proxy, metric, labels)} -> value or histogram state."""

    def __init__(self) -> None:
        self.counters: dict = defaultdict(float)
        self.hists: dict = {}
        self.snapshots: list = []  # (time, start_time_per_proxy, copy of state)

    def count(self, proxy: Workload, metric: str, labels: dict, v: float = 1.0) -> None:
        self.counters[(proxy, metric, tuple(sorted(labels.items())))] += v

    def observe(self, proxy: Workload, metric: str, labels: dict, v: float, bounds) -> None:
        key = (proxy, metric, tuple(sorted(labels.items())))
        h = self.hists.get(key)
        if h is None:
            h = self.hists[key] = [[0] * (len(bounds) + 1), 0.0, 0, bounds]
        i = next((k for k, b in enumerate(bounds) if v <= b), len(bounds))
        h[0][i] += 1
        h[1] += v
        h[2] += 1

    def reset(self, proxy: Workload) -> None:
        for k in [k for k in self.counters if k[0] == proxy]:
            self.counters[k] = 0.0
        for k in [k for k in self.hists if k[0] == proxy]:
            h = self.hists[k]
            h[0], h[1], h[2] = [0] * len(h[0]), 0.0, 0

    def snapshot(self, t: int, starts: dict) -> None:
        self.snapshots.append((t, dict(starts), dict(self.counters),
                               {k: ([*h[0]], h[1], h[2], h[3]) for k, h in self.hists.items()}))

    def requests(self) -> list:
        out = []
        for t, starts, counters, hists in self.snapshots:
            req = ExportMetricsServiceRequest()
            by_proxy: dict = defaultdict(lambda: ({}, {}))
            for (proxy, metric, labels), v in counters.items():
                by_proxy[proxy][0].setdefault(metric, []).append((labels, v))
            for (proxy, metric, labels), h in hists.items():
                by_proxy[proxy][1].setdefault(metric, []).append((labels, h))
            for proxy, (cs, hs) in by_proxy.items():
                rm = req.resource_metrics.add()
                for k, v in (("service.name", "kubernetes-pods"), ("k8s.pod.name", proxy.pod),
                             ("k8s.namespace.name", proxy.namespace)):
                    _set(rm.resource.attributes.add(key=k).value, v)
                sm = rm.scope_metrics.add()
                sm.scope.name = "prometheusreceiver"
                for metric, series in cs.items():
                    m = sm.metrics.add(name=metric)
                    m.sum.aggregation_temporality = 2
                    m.sum.is_monotonic = True
                    for labels, v in series:
                        p = m.sum.data_points.add(start_time_unix_nano=starts[proxy], time_unix_nano=t, as_double=v)
                        for k, lv in labels:
                            _set(p.attributes.add(key=k).value, lv)
                for metric, series in hs.items():
                    m = sm.metrics.add(name=metric)
                    m.histogram.aggregation_temporality = 2
                    for labels, (counts, total, n, bounds) in series:
                        p = m.histogram.data_points.add(start_time_unix_nano=starts[proxy], time_unix_nano=t,
                                                        count=n, sum=total)
                        p.bucket_counts.extend(counts)
                        p.explicit_bounds.extend(bounds)
                        for k, lv in labels:
                            _set(p.attributes.add(key=k).value, lv)
            out.append(req)
        return out


def _labels(src: Workload, dst: Workload | None, svc: str, svc_name: str, reporter: str, code: int | str,
            flags: str, protocol: str = "http", grpc: str = "", mtls: bool = True) -> dict:
    d = {"reporter": reporter, "source_workload": src.name, "source_workload_namespace": src.namespace,
         "source_principal": src.principal if mtls else "unknown", "source_app": src.app,
         "source_version": src.version or "unknown", "source_canonical_service": src.app,
         "source_canonical_revision": src.revision, "source_cluster": CLUSTER,
         "destination_service": svc, "destination_service_name": svc_name, "destination_service_namespace": NS,
         "request_protocol": protocol, "response_flags": flags,
         "connection_security_policy": ("mutual_tls" if mtls else "none") if reporter == "destination" else "unknown"}
    if protocol != "tcp":
        d["response_code"] = str(code)
        d["grpc_response_status"] = grpc
    if dst is None:
        d.update({k: "unknown" for k in ("destination_workload", "destination_workload_namespace",
                                         "destination_principal", "destination_app", "destination_version",
                                         "destination_canonical_service", "destination_canonical_revision",
                                         "destination_cluster")})
    else:
        d.update({"destination_workload": dst.name, "destination_workload_namespace": dst.namespace,
                  "destination_principal": dst.principal if mtls else "unknown", "destination_app": dst.app,
                  "destination_version": dst.version, "destination_canonical_service": dst.app,
                  "destination_canonical_revision": dst.revision, "destination_cluster": CLUSTER})
    return d


def build(start_ns: int, requests: int, seconds: int = 180, sidecar_spans: bool = True, sample_every: int = 1,
          salt: bytes = b"mesh", with_metrics: bool = True, reset_at: float = 0.5) -> Built:
    """Lay out ``requests`` requests evenly over ``seconds`` from ``start_ns``; see the module docstring."""
    if sample_every & (sample_every - 1):
        raise ValueError("sample_every must be a power of two")
    th = "" if sample_every == 1 else format((1 << 56) - (1 << 56) // sample_every, "014x").rstrip("0")
    spans = _Spans(f"ot=th:{th or '0'}" if sample_every > 1 else "")
    truth: dict = defaultdict(EdgeTruth)
    mtruth: dict = defaultdict(EdgeTruth)
    met = _Metrics()
    proxies = [GATEWAY, FRONTEND, CART, ORDERS]
    starts = {p: start_ns - 3600 * S for p in proxies}
    step = seconds * S // requests
    scrape = 15 * S
    next_scrape = start_ns
    met.snapshot(start_ns - 5 * S, starts)  # a baseline point before the window
    reset_done = False

    def edge(src, dst, proto, code, flags, lat_ms, metric_too=True):
        e = truth[(src, dst, proto)]
        e.requests += 1
        e.codes[code] += 1
        e.flags[flags] += 1
        e.latencies_ms.append(lat_ms)

    def mreport(proxy, reporter, src, dst, svc, svc_name, code, flags, dur_ms, req_b, resp_b, protocol="http",
                grpc=""):
        labels = _labels(src, dst, svc, svc_name, reporter, code, flags, protocol, grpc)
        met.count(proxy, "istio_requests_total", labels)
        met.observe(proxy, "istio_request_duration_milliseconds", labels, dur_ms, ISTIO_BUCKETS)
        met.observe(proxy, "istio_request_bytes", labels, req_b, BYTES_BUCKETS)
        met.observe(proxy, "istio_response_bytes", labels, resp_b, BYTES_BUCKETS)

    for i in range(requests):
        t = start_ns + i * step
        while t >= next_scrape:
            met.snapshot(next_scrape, starts)
            next_scrape += scrape
        if not reset_done and t >= start_ns + int(seconds * reset_at * S):
            # frontend's proxy restarts: its counters start again from zero with a new start time
            met.snapshot(t - 1, starts)
            met.reset(FRONTEND)
            starts[FRONTEND] = t
            reset_done = True
        keep = (i // 100) % sample_every == 0  # whole blocks of 100: every fault pattern's period divides 100
        tid, nid = _ids(i, salt)
        sp = spans if keep else _Spans("")
        uh = i % 20 == 7
        cart_err = (not uh) and i % 10 == 3
        ext = i % 5 == 1 and not uh
        grpc_err = i % 25 == 11

        # latencies (ms), all distinct per request so quantiles are meaningful
        cart_app = 4.0 + (i % 37) * 0.5 + (30 if cart_err else 0)
        ext_ms = 60.0 + (i % 11) * 3
        cart_in = cart_app + 0.6 + (ext_ms + 1.0 if ext else 0)
        orders_app = 2.0 + (i % 13) * 0.25
        db_ms = 0.8 + (i % 7) * 0.2
        orders_in = orders_app + db_ms + 0.5

        # gateway root SERVER, then its upstream CLIENT to frontend
        g_srv, g_cli = nid(), nid()
        f_sc_srv, f_app_srv = nid(), nid()
        t_g = t
        t_f = t_g + MS // 2
        # frontend handler: call cart, then orders
        t_fa = t_f + MS // 5
        t_cart_call = t_fa + MS
        f_app_cli, f_sc_cli = nid(), nid()
        c_sc_srv, c_app_srv = nid(), nid()
        cart_status = 503 if uh else (500 if cart_err else 200)
        if uh:
            cart_call_ms = 0.3
        else:
            cart_call_ms = cart_in + 0.4
        t_c_in = t_cart_call + MS // 5
        # cart side
        if not uh:
            if sidecar_spans:
                sp.add(proxy_resource(CART), tid, c_sc_srv, f_sc_cli, SERVER, f"{CART.fqdn}:80/*", t_c_in,
                       t_c_in + int(cart_in * MS), envoy_tags(CART, "inbound|80||", cart_status, resp_size=400),
                       error=cart_status >= 500)
                cart_parent = c_sc_srv
            else:
                cart_parent = f_app_cli
            t_ca = t_c_in + MS // 10
            sp.add(app_resource(CART), tid, c_app_srv, cart_parent, SERVER, "GET /cart", t_ca,
                   t_ca + int(cart_app * MS) + (int((ext_ms + 1.0) * MS) if ext else 0),
                   {"http.request.method": "GET", "http.response.status_code": cart_status, "http.route": "/cart"},
                   error=cart_status >= 500)
            measured = cart_in if sidecar_spans else cart_app + (ext_ms + 1.0 if ext else 0)
            edge(FRONTEND.node(), CART.node(), "http", str(cart_status), "-", measured)
            mreport(CART, "destination", FRONTEND, CART, CART.fqdn, "cart", cart_status, "-", cart_in, 300, 400)
            mreport(FRONTEND, "source", FRONTEND, CART, CART.fqdn, "cart", cart_status, "-", cart_call_ms, 300, 400)
            if ext:
                e_app, e_sc = nid(), nid()
                t_e = t_ca + int(cart_app * MS)
                sp.add(app_resource(CART), tid, e_app, c_app_srv, CLIENT, "GET", t_e, t_e + int((ext_ms + 0.6) * MS),
                       {"http.request.method": "GET", "http.response.status_code": 200, "server.address": EXTERNAL,
                        "url.full": f"https://{EXTERNAL}/v1/x"})
                if sidecar_spans:
                    sp.add(proxy_resource(CART), tid, e_sc, e_app, CLIENT, f"{EXTERNAL}:443/*", t_e + MS // 10,
                           t_e + MS // 10 + int(ext_ms * MS), envoy_tags(CART, f"outbound|443||{EXTERNAL}", 200,
                                                                       resp_size=900))
                edge(CART.node(), EXTERNAL_NODE, "http", "200", "-", ext_ms if sidecar_spans else ext_ms + 0.6)
                mreport(CART, "source", CART, None, EXTERNAL, EXTERNAL, 200, "-", ext_ms, 200, 900)
        else:
            edge(FRONTEND.node(), CART_SVC_NODE, "http", "503", "UH" if sidecar_spans else "-",
                 cart_call_ms if sidecar_spans else cart_call_ms + 0.3)
            mreport(FRONTEND, "source", FRONTEND, None, CART.fqdn, "cart", 503, "UH", cart_call_ms, 300, 19)
        # frontend's client spans towards cart
        sp.add(app_resource(FRONTEND), tid, f_app_cli, f_app_srv, CLIENT, "GET", t_cart_call - MS // 10,
               t_cart_call + int((cart_call_ms + 0.2) * MS),
               {"http.request.method": "GET", "http.response.status_code": cart_status, "server.address": "cart"},
               error=cart_status >= 400)
        if sidecar_spans:
            sp.add(proxy_resource(FRONTEND), tid, f_sc_cli, f_app_cli, CLIENT, f"{CART.fqdn}:80/*", t_cart_call,
                   t_cart_call + int(cart_call_ms * MS),
                   envoy_tags(FRONTEND, f"outbound|80||{CART.fqdn}", cart_status, "UH" if uh else "-"),
                   error=cart_status >= 500)
        # frontend -> orders, gRPC
        t_o_call = t_cart_call + int((cart_call_ms + 1.0) * MS)
        o_app_cli, o_sc_cli, o_sc_srv, o_app_srv, db_cli = nid(), nid(), nid(), nid(), nid()
        g_code = 14 if grpc_err else 0
        o_call_ms = orders_in + 0.4
        sp.add(app_resource(FRONTEND), tid, o_app_cli, f_app_srv, CLIENT, "orders.Orders/Get", t_o_call - MS // 10,
               t_o_call + int((o_call_ms + 0.2) * MS),
               {"rpc.system.name": "grpc", "rpc.method": "orders.Orders/Get", "rpc.grpc.status_code": g_code,
                "server.address": "orders"}, error=grpc_err)
        if sidecar_spans:
            sp.add(proxy_resource(FRONTEND), tid, o_sc_cli, o_app_cli, CLIENT, f"{ORDERS.fqdn}:50051/*", t_o_call,
                   t_o_call + int(o_call_ms * MS),
                   envoy_tags(FRONTEND, f"outbound|50051||{ORDERS.fqdn}", 200, grpc=g_code), error=grpc_err)
        t_o_in = t_o_call + MS // 5
        if sidecar_spans:
            sp.add(proxy_resource(ORDERS), tid, o_sc_srv, o_sc_cli, SERVER, f"{ORDERS.fqdn}:50051/*", t_o_in,
                   t_o_in + int(orders_in * MS), envoy_tags(ORDERS, "inbound|50051||", 200, grpc=g_code,
                                                            resp_size=120), error=grpc_err)
        t_oa = t_o_in + MS // 10
        oa_ms = orders_app + db_ms
        sp.add(app_resource(ORDERS), tid, o_app_srv, o_sc_srv if sidecar_spans else o_app_cli, SERVER,
               "orders.Orders/Get", t_oa, t_oa + int(oa_ms * MS),
               {"rpc.system.name": "grpc", "rpc.method": "orders.Orders/Get", "rpc.grpc.status_code": g_code},
               error=grpc_err)
        edge(FRONTEND.node(), ORDERS.node(), "grpc", str(g_code), "-", orders_in if sidecar_spans else oa_ms)
        mreport(ORDERS, "destination", FRONTEND, ORDERS, ORDERS.fqdn, "orders", 200, "-", orders_in, 150, 120,
                "grpc", str(g_code))
        mreport(FRONTEND, "source", FRONTEND, ORDERS, ORDERS.fqdn, "orders", 200, "-", o_call_ms, 150, 120,
                "grpc", str(g_code))
        # orders -> postgresql (no sidecar spans for TCP: the app's CLIENT span only)
        t_db = t_oa + int(orders_app * MS)
        sp.add(app_resource(ORDERS), tid, db_cli, o_app_srv, CLIENT, "SELECT orders", t_db, t_db + int(db_ms * MS),
               {"db.system.name": "postgresql", "db.namespace": "orders", "server.address": "postgres",
                "db.operation.name": "SELECT"})
        edge(ORDERS.node(), DB_NODE, "tcp", "-", "-", db_ms)
        tcp = _labels(ORDERS, None, f"postgres.{NS}.svc.cluster.local", "postgres", "source", "", "-", "tcp")
        met.count(ORDERS, "istio_tcp_received_bytes_total", tcp, 180)
        met.count(ORDERS, "istio_tcp_sent_bytes_total", tcp, 320)
        if i == 0:
            met.count(ORDERS, "istio_tcp_connections_opened_total", tcp, 1)

        # the frontend server spans and the gateway
        f_in_end = t_o_call + int((o_call_ms + 0.6) * MS)
        f_in_ms = (f_in_end - t_f) / MS
        if sidecar_spans:
            sp.add(proxy_resource(FRONTEND), tid, f_sc_srv, g_cli, SERVER, f"{FRONTEND.fqdn}:80/*", t_f, f_in_end,
                   envoy_tags(FRONTEND, "inbound|80||", 200, resp_size=5000))
        sp.add(app_resource(FRONTEND), tid, f_app_srv, f_sc_srv if sidecar_spans else g_cli, SERVER, "GET /",
               t_fa, f_in_end - MS // 10, {"http.request.method": "GET", "http.response.status_code": 200})
        fa_ms = (f_in_end - MS // 10 - t_fa) / MS
        g_cli_end = f_in_end + MS // 5
        sp.add(proxy_resource(GATEWAY), tid, g_cli, g_srv, CLIENT, f"{FRONTEND.fqdn}:80/*", t_g + MS // 4,
               g_cli_end, envoy_tags(GATEWAY, f"outbound|80||{FRONTEND.fqdn}", 200, resp_size=5000))
        g_end = g_cli_end + MS // 5
        g_ms = (g_end - t_g) / MS
        sp.add(proxy_resource(GATEWAY), tid, g_srv, b"", SERVER, f"{FRONTEND.fqdn}:80/*", t_g, g_end,
               envoy_tags(GATEWAY, f"outbound|80||{FRONTEND.fqdn}", 200, resp_size=5000))
        edge(GATEWAY.node(), FRONTEND.node(), "http", "200", "-", f_in_ms if sidecar_spans else fa_ms)
        edge(UNKNOWN_NODE, GATEWAY.node(), "http", "200", "-", g_ms)
        mreport(FRONTEND, "destination", GATEWAY, FRONTEND, FRONTEND.fqdn, "frontend", 200, "-", f_in_ms, 700, 5000)
        mreport(GATEWAY, "source", GATEWAY, FRONTEND, FRONTEND.fqdn, "frontend", 200, "-",
                (g_cli_end - t_g - MS // 4) / MS, 700, 5000)

    met.snapshot(start_ns + seconds * S + 5 * S, starts)
    # the baseline scrape before the window shows every series at zero (as a scrape after the proxies started)
    t0, st0, _, _ = met.snapshots[0]
    met.snapshots[0] = (t0, st0, {k: 0.0 for k in met.counters},
                        {k: ([0] * len(h[0]), 0.0, 0, h[3]) for k, h in met.hists.items()})
    # What Kiali counts from the metrics: every request once (destination-reported), plus source-only series.
    for (src, dst, proto), e in truth.items():
        if src == UNKNOWN_NODE:
            continue  # gateways report no downstream side
        d = DB_METRIC_NODE if dst == DB_NODE else dst
        m = mtruth[(src, d, proto)]
        m.requests += e.requests if proto != "tcp" else 0
        m.codes.update(e.codes if proto != "tcp" else {})
        if dst == CART_SVC_NODE:
            m.flags.update({"UH": e.requests})
        if proto == "tcp":
            m.requests = 1  # tcp: connections opened
    return Built(traces=spans.requests(), metrics=met.requests() if with_metrics else [], truth=dict(truth),
                 metric_truth=dict(mtruth), start_ns=start_ns, end_ns=start_ns + seconds * S + 10 * S,
                 spans=spans.count)


def percentile(values: list, q: float) -> float:
    """Nearest-rank percentile: the truth a histogram quantile is compared with."""
    v = sorted(values)
    return v[max(0, math.ceil(q * len(v)) - 1)]
