"""LogQL → ClickHouse SQL: decide what runs in the store and what stays in Python, then write the SQL.

Three statements, each built here as SQL text plus bound parameters (user text never enters the SQL string):

* ``streams_sql``: the selector against ``otel_log_streams`` (one row per stream and hour) → the matching
  streams' fingerprints, services and labels. This is Loki's index lookup.
* ``entries_sql``: rows of ``otel_logs`` for those streams in a time range, with the line filters ClickHouse can
  run exactly (substring and RE2 regex) — ordered for log queries, or
* ``counts_sql``: for metric queries whose pipeline is only such filters, per-stream counts and byte sums in time
  buckets that never straddle a window edge, so Python receives one row per stream and bucket instead of one per
  line.

The stream-label and structured-metadata conventions (DESIGN.md, Loki 3 OTLP) are defined once here and in
``deploy/clickhouse/004_log_streams.sql``.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from . import ast as A

LOGS = "otel_logs"
STREAMS = "otel_log_streams"

# Resource attributes that are stream labels (keep in step with 004_log_streams.sql); the rest are metadata.
STREAM_RESOURCE_ATTRIBUTES = (
    "service.name", "service.namespace", "service.instance.id", "deployment.environment",
    "deployment.environment.name", "cloud.region", "cloud.availability_zone", "k8s.cluster.name",
    "k8s.namespace.name", "k8s.pod.name", "k8s.container.name", "container.name", "k8s.replicaset.name",
    "k8s.deployment.name", "k8s.statefulset.name", "k8s.daemonset.name", "k8s.cronjob.name", "k8s.job.name",
)
_SANITIZE = "(k, v) -> (replaceRegexpAll(k, '[^A-Za-z0-9_]', '_'), v)"
_PROMOTED = ", ".join(f"'{a}'" for a in STREAM_RESOURCE_ATTRIBUTES)
# Structured metadata of a row: log attributes, the resource attributes that are not stream labels, trace and
# span ids — names sanitised like labels, as Loki does for OTLP.
METADATA_SQL = (
    f"mapConcat(mapApply({_SANITIZE}, LogAttributes), "
    f"if(ScopeName = 'loki-push', map(), mapApply({_SANITIZE}, "
    f"mapFilter((k, v) -> k NOT IN ({_PROMOTED}), ResourceAttributes))), "
    "if(TraceId = '', map(), map('trace_id', TraceId)), if(SpanId = '', map(), map('span_id', SpanId)))"
)
_SANITIZED = "replaceRegexpAll(k, '[^A-Za-z0-9_]', '_')"


def metadata_sql(names: list[str] | None, p: "Params") -> str:
    """Structured metadata of a row; with ``names``, only the labels of those names (what a query can see).

    Building the whole map costs a regex per attribute key per row, most of a metric query's SQL time; the
    restricted form tests a key's length first (sanitising keeps lengths) so the regex runs on few keys."""
    if names is None:
        return METADATA_SQL
    if not names:
        return "map()"
    ns = p.add(sorted(set(names)), "Array(String)")
    lens = p.add(sorted({len(n.encode()) for n in names}), "Array(UInt64)")
    keep = f"(k, v) -> length(k) IN {lens} AND {_SANITIZED} IN {ns}"
    parts = [f"mapApply({_SANITIZE}, mapFilter({keep}, LogAttributes))",
             f"if(ScopeName = 'loki-push', map(), mapApply({_SANITIZE}, mapFilter((k, v) -> length(k) IN {lens} "
             f"AND k NOT IN ({_PROMOTED}) AND {_SANITIZED} IN {ns}, ResourceAttributes)))"]
    if "trace_id" in names:
        parts.append("if(TraceId = '', map(), map('trace_id', TraceId))")
    if "span_id" in names:
        parts.append("if(SpanId = '', map(), map('span_id', SpanId))")
    return f"mapConcat({', '.join(parts)})"


class Params:
    """Collects bound parameters and hands out their placeholders."""

    def __init__(self):
        self.values: dict[str, object] = {}

    def add(self, value, type_: str) -> str:
        name = f"p{len(self.values)}"
        self.values[name] = value
        return f"{{{name}:{type_}}}"


def _anchored(rx: str) -> str:
    return f"^(?:{rx})$"


