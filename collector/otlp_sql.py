"""INSERT ... SELECT statements that turn envelope records (see ``otlp_wire``) into rows.

One statement per destination table. ``{source}`` is filled in by the store: a
``file(...)`` over a WAL segment on the embedded store, ``input(...)`` on a server.

Value encoding (documented in README "Attribute values"): attribute maps hold
strings; a string attribute is stored as is; bool as ``true``/``false``; int in
decimal; double in ClickHouse's shortest round-trip form; bytes as base64; arrays
and key/value lists as JSON (strings JSON-quoted, bytes as base64 strings). Values
nested deeper than the decoded depth (see ``otlp_wire``) are stored as
``{"otlp.protobuf.base64": "<ArrayValue or KeyValueList bytes>"}``.

The WHERE clauses mirror ``collector.validate``: what Python counts as rejected in the
response is exactly what the SQL leaves out.
"""

from __future__ import annotations

from meshscope.collector.mesh_sql import MESH_COLUMNS, access_log_attributes, identity_columns
from meshscope.collector.otlp_wire import ATTRIBUTE_DEPTH, BODY_DEPTH

SPAN_KINDS = ["SPAN_KIND_UNSPECIFIED", "SPAN_KIND_INTERNAL", "SPAN_KIND_SERVER", "SPAN_KIND_CLIENT",
              "SPAN_KIND_PRODUCER", "SPAN_KIND_CONSUMER"]
STATUS_CODES = ["STATUS_CODE_UNSET", "STATUS_CODE_OK", "STATUS_CODE_ERROR"]
BODY_TYPES = {"none": "", "string_value": "string", "bool_value": "bool", "int_value": "int",
              "double_value": "double", "bytes_value": "bytes", "array_value": "array", "kvlist_value": "kvlist",
              "array_raw": "array", "kvlist_raw": "kvlist"}


def _double(expr: str, json: bool) -> str:
    if not json:
        return f"toString({expr})"
    # JSON has no NaN/Infinity: quote them, as protobuf's JSON mapping does.
    return f"if(isFinite({expr}), toString({expr}), concat('\"', toString({expr}), '\"'))"


def render_any(v: str, depth: int, max_depth: int, json: bool) -> str:
    """SQL rendering an unrolled AnyValue tuple ``v`` as text (or as JSON inside containers)."""
    s = f"toJSONString({v}.string_value)" if json else f"{v}.string_value"
    b = f"toJSONString(base64Encode({v}.bytes_value))" if json else f"base64Encode({v}.bytes_value)"
    arms = [
        f"{v}.value = 'string_value', {s}",
        f"{v}.value = 'bool_value', if({v}.bool_value, 'true', 'false')",
        f"{v}.value = 'int_value', toString({v}.int_value)",
        f"{v}.value = 'double_value', {_double(v + '.double_value', json)}",
        f"{v}.value = 'bytes_value', {b}",
    ]
    if depth + 1 < max_depth:
        x = f"x{depth + 1}"
        item = render_any(x, depth + 1, max_depth, True)
        kv_item = render_any(f"{x}.value", depth + 1, max_depth, True)
        arms.append(
            f"{v}.value = 'array_value', concat('[', arrayStringConcat(arrayMap({x} -> {item}, {v}.array_value.values), ','), ']')"
        )
        arms.append(
            f"{v}.value = 'kvlist_value', concat('{{', arrayStringConcat(arrayMap({x} -> concat(toJSONString({x}.key), ':', "
            f"{kv_item}), {v}.kvlist_value.values), ','), '}}')"
        )
    else:
        arms.append(f"{v}.value = 'array_raw', concat('{{\"otlp.protobuf.base64\":', toJSONString(base64Encode({v}.array_raw)), '}}')")
        arms.append(f"{v}.value = 'kvlist_raw', concat('{{\"otlp.protobuf.base64\":', toJSONString(base64Encode({v}.kvlist_raw)), '}}')")
    empty = "'null'" if json else "''"
    return f"multiIf({', '.join(arms)}, {empty})"


def attributes_map(expr: str, depth: int | None = None) -> str:
    """A repeated KeyValue column as Map(LowCardinality(String), String)."""
    value = render_any("a0.value", 0, depth or ATTRIBUTE_DEPTH, False)
    return (
        f"CAST((arrayMap(a0 -> a0.key, {expr}), arrayMap(a0 -> {value}, {expr})), "
        f"'Map(LowCardinality(String), String)')"
    )


def _hex(expr: str) -> str:
    return f"lower(hex({expr}))"


def _ns(expr: str) -> str:
    return f"fromUnixTimestamp64Nano(toInt64({expr}))"


