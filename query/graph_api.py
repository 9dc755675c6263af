"""HTTP routes of the service graph: Kiali's JSON (``/api/graph``, and Kiali's own path ``/api/namespaces/graph``)
and a server-rendered SVG (``/api/graph.svg``) from the same parameters; for the UI's side panel and scripts, one
node or edge in detail (``/api/graph/node?node=<id>``, ``/api/graph/edge?edge=<id>``: RED, health, top errors,
where its logs and traces are) and the namespaces with traffic (``/api/graph/namespaces``).

A page asks for the SVG, the JSON, the namespaces and a node's details at once, and all four read the same
window's edges: identical reads share one store query while it runs and for ``CACHE_TTL_S`` after (when
``queryTime`` is not given, the answer is then up to that old and says so in its ``timestamp``).

Parameters follow Kiali's ``graph/options.go`` (``namespaces``, ``graphType``, ``duration``, ``queryTime``,
``responseTime``, ``throughputType``, ``injectServiceNodes``, ``boxBy``) plus ``source`` (which data the edges come
from). Every value is bounded; a bad one is a 400 with a one-line plain-text reason. Store calls block, so they run
in a small thread pool of their own (the default executor carries the WAL's fsyncs).
"""
from __future__ import annotations

import asyncio
import json
import math
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Callable

import orjson
from aiohttp import web

from meshscope.collector.tenant import HEADER as TENANT_HEADER
from meshscope.collector.tenant import TenantError, tenant_from_header
from meshscope.store import StoreError

from .graph import details
from .graph.model import GRAPH_TYPES, RESPONSE_TIME_KEYS, Graph, GraphError, GraphOptions, build_graph
from .graph.svg import render_svg
from .graph.types import EdgeStats

NS = 1_000_000_000
DEFAULT_DURATION_S = 600
MAX_DURATION_S = 30 * 86400
MAX_NAMESPACES = 100
MAX_NAME_LEN = 253
SOURCES = ("auto", "rollup", "raw", "metrics", "spans")
_DURATION_RX = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+)s)?(?:(\d+)ms)?")
_DURATION_UNITS = (86400.0, 3600.0, 60.0, 1.0, 0.001)
# queryTime far outside this is a typo, not a request (2000-01-01 .. 2200-01-01)
MIN_QUERY_TIME, MAX_QUERY_TIME = 946684800, 7258118400
CACHE_TTL_S = 5.0
CACHE_MAX = 64
_ELEMENT_ID = re.compile(r"[0-9a-f]{64}")

Fetch = Callable[..., list[EdgeStats]]


class BadRequest(Exception):
    """A parameter the graph refuses; answered 400 with the message as a one-line plain-text body."""


# ------------------------------------------------------------------------------------------- parameters
def parse_duration(value: str | None) -> int:
    """``10m``, ``1h30m``, ``600s``, ``600`` (seconds) → whole seconds, between 1 s and 30 days."""
    if value is None or value.strip() == "":
        return DEFAULT_DURATION_S
    raw = value.strip()
    secs: float
    try:
        secs = float(raw)
    except ValueError:
        m = _DURATION_RX.fullmatch(raw)
        if not m or not any(m.groups()):
            raise BadRequest(f"invalid duration {value!r}: use seconds or a duration like 10m, 1h or 600s") from None
        secs = sum(int(g) * u for g, u in zip(m.groups(), _DURATION_UNITS) if g)
    if not math.isfinite(secs) or secs < 1:
        raise BadRequest(f"invalid duration {value!r}: must be at least 1s")
    if secs > MAX_DURATION_S:
        raise BadRequest(f"invalid duration {value!r}: at most {MAX_DURATION_S // 86400}d")
    return int(secs)


