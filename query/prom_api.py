"""Prometheus' HTTP query API (``/api/v1/...``) over the PromQL engine, so Grafana's Prometheus data source and
Kiali work against meshscope unchanged (``shared/reference/promql.md`` §3).

Shapes follow ``prometheus/web/api/v1/api.go``: the ``{"status": "success", "data": ...}`` envelope,
``{"status": "error", "errorType": ..., "error": ...}`` with 400 (``bad_data``), 422 (``execution``),
503 (``timeout``/``unavailable``) and 501 for PromQL meshscope does not implement (the compliance tester counts a
501 as "unsupported", not wrong). GET and form POST everywhere Prometheus takes them (Kiali's Go client and Grafana
POST queries). Engine and store calls block, and the collectors share this event loop, so they run in a small
dedicated thread pool (the default executor carries the WAL's fsyncs).
"""
from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from multidict import MultiDict

from meshscope.collector.tenant import HEADER as TENANT_HEADER
from meshscope.collector.tenant import TenantError, tenant_from_header
from meshscope.store import StoreError

from .deadline import DeadlineExceeded, DeadlineStore, deadline, is_timeout
from .loki_api import parse_prom_duration, parse_rfc3339
from .promql.errors import PromQLError
from .promql.parser import MAX_DURATION_NS
from .promql.store_source import MetricCatalogue, StoreSeriesSource, label_name

log = logging.getLogger("meshscope.query.prom_api")

PREFIX = "/api/v1"
NS = 1_000_000_000
MAX_POINTS = 11_000
MAX_QUERY_BYTES = 128 * 1024
MAX_MATCH = 200
DEFAULT_TIMEOUT_S = 120.0
PROM_VERSION = "3.0.0"  # what clients see in buildinfo; Grafana only needs it Prometheus-like
# Prometheus' min/max API times (the Go client sends them for "all time")
MIN_TIME_NS = -(1 << 63) + 1
MAX_TIME_NS = (1 << 63) - 1
_STATUS = {"bad_data": 400, "execution": 422, "timeout": 503, "canceled": 499, "internal": 500, "not_found": 404,
           "not_acceptable": 406, "unavailable": 503, "unsupported": 501}


# Evaluation times are clamped to ±2^62 ns (about 1824-2116), the bound the parser puts on ranges and offsets:
# the Go client's "all time" (±2^63) minus a lookback or a range would not fit in an int64 any more. Nothing is
# stored that far out.
def _eval_time(ns: int) -> int:
    return max(-MAX_DURATION_NS, min(MAX_DURATION_NS, ns))


class ApiError(Exception):
    def __init__(self, error_type: str, message: str):
        super().__init__(message)
        self.error_type, self.message = error_type, message


# ------------------------------------------------------------------------------------------------ parameters
def parse_time(value: str) -> int:
    """Prometheus ``parseTime``: unix seconds with decimals, or RFC3339; the Go client's min/max times clamp."""
    try:
        t = float(value)
    except ValueError:
        pass
    else:
        if math.isnan(t) or math.isinf(t):
            raise ValueError(f"cannot parse {value!r} to a valid timestamp")
        whole = math.floor(t)
        ns = int(whole) * NS + int(round((t - whole) * 1000)) * 1_000_000  # Prometheus keeps milliseconds
        return max(MIN_TIME_NS, min(MAX_TIME_NS, ns))
    m = re.match(r"^(-?\d+)-", value)
    if m and (value.startswith("-") or int(m.group(1)) > 9999):
        return MIN_TIME_NS if value.startswith("-") else MAX_TIME_NS
    try:
        ns = parse_rfc3339(value)
    except ValueError:
        raise ValueError(f"cannot parse {value!r} to a valid timestamp") from None
    return ns // 1_000_000 * 1_000_000


def parse_duration(value: str) -> int:
    """Prometheus ``parseDuration``: float seconds or a duration like ``5m`` → ns."""
    try:
        secs = float(value)
    except ValueError:
        pass
    else:
        ns = secs * NS
        if math.isnan(ns) or ns >= 2**63 or ns <= -(2**63):
            raise ValueError(f"cannot parse {value!r} to a valid duration. It overflows int64")
        return int(round(secs * 1000)) * 1_000_000
    try:
        return parse_prom_duration(value)
    except ValueError:
        raise ValueError(f"cannot parse {value!r} to a valid duration") from None


