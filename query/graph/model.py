"""The Kiali traffic graph built from ``EdgeStats``: node ids, traffic rates, response time, mTLS, throughput, flags,
health, and the exact JSON of Kiali's ``/api/namespaces/graph`` (``graph/config/common/common.go``).

Why a port rather than our own shape: Kiali's UI, Grafana panels and users' scripts already read this JSON, and its
node-id rules decide which requests collapse into one node, so they are ported literally (``graph/types.go``
``Id``). Where spans know more or less than Istio's metrics the choices are noted inline (``meshscope:``).
"""
from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field, replace
from typing import Iterable

from .types import UNKNOWN, EdgeStats, NodeIdentity

GRAPH_TYPES = ("app", "versionedApp", "workload", "service")
PROTOCOLS = ("grpc", "http", "tcp")  # Kiali's graph.Protocols order: node traffic lists follow it
PASSTHROUGH = "PassthroughCluster"
BLACKHOLE = "BlackHoleCluster"
# Kiali's responseTime parameter (avg|50|95|99) -> EdgeStats.latency_ms key
RESPONSE_TIME_KEYS = {"avg": "avg", "50": "p50", "95": "p95", "99": "p99",
                      "p50": "p50", "p95": "p95", "p99": "p99"}
QUANTILES = {"p50": 0.5, "p95": 0.95, "p99": 0.99}

# health status priorities (models/health_status.go)
NA, HEALTHY, NOT_READY, DEGRADED, FAILURE = "NA", "Healthy", "Not Ready", "Degraded", "Failure"
STATUS_PRIORITY = {NA: 0, HEALTHY: 1, NOT_READY: 2, DEGRADED: 3, FAILURE: 4}


class GraphError(ValueError):
    """An option the graph cannot be built with; the message is safe to show to a client."""


# ------------------------------------------------------------------------------------------- Kiali helpers
def is_ok(name: str | None) -> bool:
    """graph.IsOK: a label value that names something."""
    return bool(name) and name != UNKNOWN


def is_ok_version(version: str | None) -> bool:
    """graph.IsOKVersion: ``latest`` is what an unversioned workload reports, so it names no version."""
    return is_ok(version) and version != "latest"


def node_id(cluster: str, service_ns: str, service: str, workload_ns: str, workload: str, app: str, version: str,
            graph_type: str) -> tuple[str, str]:
    """Kiali's ``graph.Id``, line for line: the internal node id and node type. ``ValueError`` where Kiali errors."""
    namespace = workload_ns if is_ok(workload_ns) else service_ns
    if namespace == UNKNOWN and workload == UNKNOWN and app == UNKNOWN and service == "":
        return f"{cluster}_unknown_source", "unknown"
    if workload == UNKNOWN and app == UNKNOWN and service == UNKNOWN:
        return f"svc_{cluster}_{namespace}_unknown", "service"
    workload_ok, app_ok, service_ok = is_ok(workload), is_ok(app), is_ok(service)
    if not workload_ok and not app_ok and not service_ok:
        raise ValueError(f"no node id: cluster={cluster} namespace={namespace} workload={workload} app={app} "
                         f"version={version} service={service}")
    if graph_type in ("workload", "service"):
        if not workload_ok and not service_ok:
            raise ValueError(f"no workload-graph node id: namespace={namespace} app={app}")
        if not workload_ok:
            return f"svc_{cluster}_{namespace}_{service}", "service"
        return f"wl_{cluster}_{namespace}_{workload}", "workload"
    if app_ok:
        if graph_type == "versionedApp":
            if workload_ok:
                return f"vapp_{cluster}_{namespace}_{workload}", "app"
            if is_ok_version(version):
                return f"vapp_{cluster}_{namespace}_{app}_{version}", "app"
        return f"app_{cluster}_{namespace}_{app}", "app"
    if workload_ok:
        return f"wl_{cluster}_{namespace}_{workload}", "workload"
    return f"svc_{cluster}_{namespace}_{service}", "service"


def sha(text: str) -> str:
    # surrogatepass: a lone surrogate in a name must not make the whole graph fail
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def edge_hash(source_hash: str, target_hash: str, protocol: str) -> str:
    return sha(f"{source_hash}.{target_hash}.{protocol}")


def calc_precision(val: float, maximum: int) -> int:
    """Digits needed to show one significant digit of a small value (common.go ``calcPrecision``)."""
    if val <= 0:
        return 0
    precision = 0
    while precision < maximum and val < 1:
        val *= 10
        precision += 1
    return precision


def rate_to_string(min_precision: int, val: float) -> str:
    """common.go ``rateToString``: at least ``min_precision`` decimals, more for small rates (up to 5)."""
    return f"{val:.{max(min_precision, calc_precision(val, 5))}f}"


def _pct(value: float, total: float) -> str:
    return f"{value / total * 100.0:.1f}"


# ------------------------------------------------------------------------------------------- health
@dataclass(frozen=True)
class Tolerance:
    """One row of Kiali's health tolerances: codes matching ``code`` over all requests of ``protocol``."""
    code: str
    degraded: float
    failure: float
    protocol: str = "http"
    direction: str = ".*"

    def matches(self, protocol: str, direction: str) -> bool:
        return bool(_anchored(self.protocol).match(protocol)) and bool(_anchored(self.direction).match(direction))

    def code_matches(self, code: str) -> bool:
        return bool(_anchored(self.code.replace("X", r"\d").replace("x", r"\d")).match(code))


_RX_CACHE: dict[str, re.Pattern] = {}