def parse_query_time(value: str | None, now: float) -> int:
    """Unix seconds (Kiali), also milliseconds or nanoseconds by magnitude → unix seconds; default now."""
    if value is None or value.strip() == "":
        return int(now)
    try:
        t = float(value.strip())
    except ValueError:
        raise BadRequest(f"invalid queryTime {value!r}: use unix seconds") from None
    if not math.isfinite(t):
        raise BadRequest(f"invalid queryTime {value!r}: use unix seconds")
    if t > 1e17:
        t /= 1e9
    elif t > 1e14:
        t /= 1e6
    elif t > 1e11:
        t /= 1e3
    if not MIN_QUERY_TIME <= t <= MAX_QUERY_TIME:
        raise BadRequest(f"invalid queryTime {value!r}: out of range")
    return int(t)


def parse_namespaces(values: list[str]) -> tuple[str, ...]:
    """Comma lists (repeatable) → distinct names in request order; at most 100."""
    out: list[str] = []
    for v in values:
        for name in v.split(","):
            name = name.strip()
            if not name:
                continue
            if len(name) > MAX_NAME_LEN or any(ord(c) < 32 for c in name):
                raise BadRequest(f"invalid namespace {name[:40]!r}")
            if name not in out:
                out.append(name)
    if len(out) > MAX_NAMESPACES:
        raise BadRequest(f"too many namespaces: {len(out)} (at most {MAX_NAMESPACES})")
    return tuple(out)


