"""The ClickHouse-side decode: every OTLP field lands in its column with the documented encoding.

These tests build requests with the opentelemetry-proto classes, write them as a segment
and run the real INSERT statements against the embedded store.
"""

from __future__ import annotations

import base64
import json
import os
import time
import uuid

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from meshscope.collector import validate
from meshscope.collector.batcher import statements
from meshscope.collector.otlp_wire import WIRE, envelope

NOW = time.time_ns()


def insert(store, tmp_path, signal: str, *requests, tenant: str = "default") -> None:
    path = tmp_path / f"{uuid.uuid4().hex}.seg"
    with open(path, "wb") as f:
        for r in requests:
            f.write(envelope(r.SerializeToString(), tenant))
    wire = WIRE[signal]
    for _table, sql in statements(signal, store.database).items():
        store.insert_wire(sql, wire.structure, wire.proto, wire.envelope, str(path))
    os.unlink(path)


def set_any(v: AnyValue, py) -> None:
    if isinstance(py, bool):
        v.bool_value = py
    elif isinstance(py, int):
        v.int_value = py
    elif isinstance(py, float):
        v.double_value = py
    elif isinstance(py, bytes):
        v.bytes_value = py
    elif isinstance(py, str):
        v.string_value = py
    elif isinstance(py, list):
        v.array_value.SetInParent()
        for item in py:
            set_any(v.array_value.values.add(), item)
    elif isinstance(py, dict):
        v.kvlist_value.SetInParent()
        for k, item in py.items():
            kv = v.kvlist_value.values.add(key=k)
            set_any(kv.value, item)
    else:
        raise TypeError(py)


def span_request(service: str, attrs: dict, **span_fields) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add(schema_url="https://opentelemetry.io/schemas/1.26.0")
    set_any(rs.resource.attributes.add(key="service.name").value, service)
    rs.resource.dropped_attributes_count = 3
    ss = rs.scope_spans.add(schema_url="scope-schema")
    ss.scope.name = "lib"
    ss.scope.version = "1.2.3"
    set_any(ss.scope.attributes.add(key="scope.attr").value, "s")
    sp = ss.spans.add(
        trace_id=span_fields.pop("trace_id", os.urandom(16)), span_id=span_fields.pop("span_id", os.urandom(8)),
        name=span_fields.pop("name", "GET /"), kind=span_fields.pop("kind", 2),
        start_time_unix_nano=NOW, end_time_unix_nano=NOW + 1_234_567, **span_fields)
    for k, v in attrs.items():
        set_any(sp.attributes.add(key=k).value, v)
    return req