def _enum_text(expr: str, names: list[str]) -> str:
    arr = "[" + ", ".join(f"'{n}'" for n in names) + "]"
    return f"if({expr} >= 0 AND {expr} < {len(names)}, arrayElement({arr}, {expr} + 1), toString({expr}))"


_MESH_LIST = ", ".join(MESH_COLUMNS)


def _mesh_values(resource_map: str, item_map: str, client_side: str | None = None) -> str:
    cols = identity_columns(resource_map, item_map, client_side)
    return ",\n    ".join(cols[c] for c in MESH_COLUMNS)


def _scope_columns(scope: str) -> str:
    """Scope-level values, computed once per scope before the per-item ARRAY JOIN (not once per item)."""
    return (f"{scope}.scope.name AS scope_name, {scope}.scope.version AS scope_version, "
            f"{attributes_map(scope + '.scope.attributes')} AS scope_attrs, "
            f"{scope}.scope.dropped_attributes_count AS scope_dropped, {scope}.schema_url AS scope_schema_url")


_ZERO_TRACE = "unhex('00000000000000000000000000000000')"


def _insert_with_mesh(table: str, columns: list[tuple[str, str]], source: str, resource_col: str,
                      item_col: str, client_side: str | None = None) -> str:
    """INSERT of ``columns`` (name, expression) computed over ``source``, plus the Mesh* columns.

    The Mesh* expressions read the attribute maps as *columns* of a subquery, not as aliases: an alias is
    copied into every one of its ~60 uses and analysed each time, which cost 0.3 s of CPU per insert."""
    names = ", ".join(f"`{n}`" for n, _ in columns)
    inner = ",\n    ".join(f"{e} AS `{n}`" for n, e in columns)
    return f"""
INSERT INTO {table} ({names}, {_MESH_LIST})
SELECT *, {_mesh_values(resource_col, item_col, client_side)}
FROM (
SELECT
    {inner}
{source}
)
"""


def traces_insert(database: str = "otel") -> str:
    columns = [
        ("TenantId", "tenant"),
        ("Timestamp", _ns("sp.start_time_unix_nano")),
        ("TraceId", _hex("sp.trace_id")),
        ("SpanId", _hex("sp.span_id")),
        ("ParentSpanId", _hex("sp.parent_span_id")),
        ("TraceState", "sp.trace_state"),
        ("TraceFlags", "sp.flags"),
        ("SpanName", "sp.name"),
        ("SpanKind", _enum_text("sp.kind", SPAN_KINDS)),
        ("ServiceName", "res_attrs['service.name']"),
        ("ResourceAttributes", "res_attrs"),
        ("ResourceSchemaUrl", "rs_schema_url"),
        ("ResourceDroppedAttributesCount", "res_dropped"),
        ("ScopeName", "scope_name"),
        ("ScopeVersion", "scope_version"),
        ("ScopeAttributes", "scope_attrs"),
        ("ScopeDroppedAttributesCount", "scope_dropped"),
        ("ScopeSchemaUrl", "scope_schema_url"),
        ("SpanAttributes", attributes_map("sp.attributes")),
        ("DroppedAttributesCount", "sp.dropped_attributes_count"),
        ("Duration", "if(sp.end_time_unix_nano > sp.start_time_unix_nano, "
                     "sp.end_time_unix_nano - sp.start_time_unix_nano, 0)"),
        ("StatusCode", _enum_text("sp.status.code", STATUS_CODES)),
        ("StatusMessage", "sp.status.message"),
        ("Events.Timestamp", f"arrayMap(e -> {_ns('e.time_unix_nano')}, sp.events)"),
        ("Events.Name", "arrayMap(e -> e.name, sp.events)"),
        ("Events.Attributes", f"arrayMap(e -> {attributes_map('e.attributes')}, sp.events)"),
        ("Events.DroppedAttributesCount", "arrayMap(e -> e.dropped_attributes_count, sp.events)"),
        ("DroppedEventsCount", "sp.dropped_events_count"),
        ("Links.TraceId", f"arrayMap(l -> {_hex('l.trace_id')}, sp.links)"),
        ("Links.SpanId", f"arrayMap(l -> {_hex('l.span_id')}, sp.links)"),
        ("Links.TraceState", "arrayMap(l -> l.trace_state, sp.links)"),
        ("Links.Attributes", f"arrayMap(l -> {attributes_map('l.attributes')}, sp.links)"),
        ("Links.DroppedAttributesCount", "arrayMap(l -> l.dropped_attributes_count, sp.links)"),
        ("Links.Flags", "arrayMap(l -> l.flags, sp.links)"),
        ("DroppedLinksCount", "sp.dropped_links_count"),
    ]
    source = f"""FROM (
    SELECT tenant, res_attrs, res_dropped, rs_schema_url, {_scope_columns('ss')}, ss.spans AS spans
    FROM (
        SELECT tenant, {attributes_map('rs.resource.attributes')} AS res_attrs,
               rs.resource.dropped_attributes_count AS res_dropped, rs.schema_url AS rs_schema_url,
               rs.scope_spans AS scope_list
        FROM {{source}}
        ARRAY JOIN resource_spans AS rs
    )
    ARRAY JOIN scope_list AS ss
)
ARRAY JOIN spans AS sp
WHERE length(sp.trace_id) = 16 AND sp.trace_id != {_ZERO_TRACE} AND length(sp.span_id) = 8
  AND length(sp.parent_span_id) IN (0, 8)"""
    return _insert_with_mesh(f"{database}.otel_traces", columns, source, "ResourceAttributes", "SpanAttributes",
                             "SpanKind IN ('SPAN_KIND_CLIENT', 'SPAN_KIND_PRODUCER')")


