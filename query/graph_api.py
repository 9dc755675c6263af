"""HTTP routes of the service graph: Kiali's JSON (``/api/graph``, and Kiali's own path ``/api/namespaces/graph``)
and a server-rendered SVG (``/api/graph.svg``) from the same parameters.

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
from typing import Callable

import orjson
from aiohttp import web

from meshscope.collector.tenant import HEADER as TENANT_HEADER
from meshscope.collector.tenant import TenantError, tenant_from_header
from meshscope.store import StoreError

from .graph.model import GRAPH_TYPES, RESPONSE_TIME_KEYS, GraphError, GraphOptions, build_graph
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


class GraphService:
    """Builds graphs for HTTP requests. ``fetch(store, tenant, start_ns, end_ns, *, source, namespaces)`` returns
    the window's EdgeStats; it is injectable so tests and other sources can feed the same presentation."""

    def __init__(self, store, fetch: Fetch | None = None, *, workers: int = 2, clock: Callable[[], float] = time.time):
        self.store = store
        self._fetch = fetch
        self._workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self.clock = clock

    @property
    def fetch(self) -> Fetch | None:
        return self._fetch if self._fetch is not None else _default_fetch()

    def graph_json(self, tenant: str, opts: GraphOptions, source: str = "auto") -> dict:
        """Blocking: read the window's edges and build Kiali's JSON."""
        fetch = self.fetch
        if fetch is None:
            raise LookupError("the service graph has no data source in this build")
        start_ns = (opts.query_time - opts.duration_s) * NS
        end_ns = opts.query_time * NS
        try:
            edges = fetch(self.store, tenant, start_ns, end_ns, source=source,
                          namespaces=list(opts.namespaces) or None)
        except ValueError as err:  # the data side refusing a parameter (e.g. a source it does not have)
            raise BadRequest(str(err) or "bad request") from None
        return build_graph(edges, opts).to_kiali_json()

    async def _run(self, fn, *args):
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="meshscope-graph")
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def _build(self, request: web.Request) -> dict:
        try:
            tenant = tenant_from_header(request.headers.get(TENANT_HEADER))
        except TenantError as err:
            raise BadRequest(str(err)) from None
        opts, source = parse_options(request.query, self.clock())
        return await self._run(self.graph_json, tenant, opts, source)

    async def handle_json(self, request: web.Request) -> web.Response:
        try:
            doc = await self._build(request)
        except BadRequest as err:
            return _text(400, str(err))
        except Exception as err:  # noqa: BLE001 - every failure is a one-line answer, never a traceback
            return _failure(err)
        try:
            body = orjson.dumps(doc)
        except TypeError:  # a lone surrogate in a name: orjson refuses it, the json module escapes it
            body = json.dumps(doc, separators=(",", ":")).encode()
        return web.Response(body=body, content_type="application/json")

    async def handle_svg(self, request: web.Request) -> web.Response:
        try:
            doc = await self._build(request)
            svg = await self._run(render_svg, doc)
        except BadRequest as err:
            return _text(400, str(err))
        except Exception as err:  # noqa: BLE001
            return _failure(err)
        return web.Response(text=svg, content_type="image/svg+xml", charset="utf-8")

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/graph", self.handle_json),
            web.get("/api/namespaces/graph", self.handle_json),
            web.get("/api/graph.svg", self.handle_svg),
        ]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


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
    """``GET /api/graph``, ``/api/namespaces/graph`` and ``/api/graph.svg`` over ``store``."""
    return GraphService(store, fetch).routes()