def _anchored(pattern: str) -> re.Pattern:
    rx = _RX_CACHE.get(pattern)
    if rx is None:
        rx = _RX_CACHE[pattern] = re.compile(pattern if pattern.startswith("^") else f"^(?:{pattern})$")
    return rx


# config/config.go AddHealthDefault
DEFAULT_TOLERANCES: tuple[Tolerance, ...] = (
    Tolerance("5XX", 0, 10, "http"),
    Tolerance("4XX", 10, 20, "http"),
    Tolerance(r"^[1-9]$|^1[0-6]$", 0, 10, "grpc"),
    Tolerance("-", 0, 10, "http|grpc"),
)


def apply_thresholds(ratio: float, tol: Tolerance) -> str:
    """business/health_calculator.go ``applyThresholds``; a degraded threshold of 0 means any error."""
    if ratio <= 0:
        return HEALTHY
    if ratio >= tol.failure:
        return FAILURE
    if ratio >= tol.degraded:
        return DEGRADED
    return HEALTHY


def worst(*statuses: str) -> str:
    return max(statuses, key=lambda s: STATUS_PRIORITY[s], default=NA)


def request_status(requests: dict[str, dict[str, float]], direction: str,
                   tolerances: Iterable[Tolerance] = DEFAULT_TOLERANCES) -> tuple[str, float, float]:
    """Status of one direction's ``{protocol: {code: rate}}``: (status, error ratio % of the worst tolerance,
    total rate). NA without traffic, Healthy with traffic that trips no tolerance."""
    status, ratio_out, total_all = NA, 0.0, 0.0
    tolerances = tuple(tolerances)
    for protocol in sorted(requests):
        codes = requests[protocol]
        total = sum(codes.values())
        if total <= 0:
            continue
        total_all += total
        status = worst(status, HEALTHY)
        matched = False
        for tol in tolerances:
            if not tol.matches(protocol, direction):
                continue
            matched = True
            errors = sum(v for c, v in codes.items() if tol.code_matches(c))
            ratio = 100.0 * errors / total
            st = apply_thresholds(ratio, tol)
            if STATUS_PRIORITY[st] > STATUS_PRIORITY[status] or (st == status and ratio > ratio_out):
                status, ratio_out = st, ratio
        if not matched and protocol in ("http", "grpc"):
            # Kiali's fallback when no tolerance covers a protocol: 4xx+5xx share, >=0.1% Degraded, >=10% Failure
            errors = sum(v for c, v in codes.items() if c[:1] in ("4", "5") and len(c) == 3)
            ratio = 100.0 * errors / total
            st = FAILURE if ratio >= 10 else DEGRADED if ratio >= 0.1 else HEALTHY
            if STATUS_PRIORITY[st] > STATUS_PRIORITY[status]:
                status, ratio_out = st, ratio
    return status, ratio_out, total_all


# ------------------------------------------------------------------------------------------- graph records
@dataclass
class Node:
    id: str                      # Kiali's internal id (``wl_<cluster>_<ns>_<workload>``...); JSON id = sha256 of it
    node_type: str
    cluster: str
    namespace: str
    workload: str = ""
    app: str = ""
    version: str = ""
    service: str = ""
    rates: dict[str, float] = field(default_factory=dict)
    dest_services: set[tuple[str, str, str]] = field(default_factory=set)
    is_egress: bool = False
    is_gateway: str = ""          # "" | ingress | egress
    service_entry: dict | None = None
    is_root: bool = False
    is_outside: bool = False
    is_inaccessible: bool = False
    inbound: dict[str, dict[str, float]] = field(default_factory=dict)   # protocol -> code -> rate (health)
    outbound: dict[str, dict[str, float]] = field(default_factory=dict)
    parent: str = ""             # box node JSON id

    @property
    def hash(self) -> str:
        return sha(self.id)

    def add_rate(self, key: str, val: float) -> None:
        if val > 0:
            self.rates[key] = self.rates.get(key, 0.0) + val


@dataclass
class _LatencyPart:
    requests: float
    latency_ms: dict[str, float]
    buckets: list[tuple[float, float]]


@dataclass
class Edge:
    source: Node
    dest: Node
    protocol: str
    rates: dict[str, float] = field(default_factory=dict)         # http, http3xx, ..., grpcErr, tcp
    responses: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # code -> flags|hosts -> rate
    codes: dict[str, float] = field(default_factory=dict)         # code -> rate (health)
    latency: list[_LatencyPart] = field(default_factory=list)
    response_time_here: bool = True   # Kiali sets response time only on the service->workload half of an injection
    request_bytes: float = 0.0        # bytes/s
    response_bytes: float = 0.0
    mtls: float = 0.0                 # requests/s over mutual TLS
    mtls_known: float = 0.0           # requests/s whose security policy is known
    source_principals: set[str] = field(default_factory=set)
    dest_principals: set[str] = field(default_factory=set)
    origins: set[str] = field(default_factory=set)

    def add_rate(self, key: str, val: float) -> None:
        if val > 0:
            self.rates[key] = self.rates.get(key, 0.0) + val

    def add_response(self, code: str, flags: str, host: str, val: float) -> None:
        detail = self.responses.setdefault(code or "-", {"flags": {}, "hosts": {}})
        if flags:
            detail["flags"][flags] = detail["flags"].get(flags, 0.0) + val
        if host:
            detail["hosts"][host] = detail["hosts"].get(host, 0.0) + val

    def merge_from(self, other: "Edge") -> None:
        """graph.AggregateEdgeTraffic plus the appender data Kiali keeps per edge."""
        for k, v in other.rates.items():
            self.add_rate(k, v)
        for code, detail in other.responses.items():
            for f, v in detail["flags"].items():
                self.add_response(code, f, "", v)
            for h, v in detail["hosts"].items():
                self.add_response(code, "", h, v)
        for c, v in other.codes.items():
            self.codes[c] = self.codes.get(c, 0.0) + v
        self.latency.extend(other.latency)
        self.request_bytes += other.request_bytes
        self.response_bytes += other.response_bytes
        self.mtls += other.mtls
        self.mtls_known += other.mtls_known
        self.source_principals |= other.source_principals
        self.dest_principals |= other.dest_principals
        self.origins |= other.origins

    @property
    def total(self) -> float:
        return self.rates.get(self.protocol, 0.0)


