"""Acceptance tests: the real OpenTelemetry Python SDK -> ``meshscope serve`` -> the store.

Every test exports through the SDK's OTLP/HTTP exporters and, in parallel, keeps what the SDK
produced in memory (``InMemorySpanExporter``, ``InMemoryLogRecordExporter``,
``InMemoryMetricReader``). After SIGTERM (which must insert every acknowledged item and exit 0)
the stopped server's directory is read with ``read_store`` and every stored field is compared
with the in-memory copy, using the value encoding documented in README "Attribute values" and
``collector/otlp_sql.py``.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import time
from collections.abc import Mapping

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    Gauge,
    Histogram,
    InMemoryMetricReader,
    MetricExportResult,
    ExponentialHistogram,
    Sum,
)
from opentelemetry.sdk.metrics.view import (
    ExplicitBucketHistogramAggregation,
    ExponentialBucketHistogramAggregation,
    View,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from conftest import read_store

pytestmark = [
    pytest.mark.slow,
    # opentelemetry-sdk 1.45 deprecates its LoggingHandler in favour of opentelemetry-instrumentation-logging
    pytest.mark.filterwarnings("ignore:.*LoggingHandler.*:DeprecationWarning"),
]

FLUSH = ("--flush-interval", "0.2")

# README "Attribute values": arrays and maps are decoded structurally one level deep in attributes and
# three levels deep in log bodies; deeper ones are kept as {"otlp.protobuf.base64": "..."}.
ATTRIBUTE_LEVELS = 1
BODY_LEVELS = 3

SCHEMA_URL = "https://opentelemetry.io/schemas/1.26.0"


# ---------------------------------------------------------------------------------------------
# The documented value encoding, written independently of the product.
# ---------------------------------------------------------------------------------------------

def ch_float(f: float) -> str:
    """ClickHouse's shortest round-trip text for a double (``0.1``, ``3``, ``1e100``, ``inf``)."""
    if math.isnan(f):
        return "nan"
    if math.isinf(f):
        return "inf" if f > 0 else "-inf"
    s = repr(f)
    if s.endswith(".0"):
        s = s[:-2]
    if "e" in s:
        mant, exp = s.split("e")
        sign = "-" if exp.startswith("-") else ""
        s = f"{mant}e{sign}{exp.lstrip('+-').lstrip('0') or '0'}"
    return s


def _proto_any(v) -> common_pb2.AnyValue:
    if isinstance(v, bool):
        return common_pb2.AnyValue(bool_value=v)
    if isinstance(v, str):
        return common_pb2.AnyValue(string_value=v)
    if isinstance(v, int):
        return common_pb2.AnyValue(int_value=v)
    if isinstance(v, float):
        return common_pb2.AnyValue(double_value=v)
    if isinstance(v, bytes):
        return common_pb2.AnyValue(bytes_value=v)
    if isinstance(v, Mapping):
        return common_pb2.AnyValue(kvlist_value=_proto_kvlist(v))
    return common_pb2.AnyValue(array_value=common_pb2.ArrayValue(values=[_proto_any(x) for x in v]))


def _proto_kvlist(m: Mapping) -> common_pb2.KeyValueList:
    return common_pb2.KeyValueList(values=[common_pb2.KeyValue(key=str(k), value=_proto_any(x)) for k, x in m.items()])


