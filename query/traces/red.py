"""RED from spans: rate, error share and duration percentiles per service or per operation, over a window or as
time series.

Which spans count: by default the spans that *receive* work (``SERVER`` and ``CONSUMER``), so a request counts once
per service that handled it, as in Jaeger's SPM and SigNoz; ``kinds`` widens or narrows that. Errors are spans with
status ERROR. Percentiles are ClickHouse's t-digest (``quantilesTDigest``): a few % relative error in the tail,
constant memory per group.
"""
from __future__ import annotations

from dataclasses import dataclass

from .model import STATUS_ERROR

DEFAULT_KINDS = ("SPAN_KIND_SERVER", "SPAN_KIND_CONSUMER")
MAX_POINTS = 11_000  # groups × buckets in one series answer
MAX_GROUPS = 2_000


@dataclass
class RedRow:
    service: str
    operation: str | None
    requests: int
    errors: int
    p50_ns: float
    p95_ns: float
    p99_ns: float

    def to_json(self, window_s: float) -> dict:
        d = {"service": self.service}
        if self.operation is not None:
            d["operation"] = self.operation
        d |= {"requests": self.requests, "rate": round(self.requests / window_s, 6) if window_s else 0.0,
              "errors": self.errors, "errorRate": round(self.errors / self.requests, 6) if self.requests else 0.0,
              "p50Ms": round(self.p50_ns / 1e6, 3), "p95Ms": round(self.p95_ns / 1e6, 3),
              "p99Ms": round(self.p99_ns / 1e6, 3)}
        return d


def _where(params: dict, tenant: str, start_ns: int, end_ns: int, service: str, kinds) -> str:
    params |= {"t": tenant, "lo": int(start_ns), "hi": int(end_ns)}
    conds = ["TenantId = {t:String}", "Timestamp >= fromUnixTimestamp64Nano({lo:Int64})",
             "Timestamp < fromUnixTimestamp64Nano({hi:Int64})"]
    if service:
        params["svc"] = service
        conds.append("ServiceName = {svc:String}")
    if kinds:
        params["kinds"] = list(kinds)
        conds.append("SpanKind IN {kinds:Array(String)}")
    return " AND ".join(conds)


def red_summary(store, tenant: str, start_ns: int, end_ns: int, *, service: str = "", by_operation: bool = False,
                kinds=DEFAULT_KINDS) -> list[RedRow]:
    params: dict = {}
    where = _where(params, tenant, start_ns, end_ns, service, kinds)
    group = "ServiceName, SpanName" if by_operation else "ServiceName"
    op = "SpanName" if by_operation else "''"
    r = store.query(
        f"SELECT ServiceName, {op}, count(), countIf(StatusCode = '{STATUS_ERROR}'), "
        f"quantilesTDigest(0.5, 0.95, 0.99)(Duration) FROM {store.database}.otel_traces WHERE {where} "
        f"GROUP BY {group} ORDER BY {group} LIMIT {MAX_GROUPS}", params)
    return [RedRow(svc, o if by_operation else None, int(n), int(e), *(float(x) for x in q))
            for svc, o, n, e, q in r.rows]


def red_series(store, tenant: str, start_ns: int, end_ns: int, step_s: int, *, service: str = "",
               by_operation: bool = False, kinds=DEFAULT_KINDS) -> list[dict]:
    """One series per group: ``{"service", ["operation"], "points": [{"t", "requests", "rate", "errors",
    "errorRate", "p50Ms", "p95Ms", "p99Ms"}]}``; buckets start at multiples of ``step_s`` (unix seconds), empty
    buckets are left out."""
    params: dict = {"step": int(step_s)}
    where = _where(params, tenant, start_ns, end_ns, service, kinds)
    group = "ServiceName, SpanName" if by_operation else "ServiceName"
    op = "SpanName" if by_operation else "''"
    r = store.query(
        f"SELECT ServiceName, {op}, toUnixTimestamp(toStartOfInterval(Timestamp, toIntervalSecond({{step:UInt32}}))) "
        f"AS b, count(), countIf(StatusCode = '{STATUS_ERROR}'), quantilesTDigest(0.5, 0.95, 0.99)(Duration) "
        f"FROM {store.database}.otel_traces WHERE {where} GROUP BY {group}, b ORDER BY {group}, b "
        f"LIMIT {MAX_POINTS}", params)
    series: dict[tuple, dict] = {}
    for svc, o, b, n, e, q in r.rows:
        key = (svc, o)
        s = series.get(key)
        if s is None:
            s = {"service": svc} | ({"operation": o} if by_operation else {}) | {"points": []}
            series[key] = s
        row = RedRow(svc, None, int(n), int(e), *(float(x) for x in q)).to_json(step_s)
        del row["service"]
        s["points"].append({"t": int(b)} | row)
    return list(series.values())
