"""Loki's HTTP query API (``/loki/api/v1/...``) over the LogQL engine, so Grafana's Loki data source and logcli work.

Shapes, parameters, defaults and error texts follow Loki (``pkg/loghttp``, ``pkg/util/marshal``); see
``shared/reference/logql.md`` §6. Every engine call blocks on the store, and the collectors share this event loop,
so each one runs in a small dedicated thread pool (not the default executor, which the WAL's fsyncs use).
"""
from __future__ import annotations

import asyncio
import calendar
import datetime
import logging
import math
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import orjson
from aiohttp import WSMsgType, web
from aiohttp.http_exceptions import HttpProcessingError
from multidict import MultiDict, MultiDictProxy

from meshscope.collector.tenant import HEADER as TENANT_HEADER
from meshscope.collector.tenant import TenantError, tenant_from_header

from .logql import ast as A
from .logql.engine import LogLine, LogQLEngine, QueryError, Result
from .logql.evaluator import Matrix, Scalar, Vector
from .logql.lexer import LogQLSyntaxError
from .logql.parser import parse, parse_matchers
from .logql.values import format_float, go_quote

log = logging.getLogger("meshscope.query.loki_api")

PREFIX = "/loki/api/v1"
NS = 1_000_000_000
DEFAULT_SINCE_NS = 3600 * NS
DEFAULT_LIMIT = 100
MAX_QUERY_BYTES = 64 * 1024
MAX_MATCHERS = 100
MAX_TAIL_DELAY_S = 5
CATEGORIZE = "categorize-labels"
ENCODING_FLAGS_HEADER = "X-Loki-Response-Encoding-Flags"
ENCODING_FLAGS_PARAM = "encodingFlags"
# Tail: how often to poll, how far behind the cursor to look again for lines the store took late (a small buffer
# waits up to 5 x the flush interval before its insert; an SDK or collector batches for seconds; a loaded machine
# was measured a minute behind), and how many of those lines to re-read per poll (the newest ones: late lines land
# there).
TAIL_POLL_S = 1.0
TAIL_LOOKBACK_NS = 300 * NS
TAIL_PAGES_PER_POLL = 10
TAIL_LATE_LINES = 1000
MAX_TAILS = 32  # each open tail polls the store once a second


