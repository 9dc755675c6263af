"""Reading traces from the store: trace by id through the trace-id index, search, services and operations.

Trace by id never scans: ``otel_traces_trace_id_ts`` (sorted by tenant and trace id, filled by a materialized view
at every insert) gives the trace's time range, and the span read is bounded by that range (partition and primary-key
pruning: ``otel_traces`` is sorted by service, span name, then time, so one range picks about one granule per
service and span name) and by the TraceId bloom filter, which drops the granules of other traces.

Search follows Jaeger's semantics: a trace matches when one of its spans matches every condition (service,
operation, kind, status, duration, attributes); the newest matching traces come first. Each answer is then read back
whole, bounded by the traces' own time ranges from the index.

Every user value reaches SQL as a bound parameter, or through ``quote_string`` for the per-trace predicates built
from a list.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from meshscope.collector.mesh_sql import MESH_COLUMNS
from meshscope.sqlutil import quote_string

from .model import (KIND_BY_NAME, STATUS_BY_NAME, STATUS_ERROR, Event, Link, Span, Trace, TraceSummary,
                    normalize_trace_id)

MAX_LIMIT = 1500  # Jaeger UI's largest search limit
MAX_TRACE_SPANS = 10_000  # a trace by id is capped here, with a warning
MAX_SEARCH_SPANS = 200_000  # spans across all traces of one full-trace search answer
MAX_TAGS = 20
MAX_KEY_LEN = 256
MAX_VALUE_LEN = 1024
MAX_NAME_LEN = 1024
OR_PREDICATE_MAX = 200  # above this many traces, one IN list and one overall range instead of per-trace ranges

SPAN_COLUMNS = (
    "TraceId, SpanId, ParentSpanId, TraceState, SpanName, SpanKind, ServiceName, ResourceAttributes, ScopeName, "
    "ScopeVersion, SpanAttributes, toUnixTimestamp64Nano(Timestamp) AS StartNs, Duration, StatusCode, StatusMessage, "
    "arrayMap(x -> toUnixTimestamp64Nano(x), `Events.Timestamp`) AS EventNs, `Events.Name`, `Events.Attributes`, "
    "`Links.TraceId`, `Links.SpanId`, `Links.TraceState`, `Links.Attributes`, TraceFlags"
)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


# promoted columns by column name and by a dotted alias: MeshNamespace, mesh.namespace, mesh.http_method, ...
PROMOTED = {c: c for c in MESH_COLUMNS} | {"mesh." + _snake(c[4:]): c for c in MESH_COLUMNS}


class SearchError(ValueError):
    """A search the store will not run as asked; the message is safe to show to a user."""


@dataclass
class SearchQuery:
    start_ns: int
    end_ns: int
    service: str = ""
    operation: str = ""
    span_kind: str = ""  # a stored SpanKind (SPAN_KIND_SERVER, ...) or empty
    status: str = ""  # a stored StatusCode or empty
    min_duration_ns: int = 0
    max_duration_ns: int = 0
    tags: list[tuple[str, str]] = field(default_factory=list)
    limit: int = 20

    def validate(self) -> None:
        if self.end_ns < self.start_ns:
            raise SearchError("end is before start")
        if not 1 <= self.limit <= MAX_LIMIT:
            raise SearchError(f"limit must be between 1 and {MAX_LIMIT}")
        if self.min_duration_ns < 0 or self.max_duration_ns < 0:
            raise SearchError("durations must not be negative")
        if self.min_duration_ns and self.max_duration_ns and self.max_duration_ns < self.min_duration_ns:
            raise SearchError("'maxDuration' should be greater than 'minDuration'")
        for name in (self.service, self.operation):
            if len(name) > MAX_NAME_LEN:
                raise SearchError(f"service and operation names are at most {MAX_NAME_LEN} characters")
        if len(self.tags) > MAX_TAGS:
            raise SearchError(f"at most {MAX_TAGS} tag filters")
        for k, v in self.tags:
            if not k or len(k) > MAX_KEY_LEN or len(v) > MAX_VALUE_LEN:
                raise SearchError(f"tag keys are 1 to {MAX_KEY_LEN} characters, values at most {MAX_VALUE_LEN}")


def span_kind_of(name: str) -> str:
    """``server``/``SERVER``/``SPAN_KIND_SERVER`` → the stored SpanKind; empty stays empty."""
    n = (name or "").strip()
    if not n:
        return ""
    key = n.lower().removeprefix("span_kind_")
    if key not in KIND_BY_NAME:
        raise SearchError(f"invalid span kind {name[:40]!r}: use server, client, producer, consumer or internal")
    return KIND_BY_NAME[key]


def status_of(name: str) -> str:
    n = (name or "").strip().lower().removeprefix("status_code_")
    if not n:
        return ""
    if n not in STATUS_BY_NAME:
        raise SearchError(f"invalid status {name[:40]!r}: use error, ok or unset")
    return STATUS_BY_NAME[n]


# ------------------------------------------------------------------------------------------- SQL pieces
def _tag_condition(i: int, key: str, value: str, params: dict) -> str:
    """A tag filter: the special Jaeger keys, the promoted columns, else span or resource attributes."""
    k, v = f"tk{i}", f"tv{i}"
    params[k], params[v] = key, value
    if key == "error":
        if value.lower() in ("true", "1"):
            return f"StatusCode = '{STATUS_ERROR}'"
        if value.lower() in ("false", "0"):
            return f"StatusCode != '{STATUS_ERROR}'"
        raise SearchError("tag error takes true or false")
    if key == "span.kind":
        params[v] = span_kind_of(value)
        return f"SpanKind = {{{v}:String}}"
    if key == "otel.status_code":
        params[v] = status_of(value)
        return f"StatusCode = {{{v}:String}}"
    if key == "otel.status_description":
        return f"StatusMessage = {{{v}:String}}"
    if key == "service.name":
        return f"ServiceName = {{{v}:String}}"
    if key in PROMOTED:
        return f"{PROMOTED[key]} = {{{v}:String}}"
    if value == "":
        return (f"((mapContains(SpanAttributes, {{{k}:String}}) AND SpanAttributes[{{{k}:String}}] = '') OR "
                f"(mapContains(ResourceAttributes, {{{k}:String}}) AND ResourceAttributes[{{{k}:String}}] = ''))")
    return f"(SpanAttributes[{{{k}:String}}] = {{{v}:String}} OR ResourceAttributes[{{{k}:String}}] = {{{v}:String}})"


def _time_range(params: dict, lo: int, hi: int, prefix: str = "") -> str:
    params[prefix + "lo"], params[prefix + "hi"] = int(lo), int(hi)
    return (f"Timestamp >= fromUnixTimestamp64Nano({{{prefix}lo:Int64}}) "
            f"AND Timestamp <= fromUnixTimestamp64Nano({{{prefix}hi:Int64}})")


def _traces_predicate(ranges: dict[str, tuple[int, int]]) -> str:
    """Spans of these traces, each bounded by its own time range (primary-key and partition pruning per trace)."""
    if len(ranges) <= OR_PREDICATE_MAX:
        return "(" + " OR ".join(
            f"(TraceId = {quote_string(t)} AND Timestamp >= fromUnixTimestamp64Nano({int(lo)}) "
            f"AND Timestamp <= fromUnixTimestamp64Nano({int(hi)}))" for t, (lo, hi) in ranges.items()) + ")"
    lo = min(r[0] for r in ranges.values())
    hi = max(r[1] for r in ranges.values())
    ids = ", ".join(quote_string(t) for t in ranges)
    return (f"(TraceId IN ({ids}) AND Timestamp >= fromUnixTimestamp64Nano({int(lo)}) "
            f"AND Timestamp <= fromUnixTimestamp64Nano({int(hi)}))")


def _span_from_row(r: tuple) -> Span:
    (trace_id, span_id, parent, state, name, kind, service, res, scope_name, scope_version, attrs, start, dur,
     status, status_msg, ev_ts, ev_names, ev_attrs, l_tids, l_sids, l_states, l_attrs, flags) = r
    return Span(
        trace_id=trace_id, span_id=span_id, parent_span_id=parent, trace_state=state, name=name, kind=kind,
        service=service, resource=dict(res or {}), scope_name=scope_name, scope_version=scope_version,
        attributes=dict(attrs or {}), start_ns=int(start), duration_ns=int(dur), status_code=status,
        status_message=status_msg,
        events=[Event(int(t), n, dict(a or {})) for t, n, a in zip(ev_ts, ev_names, ev_attrs)],
        links=[Link(t, s, st, dict(a or {})) for t, s, st, a in zip(l_tids, l_sids, l_states, l_attrs)],
        flags=int(flags or 0))


# ------------------------------------------------------------------------------------------- reads
class TraceReader:
    """Blocking reads over one store; ``db`` is the store's database."""

    def __init__(self, store, settings: dict | None = None) -> None:
        self.store = _SettingsStore(store, settings) if settings else store
        self.db = store.database

    # -- trace id index ------------------------------------------------------------------
    def trace_ranges(self, tenant: str, trace_ids: list[str]) -> dict[str, tuple[int, int]]:
        """trace id → (first span start, last span end) in ns, from the index table (a primary-key lookup)."""
        if not trace_ids:
            return {}
        r = self.store.query(
            f"SELECT TraceId, toUnixTimestamp64Nano(min(Start)), toUnixTimestamp64Nano(max(End)) "
            f"FROM {self.db}.otel_traces_trace_id_ts WHERE TenantId = {{t:String}} AND TraceId IN {{ids:Array(String)}} "
            f"GROUP BY TraceId", {"t": tenant, "ids": list(trace_ids)})
        return {row[0]: (int(row[1]), int(row[2])) for row in r.rows}

    # -- trace by id ---------------------------------------------------------------------
    def get_trace(self, tenant: str, trace_id: str, max_spans: int = MAX_TRACE_SPANS) -> Trace | None:
        """The trace's spans in start order, at most ``max_spans`` (a warning says how many were left out)."""
        tid = normalize_trace_id(trace_id)
        ranges = self.trace_ranges(tenant, [tid])
        if tid not in ranges:
            return None
        lo, hi = ranges[tid]
        params = {"t": tenant, "id": tid, "cap": int(max_spans) + 1}
        where = f"TenantId = {{t:String}} AND TraceId = {{id:String}} AND {_time_range(params, lo, hi)}"
        r = self.store.query(f"SELECT {SPAN_COLUMNS} FROM {self.db}.otel_traces WHERE {where} "
                             f"ORDER BY Timestamp, SpanId LIMIT {{cap:UInt32}}", params)
        spans = [_span_from_row(row) for row in r.rows]
        if not spans:
            return None
        total = len(spans)
        trace = Trace(tid, spans, total)
        if total > max_spans:
            trace.spans = spans[:max_spans]
            trace.total_spans = int(self.store.query(
                f"SELECT count() FROM {self.db}.otel_traces WHERE {where}", params).rows[0][0])
            trace.warnings.append(_cap_warning(trace.total_spans, max_spans))
        return trace

    # -- search --------------------------------------------------------------------------
    def find_trace_ids(self, tenant: str, q: SearchQuery) -> list[str]:
        """Newest traces with a span matching every condition of ``q``, at most ``q.limit``."""
        q.validate()
        params: dict = {"t": tenant, "limit": q.limit}
        conds = ["TenantId = {t:String}", _time_range(params, q.start_ns, q.end_ns)]
        if q.service:
            params["svc"] = q.service
            conds.append("ServiceName = {svc:String}")
        if q.operation:
            params["op"] = q.operation
            conds.append("SpanName = {op:String}")
        if q.span_kind:
            params["kind"] = q.span_kind
            conds.append("SpanKind = {kind:String}")
        if q.status:
            params["status"] = q.status
            conds.append("StatusCode = {status:String}")
        if q.min_duration_ns:
            params["dmin"] = int(q.min_duration_ns)
            conds.append("Duration >= {dmin:UInt64}")
        if q.max_duration_ns:
            params["dmax"] = int(q.max_duration_ns)
            conds.append("Duration <= {dmax:UInt64}")
        for i, (k, v) in enumerate(q.tags):
            conds.append(_tag_condition(i, k, v, params))
        sql = (f"SELECT TraceId FROM {self.db}.otel_traces WHERE {' AND '.join(conds)} AND TraceId != '' "
               f"GROUP BY TraceId ORDER BY max(Timestamp) DESC, TraceId LIMIT {{limit:UInt32}}")
        return [row[0] for row in self.store.query(sql, params).rows]

    def summaries(self, tenant: str, trace_ids: list[str]) -> list[TraceSummary]:
        """One summary per trace (root service and operation, start, duration, span and error counts, services),
        in the order of ``trace_ids``."""
        ranges = self.trace_ranges(tenant, trace_ids)
        if not ranges:
            return []
        params = {"t": tenant}
        r = self.store.query(
            f"SELECT TraceId, toUnixTimestamp64Nano(min(Timestamp)), "
            f"toUnixTimestamp64Nano(max(Timestamp + toIntervalNanosecond(Duration))), count(), "
            f"countIf(StatusCode = '{STATUS_ERROR}'), countIf(ParentSpanId = '') > 0, "
            f"argMinIf(ServiceName, Timestamp, ParentSpanId = ''), argMinIf(SpanName, Timestamp, ParentSpanId = ''), "
            f"argMin(ServiceName, Timestamp), argMin(SpanName, Timestamp), "
            f"sumMap(map(toString(ServiceName), toUInt64(1))), "
            f"sumMap(map(toString(ServiceName), toUInt64(StatusCode = '{STATUS_ERROR}'))) "
            f"FROM {self.db}.otel_traces WHERE TenantId = {{t:String}} AND {_traces_predicate(ranges)} "
            f"GROUP BY TraceId", params)
        by_id = {}
        for (tid, start, end, n, errs, has_root, rsvc, rop, fsvc, fop, svc_spans, svc_errs) in r.rows:
            services = [{"name": s, "spans": int(c), "errors": int(svc_errs.get(s, 0))}
                        for s, c in sorted(svc_spans.items())]
            by_id[tid] = TraceSummary(tid, rsvc if has_root else fsvc, rop if has_root else fop, not has_root,
                                      int(start), int(end) - int(start), int(n), int(errs), services)
        return [by_id[t] for t in trace_ids if t in by_id]

    def get_traces(self, tenant: str, trace_ids: list[str], max_spans_total: int = MAX_SEARCH_SPANS,
                   max_spans: int = MAX_TRACE_SPANS) -> list[Trace]:
        """Whole traces (each capped), in the order of ``trace_ids``; the cap per trace shrinks with the count so
        that one answer stays under ``max_spans_total`` spans."""
        ranges = self.trace_ranges(tenant, trace_ids)
        if not ranges:
            return []
        per = max(100, min(max_spans, max_spans_total // len(ranges)))
        params = {"t": tenant, "per": per + 1}
        r = self.store.query(
            f"SELECT {SPAN_COLUMNS} FROM {self.db}.otel_traces WHERE TenantId = {{t:String}} AND "
            f"{_traces_predicate(ranges)} ORDER BY TraceId, Timestamp, SpanId LIMIT {{per:UInt32}} BY TraceId", params)
        grouped: dict[str, list[Span]] = {}
        for row in r.rows:
            grouped.setdefault(row[0], []).append(_span_from_row(row))
        out = []
        for t in trace_ids:
            spans = grouped.get(t)
            if not spans:
                continue
            trace = Trace(t, spans, len(spans))
            if len(spans) > per:
                trace.spans = spans[:per]
                lo, hi = ranges[t]
                p2 = {"t": tenant, "id": t}
                trace.total_spans = int(self.store.query(
                    f"SELECT count() FROM {self.db}.otel_traces WHERE TenantId = {{t:String}} AND TraceId = "
                    f"{{id:String}} AND {_time_range(p2, lo, hi)}", p2).rows[0][0])
                trace.warnings.append(_cap_warning(trace.total_spans, per))
            out.append(trace)
        return out

    def search(self, tenant: str, q: SearchQuery) -> list[TraceSummary]:
        return self.summaries(tenant, self.find_trace_ids(tenant, q))

    # -- services and operations ---------------------------------------------------------
    def services(self, tenant: str, start_ns: int, end_ns: int) -> list[str]:
        params = {"t": tenant}
        r = self.store.query(
            f"SELECT DISTINCT ServiceName FROM {self.db}.otel_traces WHERE TenantId = {{t:String}} AND "
            f"{_time_range(params, start_ns, end_ns)} AND ServiceName != '' ORDER BY ServiceName", params)
        return [row[0] for row in r.rows]

    def operations(self, tenant: str, service: str, start_ns: int, end_ns: int,
                   span_kind: str = "") -> list[tuple[str, str]]:
        """(operation, stored span kind) pairs of a service."""
        params = {"t": tenant, "svc": service}
        kind = ""
        if span_kind:
            params["kind"] = span_kind
            kind = " AND SpanKind = {kind:String}"
        r = self.store.query(
            f"SELECT DISTINCT SpanName, SpanKind FROM {self.db}.otel_traces WHERE TenantId = {{t:String}} AND "
            f"ServiceName = {{svc:String}} AND {_time_range(params, start_ns, end_ns)}{kind} "
            f"ORDER BY SpanName, SpanKind", params)
        return [(row[0], row[1]) for row in r.rows]

    # -- logs of a trace -----------------------------------------------------------------
    def trace_logs(self, tenant: str, trace_id: str, start_ns: int, end_ns: int, limit: int = 1000,
                   pad_ns: int = 300 * 10**9) -> tuple[list[dict], tuple[int, int]]:
        """Log records carrying the trace id, oldest first. The window is the trace's range from the index
        (widened by ``pad_ns``: logs are often written just after a span ends) when the trace is stored, else the
        caller's ``start_ns``..``end_ns``."""
        tid = normalize_trace_id(trace_id)
        rng = self.trace_ranges(tenant, [tid]).get(tid)
        lo, hi = (rng[0] - pad_ns, rng[1] + pad_ns) if rng else (start_ns, end_ns)
        params = {"t": tenant, "id": tid, "limit": int(limit), "lo": int(lo), "hi": int(hi),
                  "los": int(lo) // 10**9, "his": int(hi) // 10**9 + 1}
        r = self.store.query(
            f"SELECT toUnixTimestamp64Nano(Timestamp), SpanId, ServiceName, SeverityText, SeverityNumber, Body, "
            f"LogAttributes, ResourceAttributes FROM {self.db}.otel_logs WHERE TenantId = {{t:String}} AND "
            f"TraceId = {{id:String}} AND TimestampTime >= toDateTime({{los:Int64}}) AND "
            f"TimestampTime <= toDateTime({{his:Int64}}) AND Timestamp >= fromUnixTimestamp64Nano({{lo:Int64}}) AND "
            f"Timestamp <= fromUnixTimestamp64Nano({{hi:Int64}}) ORDER BY Timestamp LIMIT {{limit:UInt32}}", params)
        out = [{"timestamp": str(int(ts)), "traceID": tid, "spanID": sid, "serviceName": svc, "severityText": sev,
                "severityNumber": int(sevn), "body": body, "attributes": dict(la or {}), "resource": dict(ra or {})}
               for ts, sid, svc, sev, sevn, body, la, ra in r.rows]
        return out, (lo, hi)


class _SettingsStore:
    """A store whose queries all carry the same ClickHouse settings (benchmarks compare plans with it)."""

    def __init__(self, store, settings: dict) -> None:
        self._store, self._settings = store, dict(settings)
        self.database = store.database

    def query(self, sql: str, parameters: dict | None = None, settings: dict | None = None):
        return self._store.query(sql, parameters, self._settings | (settings or {}))


def _cap_warning(total: int, shown: int) -> str:
    return (f"trace has {total} spans; showing the first {shown} by start time (meshscope caps a trace at "
            f"{shown} spans)")