@dataclass
class GraphOptions:
    """Kiali's graph request options (graph/options.go) that apply to span/metric edges."""
    graph_type: str = "workload"            # Kiali's server default
    namespaces: tuple[str, ...] = ()        # empty: every namespace (meshscope: Kiali requires at least one)
    duration_s: int = 600
    query_time: int = 0                     # unix seconds
    response_time: str = "95"               # avg | 50 | 95 | 99
    throughput_type: str = "response"       # request | response
    inject_service_nodes: bool = False      # Kiali's server default; the service graph always injects
    box_by: tuple[str, ...] = ()            # app | namespace | cluster (app graphs always box by app)
    tolerances: tuple[Tolerance, ...] = DEFAULT_TOLERANCES

    def validate(self) -> "GraphOptions":
        if self.graph_type not in GRAPH_TYPES:
            raise GraphError(f"invalid graphType {self.graph_type!r}: use one of {', '.join(GRAPH_TYPES)}")
        if self.response_time not in RESPONSE_TIME_KEYS:
            raise GraphError(f"invalid responseTime {self.response_time!r}: use avg, 50, 95 or 99")
        if self.throughput_type not in ("request", "response"):
            raise GraphError(f"invalid throughputType {self.throughput_type!r}: use request or response")
        for b in self.box_by:
            if b not in ("app", "namespace", "cluster"):
                raise GraphError(f"invalid boxBy {b!r}: use app, namespace or cluster")
        if self.duration_s <= 0:
            raise GraphError("duration must be positive")
        return self


# ------------------------------------------------------------------------------------------- latency
def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus ``histogram_quantile`` over cumulative (upper bound, count) buckets: linear inside a bucket,
    the highest finite bound when the rank falls in +Inf."""
    bs = sorted((float(le), float(c)) for le, c in buckets)
    if not bs or bs[-1][1] <= 0:
        return None
    total = bs[-1][1]
    if not math.isinf(bs[-1][0]):
        bs.append((math.inf, total))
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for i, (le, count) in enumerate(bs):
        if count >= rank and count > prev_count:
            if math.isinf(le):
                return bs[i - 1][0] if i > 0 else None
            if i == 0 and le <= 0:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return bs[-2][0] if len(bs) > 1 else None


def merge_buckets(parts: list[list[tuple[float, float]]]) -> list[tuple[float, float]]:
    """Sum cumulative buckets of several edges; a bound missing in one part takes its next lower bound's count."""
    bounds = sorted({le for p in parts for le, _ in p})
    merged = []
    for le in bounds:
        total = 0.0
        for p in parts:
            below = [c for b, c in p if b <= le]
            total += max(below) if below else 0.0
        merged.append((le, total))
    return merged


def response_time(parts: list[_LatencyPart], key: str) -> float | None:
    """One edge's response time from the EdgeStats that make it up: a single part's own value; buckets when every
    part has them (as Kiali's histogram_quantile over the summed series); otherwise a request-weighted
    mean of the parts' values (meshscope: exact for avg, an estimate for quantiles, which cannot be merged)."""
    parts = [p for p in parts if p.requests > 0 or p.latency_ms or p.buckets]
    if not parts:
        return None
    if len(parts) == 1 and key in parts[0].latency_ms:
        return parts[0].latency_ms[key]  # the data side's own figure (exact bucket edges) for an unmerged edge
    if key in QUANTILES and all(p.buckets for p in parts):
        return histogram_quantile(QUANTILES[key], merge_buckets([p.buckets for p in parts]))
    known = [p for p in parts if key in p.latency_ms]
    if not known:
        return None
    if len(known) == 1:
        return known[0].latency_ms[key]
    weight = sum(p.requests for p in known)
    if weight <= 0:
        return sum(p.latency_ms[key] for p in known) / len(known)
    return sum(p.latency_ms[key] * p.requests for p in known) / weight


# ------------------------------------------------------------------------------------------- builder
def _source_args(ident: NodeIdentity) -> tuple[str, str, str, str, str, str, str]:
    """(cluster, svcNs, svc, wlNs, wl, app, ver) of a source node: Kiali gives sources no service, so a source
    without workload or app (bad source telemetry in Kiali) becomes the unknown source (meshscope: keeps its
    traffic instead of dropping it)."""
    if ident.kind == "unknown":
        return ident.cluster or UNKNOWN, UNKNOWN, "", UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN
    if ident.kind == "service":
        return ident.cluster, ident.namespace, ident.service, ident.namespace, UNKNOWN, UNKNOWN, UNKNOWN
    if not is_ok(ident.workload) and not is_ok(ident.app):
        return ident.cluster or UNKNOWN, UNKNOWN, "", UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN
    return ident.cluster, ident.namespace, "", ident.namespace, ident.workload, ident.app, ident.version