def matcher_sql(m: A.Matcher, column: str, p: Params) -> str:
    """A Prometheus-style matcher over a Map column; a missing label reads as '' (Prometheus semantics)."""
    value = f"{column}[{p.add(m.name, 'String')}]"
    if m.op == "=":
        return f"{value} = {p.add(m.value, 'String')}"
    if m.op == "!=":
        return f"{value} != {p.add(m.value, 'String')}"
    cond = f"match({value}, {p.add(_anchored(m.value), 'String')})"
    return cond if m.op == "=~" else f"NOT {cond}"


# ------------------------------------------------------------------------------------------------ line filters
_TOKEN_SEPARATORS = re.compile(r"[\x00-\x2f\x3a-\x40\x5b-\x60\x7b-\x7f]")


def interior_tokens(needle: str, limit: int = 8) -> list[str]:
    """Whole tokens of the body's text index (tokenizer splitByNonAlpha: ASCII letters and digits and every
    non-ASCII byte form tokens, anything else separates) that any line containing ``needle`` must hold: the
    pieces with a separator on both sides inside the needle. The first and last piece may be part of a longer
    token in the line, so they are left out."""
    parts = _TOKEN_SEPARATORS.split(needle)
    inner = [t for t in parts[1:-1] if t]
    inner.sort(key=len, reverse=True)  # the longest tokens are the most selective
    return inner[:limit]


def _term_sql(op: str, term: A.LineFilterTerm, p: Params) -> str | None:
    if term.ip or op in ("|>", "!>"):
        return None
    if op in ("|=", "!="):
        exact = f"position(Body, {p.add(term.value, 'String')}) > 0"
        tokens = interior_tokens(term.value) if op == "|=" else []
        if tokens:  # lets the text index skip granules; position() stays the exact test
            return f"(hasAllTokens(Body, {p.add(tokens, 'Array(String)')}) AND {exact})"
        return exact
    # Go's RE2 default: '.' does not match a newline; ClickHouse's match() lets it unless told (?-s).
    return f"match(Body, {p.add('(?-s)' + term.value, 'String')})"


def line_filter_sql(f: A.LineFilter, p: Params) -> str | None:
    """SQL for one line filter, or None when a term needs Python (ip(), patterns)."""
    parts = []
    for t in f.terms:
        s = _term_sql(f.op, t, p)
        if s is None:
            return None
        parts.append(s)
    if f.op.startswith("!"):
        return " AND ".join(f"NOT ({s})" for s in parts)
    return "(" + " OR ".join(parts) + ")" if len(parts) > 1 else parts[0]


@dataclass
class LogPlan:
    """What the store does for one log query (selector and pushed filters) and what Python still runs."""
    selector: A.Selector
    sql_filters: list[str]
    params: Params
    python_stages: list[A.Stage]
    needs_metadata: bool = True

    @property
    def python_only_filters(self) -> bool:
        return all(isinstance(s, A.LineFilter) for s in self.python_stages)


def plan_log_query(q: A.LogQuery) -> LogPlan:
    """Push every line filter that precedes the first line-rewriting stage and has an exact SQL form."""
    from .pipeline import LINE_MUTATING
    p = Params()
    sql_filters, rest = [], []
    mutated = False
    for st in q.stages:
        if isinstance(st, LINE_MUTATING):
            mutated = True
        if not mutated and isinstance(st, A.LineFilter):
            s = line_filter_sql(st, p)
            if s is not None:
                sql_filters.append(s)
                continue
        rest.append(st)
    return LogPlan(q.selector, sql_filters, p, rest)


# ------------------------------------------------------------------------------------------------ statements
def streams_sql(db: str, selector: A.Selector, tenant: str, start_ns: int, end_ns: int, limit: int,
                p: Params | None = None) -> tuple[str, dict]:
    """Selected streams in [start, end]: fingerprint, service, labels, entries and bytes."""
    p = p or Params()
    conds = [f"TenantId = {p.add(tenant, 'String')}",
             f"Hour >= toStartOfHour(toDateTime({p.add(start_ns // 10**9, 'Int64')}))",
             f"Hour <= toDateTime({p.add(end_ns // 10**9, 'Int64')})"]
    conds += [matcher_sql(m, "StreamLabels", p) for m in selector.matchers]
    sql = (f"SELECT StreamFingerprint, any(ServiceName), any(StreamLabels), sum(Entries), sum(Bytes) "
           f"FROM {db}.{STREAMS} WHERE {' AND '.join(conds)} GROUP BY StreamFingerprint "
           f"LIMIT {int(limit)}")
    return sql, p.values


