"""``meshscope demo``: a simulated Istio mesh (bookinfo) sending real OTLP through the OpenTelemetry SDK.

What a real mesh sends, per simulated request (one W3C trace):

* app spans (SERVER on entry, CLIENT per outgoing call) from one TracerProvider per workload, resource
  ``service.name``/``service.version``/``k8s.*`` as an OTel-instrumented app would send them;
* Envoy sidecar spans of every hop (caller sidecar CLIENT, callee sidecar SERVER; the ingress gateway's
  SERVER span and its upstream CLIENT span) from one TracerProvider per proxy, ``service.name`` =
  ``<app>.<namespace>`` (Istio's default tracing service name), Envoy's tags as string attributes
  (``../shared/reference/mesh.md`` §2.2). Chain per hop: app CLIENT -> caller sidecar CLIENT -> callee
  sidecar SERVER -> callee app SERVER;
* Istio OpenTelemetry access logs (envoyOtelAls, §2.3): body in Istio's default text format, attributes
  ``pod``/``namespace``/``cluster``/``mesh`` (Istio's sample labels), trace/span id of the proxy's span, no
  severity and an empty resource, from both the source and the destination proxy of each request;
* app logs emitted inside the app span (trace id set, severity set);
* Istio standard metrics as a collector's Prometheus receiver forwards them (§2.1): ``istio_requests_total``,
  ``istio_request_duration_milliseconds`` (Istio's buckets), ``istio_request_bytes``,
  ``istio_response_bytes`` from both reporters, TCP byte/connection counters towards the database, all
  cumulative; one MeterProvider per proxy (its scrape target as resource), all read and forwarded in one
  OTLP request every ``export_interval`` seconds, as a collector scraping the mesh would.

Export: every provider keeps its own resource, but spans and logs leave through one BatchSpanProcessor and
one BatchLogRecordProcessor (OTLP groups a batch by resource), like a node-local collector agent, so the
receiver sees a few requests per second rather than a few per proxy.

Topology: client -> istio-ingressgateway (istio-system) -> productpage-v1 -> details-v1 (-> external API
``api.books.example.com`` through an ``outbound|443||`` cluster, TLS originated by the sidecar, on cache
misses) and productpage -> reviews-v1|v2|v3 (random) ; reviews-v2/v3 -> ratings-v1 -> mongodb (or mysql),
an uninstrumented peer without a sidecar (app CLIENT span with ``db.*`` only).

Faults: ``error_rate`` of ratings calls fail with 503. Three in four are app failures (the database
times out, ratings answers 503, the caller's sidecar retries twice as Istio's default retry policy does,
then gives up with ``URX``); one in four are ``UH`` (no healthy upstream: the callee never sees the request,
so only the source proxy reports it, with an unknown destination workload). reviews degrades (200 with a
"ratings unavailable" field and a warning log) instead of failing. ``latency_ms`` is added to the
handler of ``latency_target`` (a workload like ``reviews-v3`` or an app like ``reviews``).

Time is simulated: each request is laid out in memory with consistent timestamps (callee inside caller,
sidecar overhead 0.3-1 ms per side), ending "now", then sent; nothing sleeps for simulated latencies.
Requests arrive as a Poisson process at ``rate`` per second of wall-clock time.

The OpenTelemetry SDK is imported lazily, so ``meshscope`` works without it until a demo runs.
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

log = logging.getLogger("meshscope.demo")

# Istio's default buckets (istio/proxy stats plugin).
ISTIO_DURATION_BUCKETS = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000,
                          600000, 1800000, 3600000)
ISTIO_BYTES_BUCKETS = (1, 10, 100, 1000, 10000, 100000, 1000000, 10000000, 100000000, 1000000000)

# Scope names as they arrive: the collector's Prometheus receiver for scraped Istio metrics, Envoy's tracer
# and access logger for proxy data.
PROM_SCOPE = "github.com/open-telemetry/opentelemetry-collector-contrib/receiver/prometheusreceiver"
ENVOY_TRACER_SCOPE = "envoy.tracers.opentelemetry"
ENVOY_ALS_SCOPE = "envoy.access_loggers.open_telemetry"

_HASH_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # Kubernetes' safe-encoding alphabet for generated names
_RETRY_ATTEMPTS = 3  # Istio's default retry policy: 2 retries (connect-failure, ..., retriable 503)

SEVERITY = {"INFO": 9, "WARN": 13, "ERROR": 17}


@dataclass
class DemoOptions:
    otlp: str = "http://127.0.0.1:4318"
    duration: float = 0.0          # seconds; 0 = until stopped
    rate: float = 5.0              # requests/s at the ingress gateway
    error_rate: float = 0.1        # fraction of ratings calls answered 503
    latency_ms: float = 50.0       # extra latency injected into latency_target's handler
    latency_target: str = "reviews-v3"
    mtls: bool = True
    seed: int | None = None
    db: str = "mongodb"            # mongodb | mysql
    namespace: str = "bookinfo"
    cluster: str = "Kubernetes"    # Istio's default cluster id
    mesh_id: str = "cluster.local"
    external_host: str = "api.books.example.com"
    tenant: str | None = None      # X-Scope-OrgID header, if set
    export_interval: float = 2.0   # metric export period (s)
    span_delay: float = 1.0        # batch processor schedule delay (s) for spans and logs
    timeout: float = 10.0          # per export request (s)


@dataclass
class DemoStats:
    requests: int = 0
    spans: int = 0                 # spans created
    logs: int = 0                  # log records emitted (access logs + app logs)
    access_logs: int = 0
    metric_points: int = 0         # measurements recorded
    ratings_errors: int = 0        # ratings calls answered 503 (as the caller saw them)
    spans_exported: int = 0        # acknowledged by the receiver
    logs_exported: int = 0
    metric_points_exported: int = 0
    export_failures: int = 0       # export calls that failed (after the exporter's own retries)
    elapsed: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, name: str, n: int) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)

    def summary(self) -> str:
        return (f"{self.requests} requests in {self.elapsed:.1f}s: {self.spans} spans ({self.spans_exported} "
                f"exported), {self.logs} logs ({self.logs_exported} exported), {self.metric_points} metric "
                f"measurements ({self.metric_points_exported} points exported), {self.ratings_errors} ratings "
                f"errors, {self.export_failures} failed exports")


# ---------------------------------------------------------------------------------------------------------
# CLI glue
# ---------------------------------------------------------------------------------------------------------

def _positive(text: str) -> float:
    v = float(text)
    if not v > 0 or math.isinf(v):
        raise argparse.ArgumentTypeError(f"must be a positive number: {text}")
    return v


def _non_negative(text: str) -> float:
    v = float(text)
    if not v >= 0 or math.isinf(v):
        raise argparse.ArgumentTypeError(f"must be zero or positive: {text}")
    return v


def _fraction(text: str) -> float:
    v = float(text)
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1: {text}")
    return v


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    d = DemoOptions()
    parser.add_argument("--otlp", default=d.otlp, metavar="URL",
                        help=f"OTLP/HTTP base URL to send to (default {d.otlp})")
    parser.add_argument("--duration", type=_non_negative, default=d.duration, metavar="S",
                        help="seconds to run; 0 = until stopped (default 0)")
    parser.add_argument("--rate", type=_positive, default=d.rate, metavar="R",
                        help=f"requests per second at the ingress gateway (default {d.rate:g})")
    parser.add_argument("--error-rate", type=_fraction, default=d.error_rate, metavar="F",
                        help=f"fraction of ratings calls answered 503 (default {d.error_rate:g})")
    parser.add_argument("--latency-ms", type=_non_negative, default=d.latency_ms, metavar="MS",
                        help=f"extra latency injected into --latency-target (default {d.latency_ms:g})")
    parser.add_argument("--latency-target", default=d.latency_target, metavar="WORKLOAD",
                        help="workload (reviews-v3) or app (reviews) that gets --latency-ms "
                             f"(default {d.latency_target})")
    parser.add_argument("--mtls", action=argparse.BooleanOptionalAction, default=d.mtls,
                        help="simulate Istio mutual TLS between sidecars (default on)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    parser.add_argument("--db", choices=("mongodb", "mysql"), default=d.db, help="ratings' database (default mongodb)")
    parser.add_argument("--tenant", default=None, help="send X-Scope-OrgID: TENANT")


def options_from_args(args: argparse.Namespace) -> DemoOptions:
    d = DemoOptions()
    return DemoOptions(
        otlp=getattr(args, "otlp", d.otlp), duration=getattr(args, "duration", d.duration),
        rate=getattr(args, "rate", d.rate), error_rate=getattr(args, "error_rate", d.error_rate),
        latency_ms=getattr(args, "latency_ms", d.latency_ms),
        latency_target=getattr(args, "latency_target", d.latency_target), mtls=getattr(args, "mtls", d.mtls),
        seed=getattr(args, "seed", d.seed), db=getattr(args, "db", d.db), tenant=getattr(args, "tenant", d.tenant),
    )


# ---------------------------------------------------------------------------------------------------------
# The mesh
# ---------------------------------------------------------------------------------------------------------

@dataclass(eq=False)
class Workload:
    name: str                 # deployment: reviews-v2
    app: str                  # app label / canonical service: reviews
    version: str              # version label; "" for the gateway (canonical revision "latest")
    namespace: str
    pod: str
    ip: str
    service_account: str
    router: bool = False      # the ingress gateway (Envoy "router" node type)
    user_agent: str = ""      # what the app's HTTP client sends
    # filled when the providers exist
    app_tracer: Any = None
    app_logger: Any = None
    proxy_tracer: Any = None
    proxy_logger: Any = None
    inst: Any = None          # _Instruments of this proxy
    db_connected: bool = False

    @property
    def canonical_revision(self) -> str:
        return self.version or "latest"

    @property
    def node_id(self) -> str:
        kind = "router" if self.router else "sidecar"
        return f"{kind}~{self.ip}~{self.pod}.{self.namespace}~{self.namespace}.svc.cluster.local"

    @property
    def proxy_service_name(self) -> str:
        return f"{self.app}.{self.namespace}"

    @property
    def spiffe(self) -> str:
        return f"spiffe://cluster.local/ns/{self.namespace}/sa/{self.service_account}"


@dataclass(eq=False)
class Service:
    name: str
    namespace: str
    port: int
    cluster_ip: str
    workloads: list[Workload]
    route: str                # app route template, e.g. /reviews/{id}
    path_prefix: str          # /reviews/

    @property
    def fqdn(self) -> str:
        return f"{self.name}.{self.namespace}.svc.cluster.local"

    @property
    def outbound(self) -> str:
        return f"outbound|{self.port}||{self.fqdn}"

    @property
    def operation(self) -> str:
        return f"{self.fqdn}:{self.port}/*"


class _Instruments:
    __slots__ = ("requests", "duration", "req_bytes", "resp_bytes", "tcp_sent", "tcp_received", "tcp_opened",
                 "tcp_closed")

    def __init__(self, meter):
        self.requests = meter.create_counter("istio_requests_total")
        self.duration = meter.create_histogram("istio_request_duration_milliseconds")
        self.req_bytes = meter.create_histogram("istio_request_bytes")
        self.resp_bytes = meter.create_histogram("istio_response_bytes")
        self.tcp_sent = meter.create_counter("istio_tcp_sent_bytes_total")
        self.tcp_received = meter.create_counter("istio_tcp_received_bytes_total")
        self.tcp_opened = meter.create_counter("istio_tcp_connections_opened_total")
        self.tcp_closed = meter.create_counter("istio_tcp_connections_closed_total")


def _pod_name(rng: random.Random, workload: str) -> str:
    rs = "".join(rng.choice(_HASH_ALPHABET) for _ in range(rng.choice((9, 10))))
    pod = "".join(rng.choice(_HASH_ALPHABET) for _ in range(5))
    return f"{workload}-{rs}-{pod}"


class Mesh:
    """Bookinfo's workloads and services (no providers: see ``_Telemetry``)."""

    def __init__(self, opts: DemoOptions, rng: random.Random):
        ns = opts.namespace
        node = iter(range(1, 1000))

        def wl(app: str, version: str, ua: str) -> Workload:
            name = f"{app}-{version}"
            ip = f"10.44.{next(node) % 3 + 1}.{rng.randint(2, 250)}"
            return Workload(name, app, version, ns, _pod_name(rng, name), ip, f"bookinfo-{app}", user_agent=ua)

        self.gateway = Workload("istio-ingressgateway", "istio-ingressgateway", "", "istio-system",
                                _pod_name(rng, "istio-ingressgateway"), f"10.44.0.{rng.randint(2, 250)}",
                                "istio-ingressgateway-service-account", router=True)
        self.productpage = wl("productpage", "v1", "python-requests/2.31.0")
        self.details = wl("details", "v1", "Ruby")
        self.reviews = [wl("reviews", v, "Apache-CXF/3.1.18") for v in ("v1", "v2", "v3")]
        self.ratings = wl("ratings", "v1", "")
        self.workloads = [self.gateway, self.productpage, self.details, *self.reviews, self.ratings]
        self.apps = [w for w in self.workloads if not w.router]

        def svc(name: str, wls: list[Workload], route: str, prefix: str) -> Service:
            return Service(name, ns, 9080, f"10.96.{rng.randint(0, 255)}.{rng.randint(2, 250)}", wls, route, prefix)

        self.svc_productpage = svc("productpage", [self.productpage], "/productpage", "/productpage")
        self.svc_details = svc("details", [self.details], "/details/{id}", "/details/")
        self.svc_reviews = svc("reviews", self.reviews, "/reviews/{id}", "/reviews/")
        self.svc_ratings = svc("ratings", [self.ratings], "/ratings/{id}", "/ratings/")
        self.external_ip = f"198.51.100.{rng.randint(2, 250)}"
        if opts.db == "mysql":
            self.db_service = Service("mysqldb", ns, 3306, f"10.96.{rng.randint(0, 255)}.{rng.randint(2, 250)}", [],
                                      "", "")
        else:
            self.db_service = Service("mongodb", ns, 27017, f"10.96.{rng.randint(0, 255)}.{rng.randint(2, 250)}", [],
                                      "", "")