def _dest_args(ident: NodeIdentity) -> tuple[str, str, str, str, str, str, str]:
    if ident.kind in ("service", "unknown"):
        return ident.cluster, ident.namespace, ident.service, ident.namespace, UNKNOWN, UNKNOWN, UNKNOWN
    return ident.cluster, ident.namespace, ident.service, ident.namespace, ident.workload, ident.app, ident.version


class GraphBuilder:
    """Adds EdgeStats the way Kiali's ``populateTrafficMap`` adds Prometheus series, then runs the appenders that
    apply (response time, security policy, throughput, outsider, traffic generator, health, service reduction)."""

    def __init__(self, opts: GraphOptions):
        self.opts = opts.validate()
        self.nodes: dict[str, Node] = {}
        self.edges: dict[tuple[str, str, str], Edge] = {}
        self.mesh_services: set[str] = set()  # service nodes known to be Kubernetes services (never entries)

    # -- nodes
    def _node(self, args: tuple[str, str, str, str, str, str, str], ident: NodeIdentity,
              in_mesh: bool = False) -> Node:
        cluster, svc_ns, svc, wl_ns, wl, app, ver = args
        nid, ntype = node_id(cluster, svc_ns, svc, wl_ns, wl, app, ver, self._id_graph_type)
        node = self.nodes.get(nid)
        if node is None:
            namespace = wl_ns if is_ok(wl_ns) else svc_ns
            node = _new_node(nid, ntype, cluster, namespace, wl, app, ver, svc, self.opts.graph_type)
            self.nodes[nid] = node
        if ident.is_gateway and node.node_type != "service":
            node.is_gateway = "egress" if "egress" in (ident.workload or "").lower() else "ingress"
        if in_mesh:
            self.mesh_services.add(nid)
        if node.node_type == "service" and ident.kind == "service" and ident.virtual and not node.is_egress:
            if ident.virtual == "egress":
                node.is_egress = True
            elif in_mesh:
                pass  # a Kubernetes service the caller reached no workload of (Envoy 503 UH): a plain service
            elif node.service_entry is None and is_ok(node.service):
                node.service_entry = {"hosts": [node.service], "location": "MESH_EXTERNAL",
                                      "namespace": node.namespace}
        return node

    @property
    def _id_graph_type(self) -> str:
        return self.opts.graph_type

    @staticmethod
    def _dest_service(es: EdgeStats) -> tuple[str, str]:
        """(service, service namespace) of the destination: its own ``service``, else the host most requests went
        to when it names a Kubernetes service (``<svc>.<ns>.svc...``, or a bare ``<svc>[:port]``) - what Istio's
        ``destination_service_name``/``_namespace`` would say."""
        d = es.dest
        if is_ok(d.service):
            return d.service, d.namespace
        if d.kind != "workload":
            return "", ""
        per_host: dict[str, float] = {}
        for hosts in es.hosts.values():
            for h, v in hosts.items():
                per_host[h] = per_host.get(h, 0.0) + v
        if not per_host:
            return "", ""
        host = min(per_host, key=lambda h: (-per_host[h], h)).rsplit(":", 1)[0] if per_host else ""
        parts = host.split(".")
        if len(parts) >= 3 and parts[2] == "svc" and parts[0] and parts[1]:
            return parts[0], parts[1]
        if len(parts) == 1 and host:
            return host, d.namespace
        return "", ""

    def _inject(self, dest: NodeIdentity) -> bool:
        if not (self.opts.inject_service_nodes or self.opts.graph_type == "service"):
            return False
        if dest.kind != "workload" or not is_ok(dest.service) or dest.service in (PASSTHROUGH, BLACKHOLE):
            return False
        try:
            _, dtype = node_id(*_dest_args(dest), self._id_graph_type)
        except ValueError:
            return False
        return dtype != "service"

    def touches(self, es: EdgeStats) -> bool:
        """Kiali queries per requested namespace: traffic out of it, and into it (service or workload side)."""
        if not self.opts.namespaces:
            return True
        return es.source.namespace in self.opts.namespaces or es.dest.namespace in self.opts.namespaces

    def add(self, es: EdgeStats) -> None:
        if es.protocol not in PROTOCOLS or not self.touches(es):
            return
        svc_name, svc_ns = self._dest_service(es)
        d = es.dest
        if svc_name and not is_ok(d.service):
            d = replace(d, service=svc_name)
        try:
            src = self._node(_source_args(es.source), es.source)
            if self._inject(d):
                svc_ident = NodeIdentity(cluster=d.cluster, namespace=svc_ns, service=svc_name, kind="service")
                svc = self._node((d.cluster, svc_ns, svc_name, "", "", "", ""), svc_ident, in_mesh=True)
                dst = self._node(_dest_args(d), d)
                self._add_traffic(src, svc, es, response_time_here=False)
                self._add_traffic(svc, dst, es, response_time_here=True)
                svc.dest_services.add((d.cluster, svc_ns, svc_name))
            else:
                dst = self._node(_dest_args(d), d, in_mesh=d.kind == "service" and _k8s_hosts(es))
                self._add_traffic(src, dst, es, response_time_here=True)
        except ValueError:
            return  # Kiali skips series it cannot name (IsBadDestTelemetry); so do we
        if svc_name:
            dst.dest_services.add((d.cluster, svc_ns, svc_name))

    def _add_traffic(self, src: Node, dst: Node, es: EdgeStats, response_time_here: bool) -> None:
        key = (src.id, dst.id, es.protocol)
        edge = self.edges.get(key)
        if edge is None:
            edge = self.edges[key] = Edge(src, dst, es.protocol, response_time_here=response_time_here)
        window = es.window_seconds if es.window_seconds and es.window_seconds > 0 else float(self.opts.duration_s)
        default_host = es.dest.service if is_ok(es.dest.service) else ""
        edge.origins.add(es.origin)
        if es.protocol == "tcp":
            val = es.bytes_sent / window
            if val > 0:
                src.add_rate("tcpOut", val)
                dst.add_rate("tcpIn", val)
                edge.add_rate("tcp", val)
                flags, hosts = es.flags.get("-", {}), es.hosts.get("-", {})
                conns = max(es.requests, sum(flags.values()), sum(hosts.values()), 0.0)
                for f, share in _shares(flags, conns, "-") if conns > 0 else [("-", 1.0)]:
                    edge.add_response("-", f, "", val * share)
                for h, share in _shares(hosts, conns, default_host) if conns > 0 else [(default_host, 1.0)]:
                    edge.add_response("-", "", h, val * share)
                edge.codes["-"] = edge.codes.get("-", 0.0) + val
        else:
            counted = 0.0
            for code in sorted(es.responses):
                n = es.responses[code]
                if n <= 0:
                    continue
                counted += n
                val = n / window
                _add_to_metadata(es.protocol, val, code or "-", src, dst, edge)
                flags = es.flags.get(code, {})
                for f, share in _shares(flags, n, "-"):
                    edge.add_response(code or "-", f, "", val * share)
                for h, share in _shares(es.hosts.get(code, {}), n, default_host):
                    edge.add_response(code or "-", "", h, val * share)
            rest = (es.requests - counted) / window
            if rest > 1e-12:
                # meshscope: requests whose outcome the data side did not break down count in the totals only
                out_key, in_key = ("httpOut", "httpIn") if es.protocol == "http" else ("grpcOut", "grpcIn")
                src.add_rate(out_key, rest)
                dst.add_rate(in_key, rest)
                edge.add_rate(es.protocol, rest)
        total = max(es.requests, sum(v for v in es.responses.values() if v > 0))
        edge.latency.append(_LatencyPart(total, dict(es.latency_ms), list(es.latency_buckets)))
        edge.request_bytes += es.bytes_sent / window if es.protocol != "tcp" else 0.0
        edge.response_bytes += es.bytes_received / window if es.protocol != "tcp" else 0.0
        if es.mtls_requests is not None:
            # Kiali: rate over mutual TLS / rate whose policy is known; parts of one edge add up
            known = es.mtls_known if es.mtls_known else total
            if known > 0:
                edge.mtls += min(max(es.mtls_requests, 0.0), known) / window
                edge.mtls_known += known / window
        if es.source_principal:
            edge.source_principals.add(es.source_principal)
        if es.dest_principal:
            edge.dest_principals.add(es.dest_principal)

    # -- appenders and finish
    def build(self) -> "Graph":
        nodes, edges = self.nodes, list(self.edges.values())
        for nid in self.mesh_services:  # a service that has workloads behind it is no service entry
            nodes[nid].service_entry = None
        # outsider appender (telemetry.MarkOutsideOrInaccessible)
        for n in nodes.values():
            if n.node_type == "unknown":
                n.is_inaccessible = True
            elif n.node_type == "service" and n.namespace == UNKNOWN and n.service == UNKNOWN:
                n.is_inaccessible = True
            elif n.node_type == "service" and n.is_egress:
                n.is_inaccessible = True
            elif self.opts.namespaces and n.namespace != UNKNOWN and n.namespace not in self.opts.namespaces:
                n.is_outside = True
        # traffic generator (telemetry.MarkTrafficGenerators)
        dests = {e.dest.id for e in edges}
        for e in edges:
            if e.source.id not in dests:
                e.source.is_root = True
        # health appender: node request health from this graph's edges (before any service reduction, as Kiali)
        for e in edges:
            for code, val in e.codes.items():
                if val > 0:
                    _bump(e.source.outbound, e.protocol, code, val)
                    _bump(e.dest.inbound, e.protocol, code, val)
        if self.opts.graph_type == "service":
            nodes, edges = _reduce_to_service_graph(nodes, edges)
        return Graph(self.opts, dict(nodes), edges)


