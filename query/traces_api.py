"""HTTP routes for traces: Jaeger's query API (so Grafana's Jaeger data source and Kiali's tracing tab read
meshscope), the trace as OTLP JSON, trace summaries, RED from spans and the logs of a trace.

Jaeger routes (``/api/services``, ``/api/services/<s>/operations``, ``/api/operations``, ``/api/traces``,
``/api/traces/<id>``) answer Jaeger's ``structuredResponse`` JSON, errors included
(``{"data":null,...,"errors":[{"code":400,"msg":"..."}]}``), because that is what its clients parse. meshscope's
own routes (``/api/search/traces``, ``/api/red``, ``/api/red/series``, ``/api/traces/<id>/logs``,
``/api/traces/<id>/otlp``, ``/api/v3/traces/<id>``) answer plain-text one-line 400s like the graph and Loki APIs.
Every client-controlled value is bounded (limits, time ranges, tag counts and lengths, spans per trace). Store calls
block, so they run in a small thread pool of their own (the default executor carries the WAL's fsyncs).
"""
from __future__ import annotations

import asyncio
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import orjson
from aiohttp import web

from meshscope.collector.tenant import HEADER as TENANT_HEADER
from meshscope.collector.tenant import TenantError, tenant_from_header
from meshscope.sqlutil import is_text
from meshscope.store import StoreError

from .logql.values import parse_go_duration
from .traces import jaeger, otlp
from .traces.model import BadTraceId, normalize_trace_id
from .traces.red import DEFAULT_KINDS, MAX_POINTS, red_series, red_summary
from .traces.search import (MAX_LIMIT, MAX_TAGS, MAX_TRACE_SPANS, SearchError, SearchQuery, TraceReader,
                            span_kind_of, status_of)

NS = 1_000_000_000
DEFAULT_LOOKBACK_NS = 3600 * NS
JAEGER_DEFAULT_LIMIT = 100  # Jaeger's defaultQueryLimit
DEFAULT_LIMIT = 20
MAX_TRACE_IDS = 100  # traceID= parameters of one /api/traces request
MAX_LOG_LINES = 5000
_DAYS = re.compile(r"(\d+)d(.*)")
# unix times far outside 2000..2200 are typos, not requests
MIN_TIME_NS, MAX_TIME_NS = 946684800 * NS, 7258118400 * NS


class BadRequest(Exception):
    """A parameter we refuse; 400 with the message (Jaeger JSON on Jaeger routes, plain text elsewhere)."""


class NotFound(Exception):
    pass


# ------------------------------------------------------------------------------------------- parameters
def parse_duration_ns(name: str, value: str | None, default: int = 0) -> int:
    """Go durations (``100ms``, ``1.5s``, ``250us``, ``1h30m``) plus whole days (``2d``) → ns, not negative."""
    if value is None or value.strip() == "":
        return default
    v = value.strip()
    try:
        m = _DAYS.fullmatch(v)
        ns = int(m.group(1)) * 86400 * NS + (parse_go_duration(m.group(2)) if m.group(2) else 0) if m \
            else parse_go_duration(v)
    except (ValueError, OverflowError):
        raise BadRequest(f"unable to parse param '{name}': invalid duration {v[:40]!r} (use e.g. 100ms, 1.5s, 1h)") \
            from None
    if ns < 0:
        raise BadRequest(f"unable to parse param '{name}': must not be negative")
    return ns


def parse_time_ns(name: str, value: str | None, unit_ns: int | None = None) -> int | None:
    """A time: integer in ``unit_ns`` when given (Jaeger: µs), else unix s/ms/µs/ns told apart by magnitude, or
    RFC3339."""
    if value is None or value.strip() == "":
        return None
    v = value.strip()
    try:
        if unit_ns is not None:
            t = int(v) * unit_ns
        elif re.fullmatch(r"-?\d+(\.\d+)?", v):
            f = float(v)
            t = int(f * NS) if f < 1e11 else int(f * 1e6) if f < 1e14 else int(f * 1e3) if f < 1e17 else int(v)
        else:
            from .loki_api import parse_rfc3339

            t = parse_rfc3339(v)
    except (ValueError, OverflowError):
        raise BadRequest(f"unable to parse param '{name}': {v[:40]!r} is not a time") from None
    if not MIN_TIME_NS <= t <= MAX_TIME_NS:
        raise BadRequest(f"unable to parse param '{name}': {v[:40]!r} is out of range")
    return t


