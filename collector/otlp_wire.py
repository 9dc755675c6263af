"""The OTLP wire schema that ClickHouse decodes for us.

meshscope does not walk OTLP messages span by span in Python. Requests are kept as
the protobuf bytes the client sent (wrapped in a tiny envelope that adds the
tenant), and ClickHouse parses them with ``FORMAT Protobuf`` during the insert.
That needs a ``.proto`` text and a matching column *structure*; both are
generated here from one description so they cannot drift apart.

Two simplifications make the OTLP messages digestible for ClickHouse:

* ``AnyValue`` is recursive and ClickHouse column types are not. We unroll it to a
  fixed depth; below that depth arrays and key/value lists arrive as raw bytes
  (``*_raw``) and are stored in a documented fallback form (see ``otlp_sql``).
* enums are declared as ``int32`` (same varint on the wire), so unknown values
  survive instead of failing the parse.

The field numbers come from opentelemetry-proto; ``tests/test_otlp_wire.py`` checks
every one of them against the descriptors shipped in the ``opentelemetry-proto``
package.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# proto scalar type -> ClickHouse type
_SCALARS = {
    "string": "String",
    "bytes": "String",
    "bool": "Bool",
    "int32": "Int32",
    "int64": "Int64",
    "uint32": "UInt32",
    "uint64": "UInt64",
    "sint32": "Int32",
    "fixed32": "UInt32",
    "fixed64": "UInt64",
    "sfixed64": "Int64",
    "double": "Float64",
}

# How deep AnyValue nesting is decoded structurally, per use. Attributes are the hot
# path (ten or so per span), so they get one level of arrays/maps: that covers every
# attribute the OTel SDKs can produce (primitives and homogeneous arrays). Log bodies
# are often structured documents, so they get three.
ATTRIBUTE_DEPTH = 2
BODY_DEPTH = 4


@dataclass
class Field:
    name: str
    type: str  # a scalar name above or a message name
    number: int
    repeated: bool = False
    oneof: str | None = None


@dataclass
class Message:
    name: str
    fields: list[Field] = field(default_factory=list)


class SchemaBuilder:
    """Collects messages and renders them as .proto text and as a ClickHouse structure."""

    def __init__(self) -> None:
        self.messages: dict[str, Message] = {}

    def add(self, name: str, *fields: Field) -> str:
        if name not in self.messages:
            self.messages[name] = Message(name, list(fields))
        return name

    # -- AnyValue, unrolled ------------------------------------------------------------
    def any_value(self, depth: int, max_depth: int) -> str:
        name = f"AnyValue{max_depth}_{depth}"
        if name in self.messages:
            return name
        if depth + 1 < max_depth:
            inner = self.any_value(depth + 1, max_depth)
            kv = self.add(f"KeyValue{max_depth}_{depth + 1}", Field("key", "string", 1), Field("value", inner, 2))
            arr_t = self.add(f"ArrayValue{max_depth}_{depth + 1}", Field("values", inner, 1, repeated=True))
            kvl_t = self.add(f"KeyValueList{max_depth}_{depth + 1}", Field("values", kv, 1, repeated=True))
            arr = Field("array_value", arr_t, 5, oneof="value")
            kvl = Field("kvlist_value", kvl_t, 6, oneof="value")
        else:
            arr = Field("array_raw", "bytes", 5, oneof="value")
            kvl = Field("kvlist_raw", "bytes", 6, oneof="value")
        self.add(
            name,
            Field("string_value", "string", 1, oneof="value"),
            Field("bool_value", "bool", 2, oneof="value"),
            Field("int_value", "int64", 3, oneof="value"),
            Field("double_value", "double", 4, oneof="value"),
            arr,
            kvl,
            Field("bytes_value", "bytes", 7, oneof="value"),
        )
        return name

    def key_value(self, max_depth: int) -> str:
        return self.add(f"KeyValue{max_depth}_0", Field("key", "string", 1), Field("value", self.any_value(0, max_depth), 2))

    # -- rendering -----------------------------------------------------------------------
    def proto_text(self) -> str:
        out = ['syntax = "proto3";', ""]
        for msg in self.messages.values():
            out.append(f"message {msg.name} {{")
            plain = [f for f in msg.fields if f.oneof is None]
            for f in plain:
                rep = "repeated " if f.repeated else ""
                out.append(f"  {rep}{f.type} {f.name} = {f.number};")
            oneofs: dict[str, list[Field]] = {}
            for f in msg.fields:
                if f.oneof:
                    oneofs.setdefault(f.oneof, []).append(f)
            for oname, members in oneofs.items():
                out.append(f"  oneof {oname} {{")
                for f in members:
                    out.append(f"    {f.type} {f.name} = {f.number};")
                out.append("  }")
            out.append("}")
        return "\n".join(out) + "\n"

    def ch_type(self, type_name: str) -> str:
        if type_name in _SCALARS:
            return _SCALARS[type_name]
        msg = self.messages[type_name]
        parts = []
        oneofs: dict[str, list[Field]] = {}
        for f in msg.fields:
            t = self.ch_type(f.type)
            if f.repeated:
                t = f"Array({t})"
            parts.append(f"{f.name} {t}")
            if f.oneof:
                oneofs.setdefault(f.oneof, []).append(f)
        for oname, members in oneofs.items():
            labels = ", ".join(["'none' = 0"] + [f"'{f.name}' = {f.number}" for f in members])
            parts.append(f"{oname} Enum8({labels})")
        return f"Tuple({', '.join(parts)})"

    def structure(self, root: str) -> str:
        """The columns of one row: the root message's fields (ClickHouse's Protobuf input)."""
        inner = self.ch_type(root)
        return inner[len("Tuple(") : -1]


def _common(b: SchemaBuilder, attr_depth: int) -> tuple[str, str]:
    kv = b.key_value(attr_depth)
    resource = b.add("Resource", Field("attributes", kv, 1, repeated=True), Field("dropped_attributes_count", "uint32", 2))
    scope = b.add(
        "InstrumentationScope",
        Field("name", "string", 1),
        Field("version", "string", 2),
        Field("attributes", kv, 3, repeated=True),
        Field("dropped_attributes_count", "uint32", 4),
    )
    return resource, scope


# Field 15 of the envelope carries the tenant. The envelope's other fields are exactly
# the Export*ServiceRequest's (field 1, the resource list), so an envelope is the
# client's bytes followed by one appended field: no re-encoding.
TENANT_FIELD = 15


def traces_schema(attr_depth: int = ATTRIBUTE_DEPTH) -> SchemaBuilder:
    b = SchemaBuilder()
    kv = b.key_value(attr_depth)
    resource, scope = _common(b, attr_depth)
    event = b.add(
        "Event",
        Field("time_unix_nano", "fixed64", 1),
        Field("name", "string", 2),
        Field("attributes", kv, 3, repeated=True),
        Field("dropped_attributes_count", "uint32", 4),
    )
    link = b.add(
        "Link",
        Field("trace_id", "bytes", 1),
        Field("span_id", "bytes", 2),
        Field("trace_state", "string", 3),
        Field("attributes", kv, 4, repeated=True),
        Field("dropped_attributes_count", "uint32", 5),
        Field("flags", "fixed32", 6),
    )
    status = b.add("Status", Field("message", "string", 2), Field("code", "int32", 3))
    span = b.add(
        "Span",
        Field("trace_id", "bytes", 1),
        Field("span_id", "bytes", 2),
        Field("trace_state", "string", 3),
        Field("parent_span_id", "bytes", 4),
        Field("name", "string", 5),
        Field("kind", "int32", 6),
        Field("start_time_unix_nano", "fixed64", 7),
        Field("end_time_unix_nano", "fixed64", 8),
        Field("attributes", kv, 9, repeated=True),
        Field("dropped_attributes_count", "uint32", 10),
        Field("events", event, 11, repeated=True),
        Field("dropped_events_count", "uint32", 12),
        Field("links", link, 13, repeated=True),
        Field("dropped_links_count", "uint32", 14),
        Field("status", status, 15),
        Field("flags", "fixed32", 16),
    )
    scope_spans = b.add(
        "ScopeSpans", Field("scope", scope, 1), Field("spans", span, 2, repeated=True), Field("schema_url", "string", 3)
    )
    resource_spans = b.add(
        "ResourceSpans",
        Field("resource", resource, 1),
        Field("scope_spans", scope_spans, 2, repeated=True),
        Field("schema_url", "string", 3),
    )
    b.add("TracesEnvelope", Field("resource_spans", resource_spans, 1, repeated=True), Field("tenant", "string", TENANT_FIELD))
    return b


def logs_schema(attr_depth: int = ATTRIBUTE_DEPTH) -> SchemaBuilder:
    b = SchemaBuilder()
    kv = b.key_value(attr_depth)
    resource, scope = _common(b, attr_depth)
    body = b.any_value(0, BODY_DEPTH)
    record = b.add(
        "LogRecord",
        Field("time_unix_nano", "fixed64", 1),
        Field("severity_number", "int32", 2),
        Field("severity_text", "string", 3),
        Field("body", body, 5),
        Field("attributes", kv, 6, repeated=True),
        Field("dropped_attributes_count", "uint32", 7),
        Field("flags", "fixed32", 8),
        Field("trace_id", "bytes", 9),
        Field("span_id", "bytes", 10),
        Field("observed_time_unix_nano", "fixed64", 11),
        Field("event_name", "string", 12),
    )
    scope_logs = b.add(
        "ScopeLogs", Field("scope", scope, 1), Field("log_records", record, 2, repeated=True), Field("schema_url", "string", 3)
    )
    resource_logs = b.add(
        "ResourceLogs",
        Field("resource", resource, 1),
        Field("scope_logs", scope_logs, 2, repeated=True),
        Field("schema_url", "string", 3),
    )
    b.add("LogsEnvelope", Field("resource_logs", resource_logs, 1, repeated=True), Field("tenant", "string", TENANT_FIELD))
    return b


def metrics_schema(attr_depth: int = ATTRIBUTE_DEPTH) -> SchemaBuilder:
    b = SchemaBuilder()
    kv = b.key_value(attr_depth)
    resource, scope = _common(b, attr_depth)
    exemplar = b.add(
        "Exemplar",
        Field("time_unix_nano", "fixed64", 2),
        Field("as_double", "double", 3, oneof="value"),
        Field("span_id", "bytes", 4),
        Field("trace_id", "bytes", 5),
        Field("as_int", "sfixed64", 6, oneof="value"),
        Field("filtered_attributes", kv, 7, repeated=True),
    )
    number_point = b.add(
        "NumberDataPoint",
        Field("start_time_unix_nano", "fixed64", 2),
        Field("time_unix_nano", "fixed64", 3),
        Field("as_double", "double", 4, oneof="value"),
        Field("exemplars", exemplar, 5, repeated=True),
        Field("as_int", "sfixed64", 6, oneof="value"),
        Field("attributes", kv, 7, repeated=True),
        Field("flags", "uint32", 8),
    )
    histogram_point = b.add(
        "HistogramDataPoint",
        Field("start_time_unix_nano", "fixed64", 2),
        Field("time_unix_nano", "fixed64", 3),
        Field("count", "fixed64", 4),
        Field("sum", "double", 5),
        Field("bucket_counts", "fixed64", 6, repeated=True),
        Field("explicit_bounds", "double", 7, repeated=True),
        Field("exemplars", exemplar, 8, repeated=True),
        Field("attributes", kv, 9, repeated=True),
        Field("flags", "uint32", 10),
        Field("min", "double", 11),
        Field("max", "double", 12),
    )
    buckets = b.add("Buckets", Field("offset", "sint32", 1), Field("bucket_counts", "uint64", 2, repeated=True))
    exp_point = b.add(
        "ExponentialHistogramDataPoint",
        Field("attributes", kv, 1, repeated=True),
        Field("start_time_unix_nano", "fixed64", 2),
        Field("time_unix_nano", "fixed64", 3),
        Field("count", "fixed64", 4),
        Field("sum", "double", 5),
        Field("scale", "sint32", 6),
        Field("zero_count", "fixed64", 7),
        Field("positive", buckets, 8),
        Field("negative", buckets, 9),
        Field("flags", "uint32", 10),
        Field("exemplars", exemplar, 11, repeated=True),
        Field("min", "double", 12),
        Field("max", "double", 13),
        Field("zero_threshold", "double", 14),
    )
    quantile = b.add("ValueAtQuantile", Field("quantile", "double", 1), Field("value", "double", 2))
    summary_point = b.add(
        "SummaryDataPoint",
        Field("start_time_unix_nano", "fixed64", 2),
        Field("time_unix_nano", "fixed64", 3),
        Field("count", "fixed64", 4),
        Field("sum", "double", 5),
        Field("quantile_values", quantile, 6, repeated=True),
        Field("attributes", kv, 7, repeated=True),
        Field("flags", "uint32", 8),
    )
    gauge = b.add("Gauge", Field("data_points", number_point, 1, repeated=True))
    sum_ = b.add(
        "Sum",
        Field("data_points", number_point, 1, repeated=True),
        Field("aggregation_temporality", "int32", 2),
        Field("is_monotonic", "bool", 3),
    )
    histogram = b.add(
        "Histogram", Field("data_points", histogram_point, 1, repeated=True), Field("aggregation_temporality", "int32", 2)
    )
    exp_histogram = b.add(
        "ExponentialHistogram", Field("data_points", exp_point, 1, repeated=True), Field("aggregation_temporality", "int32", 2)
    )
    summary = b.add("Summary", Field("data_points", summary_point, 1, repeated=True))
    metric = b.add(
        "Metric",
        Field("name", "string", 1),
        Field("description", "string", 2),
        Field("unit", "string", 3),
        Field("gauge", gauge, 5, oneof="data"),
        Field("sum", sum_, 7, oneof="data"),
        Field("histogram", histogram, 9, oneof="data"),
        Field("exponential_histogram", exp_histogram, 10, oneof="data"),
        Field("summary", summary, 11, oneof="data"),
        Field("metadata", kv, 12, repeated=True),
    )
    scope_metrics = b.add(
        "ScopeMetrics", Field("scope", scope, 1), Field("metrics", metric, 2, repeated=True), Field("schema_url", "string", 3)
    )
    resource_metrics = b.add(
        "ResourceMetrics",
        Field("resource", resource, 1),
        Field("scope_metrics", scope_metrics, 2, repeated=True),
        Field("schema_url", "string", 3),
    )
    b.add(
        "MetricsEnvelope", Field("resource_metrics", resource_metrics, 1, repeated=True), Field("tenant", "string", TENANT_FIELD)
    )
    return b


@dataclass(frozen=True)
class WireSchema:
    signal: str
    envelope: str
    proto: str
    structure: str


def _build(signal: str, builder: SchemaBuilder, envelope: str) -> WireSchema:
    return WireSchema(signal, envelope, builder.proto_text(), builder.structure(envelope))


WIRE = {
    "traces": _build("traces", traces_schema(), "TracesEnvelope"),
    "logs": _build("logs", logs_schema(), "LogsEnvelope"),
    "metrics": _build("metrics", metrics_schema(), "MetricsEnvelope"),
}


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


_TENANT_TAG = _varint((TENANT_FIELD << 3) | 2)


def envelope(request_bytes: bytes, tenant: str) -> bytes:
    """One length-delimited envelope record: what ClickHouse's ``Protobuf`` format reads."""
    t = tenant.encode()
    body_len = len(request_bytes) + len(_TENANT_TAG) + len(_varint(len(t))) + len(t)
    return b"".join((_varint(body_len), request_bytes, _TENANT_TAG, _varint(len(t)), t))



def read_varint(data: bytes, pos: int) -> tuple[int, int] | None:
    """The varint at ``pos`` and the position after it; None when the data ends inside it (a torn write)."""
    n = shift = 0
    while pos < len(data) and shift < 64:
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, pos
    return None


def record_body(record: bytes) -> bytes:
    """One record without its length prefix: parses as the Export*ServiceRequest (tenant = unknown field 15)."""
    got = read_varint(record, 0)
    if got is None:
        raise ValueError("record has no complete length prefix")
    n, pos = got
    return record[pos:pos + n]