def _k8s_host(host: str) -> bool:
    parts = host.rsplit(":", 1)[0].split(".")
    return len(parts) >= 3 and parts[2] == "svc"


def _k8s_hosts(es: EdgeStats) -> bool:
    """Whether the requests went to a Kubernetes service host (``<svc>.<ns>.svc...``): then a destination without
    a workload is a mesh service, not an external one."""
    return any(_k8s_host(h) for hosts in es.hosts.values() for h in hosts) or _k8s_host(es.dest.service)


def _shares(parts: dict[str, float], total: float, rest_key: str = "") -> list[tuple[str, float]]:
    """Fractions of ``total`` per key, sorted; what the parts do not cover goes to ``rest_key`` (if given)."""
    out = []
    covered = 0.0
    for k in sorted(parts):
        v = parts[k]
        if v > 0 and total > 0:
            out.append((k, v / total))
            covered += v
    if rest_key and total > 0 and total - covered > 1e-12 * max(total, 1.0):
        out.append((rest_key, (total - covered) / total))
    return out


def _bump(d: dict[str, dict[str, float]], protocol: str, code: str, val: float) -> None:
    codes = d.setdefault(protocol, {})
    codes[code] = codes.get(code, 0.0) + val


def _add_to_metadata(protocol: str, val: float, code: str, src: Node, dst: Node, edge: Edge) -> None:
    """graph.AddToMetadata for one (code, rate) of http or grpc traffic."""
    if val <= 0:
        return
    edge.codes[code] = edge.codes.get(code, 0.0) + val
    if protocol == "grpc":
        src.add_rate("grpcOut", val)
        dst.add_rate("grpcIn", val)
        edge.add_rate("grpc", val)
        if code == "-":
            dst.add_rate("grpcInNoResponse", val)
            edge.add_rate("grpcNoResponse", val)
        else:
            # older Istio telemetry reports HTTP codes for gRPC: "if it quacks like a duck..."
            err = code[:1] in ("4", "5") if len(code) == 3 else code not in ("0", "")
            if err:
                dst.add_rate("grpcInErr", val)
                edge.add_rate("grpcErr", val)
        return
    src.add_rate("httpOut", val)
    dst.add_rate("httpIn", val)
    edge.add_rate("http", val)
    cls = {"3": "3xx", "4": "4xx", "5": "5xx"}.get(code[:1]) if code != "-" else "NoResponse"
    if cls:
        dst.add_rate(f"httpIn{cls}", val)
        edge.add_rate(f"http{cls}", val)


