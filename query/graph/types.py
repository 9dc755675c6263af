"""The record that crosses from graph *data* (spans, mesh metrics, the per-minute rollup) to graph
*presentation* (Kiali JSON, SVG, CLI): one directed edge between two workload-level identities, with counts.

Counts, not rates: the presenter divides by ``window_seconds`` (and the span side has already multiplied by the
sampling ratio when it is known), so edges from several sources or minutes can be merged by adding fields.
"""
from __future__ import annotations

from dataclasses import dataclass, field

UNKNOWN = "unknown"


@dataclass(frozen=True)
class NodeIdentity:
    """Kiali's identity of a node at workload level; graph types (app, versionedApp, service) are projections.

    ``kind`` is ``workload`` for a mesh/app workload, ``service`` for a virtual destination that has no workload
    (database, external host, ``PassthroughCluster``; ``service`` then names it), ``unknown`` for Kiali's unknown
    source (a root request with no caller). Empty or unknown parts are the string ``"unknown"``.
    """
    cluster: str = UNKNOWN
    namespace: str = UNKNOWN
    workload: str = UNKNOWN
    app: str = UNKNOWN
    version: str = UNKNOWN
    service: str = UNKNOWN
    kind: str = "workload"  # workload | service | unknown
    is_gateway: bool = False
    virtual: str = ""  # for kind=service without a workload: db | messaging | peer | host | egress


@dataclass
class EdgeStats:
    """Traffic source → dest over one window for one protocol (http | grpc | tcp)."""
    source: NodeIdentity
    dest: NodeIdentity
    protocol: str
    window_seconds: float
    requests: float = 0.0               # http/grpc requests (already scaled by sampling); tcp: connections
    responses: dict[str, float] = field(default_factory=dict)  # code ("200", "503", "-" = no response; gRPC code
    #                                                             for grpc) -> requests
    flags: dict[str, dict[str, float]] = field(default_factory=dict)  # code -> response flags -> requests
    hosts: dict[str, dict[str, float]] = field(default_factory=dict)  # code -> destination service host -> requests
    latency_ms: dict[str, float] = field(default_factory=dict)  # "p50" "p95" "p99" "avg" (empty when unknown)
    latency_buckets: list[tuple[float, float]] = field(default_factory=list)  # (upper bound ms, cumulative count),
    #                                            optional: lets presenters merge edges and recompute quantiles
    bytes_sent: float = 0.0             # request bytes (tcp: bytes source -> dest)
    bytes_received: float = 0.0         # response bytes (tcp: bytes dest -> source)
    mtls_requests: float | None = None  # requests over mutual TLS; None = unknown (spans rarely know)
    mtls_known: float | None = None     # the denominator of the mTLS share: requests whose security policy is
    #                                     known (Kiali: destination-reported only; tcp: bytes); None = requests
    source_principal: str = ""
    dest_principal: str = ""
    origin: str = "spans"               # spans | metrics: metrics win for rates when both exist