def test_span_fields_and_attribute_encoding(store, tmp_path):
    tid, sid, pid = os.urandom(16), os.urandom(8), os.urandom(8)
    attrs = {
        "s": "text with 'quotes' and \\ and ünïcödé",
        "i": -42,
        "big": 2**63 - 1,
        "b": True,
        "f": 0.1,
        "whole": 3.0,
        "inf": float("inf"),
        "bytes": b"\x00\x01\xff",
        "arr_s": ["a", "b\"c"],
        "arr_i": [1, 2, 3],
        "arr_mixed": [True, 1.5, "x", b"\x02"],
        "map": {"k": "v", "n": 7},
        "nested": [[1, 2], {"deep": "x"}],
        "empty_arr": [],
    }
    req = span_request("svc-attrs", attrs, trace_id=tid, span_id=sid, parent_span_id=pid, trace_state="a=b",
                       flags=0x101, dropped_attributes_count=1, dropped_events_count=2, dropped_links_count=3)
    sp = req.resource_spans[0].scope_spans[0].spans[0]
    sp.status.code = 2
    sp.status.message = "boom"
    ev = sp.events.add(time_unix_nano=NOW + 5, name="exception", dropped_attributes_count=4)
    set_any(ev.attributes.add(key="exception.type").value, "ValueError")
    link_tid, link_sid = os.urandom(16), os.urandom(8)
    link = sp.links.add(trace_id=link_tid, span_id=link_sid, trace_state="x=y", flags=1, dropped_attributes_count=5)
    set_any(link.attributes.add(key="link.kind").value, "follows")
    insert(store, tmp_path, "traces", req)

    r = store.query(
        "SELECT TraceId, SpanId, ParentSpanId, TraceState, TraceFlags, SpanName, SpanKind, ServiceName, "
        "ResourceAttributes, ResourceSchemaUrl, ResourceDroppedAttributesCount, ScopeName, ScopeVersion, "
        "ScopeAttributes, ScopeSchemaUrl, SpanAttributes, DroppedAttributesCount, Duration, StatusCode, StatusMessage, "
        "arrayMap(x -> toUnixTimestamp64Nano(x), Events.Timestamp) AS ev_ts, Events.Name, Events.Attributes, "
        "Events.DroppedAttributesCount, DroppedEventsCount, Links.TraceId, Links.SpanId, Links.TraceState, "
        "Links.Attributes, Links.DroppedAttributesCount, Links.Flags, DroppedLinksCount, "
        "toUnixTimestamp64Nano(Timestamp), TenantId "
        "FROM otel.otel_traces WHERE SpanId = {sid:String}", {"sid": sid.hex()}).dicts()
    assert len(r) == 1
    row = r[0]
    assert row["TraceId"] == tid.hex() and row["ParentSpanId"] == pid.hex()
    assert row["TraceState"] == "a=b" and row["TraceFlags"] == 0x101
    assert row["SpanKind"] == "SPAN_KIND_SERVER" and row["ServiceName"] == "svc-attrs"
    assert row["ResourceAttributes"] == {"service.name": "svc-attrs"}
    assert row["ResourceSchemaUrl"] == "https://opentelemetry.io/schemas/1.26.0"
    assert row["ResourceDroppedAttributesCount"] == 3
    assert (row["ScopeName"], row["ScopeVersion"], row["ScopeSchemaUrl"]) == ("lib", "1.2.3", "scope-schema")
    assert row["ScopeAttributes"] == {"scope.attr": "s"}
    got = row["SpanAttributes"]
    assert got["s"] == attrs["s"]
    assert got["i"] == "-42" and got["big"] == str(2**63 - 1) and got["b"] == "true"
    assert float(got["f"]) == 0.1 and got["whole"] == "3" and got["inf"] == "inf"
    assert base64.b64decode(got["bytes"]) == b"\x00\x01\xff"
    assert json.loads(got["arr_s"]) == ["a", 'b"c']
    assert json.loads(got["arr_i"]) == [1, 2, 3]
    assert json.loads(got["arr_mixed"]) == [True, 1.5, "x", base64.b64encode(b"\x02").decode()]
    assert json.loads(got["map"]) == {"k": "v", "n": 7}
    nested = json.loads(got["nested"])  # deeper than the decoded depth: protobuf bytes, documented
    assert set(nested[0]) == {"otlp.protobuf.base64"} and set(nested[1]) == {"otlp.protobuf.base64"}
    assert json.loads(got["empty_arr"]) == []
    assert row["DroppedAttributesCount"] == 1 and row["DroppedEventsCount"] == 2 and row["DroppedLinksCount"] == 3
    assert row["Duration"] == 1_234_567
    assert (row["StatusCode"], row["StatusMessage"]) == ("STATUS_CODE_ERROR", "boom")
    assert row["ev_ts"] == [NOW + 5]
    assert row["Events.Name"] == ["exception"]
    assert row["Events.Attributes"] == [{"exception.type": "ValueError"}]
    assert row["Events.DroppedAttributesCount"] == [4]
    assert row["Links.TraceId"] == [link_tid.hex()] and row["Links.SpanId"] == [link_sid.hex()]
    assert row["Links.TraceState"] == ["x=y"] and row["Links.Flags"] == [1]
    assert row["Links.Attributes"] == [{"link.kind": "follows"}] and row["Links.DroppedAttributesCount"] == [5]
    assert row["toUnixTimestamp64Nano(Timestamp)"] == NOW
    assert row["TenantId"] == "default"


def test_event_timestamps_keep_nanoseconds(store, tmp_path):
    req = span_request("svc-ev", {})
    sp = req.resource_spans[0].scope_spans[0].spans[0]
    sp.events.add(time_unix_nano=NOW + 123_456_789, name="e1")
    insert(store, tmp_path, "traces", req)
    r = store.query("SELECT arrayMap(x -> toUnixTimestamp64Nano(x), Events.Timestamp) AS ts FROM otel.otel_traces "
                    "WHERE SpanId = {s:String}", {"s": sp.span_id.hex()})
    assert r.rows == [([NOW + 123_456_789],)]


def test_span_kinds_and_unknown_enum_values(store, tmp_path):
    names = {0: "SPAN_KIND_UNSPECIFIED", 1: "SPAN_KIND_INTERNAL", 2: "SPAN_KIND_SERVER", 3: "SPAN_KIND_CLIENT",
             4: "SPAN_KIND_PRODUCER", 5: "SPAN_KIND_CONSUMER", 9: "9"}
    reqs = [span_request("svc-kinds", {}, kind=k, name=f"k{k}") for k in names]
    insert(store, tmp_path, "traces", *reqs)
    rows = dict(store.query("SELECT SpanName, SpanKind FROM otel.otel_traces WHERE ServiceName = 'svc-kinds'").rows)
    assert rows == {f"k{k}": v for k, v in names.items()}