def _new_node(nid: str, ntype: str, cluster: str, namespace: str, workload: str, app: str, version: str,
              service: str, graph_type: str) -> Node:
    """graph.NewNodeExplicit: trim the fields a node type does not carry."""
    is_egress = False
    if ntype == "app":
        if graph_type != "versionedApp":
            workload = version = ""
        service = ""
    elif ntype == "service":
        app = workload = version = ""
        is_egress = service in (PASSTHROUGH, BLACKHOLE)
    elif ntype == "workload":
        app = "" if app == UNKNOWN else app
        version = "" if version == UNKNOWN else version
        service = ""
    elif ntype == "unknown":
        # graph.NewNodeExplicit keeps the labels; the unknown source is all "unknown"
        service = ""
    return Node(nid, ntype, cluster, namespace, workload, app, version, service, is_egress=is_egress)


def _reduce_to_service_graph(nodes: dict[str, Node], edges: list[Edge]) -> tuple[dict[str, Node], list[Edge]]:
    """telemetry.ReduceToServiceGraph: keep service nodes and non-service roots; a service's edges become the
    edges of the workloads behind it to other services, merged per (dest, protocol). meshscope: merged edges are
    new objects, and they keep the requests' latency so the service graph shows response times."""
    out_edges: dict[str, list[Edge]] = {}
    callers: dict[str, set[str]] = {}
    for e in edges:
        out_edges.setdefault(e.source.id, []).append(e)
        callers.setdefault(e.dest.id, set()).add(e.source.node_type)
    # meshscope: spans see who calls an ingress gateway (the unknown source), Istio's metrics do not, so Kiali
    # finds gateways as roots; a workload only the unknown source calls is kept as an entry point likewise
    entry = {nid for nid, n in nodes.items() if n.node_type not in ("service", "unknown")
             and (n.is_root or callers.get(nid) == {"unknown"})}
    reduced_nodes: dict[str, Node] = {}
    reduced_edges: list[Edge] = []
    for nid in sorted(nodes):
        n = nodes[nid]
        if n.node_type != "service":
            if n.is_root or nid in entry:
                reduced_nodes[nid] = n
                reduced_edges.extend(e for e in out_edges.get(nid, [])
                                     if e.dest.node_type == "service" or e.dest.id in entry)
            continue
        reduced_nodes[nid] = n
        merged: dict[tuple[str, str], Edge] = {}
        for wl_edge in out_edges.get(nid, []):
            if wl_edge.dest.node_type != "workload":
                continue
            for svc_edge in out_edges.get(wl_edge.dest.id, []):
                if svc_edge.dest.node_type != "service":
                    continue
                key = (svc_edge.dest.id, svc_edge.protocol)
                agg = merged.get(key)
                if agg is None:
                    agg = merged[key] = Edge(n, svc_edge.dest, svc_edge.protocol)
                agg.merge_from(svc_edge)
        reduced_edges.extend(merged[k] for k in sorted(merged))
    return reduced_nodes, reduced_edges