def logs_insert(database: str = "otel") -> str:
    body = render_any("lr.body", 0, BODY_DEPTH, False)
    body_type = "multiIf(" + ", ".join(
        f"lr.body.value = '{k}', '{v}'" for k, v in BODY_TYPES.items() if k != "none"
    ) + ", '')"
    log_attrs = f"mapUpdate({access_log_attributes('lr.body.string_value')}, {attributes_map('lr.attributes')})"
    columns = [
        ("TenantId", "tenant"),
        ("Timestamp", _ns("if(lr.time_unix_nano != 0, lr.time_unix_nano, lr.observed_time_unix_nano)")),
        ("ObservedTimestamp", _ns("lr.observed_time_unix_nano")),
        ("TraceId", _hex("lr.trace_id")),
        ("SpanId", _hex("lr.span_id")),
        ("TraceFlags", "toUInt8(bitAnd(lr.flags, 255))"),
        ("Flags", "lr.flags"),
        ("SeverityText", "lr.severity_text"),
        ("SeverityNumber", "toUInt8(if(lr.severity_number >= 0 AND lr.severity_number <= 255, lr.severity_number, 0))"),
        ("ServiceName", "res_attrs['service.name']"),
        ("Body", body),
        ("BodyType", body_type),
        ("EventName", "lr.event_name"),
        ("ResourceSchemaUrl", "rs_schema_url"),
        ("ResourceAttributes", "res_attrs"),
        ("ResourceDroppedAttributesCount", "res_dropped"),
        ("ScopeSchemaUrl", "scope_schema_url"),
        ("ScopeName", "scope_name"),
        ("ScopeVersion", "scope_version"),
        ("ScopeAttributes", "scope_attrs"),
        ("ScopeDroppedAttributesCount", "scope_dropped"),
        ("LogAttributes", log_attrs),
        ("DroppedAttributesCount", "lr.dropped_attributes_count"),
    ]
    source = f"""FROM (
    SELECT tenant, res_attrs, res_dropped, rs_schema_url, {_scope_columns('sl')}, sl.log_records AS records
    FROM (
        SELECT tenant, {attributes_map('rl.resource.attributes')} AS res_attrs,
               rl.resource.dropped_attributes_count AS res_dropped, rl.schema_url AS rs_schema_url,
               rl.scope_logs AS scope_list
        FROM {{source}}
        ARRAY JOIN resource_logs AS rl
    )
    ARRAY JOIN scope_list AS sl
)
ARRAY JOIN records AS lr
WHERE length(lr.trace_id) IN (0, 16) AND length(lr.span_id) IN (0, 8)"""
    return _insert_with_mesh(f"{database}.otel_logs", columns, source, "ResourceAttributes", "LogAttributes")


_METRIC_COMMON_COLS = (
    "TenantId, ResourceAttributes, ResourceSchemaUrl, ScopeName, ScopeVersion, ScopeAttributes, "
    "ScopeDroppedAttrCount, ScopeSchemaUrl, ServiceName, MetricName, MetricDescription, MetricUnit, "
    "Attributes, StartTimeUnix, TimeUnix, Flags, "
    "`Exemplars.FilteredAttributes`, `Exemplars.TimeUnix`, `Exemplars.Value`, `Exemplars.SpanId`, `Exemplars.TraceId`"
)