def test_invalid_ids_are_left_out_exactly_as_validate_counts(store, tmp_path):
    req = ExportTraceServiceRequest()
    ss = req.resource_spans.add().scope_spans.add()
    set_any(req.resource_spans[0].resource.attributes.add(key="service.name").value, "svc-invalid")
    cases = [(os.urandom(16), os.urandom(8), b""), (os.urandom(8), os.urandom(8), b""), (bytes(16), os.urandom(8), b""),
             (os.urandom(16), os.urandom(4), b""), (os.urandom(16), os.urandom(8), b"\x01\x02"),
             (os.urandom(16), os.urandom(8), os.urandom(8))]
    for tid, sid, pid in cases:
        ss.spans.add(trace_id=tid, span_id=sid, parent_span_id=pid, name="x", start_time_unix_nano=NOW,
                     end_time_unix_nano=NOW)
    counted = validate.count("traces", req)
    assert (counted.items, counted.rejected) == (6, 4)
    insert(store, tmp_path, "traces", req)
    n = store.query("SELECT count() FROM otel.otel_traces WHERE ServiceName = 'svc-invalid'").rows[0][0]
    assert n == counted.accepted == 2


def test_tenant_from_envelope(store, tmp_path):
    insert(store, tmp_path, "traces", span_request("svc-tenant", {}), tenant="team-a")
    assert store.query("SELECT TenantId FROM otel.otel_traces WHERE ServiceName = 'svc-tenant'").rows == [("team-a",)]


@pytest.mark.parametrize("body,expected,body_type", [
    ("plain text line", "plain text line", "string"),
    (17, "17", "int"),
    (2.5, "2.5", "double"),
    (False, "false", "bool"),
    (b"\x00\xff", base64.b64encode(b"\x00\xff").decode(), "bytes"),
    ({"msg": "hi", "user": {"id": 1, "tags": ["a", "b"]}}, {"msg": "hi", "user": {"id": 1, "tags": ["a", "b"]}},
     "kvlist"),
    ([1, "two", [3]], [1, "two", [3]], "array"),
    (None, "", ""),
])
def test_log_body_of_every_type(store, tmp_path, body, expected, body_type):
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    svc = f"svc-log-{uuid.uuid4().hex[:8]}"
    set_any(rl.resource.attributes.add(key="service.name").value, svc)
    sl = rl.scope_logs.add()
    sl.scope.name = "logger"
    lr = sl.log_records.add(time_unix_nano=NOW, observed_time_unix_nano=NOW + 7, severity_number=17,
                            severity_text="ERROR", flags=1, trace_id=os.urandom(16), span_id=os.urandom(8),
                            event_name="ev", dropped_attributes_count=2)
    if body is not None:
        set_any(lr.body, body)
    set_any(lr.attributes.add(key="code.lineno").value, 12)
    insert(store, tmp_path, "logs", req)
    r = store.query(
        "SELECT Body, BodyType, SeverityText, SeverityNumber, TraceId, SpanId, TraceFlags, Flags, EventName, "
        "toUnixTimestamp64Nano(Timestamp) AS ts, toUnixTimestamp64Nano(ObservedTimestamp) AS obs, LogAttributes, "
        "ScopeName, DroppedAttributesCount FROM otel.otel_logs WHERE ServiceName = {s:String}", {"s": svc}).dicts()
    assert len(r) == 1
    row = r[0]
    got = json.loads(row["Body"]) if body_type in ("kvlist", "array") else row["Body"]
    assert got == expected and row["BodyType"] == body_type
    assert (row["SeverityText"], row["SeverityNumber"]) == ("ERROR", 17)
    assert row["TraceId"] == lr.trace_id.hex() and row["SpanId"] == lr.span_id.hex()
    assert (row["TraceFlags"], row["Flags"], row["EventName"]) == (1, 1, "ev")
    assert (row["ts"], row["obs"]) == (NOW, NOW + 7)
    assert row["LogAttributes"] == {"code.lineno": "12"} and row["ScopeName"] == "logger"
    assert row["DroppedAttributesCount"] == 2


def test_log_without_timestamp_uses_observed_time(store, tmp_path):
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    set_any(rl.resource.attributes.add(key="service.name").value, "svc-observed")
    lr = rl.scope_logs.add().log_records.add(observed_time_unix_nano=NOW + 99)
    set_any(lr.body, "x")
    insert(store, tmp_path, "logs", req)
    r = store.query("SELECT toUnixTimestamp64Nano(Timestamp) FROM otel.otel_logs WHERE ServiceName = 'svc-observed'")
    assert r.rows == [(NOW + 99,)]