# ---------------------------------------------------------------------------------------------------------
# One simulated request, laid out in memory (times in ms relative to the request's start)
# ---------------------------------------------------------------------------------------------------------

class _SpanRec:
    __slots__ = ("tracer", "parent", "name", "kind", "start", "end", "attrs", "error", "message", "events")

    def __init__(self, tracer, parent, name, kind, start, attrs):
        self.tracer, self.parent, self.name, self.kind, self.start = tracer, parent, name, kind, start
        self.end, self.attrs, self.error, self.message, self.events = start, attrs, False, None, None


class _LogRec:
    __slots__ = ("logger", "span", "ts", "severity", "body", "attrs", "access")

    def __init__(self, logger, span, ts, severity, body, attrs, access):
        self.logger, self.span, self.ts, self.severity = logger, span, ts, severity
        self.body, self.attrs, self.access = body, attrs, access


@dataclass
class _Hop:
    """Per-request facts every hop shares."""
    request_id: str
    client_ip: str
    client_ua: str
    product_id: int


class _Sim:
    """Simulates requests: ``request()`` returns span and log records; metrics are recorded on the spot."""

    def __init__(self, opts: DemoOptions, mesh: Mesh, rng: random.Random, stats: DemoStats, kinds):
        self.opts, self.mesh, self.rng, self.stats = opts, mesh, rng, stats
        self.CLIENT, self.SERVER = kinds
        self.spans: list[_SpanRec] = []
        self.logs: list[_LogRec] = []
        self._src_labels: dict[Workload, dict] = {}
        self._dst_labels: dict[tuple, dict] = {}

    # -- helpers -------------------------------------------------------------------------------------------
    def u(self, a: float, b: float) -> float:
        return self.rng.uniform(a, b)

    def ln(self, median: float, sigma: float = 0.35) -> float:
        return median * self.rng.lognormvariate(0.0, sigma)

    def port(self) -> int:
        return self.rng.randint(32768, 60999)

    def net(self) -> float:
        """One-way pod-to-pod latency, with mTLS framing when on."""
        return self.u(0.12, 0.4) + (0.05 if self.opts.mtls else 0.0)

    def extra_latency(self, w: Workload) -> float:
        t = self.opts.latency_target
        return self.opts.latency_ms if t and (t == w.name or t == w.app) else 0.0

    def span(self, tracer, parent: int | None, name: str, kind, start: float, attrs: dict | None = None) -> int:
        self.spans.append(_SpanRec(tracer, parent, name, kind, start, attrs if attrs is not None else {}))
        return len(self.spans) - 1

    def finish(self, idx: int, end: float, attrs: dict | None = None, error: bool = False,
               message: str | None = None) -> None:
        rec = self.spans[idx]
        rec.end = end
        if attrs:
            rec.attrs.update(attrs)
        rec.error, rec.message = error, message

    def app_log(self, w: Workload, span: int, ts: float, severity: str, body: str, attrs: dict | None = None) -> None:
        self.logs.append(_LogRec(w.app_logger, span, ts, severity, body, attrs, False))

    def access_log(self, proxy: Workload, span: int, start: float, rest: str) -> None:
        attrs = {"pod": proxy.pod, "namespace": proxy.namespace, "cluster": self.opts.cluster,
                 "mesh": self.opts.mesh_id}
        self.logs.append(_LogRec(proxy.proxy_logger, span, start, None, rest, attrs, True))

    # -- Envoy attributes and Istio labels -----------------------------------------------------------------
    def envoy_tags(self, proxy: Workload, upstream_cluster: str, url: str, status: int, flags: str, hop: _Hop,
                   ua: str, req_size: int, resp_size: int, peer: str, upstream_address: str | None) -> dict:
        a = {
            "node_id": proxy.node_id, "component": "proxy",
            "upstream_cluster": upstream_cluster, "upstream_cluster.name": upstream_cluster,
            "http.method": "GET", "http.url": url, "http.protocol": "HTTP/1.1", "http.status_code": str(status),
            "response_flags": flags, "guid:x-request-id": hop.request_id, "downstream_cluster": "-",
            "user_agent": ua or "-", "request_size": str(req_size), "response_size": str(resp_size),
            "peer.address": peer,
            "istio.canonical_service": proxy.app, "istio.canonical_revision": proxy.canonical_revision,
            "istio.namespace": proxy.namespace, "istio.mesh_id": self.opts.mesh_id,
            "istio.cluster_id": self.opts.cluster,
        }
        if upstream_address:
            a["upstream_address"] = upstream_address
        if status >= 500 or status == 0:
            a["error"] = "true"
        return a

    def src_labels(self, w: Workload) -> dict:
        d = self._src_labels.get(w)
        if d is None:
            d = self._src_labels[w] = {
                "source_workload": w.name, "source_workload_namespace": w.namespace,
                "source_principal": w.spiffe if self.opts.mtls else "unknown",
                "source_app": w.app, "source_version": w.version or "unknown",
                "source_canonical_service": w.app, "source_canonical_revision": w.canonical_revision,
                "source_cluster": self.opts.cluster,
            }
        return d

    def dst_labels(self, w: Workload | None, service: str, name: str, namespace: str) -> dict:
        key = (w, service)
        d = self._dst_labels.get(key)
        if d is None:
            if w is None:
                d = {"destination_workload": "unknown", "destination_workload_namespace": "unknown",
                     "destination_principal": "unknown", "destination_app": "unknown",
                     "destination_version": "unknown", "destination_canonical_service": "unknown",
                     "destination_canonical_revision": "unknown", "destination_cluster": "unknown"}
            else:
                d = {"destination_workload": w.name, "destination_workload_namespace": w.namespace,
                     "destination_principal": w.spiffe if self.opts.mtls else "unknown",
                     "destination_app": w.app, "destination_version": w.version or "unknown",
                     "destination_canonical_service": w.app,
                     "destination_canonical_revision": w.canonical_revision,
                     "destination_cluster": self.opts.cluster}
            d.update({"destination_service": service, "destination_service_name": name,
                      "destination_service_namespace": namespace})
            self._dst_labels[key] = d
        return d

    def report(self, proxy: Workload, reporter: str, src: Workload, dst: dict, status: int, flags: str,
               duration_ms: float, req_bytes: int, resp_bytes: int, mtls_peer: bool) -> None:
        if reporter == "destination":
            policy = "mutual_tls" if self.opts.mtls and mtls_peer else "none"
        else:
            policy = "unknown"
        labels = {"reporter": reporter, **self.src_labels(src), **dst, "request_protocol": "http",
                  "response_code": str(status), "grpc_response_status": "", "response_flags": flags,
                  "connection_security_policy": policy}
        inst = proxy.inst
        inst.requests.add(1, labels)
        inst.duration.record(duration_ms, labels)
        inst.req_bytes.record(req_bytes, labels)
        inst.resp_bytes.record(resp_bytes, labels)
        self.stats.metric_points += 4

    # -- the request ---------------------------------------------------------------------------------------
    def request(self) -> None:
        rng, m = self.rng, self.mesh
        self.spans, self.logs = [], []
        hop = _Hop(
            request_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            client_ip=f"203.0.113.{rng.randint(1, 254)}",
            client_ua=rng.choice((
                "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) "
                "Version/17.5 Safari/605.1.15",
                "curl/8.5.0",
            )),
            product_id=0,
        )
        gw = m.gateway
        svc = m.svc_productpage
        op = f"{svc.fqdn}:{svc.port}/productpage"
        root = self.span(gw.proxy_tracer, None, op, self.SERVER, 0.0)
        t = self.u(0.1, 0.3)
        end, status, resp_size = self.http_call(gw, root, svc, "/productpage", t, hop, op_name=op, gateway_span=root)
        end += self.u(0.05, 0.15)
        self.finish(root, end, self.envoy_tags(
            gw, svc.outbound, "http://bookinfo.example.com/productpage", status, "-", hop, hop.client_ua, 0,
            resp_size, hop.client_ip, None), error=status >= 500)

    def http_call(self, caller: Workload, parent: int, svc: Service, path: str, t: float, hop: _Hop,
                  op_name: str | None = None, gateway_span: int | None = None) -> tuple[float, int, int]:
        """A call through the caller's sidecar (or the gateway) to ``svc``: returns (end, status, bytes)."""
        rng = self.rng
        op_name = op_name or svc.operation
        authority = "bookinfo.example.com" if caller.router else f"{svc.name}:{svc.port}"
        url = f"http://{authority}{path}"
        ua = hop.client_ua if caller.router else caller.user_agent
        if gateway_span is None:
            app_cli = self.span(caller.app_tracer, parent, "GET", self.CLIENT, t, {
                "http.request.method": "GET", "url.full": url, "server.address": svc.name,
                "server.port": svc.port, "network.protocol.version": "1.1"})
            t_sc = t + self.u(0.05, 0.2)
            sc = self.span(caller.proxy_tracer, app_cli, op_name, self.CLIENT, t_sc)
        else:
            app_cli = None
            t_sc = t
            sc = self.span(caller.proxy_tracer, parent, op_name, self.CLIENT, t_sc)
        t_send = t_sc + self.u(0.1, 0.35)
        fail = None
        if svc is self.mesh.svc_ratings and self.opts.error_rate > 0 and rng.random() < self.opts.error_rate:
            fail = "uh" if rng.random() < 0.25 else "app"
        dest: Workload | None = None
        attempts = 0
        req_hdr = rng.randint(520, 900)
        if fail == "uh":
            status, flags, details, resp_size = 503, "UH", "no_healthy_upstream", 19
            t_resp = t_send + self.u(0.02, 0.08)
        else:
            dest = rng.choice(svc.workloads)
            t_cur = t_send
            while True:
                attempts += 1
                srv_end, status, resp_size = self.inbound(caller, dest, svc, sc, path, t_cur + self.net(), hop,
                                                          authority, url, ua, fail == "app")
                t_resp = srv_end + self.net()
                if status == 503 and attempts < _RETRY_ATTEMPTS:
                    t_cur = t_resp + self.u(0, 25 * (2 ** attempts - 1))  # Envoy's jittered backoff, 25 ms base
                    continue
                break
            flags = "URX" if status == 503 and attempts == _RETRY_ATTEMPTS else "-"
            details = "via_upstream"
        t_sc_end = t_resp + self.u(0.1, 0.4)
        if svc is self.mesh.svc_ratings and status >= 500:
            self.stats.ratings_errors += 1
        upstream_addr = f"{dest.ip}:{svc.port}" if dest else None
        tags = self.envoy_tags(caller, svc.outbound, url, status, flags, hop, ua, 0, resp_size,
                               caller.ip if not caller.router else upstream_addr or "-", upstream_addr)
        if attempts > 1:
            tags["retry.count"] = str(attempts - 1)
        self.finish(sc, t_sc_end, tags, error=status >= 500)
        dur = t_sc_end - t_sc
        # the caller proxy's access log (the gateway logs the downstream request once)
        if caller.router:
            xff, route = hop.client_ip, "-"
            down_local, down_remote = f"{caller.ip}:8080", f"{hop.client_ip}:{self.port()}"
        else:
            xff, route = "-", "default"
            down_local, down_remote = f"{svc.cluster_ip}:{svc.port}", f"{caller.ip}:{self.port()}"
        up_local = f"{caller.ip}:{self.port()}" if dest else "-"
        ust = "-" if dest is None else str(max(0, round(t_resp - t_send)))
        self.access_log(caller, gateway_span if gateway_span is not None else sc, t_sc,
                        f'"GET {path} HTTP/1.1" {status} {flags} {details} - "-" 0 {resp_size} {round(dur)} {ust} '
                        f'"{xff}" "{ua or "-"}" "{hop.request_id}" "{authority}" "{upstream_addr or "-"}" '
                        f'{svc.outbound} {up_local} {down_local} {down_remote} - {route}')
        self.report(caller, "source", caller, self.dst_labels(dest, svc.fqdn, svc.name, svc.namespace), status, flags,
                    dur, req_hdr, resp_size + 180, dest is not None)
        end = t_sc_end
        if app_cli is not None:
            end = t_sc_end + self.u(0.05, 0.2)
            attrs = {"http.response.status_code": status}
            if status >= 400:
                attrs["error.type"] = str(status)
            self.finish(app_cli, end, attrs, error=status >= 400)
        return end, status, resp_size

    def inbound(self, caller: Workload, dest: Workload, svc: Service, parent: int, path: str, t: float, hop: _Hop,
                authority: str, url: str, ua: str, fail: bool) -> tuple[float, int, int]:
        """The callee's sidecar SERVER span and app SERVER span; returns (end of the sidecar span, status, bytes)."""
        ss = self.span(dest.proxy_tracer, parent, svc.operation, self.SERVER, t)
        t_app = t + self.u(0.1, 0.4)
        xff = hop.client_ip if caller.router else ""
        attrs = {"http.request.method": "GET", "url.path": path, "url.scheme": "http", "http.route": svc.route,
                 "server.address": authority.split(":")[0], "server.port": svc.port,
                 "client.address": xff or caller.ip, "network.peer.address": "127.0.0.6",
                 "network.protocol.version": "1.1"}
        if ua:
            attrs["user_agent.original"] = ua
        app_srv = self.span(dest.app_tracer, ss, f"GET {svc.route}", self.SERVER, t_app, attrs)
        handler = getattr(self, "handle_" + dest.app)
        t_app_end, status, resp_size = handler(dest, app_srv, t_app, hop, fail)
        self.finish(app_srv, t_app_end, {"http.response.status_code": status}, error=status >= 500)
        t_end = t_app_end + self.u(0.1, 0.4)
        self.finish(ss, t_end, self.envoy_tags(dest, f"inbound|{svc.port}||", url, status, "-", hop, ua, 0, resp_size,
                                               caller.ip, f"{dest.ip}:{svc.port}"), error=status >= 500)
        dur = t_end - t
        sni = f"outbound_.{svc.port}_._.{svc.fqdn}" if self.opts.mtls else "-"
        self.access_log(dest, ss, t,
                        f'"GET {path} HTTP/1.1" {status} - via_upstream - "-" 0 {resp_size} {round(dur)} '
                        f'{round(t_app_end - t_app)} "{xff or "-"}" "{ua or "-"}" "{hop.request_id}" "{authority}" '
                        f'"{dest.ip}:{svc.port}" inbound|{svc.port}|| 127.0.0.6:{self.port()} {dest.ip}:{svc.port} '
                        f'{caller.ip}:{self.port()} {sni} default')
        self.report(dest, "destination", caller, self.dst_labels(dest, svc.fqdn, svc.name, svc.namespace), status,
                    "-", dur, self.rng.randint(520, 900), resp_size + 180, True)
        return t_end, status, resp_size

    # -- app handlers: (workload, app SERVER span, start) -> (end, status, response bytes) ------------------
    def handle_productpage(self, w: Workload, span: int, t: float, hop: _Hop, fail: bool):
        m = self.mesh
        pid = hop.product_id
        t += self.ln(1.2) + self.extra_latency(w)
        t, d_status, _ = self.http_call(w, span, m.svc_details, f"/details/{pid}", t, hop)
        t += self.ln(0.3)
        t, r_status, _ = self.http_call(w, span, m.svc_reviews, f"/reviews/{pid}", t, hop)
        t += self.ln(4.0, 0.4)
        size = self.rng.randint(4200, 5400)
        if d_status >= 400 or r_status >= 400:
            self.app_log(w, span, t, "ERROR", f"error fetching product {pid}: details={d_status} reviews={r_status}")
        self.app_log(w, span, t, "INFO", f"GET /productpage product_id={pid} details={d_status} reviews={r_status} "
                                         f"bytes={size}")
        return t, 200, size

    def handle_details(self, w: Workload, span: int, t: float, hop: _Hop, fail: bool):
        m, o = self.mesh, self.opts
        pid = hop.product_id
        t += self.ln(0.8) + self.extra_latency(w)
        isbn = "0486424618"
        if self.rng.random() < 0.3:  # cache miss: ask the external books API (TLS originated by the sidecar)
            host = o.external_host
            path = f"/books/v1/volumes?q=isbn:{isbn}"
            url = f"http://{host}{path}"
            cluster = f"outbound|443||{host}"
            cli = self.span(w.app_tracer, span, "GET", self.CLIENT, t, {
                "http.request.method": "GET", "url.full": url, "server.address": host, "server.port": 80,
                "peer.service": host, "network.protocol.version": "1.1"})
            t_sc = t + self.u(0.05, 0.2)
            sc = self.span(w.proxy_tracer, cli, f"{host}:80/*", self.CLIENT, t_sc)
            t_send = t_sc + self.u(0.1, 0.35)
            t_resp = t_send + self.ln(70, 0.3)  # TLS + WAN round trips
            t_sc_end = t_resp + self.u(0.1, 0.4)
            size = self.rng.randint(2400, 3100)
            upstream = f"{m.external_ip}:443"
            self.finish(sc, t_sc_end, self.envoy_tags(w, cluster, url, 200, "-", hop, w.user_agent, 0, size, w.ip,
                                                      upstream))
            dur = t_sc_end - t_sc
            self.access_log(w, sc, t_sc,
                            f'"GET {path} HTTP/1.1" 200 - via_upstream - "-" 0 {size} {round(dur)} '
                            f'{round(t_resp - t_send)} "-" "{w.user_agent}" "{hop.request_id}" "{host}" "{upstream}" '
                            f'{cluster} {w.ip}:{self.port()} {m.external_ip}:80 {w.ip}:{self.port()} - '
                            f'{host}:80')
            self.report(w, "source", w, self.dst_labels(None, host, host, o.namespace), 200, "-", dur,
                        self.rng.randint(300, 500), size + 400, False)
            t = t_sc_end + self.u(0.05, 0.2)
            self.finish(cli, t, {"http.response.status_code": 200})
            self.app_log(w, span, t, "INFO", f"fetched book {pid} (isbn {isbn}) from {host} in "
                                             f"{round(t - self.spans[cli].start)}ms")
        else:
            self.app_log(w, span, t, "INFO", f"book {pid} served from cache")
        t += self.ln(0.4)
        return t, 200, 178

    def handle_reviews(self, w: Workload, span: int, t: float, hop: _Hop, fail: bool):
        pid = hop.product_id
        t += self.ln(2.5) + self.extra_latency(w)
        if w.version == "v1":
            t += self.ln(0.8)
            self.app_log(w, span, t, "INFO", f"fetched 2 reviews for product {pid} (ratings disabled)")
            return t, 200, 295
        t, status, _ = self.http_call(w, span, self.mesh.svc_ratings, f"/ratings/{pid}", t, hop)
        t += self.ln(0.8)
        if status >= 400:
            self.app_log(w, span, t, "WARN",
                         f"Error: unable to contact ratings service: {status} Service Unavailable; "
                         f"returning 2 reviews for product {pid} without ratings")
            return t, 200, 358
        self.app_log(w, span, t, "INFO", f"fetched 2 reviews for product {pid} with ratings "
                                         f"(stars {'red' if w.version == 'v3' else 'black'})")
        return t, 200, 375

    def handle_ratings(self, w: Workload, span: int, t: float, hop: _Hop, fail: bool):
        m, o = self.mesh, self.opts
        pid = hop.product_id
        t += self.ln(0.6) + self.extra_latency(w)
        db = m.db_service
        if o.db == "mysql":
            name, attrs = "SELECT ratings", {
                "db.system.name": "mysql", "db.namespace": "test", "db.collection.name": "ratings",
                "db.operation.name": "SELECT", "db.query.summary": "SELECT ratings",
                "db.query.text": "SELECT Rating FROM ratings WHERE ReviewID = ?"}
            err_type, err_msg = "ETIMEDOUT", f"connect ETIMEDOUT {db.cluster_ip}:{db.port}"
        else:
            name, attrs = "find ratings", {
                "db.system.name": "mongodb", "db.namespace": "test", "db.collection.name": "ratings",
                "db.operation.name": "find", "db.query.summary": "find ratings"}
            err_type, err_msg = "MongoNetworkTimeoutError", f"connection timed out to {db.name}:{db.port}"
        attrs.update({"server.address": db.name, "server.port": db.port, "network.peer.address": db.cluster_ip,
                      "network.peer.port": db.port})
        cli = self.span(w.app_tracer, span, name, self.CLIENT, t, attrs)
        if fail:
            t_end = t + self.ln(30, 0.1)
            rec = self.spans[cli]
            rec.events = [("exception", {"exception.type": err_type, "exception.message": err_msg}, t_end)]
            self.finish(cli, t_end, {"error.type": err_type}, error=True, message=err_msg)
            sent, received = self.rng.randint(150, 220), 0
        else:
            t_end = t + self.ln(1.2, 0.5)
            self.finish(cli, t_end)
            sent, received = self.rng.randint(150, 220), self.rng.randint(260, 340)
        # Envoy's TCP proxy towards the database: no spans, only L4 metrics from the source proxy
        labels = {"reporter": "source", **self.src_labels(w),
                  **self.dst_labels(None, db.fqdn, db.name, db.namespace), "request_protocol": "tcp",
                  "response_flags": "-", "connection_security_policy": "unknown"}
        inst = w.inst
        if not w.db_connected:
            w.db_connected = True
            inst.tcp_opened.add(1, labels)
            inst.tcp_closed.add(0, labels)
            self.stats.metric_points += 2
        inst.tcp_received.add(sent, labels)  # received = request bytes (from the app), sent = response bytes
        inst.tcp_sent.add(received, labels)
        self.stats.metric_points += 2
        t = t_end + self.ln(0.3)
        if fail:
            self.app_log(w, span, t, "ERROR", f"{err_type}: {err_msg}; responding 503 for product {pid}",
                         {"exception.type": err_type})
            return t, 503, 48
        self.app_log(w, span, t, "INFO", f"ratings for product {pid}: reviewer1=5 reviewer2=4")
        return t, 200, 48