def _decode_label_name(name: str) -> str:
    """``U__``-escaped UTF-8 label names (``U__http_2e_status_code``) → the OTel key, then our sanitising."""
    if not name.startswith("U__"):
        return name
    body, out, i = name[3:], [], 0
    while i < len(body):
        if body[i] == "_":
            j = body.find("_", i + 1)
            if j > i + 1 and re.fullmatch(r"[0-9A-Fa-f]{1,6}", body[i + 1:j]) and int(body[i + 1:j], 16) < 0x110000:
                out.append(chr(int(body[i + 1:j], 16)))
                i = j + 1
                continue
            if body[i:i + 2] == "__":
                out.append("_")
                i += 2
                continue
        out.append(body[i])
        i += 1
    return label_name("".join(out))


class Params:
    def __init__(self, values: MultiDict):
        self.values = values

    def get(self, name: str) -> str | None:
        v = self.values.get(name)
        return None if v is None or v == "" else v

    def getall(self, name: str) -> list[str]:
        return self.values.getall(name, [])

    def time(self, name: str, default: int) -> int:
        raw = self.get(name)
        if raw is None:
            return default
        try:
            return parse_time(raw)
        except ValueError as err:
            raise ApiError("bad_data", f'invalid parameter "{name}": {err}') from None

    def duration(self, name: str) -> int | None:
        raw = self.get(name)
        if raw is None:
            return None
        try:
            return parse_duration(raw)
        except ValueError as err:
            raise ApiError("bad_data", f'invalid parameter "{name}": {err}') from None

    def query(self) -> str:
        q = self.values.get("query")
        if q is None:
            q = ""
        if len(q.encode()) > MAX_QUERY_BYTES:
            raise ApiError("bad_data", f'invalid parameter "query": query too long ({len(q.encode())} bytes > '
                                       f'{MAX_QUERY_BYTES})')
        return q

    def limit(self) -> int:
        raw = self.get("limit")
        if raw is None:
            return 0
        try:
            n = int(raw)
        except ValueError:
            raise ApiError("bad_data", f'invalid parameter "limit": cannot parse "{raw}" to a valid limit') from None
        if n < 0:
            raise ApiError("bad_data", 'invalid parameter "limit": limit must be non-negative')
        return n

    def matches(self) -> list[str]:
        ms = self.getall("match[]")
        if len(ms) > MAX_MATCH:
            raise ApiError("bad_data", f"too many match[] parameters: {len(ms)} > {MAX_MATCH}")
        for m in ms:
            if len(m.encode()) > MAX_QUERY_BYTES:
                raise ApiError("bad_data", 'invalid parameter "match[]": selector too long')
        return ms


def _json(body) -> bytes:
    """orjson, but text that is not valid UTF-8 (a PromQL string escape like ``"\\xff"`` makes such label names
    and values) goes out with U+FFFD for the bad bytes, as Go's JSON encoder writes it, instead of failing."""
    try:
        return orjson.dumps(body)
    except TypeError:
        return orjson.dumps(_valid_text(body))