def metrics_request(svc: str) -> ExportMetricsServiceRequest:
    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    set_any(rm.resource.attributes.add(key="service.name").value, svc)
    sm = rm.scope_metrics.add()
    sm.scope.name = "meter"
    g = sm.metrics.add(name="queue_depth", unit="1", description="depth")
    p = g.gauge.data_points.add(start_time_unix_nano=NOW - 10, time_unix_nano=NOW, as_int=7)
    set_any(p.attributes.add(key="queue").value, "q1")
    ex = p.exemplars.add(time_unix_nano=NOW - 1, as_double=6.5, trace_id=b"\x01" * 16, span_id=b"\x02" * 8)
    set_any(ex.filtered_attributes.add(key="user").value, "u")
    s = sm.metrics.add(name="requests_total", unit="{request}")
    s.sum.aggregation_temporality = 2
    s.sum.is_monotonic = True
    s.sum.data_points.add(time_unix_nano=NOW, as_double=12.5)
    h = sm.metrics.add(name="latency", unit="ms")
    h.histogram.aggregation_temporality = 1
    h.histogram.data_points.add(time_unix_nano=NOW, count=6, sum=60.0, bucket_counts=[1, 2, 3],
                                explicit_bounds=[5.0, 10.0], min=1.0, max=30.0, flags=1)
    e = sm.metrics.add(name="latency_exp", unit="ms")
    e.exponential_histogram.aggregation_temporality = 2
    ep = e.exponential_histogram.data_points.add(time_unix_nano=NOW, count=5, sum=9.0, scale=3, zero_count=1,
                                                 zero_threshold=0.001, min=0.5, max=4.0)
    ep.positive.offset = -2
    ep.positive.bucket_counts.extend([1, 2])
    ep.negative.offset = 1
    ep.negative.bucket_counts.extend([1])
    q = sm.metrics.add(name="rpc_duration", unit="s")
    qp = q.summary.data_points.add(time_unix_nano=NOW, count=10, sum=4.0)
    qp.quantile_values.add(quantile=0.5, value=0.3)
    qp.quantile_values.add(quantile=0.99, value=0.9)
    return req


def test_all_five_metric_kinds(store, tmp_path):
    svc = f"svc-metrics-{uuid.uuid4().hex[:8]}"
    req = metrics_request(svc)
    counted = validate.count("metrics", req)
    assert counted.items == 5 and counted.kinds == {"gauge": 1, "sum": 1, "histogram": 1,
                                                      "exponential_histogram": 1, "summary": 1}
    insert(store, tmp_path, "metrics", req)
    p = {"s": svc}
    g = store.query("SELECT MetricName, MetricUnit, MetricDescription, Value, ValueType, Attributes, "
                    "toUnixTimestamp64Nano(StartTimeUnix), Exemplars.Value, Exemplars.TraceId, Exemplars.SpanId, "
                    "Exemplars.FilteredAttributes FROM otel.otel_metrics_gauge WHERE ServiceName = {s:String}", p).rows
    assert g == [("queue_depth", "1", "depth", 7.0, "int", {"queue": "q1"}, NOW - 10, [6.5], ["01" * 16],
                  ["02" * 8], [{"user": "u"}])]
    s = store.query("SELECT MetricName, Value, ValueType, AggregationTemporality, IsMonotonic "
                    "FROM otel.otel_metrics_sum WHERE ServiceName = {s:String}", p).rows
    assert s == [("requests_total", 12.5, "double", 2, True)]
    h = store.query("SELECT Count, Sum, BucketCounts, ExplicitBounds, Min, Max, AggregationTemporality, Flags "
                    "FROM otel.otel_metrics_histogram WHERE ServiceName = {s:String}", p).rows
    assert h == [(6, 60.0, [1, 2, 3], [5.0, 10.0], 1.0, 30.0, 1, 1)]
    e = store.query("SELECT Count, Sum, Scale, ZeroCount, ZeroThreshold, PositiveOffset, PositiveBucketCounts, "
                    "NegativeOffset, NegativeBucketCounts, Min, Max, AggregationTemporality "
                    "FROM otel.otel_metrics_exponential_histogram WHERE ServiceName = {s:String}", p).rows
    assert e == [(5, 9.0, 3, 1, 0.001, -2, [1, 2], 1, [1], 0.5, 4.0, 2)]
    q = store.query("SELECT Count, Sum, ValueAtQuantiles.Quantile, ValueAtQuantiles.Value "
                    "FROM otel.otel_metrics_summary WHERE ServiceName = {s:String}", p).rows
    assert q == [(10, 4.0, [0.5, 0.99], [0.3, 0.9])]


def test_trace_id_index_table_gets_time_range(store, tmp_path):
    req = span_request("svc-index", {})
    tid = req.resource_spans[0].scope_spans[0].spans[0].trace_id
    insert(store, tmp_path, "traces", req)
    r = store.query("SELECT toUnixTimestamp64Nano(Start), toUnixTimestamp64Nano(End) FROM otel.otel_traces_trace_id_ts "
                    "WHERE TraceId = {t:String}", {"t": tid.hex()}).rows
    assert r == [(NOW, NOW + 1_234_567)]