class BadRequest(Exception):
    """A parameter Loki would refuse; answered 400 with ``message`` as the body."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message, self.status = message, status


# ------------------------------------------------------------------------------------------- parameter parsing
_RFC3339 = re.compile(r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):(\d{2}))")
_PROM_DURATION = re.compile(r"(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?")
_PROM_UNITS_NS = (365 * 86400 * NS, 7 * 86400 * NS, 86400 * NS, 3600 * NS, 60 * NS, NS, 1_000_000)
_LABEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def parse_rfc3339(value: str) -> int:
    """RFC3339 / RFC3339Nano → unix ns, keeping every fraction digit Go keeps (up to 9)."""
    m = _RFC3339.fullmatch(value)
    if not m:
        raise ValueError(f"cannot parse {value!r} as RFC3339")
    y, mo, d, h, mi, s = (int(m.group(i)) for i in range(1, 7))
    if not (1 <= mo <= 12 and 1 <= d <= 31 and h < 24 and mi < 60 and s < 61):
        raise ValueError(f"cannot parse {value!r} as RFC3339: field out of range")
    try:
        datetime.date(y, mo, d)  # rejects 31 Feb and friends
    except ValueError as err:
        raise ValueError(f"cannot parse {value!r} as RFC3339: {err}") from None
    secs = calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0))
    frac = (m.group(7) or "")[:9].ljust(9, "0")
    if not m.group(8):
        off = (int(m.group(10)) * 60 + int(m.group(11))) * 60
        secs -= off if m.group(9) == "+" else -off
    return secs * NS + int(frac)


def parse_timestamp(value: str | None, default_ns: int) -> int:
    """Loki's ``parseTimestamp``: float seconds when it has a dot, integer seconds up to 10 digits, ns beyond,
    else RFC3339Nano."""
    if value is None or value == "":
        return default_ns
    if "." in value:
        try:
            t = float(value)
        except ValueError:
            pass
        else:
            if not math.isfinite(t):
                raise ValueError(f"invalid timestamp {value!r}")
            frac, whole = math.modf(t)
            frac = round(frac * 1000) / 1000
            return int(whole) * NS + int(round(frac * NS))
    if re.fullmatch(r"[+-]?\d+", value):
        n = int(value)
        if not -(1 << 63) <= n < (1 << 63):
            raise ValueError(f"timestamp {value!r} out of range")
        return n * NS if len(value) <= 10 else n
    return parse_rfc3339(value)


def parse_prom_duration(value: str) -> int:
    """Prometheus ``model.ParseDuration`` (``1h30m``, ``15000ms``; units in descending order) → ns."""
    if value == "0":
        return 0
    m = _PROM_DURATION.fullmatch(value)
    if not value or not m or not any(m.groups()):
        raise ValueError(f"not a valid duration string: {value!r}")
    return sum(int(g) * u for g, u in zip(m.groups(), _PROM_UNITS_NS) if g)


def parse_duration_param(value: str) -> int:
    """Loki's step/interval parameters: float seconds, else a Prometheus duration → ns."""
    try:
        secs = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(secs) or abs(secs) * NS >= 2**63:
            raise ValueError(f"cannot parse {value!r} to a valid duration. It overflows int64")
        return int(secs * NS)
    try:
        return parse_prom_duration(value)
    except ValueError:
        raise ValueError(f"cannot parse {value!r} to a valid duration") from None