def json_expected(v, level: int, max_levels: int):
    """What a value becomes in the stored JSON (as a Python object); ``level`` is its container depth."""
    if v is None:
        return None
    if isinstance(v, bool) or isinstance(v, (int, str)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else ch_float(v)
    if isinstance(v, bytes):
        return base64.b64encode(v).decode()
    if level > max_levels:  # too deep: the protobuf bytes of the ArrayValue / KeyValueList
        if isinstance(v, Mapping):
            raw = _proto_kvlist(v).SerializeToString()
        else:
            raw = common_pb2.ArrayValue(values=[_proto_any(x) for x in v]).SerializeToString()
        return {"otlp.protobuf.base64": base64.b64encode(raw).decode()}
    if isinstance(v, Mapping):
        return {str(k): json_expected(x, level + 1, max_levels) for k, x in v.items()}
    return [json_expected(x, level + 1, max_levels) for x in v]


def encode_value(v, max_levels: int = ATTRIBUTE_LEVELS) -> str:
    """The documented text of an attribute value (or, with ``BODY_LEVELS``, of a log body).

    str as is, bool ``true``/``false``, int in decimal, double in ClickHouse's shortest form,
    bytes as base64, sequences and mappings as compact JSON.
    """
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return v
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return ch_float(v)
    if isinstance(v, bytes):
        return base64.b64encode(v).decode()
    obj = json_expected(v, 1, max_levels)

    def dump(o):
        if isinstance(o, float):
            return ch_float(o)
        if isinstance(o, list):
            return "[" + ",".join(dump(x) for x in o) + "]"
        if isinstance(o, dict):
            return "{" + ",".join(json.dumps(k, ensure_ascii=False) + ":" + dump(x) for k, x in o.items()) + "}"
        return json.dumps(o, ensure_ascii=False)

    return dump(obj)


def _strict_eq(actual, expected) -> bool:
    """JSON equality that keeps bool, int, float and str apart (Python says True == 1)."""
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(actual) is type(expected) and actual == expected
    if isinstance(expected, float):  # ClickHouse writes 3.0 as 3
        return isinstance(actual, (int, float)) and float(actual) == expected
    if isinstance(expected, int):
        return type(actual) is int and actual == expected
    if isinstance(expected, dict):
        return (isinstance(actual, dict) and list(actual) == list(expected)
                and all(_strict_eq(actual[k], expected[k]) for k in expected))
    if isinstance(expected, list):
        return (isinstance(actual, list) and len(actual) == len(expected)
                and all(_strict_eq(a, e) for a, e in zip(actual, expected)))
    return type(actual) is type(expected) and actual == expected


def _has_float(v) -> bool:
    if isinstance(v, float):
        return True
    if isinstance(v, Mapping):
        return any(_has_float(x) for x in v.values())
    if isinstance(v, (list, tuple)):
        return any(_has_float(x) for x in v)
    return False


def assert_encoded(stored: str, value, what: str, max_levels: int = ATTRIBUTE_LEVELS) -> None:
    if isinstance(value, float):
        got = float(stored)
        assert got == value or (math.isnan(got) and math.isnan(value)), f"{what}: {stored!r} != {value!r}"
        return
    if isinstance(value, (Mapping, list, tuple)):
        try:
            parsed = json.loads(stored)
        except ValueError as e:
            raise AssertionError(f"{what}: stored {stored!r} is not JSON ({e})") from None
        expected = json_expected(value, 1, max_levels)
        assert _strict_eq(parsed, expected), f"{what}: {stored!r} != {encode_value(value, max_levels)!r}"
        if not _has_float(value):
            assert stored == encode_value(value, max_levels), f"{what}: not compact JSON: {stored!r}"
        return
    assert stored == encode_value(value, max_levels), f"{what}: {stored!r} != {encode_value(value, max_levels)!r}"


def assert_attrs(stored: dict, attrs, what: str, max_levels: int = ATTRIBUTE_LEVELS) -> None:
    attrs = dict(attrs or {})
    assert set(stored) == set(attrs), f"{what}: keys {sorted(stored)} != {sorted(attrs)}"
    for k, v in attrs.items():
        assert_encoded(stored[k], v, f"{what}[{k!r}]", max_levels)


def hex_id(i: int, nbytes: int) -> str:
    return format(i, f"0{nbytes * 2}x") if i else ""


def query(data_dir: str, table: str, cols: dict[str, str], where: str = "1") -> list[dict]:
    sql = f"SELECT {', '.join(f'{expr} AS `{name}`' for name, expr in cols.items())} FROM otel.{table} WHERE {where}"
    return [dict(zip(cols, row)) for row in read_store(data_dir, sql)]


def stop_ok(server) -> None:
    rc = server.stop()
    assert rc == 0, f"meshscope serve exited with {rc}:\n{server.log()}"


def make_resource(service: str = "checkout") -> Resource:
    return Resource.create(
        {
            "service.name": service,
            "service.version": "1.4.2",
            "k8s.namespace.name": "shop",
            "k8s.pod.restarts": 3,
            "mesh.sidecar.injected": True,
        },
        schema_url=SCHEMA_URL,
    )


# ---------------------------------------------------------------------------------------------
# 1. traces
# ---------------------------------------------------------------------------------------------

ALL_TYPES = {
    "str": "héllo \"world\" / ✓",
    "empty.str": "",
    "int": 42,
    "int.neg": -7,
    "int.max": 2**63 - 1,
    "float": 1.5,
    "float.tenth": 0.1,
    "float.whole": 3.0,
    "float.big": 1e100,
    "float.small": 1e-7,
    "float.inf": float("inf"),
    "bool.t": True,
    "bool.f": False,
    "seq.int": [1, 2, 3],
    "seq.str": ["a", "b", "quote\"d"],
    "seq.bool": [True, False],
    "seq.float": [1.5, 2.25, 3.0, 0.1],
    "seq.float.inf": [1.0, float("-inf")],
    "seq.empty": [],
}

TRACE_COLS = {
    "TenantId": "TenantId",
    "Timestamp": "toUnixTimestamp64Nano(Timestamp)",
    "TraceId": "TraceId",
    "SpanId": "SpanId",
    "ParentSpanId": "ParentSpanId",
    "TraceState": "TraceState",
    "TraceFlags": "TraceFlags",
    "SpanName": "SpanName",
    "SpanKind": "SpanKind",
    "ServiceName": "ServiceName",
    "ResourceAttributes": "ResourceAttributes",
    "ResourceSchemaUrl": "ResourceSchemaUrl",
    "ResourceDroppedAttributesCount": "ResourceDroppedAttributesCount",
    "ScopeName": "ScopeName",
    "ScopeVersion": "ScopeVersion",
    "ScopeAttributes": "ScopeAttributes",
    "ScopeDroppedAttributesCount": "ScopeDroppedAttributesCount",
    "ScopeSchemaUrl": "ScopeSchemaUrl",
    "SpanAttributes": "SpanAttributes",
    "DroppedAttributesCount": "DroppedAttributesCount",
    "Duration": "Duration",
    "StatusCode": "StatusCode",
    "StatusMessage": "StatusMessage",
    "Events.Timestamp": "arrayMap(x -> toUnixTimestamp64Nano(x), `Events.Timestamp`)",
    "Events.Name": "`Events.Name`",
    "Events.Attributes": "`Events.Attributes`",
    "Events.DroppedAttributesCount": "`Events.DroppedAttributesCount`",
    "DroppedEventsCount": "DroppedEventsCount",
    "Links.TraceId": "`Links.TraceId`",
    "Links.SpanId": "`Links.SpanId`",
    "Links.TraceState": "`Links.TraceState`",
    "Links.Attributes": "`Links.Attributes`",
    "Links.DroppedAttributesCount": "`Links.DroppedAttributesCount`",
    "Links.Flags": "`Links.Flags`",
    "DroppedLinksCount": "DroppedLinksCount",
}


def _wire_flags(spans) -> dict[str, tuple[int, list[int]]]:
    """span id -> (Span.flags, [Link.flags]) exactly as the SDK's OTLP encoder puts them on the wire.

    The Python exporter sets only SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE (0x100) and IS_REMOTE (0x200) for a
    remote parent / link context; it does not copy the W3C sampled bit into the low byte.
    """
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    out = {}
    for rs in encode_spans(spans).resource_spans:
        for ss in rs.scope_spans:
            for sp in ss.spans:
                out[sp.span_id.hex()] = (sp.flags, [lk.flags for lk in sp.links])
    return out


def _emit_spans(tracer) -> None:
    remote_parent = SpanContext(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C,
        span_id=0xB7AD6B7169203331,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
        trace_state=TraceState([("congo", "t61rcWkgMzE"), ("rojo", "00f067aa0ba902b7")]),
    )
    remote_ctx = trace.set_span_in_context(NonRecordingSpan(remote_parent))
    start = time.time_ns() - 5_000_000_007
    with tracer.start_as_current_span(
        "GET /checkout", context=remote_ctx, kind=SpanKind.SERVER, attributes=ALL_TYPES, start_time=start
    ) as parent:
        parent.add_event("cache.miss", {"key": "user:1", "hits": 3, "ratio": 0.5, "ok": False, "tags": ["a", "b"],
                                         "ns": [1, 2]}, timestamp=start + 1_234_567)
        parent.add_event("retry")
        parent.add_event("dropped.by.limit")  # max_events=2
        with tracer.start_as_current_span("SELECT orders", kind=SpanKind.CLIENT) as child:
            child.set_attribute("db.system", "postgresql")
            child.set_status(Status(StatusCode.ERROR, "boom"))
        with tracer.start_as_current_span("publish order", kind=SpanKind.PRODUCER) as prod:
            prod.set_status(Status(StatusCode.OK))
        with tracer.start_as_current_span("compute", kind=SpanKind.INTERNAL):
            pass
        parent_ctx, child_ctx = parent.get_span_context(), child.get_span_context()
    # explicit times with odd nanoseconds: Duration must be end - start exactly
    t0 = time.time_ns() - 3_000_000_001
    consumer = tracer.start_span(
        "consume order",
        context=otel_context.Context(),  # a new root: no parent span id, new trace id
        kind=SpanKind.CONSUMER,
        links=[  # max_links=1: the SDK keeps the newest link
            Link(child_ctx, {"first": "dropped by max_links=1"}),
            Link(parent_ctx, {"link.kind": "follows-from", "n": 1, "extra": True}),  # max_link_attributes=2
        ],
        start_time=t0,
    )
    for i in range(40):  # max_span_attributes=32
        consumer.set_attribute(f"k{i:02d}", i)
    consumer.end(end_time=t0 + 1_234_567_891)
    # a span that ends before it starts: stored Duration 0
    odd = tracer.start_span("clock skew", start_time=t0 + 10, kind=SpanKind.INTERNAL)
    odd.end(end_time=t0)


def test_traces_every_field_roundtrips(server):
    mem = InMemorySpanExporter()
    otlp = OTLPSpanExporter(endpoint=server.otlp_url + "/v1/traces", timeout=10)
    tp = TracerProvider(
        resource=make_resource(),
        span_limits=SpanLimits(max_span_attributes=32, max_events=2, max_links=1, max_event_attributes=8,
                               max_link_attributes=2),
    )
    tp.add_span_processor(SimpleSpanProcessor(mem))
    tp.add_span_processor(SimpleSpanProcessor(otlp))
    tracer = tp.get_tracer("meshscope.tests.sdk", "1.2.3", schema_url="https://example.com/scope/1",
                           attributes={"scope.attr": "x", "scope.n": 7})
    _emit_spans(tracer)
    tp.shutdown()
    stop_ok(server)

    spans = mem.get_finished_spans()
    assert len(spans) == 6
    rows = query(server.data_dir, "otel_traces", TRACE_COLS)
    assert len(rows) == len(spans), rows
    by_id = {r["SpanId"]: r for r in rows}
    wire_flags = _wire_flags(spans)
    kinds = set()
    for s in spans:
        ctx = s.get_span_context()
        r = by_id[hex_id(ctx.span_id, 8)]
        name = s.name
        assert r["TenantId"] == "default"
        assert r["Timestamp"] == s.start_time, name
        assert r["TraceId"] == hex_id(ctx.trace_id, 16) and len(r["TraceId"]) == 32, name
        assert r["SpanId"] == hex_id(ctx.span_id, 8) and len(r["SpanId"]) == 16, name
        assert r["ParentSpanId"] == (hex_id(s.parent.span_id, 8) if s.parent else ""), name
        assert r["TraceState"] == ctx.trace_state.to_header(), name
        span_flags, link_flags = wire_flags[r["SpanId"]]
        assert r["TraceFlags"] == span_flags == 0x100 | (0x200 if s.parent and s.parent.is_remote else 0), name
        assert r["SpanName"] == name
        assert r["SpanKind"] == "SPAN_KIND_" + s.kind.name, name
        kinds.add(r["SpanKind"])
        assert r["ServiceName"] == s.resource.attributes["service.name"] == "checkout"
        assert_attrs(r["ResourceAttributes"], s.resource.attributes, f"{name} ResourceAttributes")
        assert r["ResourceSchemaUrl"] == s.resource.schema_url == SCHEMA_URL
        assert r["ResourceDroppedAttributesCount"] == 0
        scope = s.instrumentation_scope
        assert (r["ScopeName"], r["ScopeVersion"], r["ScopeSchemaUrl"]) == (scope.name, scope.version, scope.schema_url)
        assert_attrs(r["ScopeAttributes"], scope.attributes, f"{name} ScopeAttributes")
        assert r["ScopeDroppedAttributesCount"] == 0
        assert_attrs(r["SpanAttributes"], s.attributes, f"{name} SpanAttributes")
        assert r["DroppedAttributesCount"] == s.dropped_attributes, name
        assert r["Duration"] == max(s.end_time - s.start_time, 0), name
        assert r["StatusCode"] == "STATUS_CODE_" + s.status.status_code.name, name
        assert r["StatusMessage"] == (s.status.description or ""), name
        assert r["Events.Name"] == [e.name for e in s.events], name
        assert r["Events.Timestamp"] == [e.timestamp for e in s.events], name
        assert len(r["Events.Attributes"]) == len(s.events)
        for got, e in zip(r["Events.Attributes"], s.events):
            assert_attrs(got, e.attributes, f"{name} event {e.name}")
        assert r["Events.DroppedAttributesCount"] == [e.dropped_attributes for e in s.events], name
        assert r["DroppedEventsCount"] == s.dropped_events, name
        assert r["Links.TraceId"] == [hex_id(lk.context.trace_id, 16) for lk in s.links], name
        assert r["Links.SpanId"] == [hex_id(lk.context.span_id, 8) for lk in s.links], name
        assert r["Links.TraceState"] == [""] * len(s.links), name  # the Python exporter does not send it
        assert len(r["Links.Attributes"]) == len(s.links)
        for got, lk in zip(r["Links.Attributes"], s.links):
            assert_attrs(got, lk.attributes, f"{name} link")
        assert r["Links.DroppedAttributesCount"] == [lk.dropped_attributes for lk in s.links], name
        assert r["Links.Flags"] == link_flags, name
        assert r["DroppedLinksCount"] == s.dropped_links, name

    # the scenario really exercised what it meant to
    assert kinds == {f"SPAN_KIND_{k}" for k in ("SERVER", "CLIENT", "INTERNAL", "PRODUCER", "CONSUMER")}
    by_name = {r["SpanName"]: r for r in rows}
    server_row = by_name["GET /checkout"]
    assert server_row["TraceState"] == "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
    assert server_row["TraceFlags"] == 0x300 and server_row["ParentSpanId"] == "b7ad6b7169203331"
    assert server_row["DroppedEventsCount"] == 1
    # README examples of the double encoding, exactly
    sa = server_row["SpanAttributes"]
    assert (sa["float.tenth"], sa["float.whole"], sa["float.big"], sa["float.inf"]) == ("0.1", "3", "1e100", "inf")
    assert (sa["bool.t"], sa["int.max"], sa["seq.int"], sa["seq.bool"]) == ("true", "9223372036854775807", "[1,2,3]",
                                                                           "[true,false]")
    assert json.loads(sa["seq.float.inf"]) == [1, "-inf"]
    assert by_name["SELECT orders"]["StatusCode"] == "STATUS_CODE_ERROR"
    assert by_name["SELECT orders"]["StatusMessage"] == "boom"
    consumer = by_name["consume order"]
    assert consumer["ParentSpanId"] == "" and consumer["TraceFlags"] == 0x100
    assert consumer["Duration"] == 1_234_567_891
    assert (consumer["DroppedAttributesCount"], consumer["DroppedLinksCount"]) == (8, 1)
    assert consumer["Links.DroppedAttributesCount"] == [1]
    assert consumer["Links.SpanId"] == [server_row["SpanId"]] and consumer["Links.TraceId"] == [server_row["TraceId"]]
    assert by_name["clock skew"]["Duration"] == 0

    # trace id -> time range side table
    ranges = read_store(server.data_dir, "SELECT TraceId, toUnixTimestamp64Nano(min(Start)), "
                                         "toUnixTimestamp64Nano(max(End)) FROM otel.otel_traces_trace_id_ts "
                                         "GROUP BY TraceId")
    expected = {}
    for s in spans:
        tid = hex_id(s.get_span_context().trace_id, 16)
        lo, hi = expected.get(tid, (s.start_time, s.start_time))
        end = s.start_time + max(s.end_time - s.start_time, 0)
        expected[tid] = (min(lo, s.start_time), max(hi, end))
    assert {r[0]: (r[1], r[2]) for r in ranges} == expected


# ---------------------------------------------------------------------------------------------
# 2. logs
# ---------------------------------------------------------------------------------------------

LOG_COLS = {
    "TenantId": "TenantId",
    "Timestamp": "toUnixTimestamp64Nano(Timestamp)",
    "ObservedTimestamp": "toUnixTimestamp64Nano(ObservedTimestamp)",
    "TraceId": "TraceId",
    "SpanId": "SpanId",
    "TraceFlags": "TraceFlags",
    "Flags": "Flags",
    "SeverityText": "SeverityText",
    "SeverityNumber": "SeverityNumber",
    "ServiceName": "ServiceName",
    "Body": "Body",
    "BodyType": "BodyType",
    "EventName": "EventName",
    "ResourceSchemaUrl": "ResourceSchemaUrl",
    "ResourceAttributes": "ResourceAttributes",
    "ScopeName": "ScopeName",
    "ScopeVersion": "ScopeVersion",
    "ScopeAttributes": "ScopeAttributes",
    "LogAttributes": "LogAttributes",
    "DroppedAttributesCount": "DroppedAttributesCount",
}

BODY_TYPES = {str: "string", bool: "bool", int: "int", float: "double", bytes: "bytes", dict: "kvlist", list: "array"}

DICT_BODY = {
    "event": "checkout",
    "items": 3,
    "total": 99.5,
    "paid": True,
    "tags": ["x", "y"],
    "customer": {"id": 7, "tier": "gold", "flags": [True, False], "addr": {"city": "Zürich", "zip": [8001]}},
}


def _emit_logs(lp: LoggerProvider, tracer) -> None:
    handler = LoggingHandler(level=logging.DEBUG, logger_provider=lp)
    pylog = logging.getLogger("meshscope.tests.sdk_e2e.app")
    pylog.propagate = False
    pylog.setLevel(logging.DEBUG)
    pylog.addHandler(handler)
    try:
        with tracer.start_as_current_span("handle payment"):
            pylog.warning("payment %s slow: %d ms", "p-1", 1234,
                          extra={"order.id": "o-42", "retry": 3, "ratio": 0.25, "flag": True, "tags": ["x", "y"]})
            pylog.error("card declined", extra={"amount": 12.0, "codes": [51, 5]})
            pylog.warning({"stdlib": "dict body", "n": 1})  # the SDK passes a non-str msg through as the body
            direct = lp.get_logger("meshscope.tests.direct", "0.9", attributes={"lib": "direct"})
            direct.emit(LogRecord(
                body=DICT_BODY,
                severity_number=SeverityNumber.INFO,
                severity_text="INFO",
                event_name="checkout.done",
                attributes={"map": {"a": 1, "b": "two", "c": True}, "raw": b"\x00\x01\xff",
                            "nested": {"x": {"y": 1}, "l": [1]}},
            ))
        # outside any span: no trace context, no explicit timestamp (Timestamp falls back to observed)
        direct.emit(LogRecord(body=[1, "two", 3.5, True, {"k": "v"}], severity_number=SeverityNumber.DEBUG,
                              severity_text="DEBUG"))
        direct.emit(LogRecord(body=12.5, severity_number=SeverityNumber.FATAL, timestamp=time.time_ns() - 999))
    finally:
        pylog.removeHandler(handler)


def test_logs_every_field_roundtrips(server):
    mem = InMemoryLogRecordExporter()
    otlp = OTLPLogExporter(endpoint=server.otlp_url + "/v1/logs", timeout=10)
    lp = LoggerProvider(resource=make_resource("payments"))
    lp.add_log_record_processor(SimpleLogRecordProcessor(mem))
    lp.add_log_record_processor(SimpleLogRecordProcessor(otlp))
    tp = TracerProvider(resource=make_resource("payments"))
    _emit_logs(lp, tp.get_tracer("t"))
    lp.shutdown()
    tp.shutdown()
    stop_ok(server)

    logs = mem.get_finished_logs()
    assert len(logs) == 6
    rows = query(server.data_dir, "otel_logs", LOG_COLS)
    assert len(rows) == len(logs), rows
    # the observed timestamp (ns from time_ns at emit) tells the records apart
    by_observed = {r["ObservedTimestamp"]: r for r in rows}
    assert len(by_observed) == len(rows)
    for rec in logs:
        lr = rec.log_record
        r = by_observed[lr.observed_timestamp]
        what = repr(lr.body)[:40]
        assert r["TenantId"] == "default"
        assert r["Timestamp"] == (lr.timestamp or lr.observed_timestamp), what
        assert r["TraceId"] == hex_id(lr.trace_id or 0, 16), what
        assert r["SpanId"] == hex_id(lr.span_id or 0, 8), what
        assert r["TraceFlags"] == int(lr.trace_flags or 0) & 0xFF, what
        assert r["Flags"] == int(lr.trace_flags or 0), what
        assert r["SeverityText"] == (lr.severity_text or ""), what
        assert r["SeverityNumber"] == (lr.severity_number.value if lr.severity_number else 0), what
        assert r["ServiceName"] == "payments"
        assert r["BodyType"] == BODY_TYPES[type(lr.body)], what
        assert_encoded(r["Body"], lr.body, f"Body of {what}", BODY_LEVELS)
        assert r["EventName"] == (lr.event_name or ""), what
        assert r["ResourceSchemaUrl"] == SCHEMA_URL
        assert_attrs(r["ResourceAttributes"], rec.resource.attributes, "ResourceAttributes")
        scope = rec.instrumentation_scope
        assert (r["ScopeName"], r["ScopeVersion"]) == (scope.name, scope.version or ""), what
        assert_attrs(r["ScopeAttributes"], scope.attributes, f"{what} ScopeAttributes")
        assert_attrs(r["LogAttributes"], lr.attributes, f"{what} LogAttributes")
        assert r["DroppedAttributesCount"] == rec.dropped_attributes, what

    # the scenario really exercised what it meant to
    by_sev = {}
    for r in rows:
        by_sev.setdefault(r["SeverityText"], []).append(r)
    warn = [r for r in by_sev["WARN"] if r["BodyType"] == "string"][0]
    assert warn["Body"] == "payment p-1 slow: 1234 ms" and warn["SeverityNumber"] == 13
    assert warn["LogAttributes"]["retry"] == "3" and warn["LogAttributes"]["tags"] == '["x","y"]'
    assert len(warn["TraceId"]) == 32 and len(warn["SpanId"]) == 16 and warn["TraceFlags"] & 1 == 1  # sampled
    assert by_sev["ERROR"][0]["Body"] == "card declined" and by_sev["ERROR"][0]["SeverityNumber"] == 17
    stdlib_dict = [r for r in by_sev["WARN"] if r["BodyType"] == "kvlist"][0]
    assert stdlib_dict["Body"] == '{"stdlib":"dict body","n":1}'
    info = by_sev["INFO"][0]
    body = json.loads(info["Body"])
    assert info["BodyType"] == "kvlist" and body["customer"]["addr"]["city"] == "Zürich"  # third level: JSON
    zip_raw = base64.b64decode(body["customer"]["addr"]["zip"]["otlp.protobuf.base64"])  # fourth level: protobuf
    assert list(common_pb2.ArrayValue.FromString(zip_raw).values) == [common_pb2.AnyValue(int_value=8001)]
    assert info["LogAttributes"]["raw"] == "AAH/"
    assert info["LogAttributes"]["map"] == '{"a":1,"b":"two","c":true}'
    assert "otlp.protobuf.base64" in json.loads(info["LogAttributes"]["nested"])["x"]
    debug = by_sev["DEBUG"][0]
    assert debug["BodyType"] == "array" and debug["TraceId"] == "" and debug["SpanId"] == ""
    assert debug["Timestamp"] == debug["ObservedTimestamp"]


# ---------------------------------------------------------------------------------------------
# 3. metrics
# ---------------------------------------------------------------------------------------------

COMMON_METRIC_COLS = {
    "TenantId": "TenantId",
    "ResourceAttributes": "ResourceAttributes",
    "ResourceSchemaUrl": "ResourceSchemaUrl",
    "ScopeName": "ScopeName",
    "ScopeVersion": "ScopeVersion",
    "ScopeAttributes": "ScopeAttributes",
    "ScopeSchemaUrl": "ScopeSchemaUrl",
    "ServiceName": "ServiceName",
    "MetricName": "MetricName",
    "MetricDescription": "MetricDescription",
    "MetricUnit": "MetricUnit",
    "Attributes": "Attributes",
    "StartTimeUnix": "toUnixTimestamp64Nano(StartTimeUnix)",
    "TimeUnix": "toUnixTimestamp64Nano(TimeUnix)",
    "Flags": "Flags",
    "Exemplars.FilteredAttributes": "`Exemplars.FilteredAttributes`",
    "Exemplars.TimeUnix": "arrayMap(x -> toUnixTimestamp64Nano(x), `Exemplars.TimeUnix`)",
    "Exemplars.Value": "`Exemplars.Value`",
    "Exemplars.SpanId": "`Exemplars.SpanId`",
    "Exemplars.TraceId": "`Exemplars.TraceId`",
}
KIND_COLS = {
    "otel_metrics_sum": {"Value": "Value", "ValueType": "ValueType", "AggregationTemporality": "AggregationTemporality",
                         "IsMonotonic": "IsMonotonic"},
    "otel_metrics_gauge": {"Value": "Value", "ValueType": "ValueType"},
    "otel_metrics_histogram": {"Count": "Count", "Sum": "Sum", "BucketCounts": "BucketCounts",
                               "ExplicitBounds": "ExplicitBounds", "Min": "Min", "Max": "Max",
                               "AggregationTemporality": "AggregationTemporality"},
    "otel_metrics_exponential_histogram": {
        "Count": "Count", "Sum": "Sum", "Scale": "Scale", "ZeroCount": "ZeroCount", "PositiveOffset": "PositiveOffset",
        "PositiveBucketCounts": "PositiveBucketCounts", "NegativeOffset": "NegativeOffset",
        "NegativeBucketCounts": "NegativeBucketCounts", "Min": "Min", "Max": "Max",
        "AggregationTemporality": "AggregationTemporality"},
}
TABLE_OF = {Sum: "otel_metrics_sum", Gauge: "otel_metrics_gauge", Histogram: "otel_metrics_histogram",
            ExponentialHistogram: "otel_metrics_exponential_histogram"}


def _record_metrics(meter, tracer) -> None:
    requests = meter.create_counter("http.requests", unit="{request}", description="Requests served")
    requests.add(3, {"route": "/a", "code": 200})
    requests.add(2, {"route": "/a", "code": 200})
    requests.add(7, {"route": "/b", "code": 500, "retry": True})
    sent = meter.create_counter("bytes.sent", unit="By")
    sent.add(1.5)
    sent.add(0.25)
    depth = meter.create_up_down_counter("queue.depth", description="Items waiting")
    depth.add(5, {"queue": "orders"})
    depth.add(-7, {"queue": "orders"})
    latency = meter.create_histogram("http.server.duration", unit="ms", description="Server latency")
    for v in (1, 4.5, 7, 30, 120, 0.2, 10):
        latency.record(v, {"route": "/a"})
    latency.record(3, {"route": "/b"})
    sizes = meter.create_histogram("payload.size", unit="By")
    for v in (1, 2, 4, 100, 1000, 0):
        sizes.record(v)

    def temps(options: CallbackOptions):
        yield Observation(42.5, {"core": "0"})
        yield Observation(40.25, {"core": "1"})
        yield Observation(7, {"core": "2"})

    meter.create_observable_gauge("cpu.temperature", callbacks=[temps], unit="Cel", description="Core temperature")
    inflight = meter.create_gauge("inflight")
    inflight.set(11, {"pool": "db"})
    # inside a sampled span: the SDK's default trace-based exemplar filter attaches exemplars
    with tracer.start_as_current_span("with exemplars"):
        requests.add(1, {"route": "/ex", "code": 200})
        latency.record(55.5, {"route": "/ex"})


def test_metrics_every_field_roundtrips(server):
    reader = InMemoryMetricReader()
    mp = MeterProvider(
        resource=make_resource("billing"),
        metric_readers=[reader],
        views=[
            View(instrument_name="http.server.duration",
                 aggregation=ExplicitBucketHistogramAggregation([0, 5, 10, 25, 50, 100])),
            View(instrument_name="payload.size", aggregation=ExponentialBucketHistogramAggregation(max_size=20)),
        ],
    )
    meter = mp.get_meter("meshscope.tests.metrics", "2.0", schema_url="https://example.com/scope/2",
                         attributes={"meter.attr": "m"})
    tp = TracerProvider()
    _record_metrics(meter, tp.get_tracer("t"))
    data = reader.get_metrics_data()
    exporter = OTLPMetricExporter(endpoint=server.otlp_url + "/v1/metrics", timeout=10)
    assert exporter.export(data) == MetricExportResult.SUCCESS
    exporter.shutdown()
    mp.shutdown()
    tp.shutdown()
    stop_ok(server)

    expected: dict[str, list] = {t: [] for t in KIND_COLS}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                for p in m.data.data_points:
                    expected[TABLE_OF[type(m.data)]].append((rm, sm, m, p))
    assert {t: len(v) for t, v in expected.items()} == {
        "otel_metrics_sum": 5, "otel_metrics_gauge": 4, "otel_metrics_histogram": 3,
        "otel_metrics_exponential_histogram": 1}

    exemplars_seen = 0
    stored = {}
    for table, cols in KIND_COLS.items():
        rows = stored[table] = query(server.data_dir, table, {**COMMON_METRIC_COLS, **cols})
        assert len(rows) == len(expected[table]), (table, rows)
        index = {(r["MetricName"], tuple(sorted(r["Attributes"].items()))): r for r in rows}
        assert len(index) == len(rows)
        for rm, sm, m, p in expected[table]:
            key = (m.name, tuple(sorted((k, encode_value(v)) for k, v in p.attributes.items())))
            r = index[key]
            what = f"{table} {key}"
            assert r["TenantId"] == "default"
            assert_attrs(r["ResourceAttributes"], rm.resource.attributes, f"{what} ResourceAttributes")
            assert r["ResourceSchemaUrl"] == rm.schema_url == SCHEMA_URL
            assert r["ServiceName"] == "billing"
            scope = sm.scope
            assert (r["ScopeName"], r["ScopeVersion"], r["ScopeSchemaUrl"]) == (scope.name, scope.version,
                                                                                   sm.schema_url), what
            assert_attrs(r["ScopeAttributes"], scope.attributes, f"{what} ScopeAttributes")
            assert (r["MetricDescription"], r["MetricUnit"]) == (m.description or "", m.unit or ""), what
            assert_attrs(r["Attributes"], p.attributes, f"{what} Attributes")
            assert r["StartTimeUnix"] == (getattr(p, "start_time_unix_nano", 0) or 0), what
            assert r["TimeUnix"] == p.time_unix_nano, what
            assert r["Flags"] == 0, what
            ex = list(getattr(p, "exemplars", None) or [])
            exemplars_seen += len(ex)
            assert len(r["Exemplars.Value"]) == len(ex), what
            for i, e in enumerate(ex):
                assert r["Exemplars.Value"][i] == float(e.value), what
                assert r["Exemplars.TimeUnix"][i] == e.time_unix_nano, what
                assert r["Exemplars.TraceId"][i] == hex_id(e.trace_id or 0, 16), what
                assert r["Exemplars.SpanId"][i] == hex_id(e.span_id or 0, 8), what
                assert_attrs(r["Exemplars.FilteredAttributes"][i], e.filtered_attributes, f"{what} exemplar")
            if table in ("otel_metrics_sum", "otel_metrics_gauge"):
                assert r["Value"] == float(p.value), what
                assert r["ValueType"] == ("int" if isinstance(p.value, int) else "double"), what
            if table == "otel_metrics_sum":
                assert r["IsMonotonic"] is m.data.is_monotonic, what
                assert r["AggregationTemporality"] == int(m.data.aggregation_temporality) == 2, what
            if table == "otel_metrics_histogram":
                assert (r["Count"], r["Sum"], r["Min"], r["Max"]) == (p.count, p.sum, p.min, p.max), what
                assert r["BucketCounts"] == list(p.bucket_counts), what
                assert r["ExplicitBounds"] == [float(b) for b in p.explicit_bounds], what
                assert r["AggregationTemporality"] == int(m.data.aggregation_temporality) == 2, what
            if table == "otel_metrics_exponential_histogram":
                assert (r["Count"], r["Sum"], r["Min"], r["Max"]) == (p.count, p.sum, p.min, p.max), what
                assert (r["Scale"], r["ZeroCount"]) == (p.scale, p.zero_count), what
                assert (r["PositiveOffset"], r["PositiveBucketCounts"]) == (p.positive.offset,
                                                                           list(p.positive.bucket_counts)), what
                assert (r["NegativeOffset"], r["NegativeBucketCounts"]) == (p.negative.offset,
                                                                           list(p.negative.bucket_counts)), what
                assert r["AggregationTemporality"] == int(m.data.aggregation_temporality) == 2, what
    assert exemplars_seen >= 2

    # spot checks of the scenario itself
    vals = {f"{r['MetricName']} {r['Attributes'].get('route', '')}": (r["Value"], r["ValueType"], r["IsMonotonic"])
            for r in stored["otel_metrics_sum"]}
    assert vals == {"http.requests /a": (5.0, "int", True), "http.requests /b": (7.0, "int", True),
                    "http.requests /ex": (1.0, "int", True), "bytes.sent ": (1.75, "double", True),
                    "queue.depth ": (-2.0, "int", False)}
    gauges = {r["Attributes"].get("core", "-"): (r["Value"], r["ValueType"]) for r in stored["otel_metrics_gauge"]}
    assert gauges == {"0": (42.5, "double"), "1": (40.25, "double"), "2": (7.0, "int"), "-": (11.0, "int")}
    (hist,) = [r for r in stored["otel_metrics_histogram"] if r["Attributes"] == {"route": "/a"}]
    assert (hist["Count"], hist["BucketCounts"], hist["ExplicitBounds"], hist["Min"], hist["Max"]) == (
        7, [0, 3, 2, 0, 1, 0, 1], [0.0, 5.0, 10.0, 25.0, 50.0, 100.0], 0.2, 120.0)
    (ex_row,) = [r for r in stored["otel_metrics_sum"] if r["Attributes"].get("route") == "/ex"]
    assert ex_row["Exemplars.Value"] == [1.0] and len(ex_row["Exemplars.TraceId"][0]) == 32


# ---------------------------------------------------------------------------------------------
# 4. tenant header
# ---------------------------------------------------------------------------------------------

def test_tenant_header_reaches_every_table(server):
    tenant = {"X-Scope-OrgID": "team-a"}
    resource = make_resource("tenant-svc")

    def tracer_with(headers):
        tp = TracerProvider(resource=resource)
        tp.add_span_processor(SimpleSpanProcessor(
            OTLPSpanExporter(endpoint=server.otlp_url + "/v1/traces", headers=headers, timeout=10)))
        return tp

    tp_a, tp_default = tracer_with(tenant), tracer_with(None)
    with tp_a.get_tracer("t").start_as_current_span("span of team-a"):
        pass
    with tp_default.get_tracer("t").start_as_current_span("span without header"):
        pass

    lp = LoggerProvider(resource=resource)
    lp.add_log_record_processor(SimpleLogRecordProcessor(
        OTLPLogExporter(endpoint=server.otlp_url + "/v1/logs", headers=tenant, timeout=10)))
    lp.get_logger("t").emit(LogRecord(body="log of team-a", severity_number=SeverityNumber.INFO))
    lp_default = LoggerProvider(resource=resource)
    lp_default.add_log_record_processor(SimpleLogRecordProcessor(
        OTLPLogExporter(endpoint=server.otlp_url + "/v1/logs", timeout=10)))
    lp_default.get_logger("t").emit(LogRecord(body="log without header", severity_number=SeverityNumber.INFO))

    reader = InMemoryMetricReader()
    mp = MeterProvider(resource=resource, metric_readers=[reader])
    mp.get_meter("t").create_counter("tenant.counter").add(1)
    data = reader.get_metrics_data()
    for headers in (tenant, None):
        exp = OTLPMetricExporter(endpoint=server.otlp_url + "/v1/metrics", headers=headers, timeout=10)
        assert exp.export(data) == MetricExportResult.SUCCESS
        exp.shutdown()
    for p in (tp_a, tp_default, lp, lp_default, mp):
        p.shutdown()
    stop_ok(server)

    rows = read_store(server.data_dir, """
        SELECT 'trace', SpanName, TenantId FROM otel.otel_traces
        UNION ALL SELECT 'log', Body, TenantId FROM otel.otel_logs
        UNION ALL SELECT 'sum', concat(MetricName, '=', toString(Value)), TenantId FROM otel.otel_metrics_sum""")
    assert sorted(rows) == [
        ("log", "log of team-a", "team-a"), ("log", "log without header", "default"),
        ("sum", "tenant.counter=1", "default"), ("sum", "tenant.counter=1", "team-a"),
        ("trace", "span of team-a", "team-a"), ("trace", "span without header", "default"),
    ]


# ---------------------------------------------------------------------------------------------
# 5. gzip, as the SDK exporters send it with OTEL_EXPORTER_OTLP_COMPRESSION=gzip
# ---------------------------------------------------------------------------------------------

def test_gzip_exports_from_the_sdk_are_stored(server):
    # Regression: aiohttp inflated gzip bodies before the receiver's own size-limited gunzip, so every
    # Content-Encoding: gzip export got 400 "body is not valid gzip" (fixed by auto_decompress=False).
    mem = InMemorySpanExporter()
    tp = TracerProvider(resource=make_resource("gzip-svc"))
    tp.add_span_processor(SimpleSpanProcessor(mem))
    tp.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(
        endpoint=server.otlp_url + "/v1/traces", timeout=10, compression=Compression.Gzip)))
    lp = LoggerProvider(resource=make_resource("gzip-svc"))
    logs_mem = InMemoryLogRecordExporter()
    lp.add_log_record_processor(SimpleLogRecordProcessor(logs_mem))
    lp.add_log_record_processor(SimpleLogRecordProcessor(OTLPLogExporter(
        endpoint=server.otlp_url + "/v1/logs", timeout=10, compression=Compression.Gzip)))
    with tp.get_tracer("t").start_as_current_span("gzipped span", attributes={"n": 1}):
        lp.get_logger("t").emit(LogRecord(body="gzipped log", severity_number=SeverityNumber.WARN))
    tp.shutdown()
    lp.shutdown()
    stop_ok(server)

    (span,) = mem.get_finished_spans()
    assert read_store(server.data_dir, "SELECT SpanId, SpanName, SpanAttributes FROM otel.otel_traces") == [
        (hex_id(span.get_span_context().span_id, 8), "gzipped span", {"n": "1"})]
    (log,) = logs_mem.get_finished_logs()
    assert read_store(server.data_dir, "SELECT SpanId, Body, SeverityNumber FROM otel.otel_logs") == [
        (hex_id(log.log_record.span_id, 8), "gzipped log", 13)]