# ---------------------------------------------------------------------------------------------------------
# OpenTelemetry SDK plumbing
# ---------------------------------------------------------------------------------------------------------

class _Telemetry:
    """One TracerProvider + LoggerProvider per app workload and per proxy, one MeterProvider per proxy."""

    def __init__(self, opts: DemoOptions, mesh: Mesh, stats: DemoStats):
        from opentelemetry.exporter.otlp.proto.http import Compression
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk._logs import LoggerProvider
        from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
        try:
            from opentelemetry.sdk._logs.export import LogRecordExportResult
        except ImportError:  # SDKs before the rename
            from opentelemetry.sdk._logs.export import LogExportResult as LogRecordExportResult
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricExportResult
        from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult

        base = opts.otlp.rstrip("/")
        headers = {"X-Scope-OrgID": opts.tenant} if opts.tenant else None
        common = dict(headers=headers, timeout=opts.timeout, compression=Compression.Gzip)

        class SpanExporter(OTLPSpanExporter):
            def export(self, spans):
                r = super().export(spans)
                stats.add("spans_exported" if r == SpanExportResult.SUCCESS else "export_failures",
                          len(spans) if r == SpanExportResult.SUCCESS else 1)
                return r

        class LogExporter(OTLPLogExporter):
            def export(self, batch):
                r = super().export(batch)
                ok = r == LogRecordExportResult.SUCCESS
                stats.add("logs_exported" if ok else "export_failures", len(batch) if ok else 1)
                return r

        class MetricExporter(OTLPMetricExporter):
            def export(self, metrics_data, timeout_millis: float = 10_000, **kw):
                r = super().export(metrics_data, timeout_millis=timeout_millis, **kw)
                if r == MetricExportResult.SUCCESS:
                    n = sum(len(m.data.data_points) for rm in metrics_data.resource_metrics
                            for sm in rm.scope_metrics for m in sm.metrics)
                    stats.add("metric_points_exported", n)
                else:
                    stats.add("export_failures", 1)
                return r

        # Every workload and proxy has its own provider (its own resource), but they share one batch processor
        # per signal, as a node-local collector agent would batch them: OTLP groups a batch by resource, and
        # the receiver sees two requests per second instead of two per provider.
        delay = max(1, int(opts.span_delay * 1000))
        span_processor = BatchSpanProcessor(SpanExporter(endpoint=base + "/v1/traces", **common),
                                            schedule_delay_millis=delay, max_queue_size=65536,
                                            max_export_batch_size=4096)
        log_processor = BatchLogRecordProcessor(LogExporter(endpoint=base + "/v1/logs", **common),
                                                schedule_delay_millis=delay, max_queue_size=65536,
                                                max_export_batch_size=4096)
        self.providers: list[Any] = []

        def tracer(resource):
            tp = TracerProvider(resource=resource, shutdown_on_exit=False)
            tp.add_span_processor(span_processor)
            self.providers.append(tp)
            return tp

        def logger(resource):
            lp = LoggerProvider(resource=resource, shutdown_on_exit=False)
            lp.add_log_record_processor(log_processor)
            self.providers.append(lp)
            return lp

        views = [View(instrument_name="istio_request_duration_milliseconds",
                      aggregation=ExplicitBucketHistogramAggregation(ISTIO_DURATION_BUCKETS, record_min_max=False)),
                 View(instrument_name="istio_request_bytes",
                      aggregation=ExplicitBucketHistogramAggregation(ISTIO_BYTES_BUCKETS, record_min_max=False)),
                 View(instrument_name="istio_response_bytes",
                      aggregation=ExplicitBucketHistogramAggregation(ISTIO_BYTES_BUCKETS, record_min_max=False))]

        self.scraper = _Scraper(MetricExporter(endpoint=base + "/v1/metrics", **common), opts.export_interval)
        for w in mesh.workloads:
            if not w.router:
                res = Resource.create({
                    "service.name": w.app, "service.version": w.version,
                    "service.instance.id": f"{w.namespace}.{w.pod}.{w.app}",
                    "k8s.namespace.name": w.namespace, "k8s.pod.name": w.pod, "k8s.deployment.name": w.name,
                    "k8s.container.name": w.app, "k8s.cluster.name": opts.cluster})
                w.app_tracer = tracer(res).get_tracer(f"bookinfo.{w.app}", "1.20.0")
                w.app_logger = logger(res).get_logger(f"bookinfo.{w.app}")
            # Envoy's tracer: resource service.name only (Istio's tracingServiceName <app>.<namespace>)
            w.proxy_tracer = tracer(Resource({"service.name": w.proxy_service_name})).get_tracer(ENVOY_TRACER_SCOPE)
            # Istio's OTel access logger: disable_builtin_labels, no resource attributes
            w.proxy_logger = logger(Resource({})).get_logger(ENVOY_ALS_SCOPE)
            # As forwarded by a collector's prometheus receiver scraping the pod's :15020/stats/prometheus
            # (job kubernetes-pods, as in Istio's Prometheus sample), with k8sattributes adding pod/namespace.
            mres = Resource({"service.name": "kubernetes-pods", "service.instance.id": f"{w.ip}:15020",
                             "server.address": w.ip, "server.port": "15020", "url.scheme": "http",
                             "k8s.pod.name": w.pod, "k8s.namespace.name": w.namespace})
            reader = InMemoryMetricReader()
            self.scraper.readers.append(reader)
            mp = MeterProvider(resource=mres, metric_readers=[reader], views=views, shutdown_on_exit=False)
            self.providers.append(mp)
            w.inst = _Instruments(mp.get_meter(PROM_SCOPE, "0.130.0"))
        self.scraper.start()

    def shutdown(self, timeout: float = 30.0) -> None:
        """Send the metrics' final state, then flush and stop every provider in parallel (an export may wait
        for its exporter's retries while the receiver is away)."""
        deadline = time.monotonic() + timeout
        scraper = threading.Thread(target=self.scraper.shutdown, daemon=True, name="demo-shutdown")
        scraper.start()
        scraper.join(timeout / 2)
        threads = [threading.Thread(target=p.shutdown, daemon=True, name="demo-shutdown") for p in self.providers]
        for th in threads:
            th.start()
        for th in threads:
            th.join(max(0.0, deadline - time.monotonic()))