def default_step_ns(start_ns: int, end_ns: int) -> int:
    """Loki's ``defaultQueryRangeStep``: max(floor(range / 250 s), 1) seconds."""
    return max((end_ns - start_ns) // NS // 250, 1) * NS


class Params:
    """The request's parameters: query string plus the form body of a POST (body first, as Go's ``r.Form``)."""

    def __init__(self, values: MultiDict):
        self.values = values

    def get(self, name: str) -> str | None:
        return self.values.get(name)

    def getall(self, name: str) -> list[str]:
        return self.values.getall(name, [])

    def timestamp(self, name: str, default_ns: int) -> int:
        try:
            return parse_timestamp(self.get(name), default_ns)
        except ValueError as err:
            raise BadRequest(f"could not parse '{name}' parameter: {err}") from None

    def duration(self, name: str) -> int | None:
        raw = self.get(name)
        if raw is None or raw == "":
            return None
        try:
            return parse_duration_param(raw)
        except ValueError as err:
            raise BadRequest(str(err)) from None

    def bounds(self, now_ns: int | None = None) -> tuple[int, int]:
        """``start``/``end``/``since`` as Loki's ``determineBounds``: end defaults to now, start to
        min(end, now) - since."""
        now_ns = time.time_ns() if now_ns is None else now_ns
        since = DEFAULT_SINCE_NS
        raw = self.get("since")
        if raw:
            try:
                since = parse_prom_duration(raw)
            except ValueError as err:
                raise BadRequest(f"could not parse 'since' parameter: {err}") from None
        end = self.timestamp("end", now_ns)
        start = self.timestamp("start", min(end, now_ns) - since)
        return start, end

    def limit(self, default: int = DEFAULT_LIMIT) -> int:
        raw = self.get("limit")
        if raw is None or raw == "":
            return default
        try:
            n = int(raw)
        except ValueError:
            raise BadRequest(f"invalid limit {raw!r}: not an integer") from None
        if n <= 0:
            raise BadRequest("limit must be a positive value")
        return n

    def direction(self) -> str:
        raw = self.get("direction")
        if raw is None or raw == "":
            return "backward"
        if raw.lower() not in ("forward", "backward"):
            raise BadRequest(f"invalid direction '{raw}'")
        return raw.lower()

    def query(self, required: bool = True) -> str | None:
        q = self.get("query")
        if q is None or q == "":
            if required:
                raise BadRequest("query parameter is required")  # Loki's parser would say: unexpected $end
            return None
        if len(q.encode()) > MAX_QUERY_BYTES:
            raise BadRequest(f"query too long: {len(q.encode())} bytes > {MAX_QUERY_BYTES}")
        return q


# ------------------------------------------------------------------------------------------- JSON shapes
def _ts_json(ts_ns: int):
    """Prometheus ``model.Time`` as Loki writes it: unix seconds with up to millisecond precision, a JSON number."""
    ms = ts_ns // 1_000_000
    return ms // 1000 if ms % 1000 == 0 else ms / 1000


def _sorted_labels(labels: dict[str, str]) -> dict[str, str]:
    return {k: labels[k] for k in sorted(labels)}


def labels_string(labels: dict[str, str]) -> str:
    """Prometheus ``labels.String()``: the order Loki sorts streams in."""
    return "{" + ", ".join(f"{k}={go_quote(labels[k])}" for k in sorted(labels)) + "}"


def streams_json(lines: list[LogLine], categorize: bool) -> list[dict]:
    """Group entries into Loki streams: by the full label set, or (categorize-labels) by the stream labels with
    structured metadata and parsed labels in a third value element. Streams sorted by label string; entries keep
    the engine's order."""
    groups: dict[tuple, tuple[dict, list]] = {}
    for ln in lines:
        labels = ln.stream if categorize else ln.labels()
        key = tuple(sorted(labels.items()))
        g = groups.get(key)
        if g is None:
            g = groups[key] = (labels, [])
        if categorize:
            extra = {}
            if ln.metadata:
                extra["structuredMetadata"] = _sorted_labels(ln.metadata)
            if ln.parsed:
                extra["parsed"] = _sorted_labels(ln.parsed)
            g[1].append([str(ln.ts), ln.line, extra])
        else:
            g[1].append([str(ln.ts), ln.line])
    out = [(labels_string(lb), lb, vals) for lb, vals in groups.values()]
    out.sort(key=lambda x: x[0])
    return [{"stream": _sorted_labels(lb), "values": vals} for _, lb, vals in out]


def matrix_json(m: Matrix) -> list[dict]:
    return [{"metric": _sorted_labels(labels), "values": [[_ts_json(t), format_float(v)] for t, v in points]}
            for labels, points in m.series]


def vector_json(v: Vector) -> list[dict]:
    return [{"metric": _sorted_labels(labels), "value": [_ts_json(t), format_float(val)]}
            for labels, t, val in v.samples]


def result_json(res: Result, categorize: bool) -> tuple[object, int]:
    """The ``result`` value and how many entries/samples it holds (for the stats)."""
    data = res.data
    if res.result_type == "streams":
        return streams_json(data, categorize), len(data)
    if isinstance(data, Matrix):
        return matrix_json(data), sum(len(p) for _, p in data.series)
    if isinstance(data, Vector):
        return vector_json(data), len(data.samples)
    if isinstance(data, Scalar):
        return [_ts_json(data.ts_ns), format_float(data.value)], 1
    raise TypeError(f"unexpected result {type(data).__name__}")


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _error(message: str, status: int) -> web.Response:
    """Loki answers errors as plain text (Go's ``http.Error``: the message and a newline); Grafana shows it."""
    text = str(message).rstrip("\n") + "\n"
    return web.Response(text=text, status=status, content_type="text/plain", charset="utf-8")


# ------------------------------------------------------------------------------------------- the API
class LokiApi:
    """Route handlers for Loki's query API. ``running`` turns False when the server shuts down (ends tails)."""

    def __init__(self, engine: LogQLEngine, *, running: Callable[[], bool] = lambda: True, workers: int = 4,
                 version: str = "") -> None:
        self.engine = engine
        self.running = running
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="logql")
        self.version = version or _version()
        self.tails = 0

    def routes(self) -> list[web.RouteDef]:
        both = [("query", self.query), ("query_range", self.query_range), ("labels", self.labels),
                ("label/{name}/values", self.label_values), ("series", self.series),
                ("index/stats", self.index_stats), ("index/volume", self.volume),
                ("index/volume_range", self.volume_range), ("format_query", self.format_query),
                ("detected_labels", self.detected_labels)]
        out = []
        for path, handler in both:
            wrapped = self._wrap(handler)
            out += [web.get(f"{PREFIX}/{path}", wrapped), web.post(f"{PREFIX}/{path}", wrapped)]
        out += [web.get(f"{PREFIX}/status/buildinfo", self._wrap(self.buildinfo)),
                web.get(f"{PREFIX}/tail", self._wrap(self.tail))]
        return out

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    # -------------------------------------------------------------------------------- plumbing
    def _wrap(self, handler):
        async def wrapped(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)
            except BadRequest as err:
                return _error(err.message, err.status)
            except QueryError as err:
                return _error(err.message, err.status)
            except LogQLSyntaxError as err:
                return _error(str(err), 400)
            except TenantError as err:
                return _error(str(err), 400)
            except (web.HTTPException, asyncio.CancelledError, ConnectionResetError):
                raise
            except Exception as err:  # a bug: log it, answer as Loki does (plain text 500)
                log.exception("%s %s failed", request.method, request.path)
                return _error(f"internal error: {type(err).__name__}: {err}", 500)
        wrapped.__name__ = handler.__name__
        return wrapped

    async def _params(self, request: web.Request) -> Params:
        values: MultiDict = MultiDict()
        if request.method == "POST":
            ctype = request.content_type
            if ctype in ("application/x-www-form-urlencoded", "multipart/form-data"):
                try:
                    form: MultiDictProxy = await request.post()
                except (ValueError, HttpProcessingError) as err:  # aiohttp: over client_max_size, or malformed
                    raise BadRequest(f"cannot read the form body: {err}", 413 if "size" in str(err) else 400)
                for k, v in form.items():
                    if isinstance(v, str):
                        values.add(k, v)
        values.extend(request.query)
        return Params(values)

    @staticmethod
    def _tenant(request: web.Request) -> str:
        return tenant_from_header(request.headers.get(TENANT_HEADER))

    @staticmethod
    def _categorize(request: web.Request) -> bool:
        """Loki's header, or (a meshscope addition) the query parameter ``encodingFlags``: a browser's WebSocket
        cannot send headers, so the web UI's live tail asks for categorized labels this way."""
        given = request.headers.getall(ENCODING_FLAGS_HEADER, []) + request.query.getall(ENCODING_FLAGS_PARAM, [])
        flags = ",".join(given)
        return CATEGORIZE in (f.strip() for f in flags.split(","))

    async def _run(self, fn, *args, **kwargs):
        """Run a blocking engine call off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, lambda: fn(*args, **kwargs))

    def _query_response(self, res: Result, categorize: bool) -> web.Response:
        result, returned = result_json(res, categorize)
        data: dict = {"resultType": res.result_type}
        if categorize:
            data["encodingFlags"] = [CATEGORIZE]
        data["result"] = result
        data["stats"] = res.stats.as_loki(returned)
        return _json({"status": "success", "data": data})

    # -------------------------------------------------------------------------------- queries
    async def query_range(self, request: web.Request) -> web.Response:
        p = await self._params(request)
        tenant = self._tenant(request)
        q = p.query()
        start, end = p.bounds()
        if end < start:
            raise BadRequest("end timestamp must not be before or equal to start time")
        limit, direction = p.limit(), p.direction()
        step = p.duration("step")
        if step is None:
            step = default_step_ns(start, end)
        if step <= 0:
            raise BadRequest("zero or negative query resolution step widths are not accepted. Try a positive integer")
        if (end - start) // step > 11000:
            raise BadRequest("exceeded maximum resolution of 11,000 points per time series. Try increasing the value "
                             "of the step parameter")
        interval = p.duration("interval") or 0
        if interval < 0:
            raise BadRequest("interval must be >= 0")
        res = await self._run(self.engine.query_range, q, start, end, step, limit=limit, direction=direction,
                              interval_ns=interval, tenant=tenant)
        return self._query_response(res, self._categorize(request))

    async def query(self, request: web.Request) -> web.Response:
        p = await self._params(request)
        tenant = self._tenant(request)
        q = p.query()
        t = p.timestamp("time", time.time_ns())
        limit, direction = p.limit(), p.direction()
        res = await self._run(self.engine.query_instant, q, t, limit=limit, direction=direction, tenant=tenant)
        return self._query_response(res, self._categorize(request))

    # -------------------------------------------------------------------------------- metadata
    async def labels(self, request: web.Request) -> web.Response:
        p = await self._params(request)
        tenant = self._tenant(request)
        start, end = p.bounds()
        names = await self._run(self.engine.labels, start, end, query=p.query(required=False), tenant=tenant)
        return _json({"status": "success", "data": names})

    async def label_values(self, request: web.Request) -> web.Response:
        p = await self._params(request)
        tenant = self._tenant(request)
        name = request.match_info["name"]
        start, end = p.bounds()
        values = await self._run(self.engine.label_values, name, start, end, query=p.query(required=False),
                                 tenant=tenant)
        return _json({"status": "success", "data": values})

    async def series(self, request: web.Request) -> web.Response:
        p = await self._params(request)
        tenant = self._tenant(request)
        matchers = p.getall("match[]") + p.getall("match")
        if len(matchers) > MAX_MATCHERS:
            raise BadRequest(f"too many match[] parameters: {len(matchers)} > {MAX_MATCHERS}")
        for m in matchers:
            if len(m.encode()) > MAX_QUERY_BYTES:
                raise BadRequest(f"match[] too long: {len(m.encode())} bytes > {MAX_QUERY_BYTES}")
        start, end = p.bounds()
        data = await self._run(self.engine.series, matchers, start, end, tenant=tenant)
        return _json({"status": "success", "data": [_sorted_labels(s) for s in data]})

    async def index_stats(self, request: web.Request) -> web.Response:
        p = await self._params(request)
        tenant = self._tenant(request)
        start, end = p.bounds()
        stats = await self._run(self.engine.index_stats, p.query(required=False), start, end, tenant=tenant)
        return _json(stats)

    # -------------------------------------------------------------------------------- volume
    def _volume_query(self, p: Params, range_ns: int) -> str:
        """``sum by (<targetLabels, else the selector's label names, else service_name>)
        (bytes_over_time(<selector>[range]))``; label names are checked so the built query is well formed."""
        raw = p.query(required=False) or "{}"
        try:
            matchers = [] if raw.replace(" ", "") == "{}" else parse_matchers(raw, validate_matchers=False)
        except LogQLSyntaxError as err:
            raise BadRequest(str(err)) from None
        targets = [t.strip() for t in (p.get("targetLabels") or "").split(",") if t.strip()]
        for t in targets:
            if not _LABEL_NAME.fullmatch(t):
                raise BadRequest(f"invalid label name in targetLabels: {t!r}")
        if not targets:
            targets = sorted({m.name for m in matchers}) or ["service_name"]
        selector = "{" + ", ".join(str(m) for m in matchers) + "}" if matchers else '{service_name=~".+"}'
        ms = max(range_ns // 1_000_000, 1)
        return f"sum by ({', '.join(targets)}) (bytes_over_time({selector}[{ms}ms]))"

    async def volume(self, request: web.Request) -> web.Response:
        p = await self._params(request)
        tenant = self._tenant(request)
        start, end = p.bounds()
        if end <= start:
            raise BadRequest("end timestamp must not be before or equal to start time")
        limit = p.limit()
        q = self._volume_query(p, end - start)
        res = await self._run(self.engine.query_instant, q, end, tenant=tenant)
        samples = sorted(res.data.samples, key=lambda s: (-s[2], labels_string(s[0])))[:limit] \
            if isinstance(res.data, Vector) else []
        return _json({"status": "success", "data": {"resultType": "vector", "result": vector_json(Vector(samples))}})

    async def volume_range(self, request: web.Request) -> web.Response:
        p = await self._params(request)
        tenant = self._tenant(request)
        start, end = p.bounds()
        if end < start:
            raise BadRequest("end timestamp must not be before or equal to start time")
        step = p.duration("step") or default_step_ns(start, end)
        if step <= 0:
            raise BadRequest("zero or negative query resolution step widths are not accepted. Try a positive integer")
        limit = p.limit()
        q = self._volume_query(p, step)
        res = await self._run(self.engine.query_range, q, start, end, step, tenant=tenant)
        series = res.data.series if isinstance(res.data, Matrix) else []
        # keep the `limit` largest series by total volume
        top = sorted(series, key=lambda s: -sum(v for _, v in s[1]))[:limit]
        top.sort(key=lambda s: labels_string(s[0]))
        return _json({"status": "success", "data": {"resultType": "matrix", "result": matrix_json(Matrix(top))}})

    # -------------------------------------------------------------------------------- small ones
    async def buildinfo(self, request: web.Request) -> web.Response:
        return _json({"version": self.version, "revision": "", "branch": "", "buildUser": "", "buildDate": "",
                      "goVersion": ""})

    async def format_query(self, request: web.Request) -> web.Response:
        p = await self._params(request)
        q = p.query()
        return _json({"status": "success", "data": str(parse(q))})

    async def detected_labels(self, request: web.Request) -> web.Response:
        """Not implemented: Grafana treats any error here as "use /labels and /label/<name>/values" (§6.10)."""
        return _error("detected_labels is not supported; use /loki/api/v1/labels", 404)

    # -------------------------------------------------------------------------------- tail
    async def tail(self, request: web.Request) -> web.StreamResponse:
        """WebSocket tail: first the last ``limit`` lines since ``start``, then new lines as the store takes them,
        ``delay_for`` seconds behind now. Polls the engine; lines are de-duplicated over a look-back window so a
        line inserted late (after its timestamp was passed) is still sent once."""
        p = Params(MultiDict(request.query))
        tenant = self._tenant(request)
        q = p.query()
        try:
            expr = parse(q)
        except LogQLSyntaxError as err:
            raise BadRequest(str(err)) from None
        if not A.is_log(expr):
            raise BadRequest("tail requires a log query")
        raw_delay = p.get("delay_for") or "0"
        try:
            delay = int(raw_delay)
        except ValueError:
            raise BadRequest(f"invalid delay_for {raw_delay!r}: not an integer") from None
        if delay < 0:
            raise BadRequest("delay_for must not be negative")
        if delay > MAX_TAIL_DELAY_S:
            raise BadRequest(f"delay_for can't be greater than {MAX_TAIL_DELAY_S}")
        limit = p.limit()
        if limit > self.engine.max_entries:
            raise BadRequest(f"max entries limit per query exceeded, limit > max_entries_limit_per_query "
                             f"({limit} > {self.engine.max_entries})")
        start = p.timestamp("start", time.time_ns() - DEFAULT_SINCE_NS)
        categorize = self._categorize(request)
        if self.tails >= MAX_TAILS:
            raise BadRequest(f"too many tail connections ({MAX_TAILS}); try again later", 429)

        ws = web.WebSocketResponse(heartbeat=30.0)
        await ws.prepare(request)
        reader = asyncio.create_task(self._drain(ws))
        self.tails += 1
        try:
            await self._tail_loop(ws, q, start, delay * NS, limit, tenant, categorize, reader)
        except QueryError as err:
            if not ws.closed:
                await ws.close(code=1011, message=err.message.encode()[:120])
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.tails -= 1
            reader.cancel()
            if not ws.closed:
                await ws.close()
        return ws

    @staticmethod
    async def _drain(ws: web.WebSocketResponse) -> None:
        """Read (and ignore) client frames so a close from the client is noticed."""
        async for msg in ws:
            if msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                break

    async def _tail_loop(self, ws, q, start, delay_ns, limit, tenant, categorize, reader) -> None:
        seen: dict[tuple, int] = {}  # (ts, line, labels) → ts, pruned below what a poll can read again

        def key(ln: LogLine) -> tuple:
            return ln.ts, ln.line, tuple(sorted(ln.stream.items())), tuple(sorted(ln.metadata.items()))

        async def send(lines: list[LogLine]) -> None:
            fresh = []
            for ln in lines:
                k = key(ln)
                if k not in seen:
                    seen[k] = ln.ts
                    fresh.append(ln)
            for i in range(0, len(fresh), limit):
                frame = {"streams": streams_json(fresh[i:i + limit], categorize)}
                if categorize:
                    frame["encodingFlags"] = [CATEGORIZE]
                await ws.send_str(orjson.dumps(frame).decode())

        # History: the newest `limit` lines since start, oldest first. When `limit` cut it, the older lines stay
        # out for good (`floor`), so the look-back below does not send them as if they had come late.
        floor = start
        cursor = time.time_ns() - delay_ns
        if cursor > start:
            res = await self._run(self.engine.query_range, q, start, cursor, default_step_ns(start, cursor),
                                  limit=limit, direction="backward", tenant=tenant)
            if len(res.data) >= limit:
                floor = max(start, min(ln.ts for ln in res.data))
            await send(list(reversed(res.data)))
        cursor = max(cursor, start)
        while not ws.closed and not reader.done() and self.running():
            await asyncio.sleep(TAIL_POLL_S)
            if ws.closed or reader.done() or not self.running():
                break
            hi = time.time_ns() - delay_ns
            fresh: list[LogLine] = []
            # Lines the store took late, after the cursor had passed their timestamp: the newest ones before the
            # cursor (where late lines land), within the look-back.
            lo = max(floor, hi - TAIL_LOOKBACK_NS)
            if lo < cursor:
                late_limit = min(TAIL_LATE_LINES, self.engine.max_entries)
                res = await self._run(self.engine.query_range, q, lo, cursor, default_step_ns(lo, cursor),
                                      limit=late_limit, direction="backward", tenant=tenant)
                fresh += res.data
                if len(res.data) >= late_limit:
                    # a later poll reads the newest lines again, never anything older than these
                    lo = max(lo, min(ln.ts for ln in res.data))
            # New lines from the cursor on, page by page (same-timestamp repeats are dropped by `seen`).
            for _ in range(TAIL_PAGES_PER_POLL):
                if cursor >= hi:
                    break
                res = await self._run(self.engine.query_range, q, cursor, hi, default_step_ns(cursor, hi),
                                      limit=limit, direction="forward", tenant=tenant)
                fresh += res.data
                if len(res.data) < limit:
                    cursor = hi
                    break
                cursor = max(res.data[-1].ts, cursor + 1)
            fresh.sort(key=lambda ln: ln.ts)
            await send(fresh)
            # forget what no later poll can read again: the look-back starts at `lo` or later, the next page at
            # the cursor
            edge = min(lo, cursor)
            for k in [k for k, ts in seen.items() if ts < edge]:
                del seen[k]


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("meshscope")
    except Exception:  # not installed (running from a checkout)
        return "0.0.0"