def _entry_conds(plan: LogPlan, tenant: str, services: list[str], fingerprints: list[int],
                 lo_ns: int, hi_ns: int, p: Params) -> list[str]:
    """Rows of the selected streams with lo <= Timestamp <= hi (inclusive both ends, in ns)."""
    return [
        f"TenantId = {p.add(tenant, 'String')}",
        f"ServiceName IN {p.add(sorted(set(services)), 'Array(String)')}",
        f"TimestampTime >= toDateTime({p.add(lo_ns // 10**9, 'Int64')})",
        f"TimestampTime <= toDateTime({p.add(math.ceil(hi_ns / 10**9), 'Int64')})",
        f"Timestamp >= fromUnixTimestamp64Nano({p.add(lo_ns, 'Int64')})",
        f"Timestamp <= fromUnixTimestamp64Nano({p.add(hi_ns, 'Int64')})",
        f"StreamFingerprint IN {p.add(sorted(set(fingerprints)), 'Array(UInt64)')}",
        *plan.sql_filters,
    ]


def entries_sql(db: str, plan: LogPlan, tenant: str, services: list[str], fingerprints: list[int],
                lo_ns: int, hi_ns: int, forward: bool, limit: int | None,
                metadata: bool | list[str]) -> tuple[str, dict]:
    """Rows in time order; ``metadata`` True = every metadata label, a list = only those names, False = none."""
    p = Params()
    p.values.update(plan.params.values)
    conds = _entry_conds(plan, tenant, services, fingerprints, lo_ns, hi_ns, p)
    cols = "toUnixTimestamp64Nano(Timestamp) AS ts, StreamFingerprint, Body"
    if metadata is not False:
        cols += f", {metadata_sql(None if metadata is True else metadata, p)} AS md"
    order = "ASC" if forward else "DESC"
    sql = (f"SELECT {cols} FROM {db}.{LOGS} WHERE {' AND '.join(conds)} "
           f"ORDER BY Timestamp {order}, StreamFingerprint {order}")
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    return sql, p.values


def counts_sql(db: str, plan: LogPlan, tenant: str, services: list[str], fingerprints: list[int],
               lo_ns: int, hi_ns: int, base_ns: int, bucket_ns: int, *, with_bytes: bool,
               group_labels: list[str] | None = None, metadata: bool | list[str] = False) -> tuple[str, dict]:
    """Entries (and bytes) per bucket, where bucket b holds base + (b-1)·g < ts <= base + b·g.

    Rows are ``(key, b, count, bytes[, md])``. With ``group_labels`` the key is the array of those stream labels'
    values, so ClickHouse already sums the streams a ``sum by (...)`` merges; otherwise the key is the stream's
    fingerprint, and ``metadata`` (True = all, a list = those names) adds the metadata labels to the grouping."""
    p = Params()
    p.values.update(plan.params.values)
    conds = _entry_conds(plan, tenant, services, fingerprints, lo_ns, hi_ns, p)
    g = p.add(bucket_ns, "Int64")
    b = f"intDiv(toUnixTimestamp64Nano(Timestamp) - {p.add(base_ns, 'Int64')} + {g} - 1, {g})"
    byte_sum = "sum(length(Body))" if with_bytes else "toUInt64(0)"
    if group_labels is not None:
        key = "[" + ", ".join(f"StreamLabels[{p.add(n, 'String')}]" for n in group_labels) + "]"
        group = "key, b"
        md = ""
    else:
        key = "StreamFingerprint"
        group = "key, b"
        md = ""
        if metadata is not False:
            md = f", {metadata_sql(None if metadata is True else metadata, p)} AS md"
            group += ", md"
    sql = (f"SELECT {key} AS key, {b} AS b, count(), {byte_sum}{md} FROM {db}.{LOGS} "
           f"WHERE {' AND '.join(conds)} GROUP BY {group}")
    return sql, p.values


@dataclass
class Bucketing:
    base_ns: int
    bucket_ns: int
    extra: dict = field(default_factory=dict)

    def bucket_end(self, b: int) -> int:
        return self.base_ns + b * self.bucket_ns


def bucketing_for(node: A.RangeAggregation, start_ns: int, end_ns: int, step_ns: int) -> Bucketing:
    """Buckets whose edges include every window edge (t - offset - range and t - offset for each step t):
    width gcd(step, range), counted from the first window's left edge."""
    r = node.range
    g = math.gcd(step_ns, r.range_ns) if step_ns else r.range_ns
    return Bucketing(start_ns - r.offset_ns - r.range_ns, g)