# ------------------------------------------------------------------------------------------- output
@dataclass
class Graph:
    opts: GraphOptions
    nodes: dict[str, Node]
    edges: list[Edge]

    def edge_status(self, e: Edge) -> tuple[str, float]:
        """appender/health.go: worst of the source's outbound and the dest's inbound tolerances over the edge, and
        the error ratio (%) of the tolerance that decided it, as ``node_health`` reports it for a node."""
        codes = {e.protocol: dict(e.codes)}
        out_status, out_ratio, _ = request_status(codes, "outbound", self.opts.tolerances)
        in_status, in_ratio, _ = request_status(codes, "inbound", self.opts.tolerances)
        if STATUS_PRIORITY[out_status] > STATUS_PRIORITY[in_status]:
            return out_status, out_ratio
        return in_status, in_ratio if in_status != out_status else max(in_ratio, out_ratio)

    def edge_health(self, e: Edge) -> str:
        return self.edge_status(e)[0]

    def node_health(self, n: Node, inbound=None, outbound=None) -> dict:
        inbound = n.inbound if inbound is None else inbound
        outbound = n.outbound if outbound is None else outbound
        st_in, r_in, t_in = request_status(inbound, "inbound", self.opts.tolerances)
        st_out, r_out, t_out = request_status(outbound, "outbound", self.opts.tolerances)
        if STATUS_PRIORITY[st_out] > STATUS_PRIORITY[st_in]:
            status, ratio, rate = st_out, r_out, t_out
        else:
            status, ratio, rate = st_in, r_in, (t_in if t_in > 0 else t_out)
        return {"status": status, "statusCode": STATUS_PRIORITY[status], "errorRatio": round(ratio, 3),
                "totalRequestRate": round(rate, 6)}

    def _health_data(self, n: Node, inbound=None, outbound=None, kind: str | None = None) -> dict | None:
        kind = kind or n.node_type
        if kind not in ("app", "service", "workload"):
            return None
        inbound = n.inbound if inbound is None else inbound
        outbound = n.outbound if outbound is None else outbound
        requests = {"inbound": _round_requests(inbound), "outbound": _round_requests(outbound),
                    "healthAnnotations": {}}
        data: dict = {}
        if kind == "app":
            data["workloadStatuses"] = []
        elif kind == "workload":
            data["workloadStatus"] = None  # replicas are unknown to meshscope: request health only
        data["requests"] = requests
        if not n.is_inaccessible:
            data["status"] = self.node_health(n, inbound, outbound)
        return data

    def _node_data(self, n: Node) -> dict:
        d: dict = {"id": n.hash}
        if n.parent:
            d["parent"] = n.parent
        d["nodeType"] = n.node_type
        d["cluster"] = n.cluster
        d["namespace"] = n.namespace
        for k, v in (("workload", n.workload), ("app", n.app), ("version", n.version), ("service", n.service)):
            if v:
                d[k] = v
        if n.dest_services and n.node_type in ("service", "workload", "app"):
            d["destServices"] = [{"cluster": c, "namespace": ns, "name": name}
                                 for c, ns, name in sorted(n.dest_services)]
        traffic = []
        for proto, keys in _NODE_RATES:
            rates = {k: rate_to_string(2, n.rates[k]) for k in sorted(keys) if n.rates.get(k, 0) > 0}
            if rates:
                traffic.append({"protocol": proto, "rates": rates})
        if traffic:
            d["traffic"] = traffic
        d["healthData"] = self._health_data(n)
        if n.is_gateway:
            d["isGateway"] = {"ingressInfo": {}, "egressInfo": {}, "gatewayAPIInfo": {}}
        if n.is_inaccessible:
            d["isInaccessible"] = True
        if n.is_outside:
            d["isOutside"] = True
        if n.is_root:
            d["isRoot"] = True
        if n.service_entry:
            d["isServiceEntry"] = dict(n.service_entry)
        return d

    def _edge_data(self, e: Edge, out_totals: dict[tuple[str, str], float]) -> dict:
        src, dst = e.source.hash, e.dest.hash
        d: dict = {"id": edge_hash(src, dst, e.protocol), "source": src, "target": dst}
        if e.dest_principals:
            d["destPrincipal"] = sorted(e.dest_principals)[0]
        if e.mtls > 0 and e.mtls_known > 0:
            d["isMTLS"] = f"{e.mtls / e.mtls_known * 100.0:.0f}"
        if e.protocol != "tcp" and (e.response_time_here or self.opts.graph_type == "service"):
            rt = response_time(e.latency, RESPONSE_TIME_KEYS[self.opts.response_time])
            if rt is not None and rt > 0 and math.isfinite(rt):
                d["responseTime"] = f"{rt:.0f}"
        if e.source_principals:
            d["sourcePrincipal"] = sorted(e.source_principals)[0]
        tp = e.request_bytes if self.opts.throughput_type == "request" else e.response_bytes
        if tp > 0 and e.protocol != "tcp":
            d["throughput"] = f"{tp:.0f}"
        d["traffic"] = self._edge_traffic(e, out_totals)
        d["healthStatus"] = self.edge_health(e)
        return d

    def _edge_traffic(self, e: Edge, out_totals: dict[tuple[str, str], float]) -> dict:
        """common.go addEdgeTelemetry: rates as strings, error and request shares, responses in % of the edge."""
        traffic: dict = {"protocol": e.protocol}
        names = _EDGE_RATES[e.protocol]
        rates = {k: rate_to_string(2, e.rates[k]) for k in names if e.rates.get(k, 0) > 0}
        if not rates:
            return traffic
        total = e.total
        if total > 0 and e.protocol in ("http", "grpc"):
            err = sum(e.rates.get(k, 0.0) for k in _ERR_RATES[e.protocol])
            if err > 0:
                rates[f"{e.protocol}PercentErr"] = f"{err / total * 100:.1f}"
            out = out_totals.get((e.source.id, e.protocol), 0.0)
            if out > 0:
                rates[f"{e.protocol}PercentReq"] = f"{total / out * 100:.1f}"
        traffic["rates"] = dict(sorted(rates.items()))
        if total > 0:
            responses = {}
            for code in sorted(e.responses):
                detail = e.responses[code]
                entry = {}
                if detail["flags"]:
                    entry["flags"] = {f: _pct(v, total) for f, v in sorted(detail["flags"].items())}
                if detail["hosts"]:
                    entry["hosts"] = {h: _pct(v, total) for h, v in sorted(detail["hosts"].items())}
                responses[code] = entry
            if responses:
                traffic["responses"] = responses
        return traffic

    def _boxes(self, node_datas: list[dict]) -> list[dict]:
        """common.go boxByApp / boxByNamespace / boxByCluster: compound parents for groups of >1 member."""
        boxes: list[dict] = []
        by = set(self.opts.box_by)
        if self.opts.graph_type in ("app", "versionedApp"):
            by.add("app")
        nodes_by_hash = {n.hash: n for n in self.nodes.values()}

        def make(groups: dict[str, list[dict]], kind: str, min_groups: int) -> None:
            if len(groups) < min_groups:
                return
            for key in sorted(groups):
                members = groups[key]
                if len(members) < 2:
                    continue
                first = members[0]
                box = {"id": sha(key), "nodeType": "box", "cluster": first["cluster"],
                       "namespace": first["namespace"] if kind in ("app", "namespace") else "",
                       "healthData": None, "isBox": kind}
                if kind == "app":
                    box["app"] = first["app"]
                    inbound: dict = {}
                    outbound: dict = {}
                    for m in members:
                        node = nodes_by_hash.get(m["id"])
                        if node is None:
                            continue
                        for p, codes in node.inbound.items():
                            for c, v in codes.items():
                                _bump(inbound, p, c, v)
                        for p, codes in node.outbound.items():
                            for c, v in codes.items():
                                _bump(outbound, p, c, v)
                        if m.get("isOutside"):
                            box["isOutside"] = True
                        if m.get("isInaccessible"):
                            box["isInaccessible"] = True
                    probe = Node("", "app", first["cluster"], first["namespace"])
                    box["healthData"] = self._health_data(probe, inbound, outbound, kind="app")
                for m in members:
                    m["parent"] = box["id"]
                boxes.append(box)

        if "app" in by:
            groups: dict[str, list[dict]] = {}
            for d in node_datas:
                if d.get("app") and d["app"] != UNKNOWN:
                    groups.setdefault(f"box_{d['cluster']}_{d['namespace']}_{d['app']}", []).append(d)
            make(groups, "app", 1)
        if "namespace" in by:
            groups = {}
            for d in node_datas + boxes:
                if not d.get("parent") and d["namespace"] not in (UNKNOWN, ""):
                    groups.setdefault(f"box_{d['cluster']}_{d['namespace']}", []).append(d)
            make(groups, "namespace", 2)
        if "cluster" in by:
            groups = {}
            for d in node_datas + boxes:
                if not d.get("parent") and d["cluster"] != UNKNOWN:
                    groups.setdefault(f"box_{d['cluster']}", []).append(d)
            make(groups, "cluster", 2)
        return boxes

    def to_kiali_json(self) -> dict:
        """The ``/api/namespaces/graph`` document: nodes (boxes first) and edges sorted as Kiali sorts them."""
        out_totals: dict[tuple[str, str], float] = {}
        for e in self.edges:
            out_totals[(e.source.id, e.protocol)] = out_totals.get((e.source.id, e.protocol), 0.0) + e.total
        node_datas = [self._node_data(n) for n in self.nodes.values()]
        boxes = self._boxes(node_datas)
        # members gained "parent" after creation: restore Kiali's field order
        node_datas = [_ordered(d) for d in node_datas + boxes]
        rank = {"cluster": 0, "namespace": 1, "app": 2}
        node_datas.sort(key=lambda d: (rank.get(d.get("isBox", ""), 3), d["cluster"], d["namespace"],
                                       d.get("app", ""), d.get("version", ""), d.get("service", ""),
                                       d.get("workload", ""), d["id"]))
        edge_datas = [self._edge_data(e, out_totals) for e in self.edges]
        edge_datas.sort(key=lambda d: (d["source"], d["target"], d["traffic"]["protocol"]))
        return {
            "timestamp": int(self.opts.query_time),
            "duration": int(self.opts.duration_s),
            "graphType": self.opts.graph_type,
            "elements": {"nodes": [{"data": d} for d in node_datas], "edges": [{"data": d} for d in edge_datas]},
        }