def _bool(name: str, value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    v = value.strip().lower()
    if v in ("true", "1", "yes"):
        return True
    if v in ("false", "0", "no"):
        return False
    raise BadRequest(f"invalid {name} {value!r}: use true or false")


def parse_options(query, now: float | None = None) -> tuple[GraphOptions, str]:
    """Request query → (graph options, edge source)."""
    now = time.time() if now is None else now
    graph_type = (query.get("graphType") or "workload").strip()
    if graph_type not in GRAPH_TYPES:
        raise BadRequest(f"invalid graphType {graph_type!r}: use one of {', '.join(GRAPH_TYPES)}")
    rt = (query.get("responseTime") or "95").strip()
    if rt not in RESPONSE_TIME_KEYS:
        raise BadRequest(f"invalid responseTime {rt!r}: use avg, 50, 95 or 99")
    tp = (query.get("throughputType") or "response").strip()
    if tp not in ("request", "response"):
        raise BadRequest(f"invalid throughputType {tp!r}: use request or response")
    box_by = tuple(b.strip() for b in (query.get("boxBy") or "").split(",") if b.strip())
    for b in box_by:
        if b not in ("app", "namespace", "cluster"):
            raise BadRequest(f"invalid boxBy {b!r}: use app, namespace or cluster")
    source = (query.get("source") or "auto").strip()
    if source not in SOURCES:
        raise BadRequest(f"invalid source {source!r}: use one of {', '.join(SOURCES)}")
    opts = GraphOptions(
        graph_type=graph_type,
        namespaces=parse_namespaces(query.getall("namespaces", []) if hasattr(query, "getall")
                                    else [query.get("namespaces") or ""]),
        duration_s=parse_duration(query.get("duration")),
        query_time=parse_query_time(query.get("queryTime"), now),
        response_time=rt,
        throughput_type=tp,
        inject_service_nodes=_bool("injectServiceNodes", query.get("injectServiceNodes"), False),
        box_by=box_by,
    )
    try:
        opts.validate()
    except GraphError as err:
        raise BadRequest(str(err)) from None
    return opts, source


# ------------------------------------------------------------------------------------------- service
def store_fetch(store, tenant: str, start_ns: int, end_ns: int, *, source: str = "auto",
                namespaces: list[str] | None = None) -> list[EdgeStats]:
    """Edges of a window from the store: ``spans`` (rollup + raw spans), ``raw`` or ``rollup`` (spans only, as
    named), ``metrics`` (Istio's request metrics only), ``auto`` (spans and metrics merged; metrics win where both
    know an edge)."""
    from .graph import edges as span_edges

    try:
        from .graph import istio_metrics
    except ImportError:  # pragma: no cover - the metrics reader ships with the spans reader
        istio_metrics = None
    if source == "metrics":
        if istio_metrics is None:
            raise BadRequest("source=metrics: this build has no metrics reader")
        return istio_metrics.fetch_metric_edges(store, tenant, start_ns, end_ns, namespaces=namespaces)
    spans = span_edges.fetch_edges(store, tenant, start_ns, end_ns, source="auto" if source in ("auto", "spans")
                                   else source, namespaces=namespaces)
    if source == "auto" and istio_metrics is not None:
        metrics = istio_metrics.fetch_metric_edges(store, tenant, start_ns, end_ns, namespaces=namespaces)
        return istio_metrics.merge_edges(spans, metrics)
    return spans


def _default_fetch() -> Fetch | None:
    """``store_fetch`` when the data side (``query/graph/edges.py``) is installed."""
    import importlib.util

    return store_fetch if importlib.util.find_spec(".graph.edges", __package__) is not None else None


def _not_in_graph(kind: str, element_id: str, opts) -> web.Response:
    return _text(404, f"no {kind} {element_id[:12]}... in this {opts.graph_type} graph of the last "
                      f"{_span(opts.duration_s)}: it had no traffic in that window")


class GraphService:
    """Builds graphs for HTTP requests. ``fetch(store, tenant, start_ns, end_ns, *, source, namespaces)`` returns
    the window's EdgeStats; it is injectable so tests and other sources can feed the same presentation.
    ``cache_ttl`` (seconds) keeps a window's edges for reuse; default ``CACHE_TTL_S`` over the store, 0 (only
    concurrent identical reads are shared) with an injected fetch."""

    def __init__(self, store, fetch: Fetch | None = None, *, workers: int = 2, clock: Callable[[], float] = time.time,
                 cache_ttl: float | None = None):
        self.store = store
        self._fetch = fetch
        self._workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self.clock = clock
        self.cache_ttl = (CACHE_TTL_S if fetch is None else 0.0) if cache_ttl is None else float(cache_ttl)
        self._cache: dict[tuple, tuple[float, int, list[EdgeStats]]] = {}
        self._inflight: dict[tuple, tuple[asyncio.Future, int]] = {}

    @property
    def fetch(self) -> Fetch | None:
        return self._fetch if self._fetch is not None else _default_fetch()

    @staticmethod
    def window(opts: GraphOptions) -> tuple[int, int]:
        return (opts.query_time - opts.duration_s) * NS, opts.query_time * NS

    def fetch_edges(self, tenant: str, opts: GraphOptions, source: str = "auto") -> list[EdgeStats]:
        """Blocking: the window's edges from the data source."""
        fetch = self.fetch
        if fetch is None:
            raise LookupError("the service graph has no data source in this build")
        start_ns, end_ns = self.window(opts)
        try:
            return fetch(self.store, tenant, start_ns, end_ns, source=source,
                         namespaces=list(opts.namespaces) or None)
        except ValueError as err:  # the data side refusing a parameter (e.g. a source it does not have)
            raise BadRequest(str(err) or "bad request") from None

    async def _run(self, fn, *args):
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="meshscope-graph")
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def _edges(self, tenant: str, opts: GraphOptions, source: str, pinned: bool
                     ) -> tuple[list[EdgeStats], GraphOptions]:
        """The window's edges, shared between identical concurrent reads and cached for ``cache_ttl``. Without a
        pinned ``queryTime`` a cached read stands for "now": the options get the time it was read at."""
        key = (tenant, opts.duration_s, opts.namespaces, source, opts.query_time if pinned else None)
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[2], replace(opts, query_time=hit[1])
        shared = self._inflight.get(key)
        if shared is None:
            task = asyncio.ensure_future(self._run(self.fetch_edges, tenant, opts, source))
            shared = self._inflight[key] = (task, opts.query_time)

            def done(t: asyncio.Future, key=key, query_time=opts.query_time) -> None:
                self._inflight.pop(key, None)
                if self.cache_ttl > 0 and not t.cancelled() and t.exception() is None:
                    if len(self._cache) >= CACHE_MAX:
                        stale = time.monotonic()
                        for k in [k for k, v in self._cache.items() if v[0] <= stale] or list(self._cache)[:1]:
                            self._cache.pop(k, None)
                    self._cache[key] = (time.monotonic() + self.cache_ttl, query_time, t.result())
            task.add_done_callback(done)
        task, query_time = shared
        edges = await asyncio.shield(task)
        return edges, replace(opts, query_time=query_time)

    async def _graph(self, request: web.Request) -> tuple[Graph, str, GraphOptions]:
        try:
            tenant = tenant_from_header(request.headers.get(TENANT_HEADER))
        except TenantError as err:
            raise BadRequest(str(err)) from None
        opts, source = parse_options(request.query, self.clock())
        pinned = bool((request.query.get("queryTime") or "").strip())
        edges, opts = await self._edges(tenant, opts, source, pinned)
        graph = await self._run(build_graph, edges, opts)
        return graph, tenant, opts

    async def _build(self, request: web.Request) -> dict:
        graph, _, _ = await self._graph(request)
        return await self._run(graph.to_kiali_json)

    async def handle_json(self, request: web.Request) -> web.Response:
        try:
            doc = await self._build(request)
        except BadRequest as err:
            return _text(400, str(err))
        except Exception as err:  # noqa: BLE001 - every failure is a one-line answer, never a traceback
            return _failure(err)
        return _json(doc)

    async def handle_svg(self, request: web.Request) -> web.Response:
        try:
            doc = await self._build(request)
            svg = await self._run(render_svg, doc)
        except BadRequest as err:
            return _text(400, str(err))
        except Exception as err:  # noqa: BLE001
            return _failure(err)
        return web.Response(text=svg, content_type="image/svg+xml", charset="utf-8")

    def _element_id(self, request: web.Request, name: str) -> str:
        value = (request.query.get(name) or "").strip().lower()
        if not value:
            raise BadRequest(f"missing {name}: the {name}'s id from /api/graph (data-id in the SVG)")
        if not _ELEMENT_ID.fullmatch(value):
            raise BadRequest(f"invalid {name} {value[:40]!r}: a {name} id is 64 hex digits, as /api/graph gives it")
        return value

    async def handle_node(self, request: web.Request) -> web.Response:
        """One node in detail: what the graph knows (RED, health, codes, neighbours) and the store's top errors
        and links for its identity. 404 when the node is not in this graph (no traffic in the window)."""
        try:
            node_id = self._element_id(request, "node")
            graph, tenant, opts = await self._graph(request)
            node = details.find_node(graph, node_id)
            if node is None:
                return _not_in_graph("node", node_id, opts)
            doc = await self._run(details.node_summary, graph, node)
            start_ns, end_ns = self.window(opts)
            try:
                extra = await self._run(details.store_details, self._data_store(), tenant, node, opts.graph_type,
                                        start_ns, end_ns)
            except StoreError as err:  # the graph's part still answers; the panel says what is missing
                extra = {"identity": None, "spans": [], "logs": [], "links": None,
                         "error": f"top errors unavailable: {err}"[:300]}
            doc["errors"]["spans"] = extra["spans"]
            doc["errors"]["logs"] = extra["logs"]
            if extra.get("error"):
                doc["errors"]["error"] = extra["error"]
            doc["identity"] = extra["identity"]
            doc["links"] = extra["links"]
            doc |= {"graphType": opts.graph_type, "duration": opts.duration_s, "timestamp": opts.query_time}
        except BadRequest as err:
            return _text(400, str(err))
        except Exception as err:  # noqa: BLE001
            return _failure(err)
        return _json(doc)

    async def handle_edge(self, request: web.Request) -> web.Response:
        """One edge in detail: RED, health, response codes and flags, mTLS, and both ends' links."""
        try:
            edge_id = self._element_id(request, "edge")
            graph, tenant, opts = await self._graph(request)
            edge = details.find_edge(graph, edge_id)
            if edge is None:
                return _not_in_graph("edge", edge_id, opts)
            doc = await self._run(details.edge_summary, graph, edge)
            start_ns, end_ns = self.window(opts)
            ends = {}
            for side, node in (("source", edge.source), ("target", edge.dest)):
                ident = details.identity_of(node, opts.graph_type)
                store = self._data_store()
                try:
                    ends[side] = None if ident is None or store is None else await self._run(
                        details.links, store, tenant, ident, start_ns, end_ns, opts.graph_type)
                except StoreError:
                    ends[side] = None
            doc["links"] = ends
            doc |= {"graphType": opts.graph_type, "duration": opts.duration_s, "timestamp": opts.query_time}
        except BadRequest as err:
            return _text(400, str(err))
        except Exception as err:  # noqa: BLE001
            return _failure(err)
        return _json(doc)

    async def handle_namespaces(self, request: web.Request) -> web.Response:
        """Namespaces with traffic in the window (every namespace filter ignored), for a namespace picker."""
        try:
            try:
                tenant = tenant_from_header(request.headers.get(TENANT_HEADER))
            except TenantError as err:
                raise BadRequest(str(err)) from None
            opts, source = parse_options(request.query, self.clock())
            opts = replace(opts, namespaces=())
            pinned = bool((request.query.get("queryTime") or "").strip())
            edges, opts = await self._edges(tenant, opts, source, pinned)
        except BadRequest as err:
            return _text(400, str(err))
        except Exception as err:  # noqa: BLE001
            return _failure(err)
        names = sorted({n for e in edges for n in (e.source.namespace, e.dest.namespace)
                        if n and n != "unknown"})
        return _json({"namespaces": [{"name": n} for n in names], "duration": opts.duration_s,
                      "timestamp": opts.query_time})

    def _data_store(self):
        """The store behind the default data source, for the details' own queries; None with an injected fetch
        that has no store of that kind."""
        return self.store if hasattr(self.store, "query") and hasattr(self.store, "database") else None

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/graph", self.handle_json),
            web.get("/api/namespaces/graph", self.handle_json),
            web.get("/api/graph.svg", self.handle_svg),
            web.get("/api/graph/node", self.handle_node),
            web.get("/api/graph/edge", self.handle_edge),
            web.get("/api/graph/namespaces", self.handle_namespaces),
        ]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def _span(seconds: int) -> str:
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % n == 0:
            return f"{seconds // n}{unit}"
    return f"{seconds}s"


def _json(doc) -> web.Response:
    try:
        body = orjson.dumps(doc)
    except TypeError:  # a lone surrogate in a name: orjson refuses it, the json module escapes it
        body = json.dumps(doc, separators=(",", ":")).encode()
    return web.Response(body=body, content_type="application/json")


def _text(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=" ".join(message.split()) + "\n", content_type="text/plain")


def _failure(err: Exception) -> web.Response:
    if isinstance(err, LookupError):
        return _text(503, str(err))
    if isinstance(err, StoreError):
        return _text(503 if err.retryable else 500, f"graph query failed: {err}"[:500])
    name = type(err).__name__
    return _text(500, f"graph query failed: {name}: {err}"[:500])


def routes(store, fetch: Fetch | None = None) -> list[web.RouteDef]:
    """``GET /api/graph``, ``/api/namespaces/graph``, ``/api/graph.svg``, ``/api/graph/node``, ``/api/graph/edge``
    and ``/api/graph/namespaces`` over ``store``."""
    return GraphService(store, fetch).routes()