def _valid_text(v):
    if isinstance(v, str):
        return v.encode("utf-8", "surrogateescape").decode("utf-8", "replace") if not v.isascii() else v
    if isinstance(v, dict):
        return {_valid_text(k): _valid_text(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_valid_text(x) for x in v]
    return v


def _ok(data, warnings: list[str] | None = None) -> web.Response:
    body = {"status": "success", "data": data}
    if warnings:
        body["warnings"] = warnings
    return web.Response(body=_json(body), content_type="application/json")


def _err(error_type: str, message: str) -> web.Response:
    body = {"status": "error", "errorType": error_type, "error": message}
    return web.Response(body=_json(body), status=_STATUS.get(error_type, 500), content_type="application/json")


# ------------------------------------------------------------------------------------------------ the API
class PromApi:
    """Route handlers for ``/api/v1``. ``engine`` needs ``instant(query, time_ns, tenant)`` and
    ``range(query, start_ns, end_ns, step_ns, tenant)`` returning results with ``to_prom_json()``; by default the
    PromQL engine over ``StoreSeriesSource``."""

    def __init__(self, store, engine=None, *, workers: int = 4, retention: str = "7d", scrape_interval: str = "15s",
                 lookback: str = "5m", version: str = "", results_cache_freshness_s: float = 600.0) -> None:
        self.store = store
        self.catalogue = MetricCatalogue(store)
        self._engine = engine
        self._ranges = None
        self.results_cache_freshness_s = results_cache_freshness_s
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="promql")
        self.retention = retention
        self.scrape_interval = scrape_interval
        self.lookback = lookback
        self.version = version or _version()
        self.started = time.time()

    def source(self, tenant: str) -> StoreSeriesSource:
        # every store query of a request carries the request's deadline (set by _run in the worker thread)
        return StoreSeriesSource(DeadlineStore(self.store), tenant, self.catalogue)

    @property
    def engine(self):
        if self._engine is None:
            from .promql.engine import PromQLEngine
            self._engine = PromQLEngine(self.source)
        return self._engine

    @property
    def ranges(self):
        """``range()`` through the results cache (dashboards repeat their range queries at every refresh)."""
        if self._ranges is None:
            from .promql.results_cache import RangeResultsCache
            self._ranges = RangeResultsCache(self.engine, max_freshness_s=self.results_cache_freshness_s)
        return self._ranges

    def routes(self) -> list[web.RouteDef]:
        both = [("query", self.query), ("query_range", self.query_range), ("series", self.series),
                ("labels", self.labels), ("query_exemplars", self.exemplars), ("format_query", self.format_query)]
        get_only = [("label/{name}/values", self.label_values), ("metadata", self.metadata),
                    ("status/buildinfo", self.buildinfo), ("status/config", self.config),
                    ("status/runtimeinfo", self.runtimeinfo), ("status/flags", self.flags), ("rules", self.rules),
                    ("alerts", self.alerts), ("targets", self.targets), ("alertmanagers", self.alertmanagers)]
        out = []
        for path, h in both:
            w = self._wrap(h)
            out += [web.get(f"{PREFIX}/{path}", w), web.post(f"{PREFIX}/{path}", w)]
        for path, h in get_only:
            out.append(web.get(f"{PREFIX}/{path}", self._wrap(h)))
        return out

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    # -------------------------------------------------------------------------------- plumbing
    def _wrap(self, handler):
        async def wrapped(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)
            except ApiError as err:
                return _err(err.error_type, err.message)
            except PromQLError as err:
                return _err(err.error_type, err.message)
            except TenantError as err:
                return _err("bad_data", str(err))
            except StoreError as err:
                if is_timeout(err):
                    return _err("timeout", "query timed out in expression evaluation")
                return _err("unavailable" if err.retryable else "execution", str(err))
            except (asyncio.TimeoutError, DeadlineExceeded):
                return _err("timeout", "query timed out in expression evaluation")
            except OverflowError as err:  # a time or duration past what int64 nanoseconds hold
                return _err("execution", f"a time or duration in the query is out of range: {err}")
            except (web.HTTPException, asyncio.CancelledError, ConnectionResetError):
                raise
            except Exception as err:  # a bug: log it, answer as Prometheus does for internal errors
                log.exception("%s %s failed", request.method, request.path)
                return _err("internal", f"{type(err).__name__}: {err}")
        wrapped.__name__ = handler.__name__
        return wrapped

    async def _params(self, request: web.Request) -> Params:
        values: MultiDict = MultiDict()
        if request.method == "POST":
            if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
                try:
                    form = await request.post()
                except (ValueError, HttpProcessingError) as err:  # aiohttp's InvalidHeader for a broken multipart body
                    raise ApiError("bad_data", f"error parsing form values: {err}") from None
                for k, v in form.items():
                    if isinstance(v, str):
                        values.add(k, v)
        values.extend(request.query)
        return Params(values)

    @staticmethod
    def _tenant(request: web.Request) -> str:
        return tenant_from_header(request.headers.get(TENANT_HEADER))

    async def _run(self, timeout_s: float, fn, *args, **kwargs):
        def work():
            with deadline(timeout_s):  # the store stops too, not only the waiting here
                return fn(*args, **kwargs)
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self.pool, work)
        return await asyncio.wait_for(fut, timeout_s)

    @staticmethod
    def _timeout(p: Params) -> float:
        t = p.duration("timeout")
        return DEFAULT_TIMEOUT_S if not t or t <= 0 else min(t / NS, DEFAULT_TIMEOUT_S)

    @staticmethod
    def _lookback(p: Params) -> dict:
        lb = p.duration("lookback_delta")
        if lb is None:
            return {}
        if lb < 0:
            raise ApiError("bad_data", 'invalid parameter "lookback_delta": must not be negative')
        return {"lookback_ns": lb} if lb > 0 else {}

    def _check_query(self, q: str) -> None:
        """Parse errors are ``invalid parameter "query"`` as in Prometheus (the engine parses again; it is cheap)."""
        from .promql.parser import parse
        try:
            parse(q)
        except PromQLError as err:
            raise ApiError("bad_data", f'invalid parameter "query": {err.message}') from None

    @staticmethod
    def _data(res, limit: int) -> tuple[dict, list[str]]:
        data = res.to_prom_json() if hasattr(res, "to_prom_json") else res
        if isinstance(data, dict) and "status" in data and "data" in data:
            data = data["data"]
        warnings = []
        if limit and isinstance(data.get("result"), list) and len(data["result"]) > limit:
            data = dict(data, result=data["result"][:limit])
            warnings.append("results truncated due to limit")
        return data, warnings

    # -------------------------------------------------------------------------------- queries
    async def query(self, request: web.Request) -> web.Response:
        p = await self._params(request)
        tenant = self._tenant(request)
        q = p.query()
        t = _eval_time(p.time("time", time.time_ns() // 1_000_000 * 1_000_000))
        limit = p.limit()
        timeout = self._timeout(p)
        self._check_query(q)
        kw = self._lookback(p)
        res = await self._run(timeout, self.engine.instant, q, t, tenant, **kw)
        data, warnings = self._data(res, limit)
        return _ok(data, warnings)

    async def query_range(self, request: web.Request) -> web.Response:
        p = await self._params(request)
        tenant = self._tenant(request)
        start = p.time("start", MIN_TIME_NS) if p.get("start") else None
        end = p.time("end", MAX_TIME_NS) if p.get("end") else None
        if start is None:
            raise ApiError("bad_data", 'invalid parameter "start": cannot parse "" to a valid timestamp')
        if end is None:
            raise ApiError("bad_data", 'invalid parameter "end": cannot parse "" to a valid timestamp')
        if end < start:
            raise ApiError("bad_data", 'invalid parameter "end": end timestamp must not be before start time')
        start, end = _eval_time(start), _eval_time(end)
        if p.get("step") is None:
            raise ApiError("bad_data", 'invalid parameter "step": cannot parse "" to a valid duration')
        step = p.duration("step")
        if step <= 0:
            raise ApiError("bad_data", 'invalid parameter "step": zero or negative query resolution step widths '
                                       'are not accepted. Try a positive integer')
        if (end - start) // step > MAX_POINTS:
            raise ApiError("bad_data", "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing "
                                       "the query resolution (?step=XX)")
        q = p.query()
        limit = p.limit()
        timeout = self._timeout(p)
        self._check_query(q)
        kw = self._lookback(p)
        res = await self._run(timeout, self.ranges.range, q, start, end, step, tenant, **kw)
        data, warnings = self._data(res, limit)
        return _ok(data, warnings)

    async def format_query(self, request: web.Request) -> web.Response:
        p = await self._params(request)
        q = p.query()
        from .promql.ast import format_expr
        from .promql.parser import parse
        try:
            return _ok(format_expr(parse(q)))
        except PromQLError as err:
            raise ApiError("bad_data", f'invalid parameter "query": {err.message}') from None

    # -------------------------------------------------------------------------------- series and labels
    def _selectors(self, raw: list[str]) -> list[list]:
        from .promql.parser import parse_matchers
        out = []
        for s in raw:
            try:
                out.append(list(parse_matchers(s).matchers))
            except PromQLError as err:
                raise ApiError("bad_data", f'invalid parameter "match[]": {err.message}') from None
        return out

    def _range(self, p: Params) -> tuple[int, int]:
        return p.time("start", MIN_TIME_NS), p.time("end", MAX_TIME_NS)

    def _series(self, tenant: str, selectors: list[list], start: int, end: int) -> list[dict]:
        src = self.source(tenant)
        seen: dict[tuple, dict] = {}
        for ms in selectors:
            for labels in src.series(ms, start, end):
                seen[tuple(sorted(labels.items()))] = labels
        return [{k: seen[key][k] for k in sorted(seen[key])} for key in sorted(seen)]

    async def series(self, request: web.Request) -> web.Response:
        p = await self._params(request)
        tenant = self._tenant(request)
        raw = p.matches()
        if not raw:
            raise ApiError("bad_data", "no match[] parameter provided")
        selectors = self._selectors(raw)
        start, end = self._range(p)
        limit = p.limit()
        data = await self._run(self._timeout(p), self._series, tenant, selectors, start, end)
        warnings = []
        if limit and len(data) > limit:
            data, warnings = data[:limit], ["results truncated due to limit"]
        return _ok(data, warnings)

    def _label_names(self, tenant: str, selectors: list[list], start: int, end: int) -> list[str]:
        if selectors:
            return sorted({k for s in self._series(tenant, selectors, start, end) for k in s})
        return self.source(tenant).label_names(start, end)

    async def labels(self, request: web.Request) -> web.Response:
        p = await self._params(request)
        tenant = self._tenant(request)
        selectors = self._selectors(p.matches())
        start, end = self._range(p)
        limit = p.limit()
        names = await self._run(self._timeout(p), self._label_names, tenant, selectors, start, end)
        warnings = []
        if limit and len(names) > limit:
            names, warnings = names[:limit], ["results truncated due to limit"]
        return _ok(names, warnings)

    def _label_values(self, tenant: str, name: str, selectors: list[list], start: int, end: int) -> list[str]:
        if selectors:
            return sorted({s[name] for s in self._series(tenant, selectors, start, end) if s.get(name)})
        return self.source(tenant).label_values(name, start, end)

    async def label_values(self, request: web.Request) -> web.Response:
        p = await self._params(request)
        tenant = self._tenant(request)
        name = _decode_label_name(request.match_info["name"])
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ApiError("bad_data", f'invalid label name: "{name}"')
        selectors = self._selectors(p.matches())
        start, end = self._range(p)
        limit = p.limit()
        values = await self._run(self._timeout(p), self._label_values, tenant, name, selectors, start, end)
        warnings = []
        if limit and len(values) > limit:
            values, warnings = values[:limit], ["results truncated due to limit"]
        return _ok(values, warnings)

    async def metadata(self, request: web.Request) -> web.Response:
        p = await self._params(request)
        tenant = self._tenant(request)
        limit = p.limit()
        per = p.get("limit_per_metric")
        try:
            per_n = int(per) if per else 0
        except ValueError:
            raise ApiError("bad_data", f'invalid parameter "limit_per_metric": cannot parse "{per}"') from None
        metric = p.get("metric")
        md = await self._run(self._timeout(p), self.source(tenant).metadata)
        if metric is not None:
            md = {metric: md[metric]} if metric in md else {}
        if per_n > 0:
            md = {k: v[:per_n] for k, v in md.items()}
        if limit:
            md = dict(list(md.items())[:limit])
        return _ok(md)

    async def exemplars(self, request: web.Request) -> web.Response:
        """No exemplars are stored yet: an empty list, but only for a request Prometheus would answer."""
        p = await self._params(request)
        self._tenant(request)
        self._check_query(p.query())
        start, end = self._range(p)
        if end < start:
            raise ApiError("bad_data", 'invalid parameter "end": end timestamp must not be before start time')
        return _ok([])

    # -------------------------------------------------------------------------------- status stubs
    async def buildinfo(self, request: web.Request) -> web.Response:
        # no "features" key: Grafana would classify a non-empty one as Mimir with a ruler API
        return _ok({"version": PROM_VERSION, "revision": f"meshscope-{self.version}", "branch": "meshscope",
                    "buildUser": "meshscope", "buildDate": "", "goVersion": "python"})

    async def config(self, request: web.Request) -> web.Response:
        yaml = (f"global:\n  scrape_interval: {self.scrape_interval}\n  scrape_timeout: 10s\n"
                f"  evaluation_interval: {self.scrape_interval}\n")
        return _ok({"yaml": yaml})

    async def runtimeinfo(self, request: web.Request) -> web.Response:
        return _ok({"startTime": _rfc3339(self.started), "CWD": os.getcwd(), "hostname": socket.gethostname(),
                    "serverTime": _rfc3339(time.time()), "reloadConfigSuccess": True,
                    "lastConfigTime": _rfc3339(self.started), "corruptionCount": 0, "goroutineCount": 0,
                    "GOMAXPROCS": os.cpu_count() or 1, "GOMEMLIMIT": 0, "GOGC": "", "GODEBUG": "",
                    "storageRetention": self.retention})

    async def flags(self, request: web.Request) -> web.Response:
        return _ok({"query.lookback-delta": self.lookback, "query.max-samples": "50000000",
                    "query.timeout": "2m", "storage.tsdb.retention.time": self.retention,
                    "web.enable-otlp-receiver": "true"})

    async def rules(self, request: web.Request) -> web.Response:
        return _ok({"groups": []})

    async def alerts(self, request: web.Request) -> web.Response:
        return _ok({"alerts": []})

    async def targets(self, request: web.Request) -> web.Response:
        return _ok({"activeTargets": [], "droppedTargets": []})

    async def alertmanagers(self, request: web.Request) -> web.Response:
        return _ok({"activeAlertmanagers": [], "droppedAlertmanagers": []})


def _rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int((t % 1) * 1000):03d}Z"


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("meshscope")
    except Exception:
        return "0.0.0"