# common.go NodeData field order (Go marshals struct fields in declaration order)
_NODE_KEY_ORDER = ("id", "parent", "nodeType", "cluster", "namespace", "workload", "app", "version", "service",
                   "aggregate", "destServices", "labels", "traffic", "healthData", "hasCB", "hasFaultInjection",
                   "hasHealthConfig", "hasIngressWaypoint", "hasMirroring", "hasRequestRouting",
                   "hasRequestTimeout", "hasTCPTrafficShifting", "hasTrafficShifting", "hasVS", "hasWorkloadEntry",
                   "isAmbient", "isBox", "isDead", "isExtension", "isGateway", "isIdle", "isInaccessible",
                   "isK8sGatewayAPI", "isOutOfMesh", "isOutside", "isRoot", "isServiceEntry", "isWaypoint")
_NODE_KEY_RANK = {k: i for i, k in enumerate(_NODE_KEY_ORDER)}


def _ordered(d: dict) -> dict:
    return dict(sorted(d.items(), key=lambda kv: _NODE_KEY_RANK.get(kv[0], len(_NODE_KEY_RANK))))


def _round_requests(req: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    return {p: dict(sorted(codes.items())) for p, codes in sorted(req.items())}


_NODE_RATES = (
    ("grpc", ("grpcIn", "grpcInErr", "grpcInNoResponse", "grpcOut")),
    ("http", ("httpIn", "httpIn3xx", "httpIn4xx", "httpIn5xx", "httpInNoResponse", "httpOut")),
    ("tcp", ("tcpIn", "tcpOut")),
)
_EDGE_RATES = {
    "grpc": ("grpc", "grpcNoResponse", "grpcErr"),
    "http": ("http", "httpNoResponse", "http3xx", "http4xx", "http5xx"),
    "tcp": ("tcp",),
}
_ERR_RATES = {"grpc": ("grpcNoResponse", "grpcErr"), "http": ("httpNoResponse", "http4xx", "http5xx")}


def build_graph(edges: Iterable[EdgeStats], opts: GraphOptions) -> Graph:
    """The Kiali graph of ``edges`` for ``opts`` (graph type, namespaces, window, response-time quantile...)."""
    b = GraphBuilder(opts)
    for es in edges:
        b.add(es)
    return b.build()