def parse_limit(value: str | None, default: int, clamp: bool) -> int:
    if value is None or value.strip() == "":
        return default
    try:
        n = int(value.strip())
    except ValueError:
        raise BadRequest(f"unable to parse param 'limit': {value[:40]!r} is not an integer") from None
    if n <= 0:
        return default if clamp else _raise(f"limit must be between 1 and {MAX_LIMIT}")
    if n > MAX_LIMIT:
        return MAX_LIMIT if clamp else _raise(f"limit must be between 1 and {MAX_LIMIT}")
    return n


def _raise(msg: str):
    raise BadRequest(msg)


def parse_tags(query, jaeger_style: bool) -> list[tuple[str, str]]:
    """Jaeger's ``tag=key:value`` (repeatable) and ``tags={"k":"v"}`` JSON; meshscope's own routes take
    ``tag=key=value`` (``key:value`` too when there is no ``=``)."""
    out: list[tuple[str, str]] = []
    for raw in query.getall("tag", []):
        sep = ":" if jaeger_style or "=" not in raw else "="
        if sep not in raw:
            raise BadRequest(f"malformed 'tag' parameter, expecting key{sep}value, received: {raw[:80]}")
        k, v = raw.split(sep, 1)
        out.append((k, v))
    for raw in query.getall("tags", []):
        if len(raw) > 64 * 1024:
            raise BadRequest("malformed 'tags' parameter: too long")
        try:
            obj = json.loads(raw)
        except ValueError as err:
            raise BadRequest(f"malformed 'tags' parameter, cannot unmarshal JSON: {err}") from None
        if not isinstance(obj, dict):
            raise BadRequest("malformed 'tags' parameter, expecting a JSON object of strings")
        for k, v in obj.items():
            if not isinstance(v, str):
                if isinstance(v, bool):
                    v = "true" if v else "false"
                elif isinstance(v, (int, float)):
                    v = str(v)
                else:
                    raise BadRequest("malformed 'tags' parameter, expecting a JSON object of strings")
            if not (is_text(k) and is_text(v)):  # a JSON escape of half a surrogate pair, e.g. "\ud800"
                raise BadRequest("malformed 'tags' parameter: keys and values must be valid UTF-8 text")
            out.append((k, v))
        if len(out) > MAX_TAGS:
            break
    if len(out) > MAX_TAGS:
        raise BadRequest(f"too many tag filters (at most {MAX_TAGS})")
    return out