def _metric_common(point: str, exemplars: bool = True) -> str:
    if not exemplars:  # SummaryDataPoint has no exemplars
        ex = "[], [], [], [], []"
    else:
        ex = f"""arrayMap(x -> {attributes_map('x.filtered_attributes')}, {point}.exemplars),
    arrayMap(x -> {_ns('x.time_unix_nano')}, {point}.exemplars),
    arrayMap(x -> if(x.value = 'as_int', toFloat64(x.as_int), x.as_double), {point}.exemplars),
    arrayMap(x -> {_hex('x.span_id')}, {point}.exemplars),
    arrayMap(x -> {_hex('x.trace_id')}, {point}.exemplars)"""
    return f"""tenant, res_attrs, rs_schema_url, scope_name, scope_version, scope_attrs,
    scope_dropped, scope_schema_url, res_attrs['service.name'], m.name, m.description, m.unit,
    {attributes_map(point + '.attributes')}, {_ns(point + '.start_time_unix_nano')}, {_ns(point + '.time_unix_nano')},
    {point}.flags,
    {ex}"""


def _metric_from(kind: str, point_path: str) -> str:
    return f"""FROM (
    SELECT tenant, res_attrs, rs_schema_url, scope_name, scope_version, scope_attrs, scope_dropped,
           scope_schema_url, m
    FROM (
        SELECT tenant, res_attrs, rs_schema_url, {_scope_columns('sm')}, sm.metrics AS metric_list
        FROM (
            SELECT tenant, {attributes_map('rm.resource.attributes')} AS res_attrs, rm.schema_url AS rs_schema_url,
                   rm.scope_metrics AS scope_list
            FROM {{source}}
            ARRAY JOIN resource_metrics AS rm
        )
        ARRAY JOIN scope_list AS sm
    )
    ARRAY JOIN metric_list AS m
    WHERE m.data = '{kind}'
)
ARRAY JOIN {point_path} AS p"""


def metrics_inserts(database: str = "otel") -> dict[str, str]:
    """Destination table -> statement. Each reads the same segment and keeps one metric kind."""
    value = "if(p.value = 'as_int', toFloat64(p.as_int), p.as_double)"
    return {
        "otel_metrics_gauge": f"""
INSERT INTO {database}.otel_metrics_gauge ({_METRIC_COMMON_COLS}, Value, ValueType)
SELECT {_metric_common('p')}, {value}, if(p.value = 'as_int', 'int', 'double')
{_metric_from('gauge', 'm.gauge.data_points')}
""",
        "otel_metrics_sum": f"""
INSERT INTO {database}.otel_metrics_sum ({_METRIC_COMMON_COLS}, Value, ValueType, AggregationTemporality, IsMonotonic)
SELECT {_metric_common('p')}, {value}, if(p.value = 'as_int', 'int', 'double'),
       m.sum.aggregation_temporality, m.sum.is_monotonic
{_metric_from('sum', 'm.sum.data_points')}
""",
        "otel_metrics_histogram": f"""
INSERT INTO {database}.otel_metrics_histogram ({_METRIC_COMMON_COLS}, Count, Sum, BucketCounts, ExplicitBounds,
    Min, Max, AggregationTemporality)
SELECT {_metric_common('p')}, p.count, p.sum, p.bucket_counts, p.explicit_bounds, p.min, p.max,
       m.histogram.aggregation_temporality
{_metric_from('histogram', 'm.histogram.data_points')}
""",
        "otel_metrics_exponential_histogram": f"""
INSERT INTO {database}.otel_metrics_exponential_histogram ({_METRIC_COMMON_COLS}, Count, Sum, Scale, ZeroCount,
    ZeroThreshold, PositiveOffset, PositiveBucketCounts, NegativeOffset, NegativeBucketCounts, Min, Max,
    AggregationTemporality)
SELECT {_metric_common('p')}, p.count, p.sum, p.scale, p.zero_count, p.zero_threshold, p.positive.offset,
       p.positive.bucket_counts, p.negative.offset, p.negative.bucket_counts, p.min, p.max,
       m.exponential_histogram.aggregation_temporality
{_metric_from('exponential_histogram', 'm.exponential_histogram.data_points')}
""",
        "otel_metrics_summary": f"""
INSERT INTO {database}.otel_metrics_summary ({_METRIC_COMMON_COLS}, Count, Sum,
    `ValueAtQuantiles.Quantile`, `ValueAtQuantiles.Value`)
SELECT {_metric_common('p', exemplars=False)}, p.count, p.sum, arrayMap(q -> q.quantile, p.quantile_values),
       arrayMap(q -> q.value, p.quantile_values)
{_metric_from('summary', 'm.summary.data_points')}
""",
    }


METRIC_KIND_TABLES = {
    "gauge": "otel_metrics_gauge",
    "sum": "otel_metrics_sum",
    "histogram": "otel_metrics_histogram",
    "exponential_histogram": "otel_metrics_exponential_histogram",
    "summary": "otel_metrics_summary",
}