class _Scraper:
    """What a collector's Prometheus receiver does for Istio's metrics: every ``interval`` seconds, read the
    cumulative state of every proxy (one MeterProvider each) and forward it all in one OTLP request."""

    def __init__(self, exporter, interval: float):
        self.readers: list[Any] = []
        self.exporter = exporter
        self.interval = max(0.1, interval)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="meshscope-demo-metrics")

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.export_once()

    def export_once(self) -> None:
        from opentelemetry.sdk.metrics.export import MetricsData

        resource_metrics = []
        for reader in self.readers:
            data = reader.get_metrics_data()
            if data is not None:
                resource_metrics.extend(data.resource_metrics)
        if resource_metrics:
            try:
                self.exporter.export(MetricsData(resource_metrics=resource_metrics))
            except Exception:  # noqa: BLE001 - keep scraping; the exporter logs its own failures
                log.exception("demo: metric export failed")

    def shutdown(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.export_once()  # the final state, so every recorded measurement is sent
        self.exporter.shutdown()


def _iso_ms(ns: int) -> str:
    dt = datetime.fromtimestamp(ns // 1_000_000_000, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{(ns // 1_000_000) % 1000:03d}Z"


class _Emitter:
    def __init__(self, stats: DemoStats):
        from opentelemetry import trace
        from opentelemetry._logs import LogRecord, SeverityNumber
        from opentelemetry.context import Context
        from opentelemetry.trace import Status, StatusCode

        self.stats = stats
        self._in_context = trace.set_span_in_context
        self._root = Context()
        self._LogRecord = LogRecord
        self._sev = {k: SeverityNumber(v) for k, v in SEVERITY.items()}
        self._error = lambda msg: Status(StatusCode.ERROR, msg)

    def emit(self, spans: list[_SpanRec], logs: list[_LogRec], base_ns: int) -> None:
        sdk = []
        for r in spans:
            ctx = self._in_context(sdk[r.parent]) if r.parent is not None else self._root
            s = r.tracer.start_span(r.name, context=ctx, kind=r.kind, attributes=r.attrs,
                                    start_time=base_ns + int(r.start * 1e6))
            if r.events:
                for name, attrs, ts in r.events:
                    s.add_event(name, attrs, timestamp=base_ns + int(ts * 1e6))
            if r.error:
                s.set_status(self._error(r.message))
            s.end(end_time=base_ns + int(r.end * 1e6))
            sdk.append(s)
        for lg in logs:
            ts = base_ns + int(lg.ts * 1e6)
            ctx = self._in_context(sdk[lg.span])
            if lg.access:
                rec = self._LogRecord(timestamp=ts, context=ctx, body=f"[{_iso_ms(ts)}] {lg.body}",
                                      attributes=lg.attrs)
            else:
                rec = self._LogRecord(timestamp=ts, context=ctx, severity_text=lg.severity,
                                      severity_number=self._sev[lg.severity], body=lg.body, attributes=lg.attrs)
            lg.logger.emit(rec)
        st = self.stats
        st.spans += len(spans)
        st.logs += len(logs)
        st.access_logs += sum(1 for lg in logs if lg.access)


# ---------------------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------------------

def run_demo(opts: DemoOptions, stop: threading.Event | None = None) -> DemoStats:
    """Send simulated mesh traffic until ``opts.duration`` elapses or ``stop`` is set (or Ctrl-C); then flush
    and shut every provider down. Blocking. Returns what was created and what the receiver acknowledged."""
    from opentelemetry.trace import SpanKind

    if opts.rate <= 0:
        raise ValueError("rate must be positive")
    if not 0 <= opts.error_rate <= 1:
        raise ValueError("error_rate must be between 0 and 1")
    stop = stop or threading.Event()
    rng = random.Random(opts.seed)
    stats = DemoStats()
    mesh = Mesh(opts, rng)
    telemetry = _Telemetry(opts, mesh, stats)
    sim = _Sim(opts, mesh, rng, stats, (SpanKind.CLIENT, SpanKind.SERVER))
    emitter = _Emitter(stats)
    log.info("demo: sending bookinfo traffic to %s at %g req/s (error rate %g, +%gms on %s, mTLS %s)",
             opts.otlp, opts.rate, opts.error_rate, opts.latency_ms, opts.latency_target or "-",
             "on" if opts.mtls else "off")
    started = time.monotonic()
    deadline = started + opts.duration if opts.duration > 0 else math.inf
    next_at = started
    next_report = started + 10
    try:
        while not stop.is_set():
            now = time.monotonic()
            if now >= deadline:
                break
            if now < next_at:
                stop.wait(min(next_at, deadline) - now)
                continue
            sim.request()
            total_ms = sim.spans[0].end
            emitter.emit(sim.spans, sim.logs, time.time_ns() - int(total_ms * 1e6))
            stats.requests += 1
            next_at = max(next_at + rng.expovariate(opts.rate), now - 1.0)  # no catch-up burst after a stall
            if now >= next_report:
                next_report = now + 10
                log.info("demo: %d requests, %d spans, %d logs sent", stats.requests, stats.spans, stats.logs)
    except KeyboardInterrupt:
        pass
    finally:
        stats.elapsed = time.monotonic() - started
        telemetry.shutdown(timeout=max(15.0, 2 * opts.timeout))
    log.info("demo: %s", stats.summary())
    return stats


def start_demo_thread(opts: DemoOptions) -> tuple[threading.Thread, threading.Event]:
    """Run ``run_demo`` in a daemon thread. To stop: ``stop.set(); thread.join(timeout)`` (the join waits for
    the final flush, so do it while the receiver still accepts data)."""
    stop = threading.Event()

    def target() -> None:
        try:
            th.stats = run_demo(opts, stop)  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - a demo failure must not take the server down
            log.exception("demo stopped with an error")

    th = threading.Thread(target=target, name="meshscope-demo", daemon=True)
    th.stats = None  # type: ignore[attr-defined]  # the DemoStats once run_demo returned
    th.start()
    return th, stop