# ------------------------------------------------------------------------------------------- service
class TracesService:
    """Serves the trace routes over ``store``. ``max_range_s`` bounds every time range a client asks for (the
    store's retention); ``max_spans`` caps a trace by id."""

    def __init__(self, store, *, workers: int = 2, max_range_s: int = 7 * 86400, max_spans: int = MAX_TRACE_SPANS,
                 clock: Callable[[], float] = time.time):
        self.store = store
        self.reader = TraceReader(store)
        self.max_range_ns = int(max_range_s) * NS
        self.max_spans = max_spans
        self.clock = clock
        self._workers = workers
        self._pool: ThreadPoolExecutor | None = None

    # -- helpers -------------------------------------------------------------------------
    async def _run(self, fn, *args):
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="meshscope-traces")
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    @staticmethod
    def _tenant(request: web.Request) -> str:
        try:
            return tenant_from_header(request.headers.get(TENANT_HEADER))
        except TenantError as err:
            raise BadRequest(str(err)) from None

    def _window(self, query, unit_ns: int | None, default_lookback_ns: int = DEFAULT_LOOKBACK_NS) -> tuple[int, int]:
        """(start, end) ns: ``end`` default now, ``start`` default end - ``since``/``lookback`` (or 1 h); clamped to
        the retention."""
        now = int(self.clock() * NS)
        end = parse_time_ns("end", query.get("end"), unit_ns)
        end = now if end is None else end
        start = parse_time_ns("start", query.get("start"), unit_ns)
        if start is None:
            lb = query.get("since") or (query.get("lookback") if query.get("lookback") != "custom" else None)
            start = end - parse_duration_ns("since" if query.get("since") else "lookback", lb, default_lookback_ns)
        if end < start:
            raise BadRequest("'end' is before 'start'")
        return max(start, end - self.max_range_ns), end

    def _search_query(self, query, jaeger_style: bool) -> SearchQuery:
        start, end = self._window(query, 1000 if jaeger_style else None)
        try:
            q = SearchQuery(
                start_ns=start, end_ns=end, service=(query.get("service") or "").strip(),
                operation=(query.get("operation") or "").strip(),
                span_kind=span_kind_of(query.get("spanKind") or ""), status=status_of(query.get("status") or ""),
                min_duration_ns=parse_duration_ns("minDuration", query.get("minDuration")),
                max_duration_ns=parse_duration_ns("maxDuration", query.get("maxDuration")),
                tags=parse_tags(query, jaeger_style),
                limit=parse_limit(query.get("limit"), JAEGER_DEFAULT_LIMIT if jaeger_style else DEFAULT_LIMIT,
                                  clamp=jaeger_style))
            q.validate()
        except SearchError as err:
            raise BadRequest(str(err)) from None
        return q

    def _trace_id(self, request: web.Request) -> str:
        try:
            return normalize_trace_id(request.match_info["trace_id"])
        except BadTraceId as err:
            raise BadRequest(str(err)) from None

    # -- Jaeger --------------------------------------------------------------------------
    async def _jaeger(self, request: web.Request, build) -> web.Response:
        try:
            doc = await build(request)
        except BadRequest as err:
            return _json(jaeger.error_response(400, str(err)), 400)
        except NotFound as err:
            return _json(jaeger.error_response(404, str(err) or "trace not found"), 404)
        except Exception as err:  # noqa: BLE001 - every failure is an answer, never a traceback
            status, msg = _failure(err)
            return _json(jaeger.error_response(status, msg), status)
        return _json(doc)

    async def _services(self, request):
        tenant = self._tenant(request)
        now = int(self.clock() * NS)
        names = await self._run(self.reader.services, tenant, now - self.max_range_ns, now)
        return jaeger.response(names, total=len(names))

    async def _operations_of(self, request):
        tenant = self._tenant(request)
        service = request.match_info["service"]
        now = int(self.clock() * NS)
        ops = await self._run(self.reader.operations, tenant, service, now - self.max_range_ns, now)
        names = sorted({name for name, _ in ops})
        return jaeger.response(names, total=len(names))

    async def _operations(self, request):
        tenant = self._tenant(request)
        service = request.query.get("service") or ""
        if not service:
            raise BadRequest("parameter 'service' is required")
        try:
            kind = span_kind_of(request.query.get("spanKind") or "")
        except SearchError as err:
            raise BadRequest(str(err)) from None
        now = int(self.clock() * NS)
        ops = await self._run(self.reader.operations, tenant, service, now - self.max_range_ns, now, kind)
        data = [{"name": name, "spanKind": jaeger.KIND_NAMES.get(k, "")} for name, k in ops]
        return jaeger.response(data, total=len(data))

    async def _find(self, request):
        tenant = self._tenant(request)
        ids = request.query.getall("traceID", [])
        if ids:
            if len(ids) > MAX_TRACE_IDS:
                raise BadRequest(f"at most {MAX_TRACE_IDS} traceID parameters")
            try:
                tids = list(dict.fromkeys(normalize_trace_id(t) for t in ids))
            except BadTraceId as err:
                raise BadRequest(f"cannot parse traceID param: {err}") from None
        else:
            q = self._search_query(request.query, jaeger_style=True)
            if not q.service:
                raise BadRequest("parameter 'service' is required")
            tids = await self._run(self.reader.find_trace_ids, tenant, q)
        traces = await self._run(self.reader.get_traces, tenant, tids) if tids else []
        data = [jaeger.trace_json(t) for t in traces]
        return jaeger.response(data)

    async def _get(self, request):
        tenant = self._tenant(request)
        tid = self._trace_id(request)
        trace = await self._run(self.reader.get_trace, tenant, tid, self.max_spans)
        if trace is None:
            raise NotFound("trace not found")
        return jaeger.response([jaeger.trace_json(trace)])

    # -- meshscope's own ------------------------------------------------------------------
    async def _plain(self, request: web.Request, build) -> web.Response:
        try:
            doc = await build(request)
        except BadRequest as err:
            return _text(400, str(err))
        except NotFound as err:
            return _text(404, str(err) or "trace not found")
        except Exception as err:  # noqa: BLE001
            status, msg = _failure(err)
            return _text(status, msg)
        return _json(doc)

    async def _otlp(self, request):
        tenant = self._tenant(request)
        trace = await self._run(self.reader.get_trace, tenant, self._trace_id(request), self.max_spans)
        if trace is None:
            raise NotFound("trace not found")
        return otlp.traces_data(trace)

    async def _otlp_v3(self, request):
        return {"result": await self._otlp(request)}

    async def _search(self, request):
        tenant = self._tenant(request)
        q = self._search_query(request.query, jaeger_style=False)
        summaries = await self._run(self.reader.search, tenant, q)
        return {"traces": [s.to_json() for s in summaries], "limit": q.limit,
                "start": str(q.start_ns), "end": str(q.end_ns)}

    async def _logs(self, request):
        tenant = self._tenant(request)
        tid = self._trace_id(request)
        start, end = self._window(request.query, None, default_lookback_ns=86400 * NS)
        limit = request.query.get("limit") or "1000"
        try:
            n = int(limit)
        except ValueError:
            raise BadRequest(f"invalid limit {limit[:40]!r}") from None
        if not 1 <= n <= MAX_LOG_LINES:
            raise BadRequest(f"limit must be between 1 and {MAX_LOG_LINES}")
        logs, (lo, hi) = await self._run(self.reader.trace_logs, tenant, tid, start, end, n)
        return {"traceID": tid, "start": str(lo), "end": str(hi), "logs": logs,
                "logql": '{service_name=~".+"} | trace_id="' + tid + '"'}

    def _red_args(self, request):
        query = request.query
        start, end = self._window(query, None)
        by = (query.get("by") or "service").strip()
        if by not in ("service", "operation"):
            raise BadRequest(f"invalid by {by[:40]!r}: use service or operation")
        kind = (query.get("spanKind") or "").strip().lower()
        if kind in ("", "entry"):
            kinds = DEFAULT_KINDS
        elif kind == "all":
            kinds = ()
        else:
            try:
                kinds = tuple(span_kind_of(k) for k in kind.split(",") if k.strip())
            except SearchError as err:
                raise BadRequest(str(err)) from None
        service = (query.get("service") or "").strip()
        if len(service) > 1024:
            raise BadRequest("service is at most 1024 characters")
        return self._tenant(request), start, end, service, by == "operation", kinds

    async def _red(self, request):
        tenant, start, end, service, by_op, kinds = self._red_args(request)
        rows = await self._run(lambda: red_summary(self.store, tenant, start, end, service=service,
                                                   by_operation=by_op, kinds=kinds))
        window_s = (end - start) / NS
        return {"start": str(start), "end": str(end), "windowSeconds": window_s,
                "data": [r.to_json(window_s) for r in rows]}

    async def _red_series(self, request):
        tenant, start, end, service, by_op, kinds = self._red_args(request)
        step_ns = parse_duration_ns("step", request.query.get("step"), 0)
        if step_ns == 0:
            step_ns = max(NS, (end - start) // 60 // NS * NS) or NS
        step_s = max(1, step_ns // NS)
        if (end - start) // NS // step_s > MAX_POINTS:
            raise BadRequest(f"too many points: use a larger step (at most {MAX_POINTS} buckets)")
        series = await self._run(lambda: red_series(self.store, tenant, start, end, step_s, service=service,
                                                    by_operation=by_op, kinds=kinds))
        return {"start": str(start), "end": str(end), "step": step_s, "series": series}

    # -- wiring --------------------------------------------------------------------------
    def routes(self) -> list[web.RouteDef]:
        def j(fn):
            async def handler(request: web.Request) -> web.Response:
                return await self._jaeger(request, fn)
            return handler

        def p(fn):
            async def handler(request: web.Request) -> web.Response:
                return await self._plain(request, fn)
            return handler

        return [
            web.get("/api/services", j(self._services)),
            web.get("/api/services/{service}/operations", j(self._operations_of)),
            web.get("/api/operations", j(self._operations)),
            web.get("/api/traces", j(self._find)),
            web.get("/api/traces/{trace_id}", j(self._get)),
            web.get("/api/traces/{trace_id}/otlp", p(self._otlp)),
            web.get("/api/traces/{trace_id}/logs", p(self._logs)),
            web.get("/api/v3/traces/{trace_id}", p(self._otlp_v3)),
            web.get("/api/search/traces", p(self._search)),
            web.get("/api/red", p(self._red)),
            web.get("/api/red/series", p(self._red_series)),
        ]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def _json(doc, status: int = 200) -> web.Response:
    try:
        body = orjson.dumps(doc)
    except TypeError:  # a lone surrogate in a name: orjson refuses it, the json module escapes it
        body = json.dumps(doc, separators=(",", ":")).encode()
    return web.Response(body=body, status=status, content_type="application/json")


def _text(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=" ".join(message.split()) + "\n", content_type="text/plain")


def _failure(err: Exception) -> tuple[int, str]:
    if isinstance(err, StoreError):
        return (503 if err.retryable else 500), f"trace query failed: {err}"[:500]
    if isinstance(err, (BadTraceId, SearchError)):  # e.g. a tag value checked only when the SQL is built
        return 400, str(err)
    return 500, f"trace query failed: {type(err).__name__}: {err}"[:500]


def routes(store, **kwargs) -> list[web.RouteDef]:
    """The trace routes over ``store`` (see ``TracesService`` for the options)."""
    return TracesService(store, **kwargs).routes()
