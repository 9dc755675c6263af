"""OTLP/HTTP JSON decoding: must match the protobuf path exactly, and turn every bad body into a 400.

Requests are built with the real protobuf classes, turned into OTLP JSON here (json_format plus our
own base64 -> hex id rewrite, independent of the code under test), decoded, and compared with the
original. Hostile input is checked both by hand and with hypothesis: decode() may only ever return
a message or raise OtlpJsonError, since anything else would be a 500 (or worse) on client input.
"""

from __future__ import annotations

import base64
import math

import orjson
import pytest
from google.protobuf import json_format
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from meshscope.collector.otlp_json import MAX_DEPTH, OtlpJsonError, decode

TRACE_ID = bytes(range(1, 17))
SPAN_ID = bytes(range(0xA0, 0xA8))
PARENT_ID = bytes(range(0xF0, 0xF8))
LINK_TRACE = bytes(range(0x30, 0x40))
LINK_SPAN = bytes(range(0x50, 0x58))
T0 = 1_700_000_000_123_456_789  # above 2**53: survives only if int64 is handled exactly


# ---------------------------------------------------------------- building requests


def kv(key: str, value: AnyValue) -> KeyValue:
    return KeyValue(key=key, value=value)


def every_any_value() -> list[KeyValue]:
    """One attribute per AnyValue kind, plus nesting two levels deep both ways."""
    inner_list = ArrayValue(values=[AnyValue(int_value=1), AnyValue(string_value="two"),
                                    AnyValue(array_value=ArrayValue(values=[AnyValue(bool_value=False)]))])
    deeper = KeyValueList(values=[kv("c", AnyValue(bytes_value=b"\x00\xff"))])
    inner_kv = KeyValueList(values=[kv("a", AnyValue(double_value=0.5)), kv("b", AnyValue(kvlist_value=deeper))])
    return [
        kv("str", AnyValue(string_value="héllo \"quoted\" \\ \u2603")),
        kv("bool", AnyValue(bool_value=True)),
        kv("int", AnyValue(int_value=-(2**63))),
        kv("int_big", AnyValue(int_value=2**63 - 1)),
        kv("double", AnyValue(double_value=-1.25e-300)),
        kv("inf", AnyValue(double_value=math.inf)),
        kv("bytes", AnyValue(bytes_value=bytes(range(256)))),
        kv("array", AnyValue(array_value=inner_list)),
        kv("kvlist", AnyValue(kvlist_value=inner_kv)),
        kv("empty", AnyValue()),
    ]


def traces_request() -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add(schema_url="https://opentelemetry.io/schemas/1.26.0")
    rs.resource.attributes.append(kv("service.name", AnyValue(string_value="checkout")))
    rs.resource.dropped_attributes_count = 2
    ss = rs.scope_spans.add(schema_url="s")
    ss.scope.name, ss.scope.version = "io.mesh", "1.2.3"
    ss.scope.attributes.append(kv("scope.attr", AnyValue(int_value=7)))
    span = ss.spans.add(trace_id=TRACE_ID, span_id=SPAN_ID, parent_span_id=PARENT_ID, trace_state="k=v", flags=0x301,
                        name="GET /cart", kind=trace_pb2.Span.SPAN_KIND_SERVER, start_time_unix_nano=T0,
                        end_time_unix_nano=T0 + 1_500_000, dropped_attributes_count=1, dropped_events_count=2,
                        dropped_links_count=3)
    span.attributes.extend(every_any_value())
    span.events.add(time_unix_nano=T0 + 10, name="exception", dropped_attributes_count=4).attributes.append(
        kv("exception.type", AnyValue(string_value="ValueError")))
    link = span.links.add(trace_id=LINK_TRACE, span_id=LINK_SPAN, trace_state="x=y", dropped_attributes_count=5,
                          flags=1)
    link.attributes.append(kv("link.kind", AnyValue(string_value="follows")))
    span.status.code = trace_pb2.Status.STATUS_CODE_ERROR
    span.status.message = "boom"
    # a root span (no parent), and one with the minimum of fields
    ss.spans.add(trace_id=TRACE_ID, span_id=PARENT_ID, name="root", kind=trace_pb2.Span.SPAN_KIND_CLIENT,
                 status=trace_pb2.Status(code=trace_pb2.Status.STATUS_CODE_OK))
    ss.spans.add()
    req.resource_spans.add()  # empty resource: still has to round trip
    return req


def logs_request() -> ExportLogsServiceRequest:
    req = ExportLogsServiceRequest()
    sl = req.resource_logs.add().scope_logs.add()
    sl.scope.name = "logger"
    bodies = [AnyValue(string_value="plain line"), AnyValue(int_value=-5), AnyValue(bytes_value=b"\x01\x02"),
              AnyValue(kvlist_value=KeyValueList(values=every_any_value())),
              AnyValue(array_value=ArrayValue(values=[AnyValue(string_value="a"), AnyValue(double_value=2.0)]))]
    for i, body in enumerate(bodies):
        rec = sl.log_records.add(time_unix_nano=T0 + i, observed_time_unix_nano=T0 + 100 + i,
                                 severity_number=logs_pb2.SEVERITY_NUMBER_ERROR, severity_text="ERROR", body=body,
                                 dropped_attributes_count=i, flags=1, trace_id=TRACE_ID, span_id=SPAN_ID,
                                 event_name="evt")
        rec.attributes.append(kv("i", AnyValue(int_value=i)))
    sl.log_records.add(body=AnyValue(string_value="no ids, no severity"))
    return req


def exemplars() -> list[metrics_pb2.Exemplar]:
    return [metrics_pb2.Exemplar(time_unix_nano=T0, as_double=0.25, trace_id=TRACE_ID, span_id=SPAN_ID,
                                 filtered_attributes=[kv("f", AnyValue(string_value="x"))]),
            metrics_pb2.Exemplar(time_unix_nano=T0 + 1, as_int=-(2**62), trace_id=LINK_TRACE, span_id=LINK_SPAN)]


def metrics_request() -> ExportMetricsServiceRequest:
    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    rm.resource.attributes.append(kv("service.name", AnyValue(string_value="cart")))
    sm = rm.scope_metrics.add()
    attrs = [kv("route", AnyValue(string_value="/cart"))]
    m = sm.metrics.add(name="g", description="gauge", unit="1")
    m.metadata.append(kv("meta", AnyValue(bool_value=True)))
    m.gauge.data_points.add(time_unix_nano=T0, as_double=3.5, attributes=attrs, exemplars=exemplars())
    m.gauge.data_points.add(time_unix_nano=T0, as_int=2**63 - 1, flags=1)
    m = sm.metrics.add(name="s", unit="By")
    m.sum.is_monotonic = True
    m.sum.aggregation_temporality = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
    m.sum.data_points.add(start_time_unix_nano=T0 - 10, time_unix_nano=T0, as_int=-42, exemplars=exemplars())
    m = sm.metrics.add(name="h")
    m.histogram.aggregation_temporality = metrics_pb2.AGGREGATION_TEMPORALITY_DELTA
    m.histogram.data_points.add(start_time_unix_nano=T0 - 10, time_unix_nano=T0, count=2**40, sum=12.5,
                                bucket_counts=[1, 0, 2**40 - 1], explicit_bounds=[0.1, 1.0], min=0.01, max=9.0,
                                attributes=attrs, exemplars=exemplars())
    m = sm.metrics.add(name="eh")
    m.exponential_histogram.aggregation_temporality = metrics_pb2.AGGREGATION_TEMPORALITY_DELTA
    m.exponential_histogram.data_points.add(
        time_unix_nano=T0, count=7, sum=1.5, scale=-3, zero_count=1, zero_threshold=1e-9, min=0.0, max=4.0,
        positive=metrics_pb2.ExponentialHistogramDataPoint.Buckets(offset=-2, bucket_counts=[1, 2, 3]),
        negative=metrics_pb2.ExponentialHistogramDataPoint.Buckets(offset=5, bucket_counts=[0]),
        exemplars=exemplars())
    m = sm.metrics.add(name="sum")
    m.summary.data_points.add(time_unix_nano=T0, count=3, sum=6.0, quantile_values=[
        metrics_pb2.SummaryDataPoint.ValueAtQuantile(quantile=0.5, value=2.0),
        metrics_pb2.SummaryDataPoint.ValueAtQuantile(quantile=1.0, value=3.0)])
    return req


REQUESTS = {"traces": traces_request, "logs": logs_request, "metrics": metrics_request}

# ---------------------------------------------------------------- our own protobuf -> OTLP JSON

ID_KEYS = {"traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"}
INT64_KEYS = {"timeUnixNano", "startTimeUnixNano", "endTimeUnixNano", "observedTimeUnixNano", "intValue", "asInt",
              "count", "bucketCounts", "zeroCount"}


def _rewrite(node, fn):
    """Apply fn(key, value) -> value to every object member, bottom up (test-side, so walk everything)."""
    if isinstance(node, dict):
        for key, value in node.items():
            node[key] = fn(key, _rewrite(value, fn))
    elif isinstance(node, list):
        for i, item in enumerate(node):
            node[i] = _rewrite(item, fn)
    return node


def _ids_to_hex(upper: bool = False):
    def fn(key, value):
        if key in ID_KEYS and isinstance(value, str):
            h = base64.b64decode(value).hex()
            return h.upper() if upper else h
        return value
    return fn


def _int64_to_number(key, value):
    if key in INT64_KEYS:
        return [int(v) for v in value] if isinstance(value, list) else int(value)
    return value


def otlp_json(msg, *, snake=False, enum_names=False, int64_numbers=False, upper=False) -> bytes:
    """The OTLP JSON encoding of msg: proto3 JSON, enums as integers, ids as hex (variants on request)."""
    d = json_format.MessageToDict(msg, preserving_proto_field_name=snake, use_integers_for_enums=not enum_names)
    _rewrite(d, _ids_to_hex(upper))
    if int64_numbers:
        _rewrite(d, _int64_to_number)
    return orjson.dumps(d)


def _doc(signal: str, **kw) -> dict:
    return orjson.loads(otlp_json(REQUESTS[signal](), **kw))


def _span_body(**span) -> bytes:
    return orjson.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]})


def _span(body: bytes) -> trace_pb2.Span:
    return decode("traces", body).resource_spans[0].scope_spans[0].spans[0]


# ---------------------------------------------------------------- round trips and spellings

VARIANTS = {
    "canonical": {},
    "snake_case": {"snake": True},
    "enum_names": {"enum_names": True},
    "int64_numbers": {"int64_numbers": True},
    "upper_hex": {"upper": True},
    "all_at_once": {"snake": True, "enum_names": True, "int64_numbers": True, "upper": True},
}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("signal", REQUESTS)
def test_round_trip(signal, variant):
    original = REQUESTS[signal]()
    body = otlp_json(original, **VARIANTS[variant])
    decoded = decode(signal, body)
    assert type(decoded) is type(original)
    assert decoded == original


def test_our_json_really_uses_the_otlp_spellings():
    """Guard the test helper itself: a no-op rewrite would make the round trips prove nothing."""
    span = _doc("traces")["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert span["traceId"] == TRACE_ID.hex() and span["parentSpanId"] == PARENT_ID.hex()
    assert span["kind"] == 2 and span["status"]["code"] == 2
    assert span["startTimeUnixNano"] == str(T0)
    snake = _doc("traces", snake=True, int64_numbers=True, enum_names=True)
    span = snake["resource_spans"][0]["scope_spans"][0]["spans"][0]
    assert span["span_id"] == SPAN_ID.hex() and span["kind"] == "SPAN_KIND_SERVER"
    assert span["start_time_unix_nano"] == str(T0)  # snake keys are not in INT64_KEYS: still a string
    assert _doc("metrics", int64_numbers=True)["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][2][
        "histogram"]["dataPoints"][0]["bucketCounts"] == [1, 0, 2**40 - 1]


def test_mixed_spellings_in_one_body():
    body = orjson.dumps({"resource_spans": [{"scopeSpans": [{"spans": [
        {"trace_id": TRACE_ID.hex(), "spanId": SPAN_ID.hex(), "parent_span_id": PARENT_ID.hex().upper(),
         "start_time_unix_nano": T0, "endTimeUnixNano": str(T0 + 1), "kind": "SPAN_KIND_CONSUMER",
         "links": [{"trace_id": LINK_TRACE.hex(), "span_id": LINK_SPAN.hex()}]}]}]}]})
    span = _span(body)
    assert (span.trace_id, span.span_id, span.parent_span_id) == (TRACE_ID, SPAN_ID, PARENT_ID)
    assert (span.start_time_unix_nano, span.end_time_unix_nano) == (T0, T0 + 1)
    assert span.kind == trace_pb2.Span.SPAN_KIND_CONSUMER
    assert (span.links[0].trace_id, span.links[0].span_id) == (LINK_TRACE, LINK_SPAN)


def test_snake_case_ids_in_logs_and_exemplars():
    logs = decode("logs", orjson.dumps({"resource_logs": [{"scope_logs": [{"log_records": [
        {"trace_id": "AB" * 16, "span_id": "cd" * 8, "severity_number": 17}]}]}]}))
    rec = logs.resource_logs[0].scope_logs[0].log_records[0]
    assert (rec.trace_id, rec.span_id, rec.severity_number) == (b"\xab" * 16, b"\xcd" * 8, 17)
    metrics = decode("metrics", orjson.dumps({"resource_metrics": [{"scope_metrics": [{"metrics": [
        {"exponential_histogram": {"data_points": [{"exemplars": [{"trace_id": "01" * 16, "span_id": "02" * 8,
                                                                    "as_int": "3"}]}]}}]}]}]}))
    ex = metrics.resource_metrics[0].scope_metrics[0].metrics[0].exponential_histogram.data_points[0].exemplars[0]
    assert (ex.trace_id, ex.span_id, ex.as_int) == (b"\x01" * 16, b"\x02" * 8, 3)


def test_int64_as_string_or_number_and_enum_as_int_or_name():
    for t in (T0, str(T0)):
        for kind, code in ((3, 1), ("SPAN_KIND_CLIENT", "STATUS_CODE_OK")):
            span = _span(_span_body(startTimeUnixNano=t, kind=kind, status={"code": code}))
            assert span.start_time_unix_nano == T0
            assert span.kind == trace_pb2.Span.SPAN_KIND_CLIENT
            assert span.status.code == trace_pb2.Status.STATUS_CODE_OK


def test_unknown_fields_are_ignored_at_every_level():
    """The OTLP spec requires it: newer senders may add fields we do not know yet."""
    d = _doc("traces")
    d["futureTopLevel"] = {"x": [1, 2, {"y": None}]}
    rs = d["resourceSpans"][0]
    rs["newThing"] = 1
    rs["resource"]["what"] = "ever"
    rs["scopeSpans"][0]["scope"]["unknown"] = [[[]]]
    span = rs["scopeSpans"][0]["spans"][0]
    span["somethingNew"] = {"traceId": "not hex at all"}  # not on an id path: left alone
    span["events"][0]["extra"] = True
    span["attributes"][0]["value"]["newValueKind"] = 1
    span["status"]["detail"] = "x"
    span["links"][0]["more"] = None
    assert decode("traces", orjson.dumps(d)) == traces_request()


def test_deeply_nested_unknown_field_is_ignored():
    """orjson parses up to 1024 levels; unknown fields are never walked, so they cost no recursion."""
    assert decode("logs", b'{"x":' + b"[" * 1000 + b"]" * 1000 + b"}") == ExportLogsServiceRequest()


def test_ids_empty_null_and_wrong_length():
    """Length is checked by validation (partial_success), so a short but valid hex id must decode."""
    span = _span(_span_body(traceId="", spanId="abcd", parentSpanId=None))
    assert (span.trace_id, span.span_id, span.parent_span_id) == (b"", b"\xab\xcd", b"")
    span = _span(_span_body(traceId="00" * 17, spanId="FfFf"))
    assert (span.trace_id, span.span_id) == (b"\x00" * 17, b"\xff\xff")


def test_bytes_value_stays_base64():
    body = _span_body(attributes=[{"key": "b", "value": {"bytesValue": base64.b64encode(b"\xab\xcd").decode()}}])
    assert _span(body).attributes[0].value.bytes_value == b"\xab\xcd"


def test_empty_object_is_an_empty_request():
    for signal, cls in (("traces", ExportTraceServiceRequest), ("logs", ExportLogsServiceRequest),
                        ("metrics", ExportMetricsServiceRequest)):
        assert decode(signal, b"{}") == cls()
        assert decode(signal, bytearray(b" {} \n")) == cls()


def test_nesting_limit_counts_messages():
    """MAX_DEPTH nested messages pass, one more is refused; each array level is two messages."""
    def body(levels: int) -> bytes:  # by hand: orjson.dumps stops at 255 levels
        v = b'{"arrayValue":{"values":[' * levels + b'{"stringValue":"x"}' + b"]}}" * levels
        return _SPANS % (b'{"attributes":[{"key":"k","value":%s}]}' % v)

    # request > ResourceSpans > ScopeSpans > Span > KeyValue > AnyValue is 6 levels
    fits = (MAX_DEPTH - 6) // 2
    msg = decode("traces", body(fits))
    assert type(msg).FromString(msg.SerializeToString()) == msg  # upb (limit 100) can read it back
    with pytest.raises(OtlpJsonError, match="nested deeper than 64"):
        decode("traces", body(fits + 1))
    with pytest.raises(OtlpJsonError, match="nested deeper"):
        decode("traces", body(300))  # ~900 JSON levels: below orjson's limit, stopped by ours


def test_unknown_signal_is_a_programming_error_not_a_400():
    with pytest.raises(ValueError) as e:
        decode("profiles", b"{}")
    assert not isinstance(e.value, OtlpJsonError)


# ---------------------------------------------------------------- malformed input

_SPANS = b'{"resourceSpans":[{"scopeSpans":[{"spans":[%s]}]}]}'
_ATTR = _SPANS % b'{"attributes":[{"key":"k","value":%s}]}'

MALFORMED = {
    # not JSON at all
    "empty": ("traces", b""),
    "blank": ("traces", b"  \n"),
    "text": ("traces", b"hello"),
    "truncated": ("traces", b'{"resourceSpans":[{"scopeSpans":'),
    "trailing_garbage": ("traces", b"{} x"),
    "single_quotes": ("traces", b"{'resourceSpans': []}"),
    "nan_literal": ("traces", _SPANS % b'{"startTimeUnixNano": NaN}'),
    "protobuf_bytes": ("traces", traces_request().SerializeToString()),
    # top level is not an object
    "array_top": ("traces", b"[]"),
    "array_of_request": ("logs", b'[{"resourceLogs": []}]'),
    "string_top": ("metrics", b'"resourceMetrics"'),
    "number_top": ("traces", b"42"),
    "null_top": ("traces", b"null"),
    "true_top": ("traces", b"true"),
    # wrong types
    "string_for_list": ("traces", b'{"resourceSpans": "x"}'),
    "object_for_list": ("traces", b'{"resourceSpans": {"scopeSpans": []}}'),
    "number_in_list": ("traces", b'{"resourceSpans": [1]}'),
    "null_in_list": ("traces", b'{"resourceSpans": [null]}'),
    "string_in_list": ("logs", b'{"resourceLogs": ["x"]}'),
    "string_for_object": ("traces", b'{"resourceSpans": [{"resource": "abc"}]}'),
    "list_for_object": ("traces", b'{"resourceSpans": [{"resource": []}]}'),
    "number_for_object": ("metrics", b'{"resourceMetrics": [{"resource": 1}]}'),
    "list_for_status": ("traces", _SPANS % b'{"status": [1]}'),
    "object_for_attributes": ("traces", _SPANS % b'{"attributes": {"k": "v"}}'),
    "string_for_value": ("traces", _ATTR % b'"v"'),
    "object_for_string": ("traces", _SPANS % b'{"name": {}}'),
    "number_for_string": ("traces", _SPANS % b'{"name": 5}'),
    "string_for_bool": ("traces", _ATTR % b'{"boolValue": "true"}'),
    "bool_for_int": ("traces", _ATTR % b'{"intValue": true}'),
    "list_for_int": ("traces", _SPANS % b'{"startTimeUnixNano": [1]}'),
    "word_for_int": ("traces", _SPANS % b'{"startTimeUnixNano": "soon"}'),
    "fraction_for_int": ("traces", _SPANS % b'{"startTimeUnixNano": 1.5}'),
    "negative_for_uint": ("traces", _SPANS % b'{"startTimeUnixNano": -1}'),
    "object_for_enum": ("traces", _SPANS % b'{"kind": {}}'),
    "object_for_double": ("traces", _ATTR % b'{"doubleValue": {}}'),
    "bad_base64": ("traces", _ATTR % b'{"bytesValue": "a"}'),
    "two_oneof_values": ("traces", _ATTR % b'{"stringValue": "a", "intValue": 1}'),
    "null_in_scalar_list": ("metrics", b'{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"histogram":'
                                       b'{"dataPoints":[{"bucketCounts":[1,null]}]}}]}]}]}'),
    "object_for_gauge": ("metrics", b'{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"gauge": "g"}]}]}]}'),
    # bad ids
    "odd_hex": ("traces", _SPANS % b'{"traceId": "abc"}'),
    "non_hex": ("traces", _SPANS % b'{"spanId": "zz00zz00zz00zz00"}'),
    "hex_with_space": ("traces", _SPANS % b'{"spanId": "00 11 22 33"}'),
    "hex_0x": ("traces", _SPANS % b'{"spanId": "0x0011223344556677"}'),
    "non_ascii_hex": ("traces", _SPANS % '{"traceId": "\u00e9\u00e9"}'.encode()),
    "base64_id": ("traces", _SPANS % b'{"traceId": "AQIDBAUGBwgJCgsMDQ4PEA=="}'),
    "number_id": ("traces", _SPANS % b'{"traceId": 1234}'),
    "list_id": ("traces", _SPANS % b'{"traceId": ["ab"]}'),
    "zero_id": ("traces", _SPANS % b'{"traceId": 0}'),
    "bad_parent": ("traces", _SPANS % b'{"parent_span_id": "xyz"}'),
    "bad_link": ("traces", _SPANS % b'{"links": [{"spanId": "g0"}]}'),
    "bad_log_id": ("logs", b'{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"trace_id":"q"}]}]}]}'),
    "bad_exemplar_id": ("metrics", b'{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"sum":{"dataPoints":'
                                   b'[{"exemplars":[{"spanId":"nothex!!"}]}]}}]}]}]}'),
    # deep nesting
    "nested_arrays_100k": ("traces", b"[" * 100_000),
    "nested_arrays_closed": ("traces", b"[" * 5000 + b"]" * 5000),
    "nested_objects_100k": ("traces", b'{"a":' * 100_000 + b"1" + b"}" * 100_000),
    "nested_in_known_field": ("traces", b'{"resourceSpans":' + b"[" * 100_000),
    "nested_kvlist": ("logs", b'{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":'
                              + b'{"kvlistValue":{"values":[{"key":"k","value":' * 200 + b"{}" + b"}]}}" * 200
                              + b"}]}]}]}"),
    # encoding
    "invalid_utf8": ("traces", _SPANS % b'{"name": "\xff\xfe"}'),
    "invalid_utf8_key": ("traces", b'{"\xc3": 1}'),
    "encoded_surrogate": ("traces", _SPANS % b'{"name": "\xed\xa0\x80"}'),
    "escaped_lone_surrogate": ("traces", _SPANS % b'{"name": "\\ud800"}'),
    "utf16_body": ("traces", '{"resourceSpans": []}'.encode("utf-16")),
    "nul_byte": ("traces", b'{"resourceSpans": [\x00]}'),
    # huge numbers
    "float_overflow": ("traces", _SPANS % b'{"startTimeUnixNano": 1e400}'),
    "double_overflow": ("traces", _ATTR % b'{"doubleValue": -1e999}'),
    "int_over_uint64": ("traces", _SPANS % b'{"startTimeUnixNano": 18446744073709551616}'),
    "int_over_int64": ("traces", _ATTR % b'{"intValue": 9223372036854775808}'),
    "int_string_over_int64": ("traces", _ATTR % b'{"intValue": "99999999999999999999999999"}'),
    "int_5000_digits": ("traces", _ATTR % (b'{"intValue": ' + b"9" * 5000 + b"}")),
    "int_string_5000_digits": ("traces", _ATTR % (b'{"intValue": "' + b"9" * 5000 + b'"}')),
    "float_for_int64": ("metrics", b'{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"gauge":{"dataPoints":'
                                   b'[{"asInt": 1e300}]}}]}]}]}'),
    "enum_overflow": ("traces", _SPANS % b'{"kind": 2147483648}'),
    "count_overflow": ("metrics", b'{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"summary":{"dataPoints":'
                                  b'[{"count": "1e30"}]}}]}]}]}'),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_input_is_a_clean_400(case):
    signal, body = MALFORMED[case]
    with pytest.raises(OtlpJsonError) as e:
        decode(signal, body)
    text = str(e.value)
    assert text and "\n" not in text and len(text) <= 320, text


def test_bad_id_error_names_the_field():
    with pytest.raises(OtlpJsonError, match=r"resourceSpans\[0\]\.scopeSpans\[0\]\.spans\[1\]\.links\[0\]\.spanId"):
        decode("traces", _SPANS % b'{}, {"links": [{"spanId": "g0"}]}')
    with pytest.raises(OtlpJsonError, match=r"parent_span_id is not valid hex"):
        decode("traces", _SPANS % b'{"parent_span_id": "xyz"}')
    with pytest.raises(OtlpJsonError, match=r"dataPoints\[0\]\.exemplars\[0\]\.traceId must be a hex string"):
        decode("metrics", b'{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"gauge":{"dataPoints":'
                          b'[{"exemplars":[{"traceId": 5}]}]}}]}]}]}')


def test_type_error_message_is_short_and_points_at_the_field():
    with pytest.raises(OtlpJsonError, match=r"resourceSpans\[0\]\.resource, got string"):
        decode("traces", b'{"resourceSpans": [{"resource": "abc"}]}')
    with pytest.raises(OtlpJsonError, match=r"spans\[0\]\.startTimeUnixNano"):
        decode("traces", _SPANS % b'{"startTimeUnixNano": 1.5}')
    huge = orjson.dumps({"resourceSpans": {"x": "y" * 100_000}})  # json_format would echo the whole value
    with pytest.raises(OtlpJsonError) as e:
        decode("traces", huge)
    assert len(str(e.value)) <= 320


# ---------------------------------------------------------------- fuzzing

SIGNALS = st.sampled_from(sorted(REQUESTS))


def _decode_or_reject(signal: str, body: bytes) -> None:
    """The only two allowed outcomes; an accepted message must also survive the binary path after it."""
    try:
        msg = decode(signal, body)
    except OtlpJsonError as e:
        assert str(e) and "\n" not in str(e)
        event("rejected: " + str(e).split(":")[0])  # --hypothesis-show-statistics: is the fuzz reaching the parser?
        return
    event("accepted")
    assert type(msg).FromString(msg.SerializeToString()) == msg


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(SIGNALS, st.binary(max_size=2000))
def test_fuzz_random_bytes(signal, body):
    _decode_or_reject(signal, body)


# small valid bodies to mutate: every signal, several spellings
_SEEDS = [(signal, otlp_json(REQUESTS[signal](), **VARIANTS[v])) for signal in sorted(REQUESTS)
          for v in ("canonical", "all_at_once")]
_TOKENS = [b'"', b"{", b"}", b"[", b"]", b",", b":", b"null", b"true", b"0", b"-1", b"1e999", b"1.5",
           b"18446744073709551616", b'""', b'"zz"', b"[]", b"{}", b"\\", b"\\u0000", b"\\ud800", b"\xff", b"\x00",
           b'"traceId":', b'"spanId":"0"', b'"resourceSpans":', b'"values":[', b'{"arrayValue":{"values":[']

def _mutate(body: bytes, program: bytes) -> bytes:
    """Apply up to 4 edits, 4 program bytes each: (operation, position hi, position lo, argument).

    One binary draw instead of many small ones: hypothesis' per-draw cost dominated at 1500 examples,
    and a byte string still shrinks to a minimal failing edit.
    """
    b = bytearray(body)
    for i in range(0, len(program) - 3, 4):
        op, pos, arg = program[i] % 4, (program[i + 1] << 8 | program[i + 2]) % (len(b) + 1), program[i + 3]
        if op == 0 and pos < len(b):
            b[pos] ^= arg or 0x20
        elif op == 1:
            b[pos:pos] = _TOKENS[arg % len(_TOKENS)]
        elif op == 2:
            del b[pos:pos + arg % 16 + 1]
        elif op == 3 and arg < 32:  # truncation wipes out the other edits: keep it rarer
            del b[pos:]
    return bytes(b)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 4 * len(_SEEDS) - 1), st.binary(min_size=4, max_size=16))
def test_fuzz_mutated_valid_bodies(choice, program):
    own_signal, body = _SEEDS[choice % len(_SEEDS)]
    # mostly decode as its own signal; a quarter as another one (top-level fields then all unknown)
    signal = own_signal if choice < 3 * len(_SEEDS) else sorted(REQUESTS)[choice % 3]
    _decode_or_reject(signal, _mutate(body, program))


_json_values = st.recursive(
    st.sampled_from([None, True, False, 0, -1, 2**63, 2**64 - 1, -(2**63), 1.5, -0.0, 1e308, "", "x", "00", "AbCd",
                     "SPAN_KIND_SERVER", "NaN", "Infinity", "1e3", "-5", "\u00e9", "\u2603" * 3]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["", "a", "values", "traceId"]),
                                                                 inner, max_size=2),
    max_leaves=6)


def _slots(node, out):
    """Every (container, key) in a document: the places where a value can be swapped for a wrong one."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        out.append((node, key))
        _slots(value, out)
    return out


_DOCS = {(signal, snake): otlp_json(REQUESTS[signal](), snake=snake) for signal in REQUESTS for snake in (False, True)}


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(REQUESTS)), st.data())
def test_fuzz_replace_any_value(signal, data):
    """Structure-aware: any member of a valid request replaced by any JSON value (type confusion)."""
    doc = orjson.loads(_DOCS[signal, data.draw(st.booleans())])
    slots = _slots(doc, [])
    for _ in range(data.draw(st.integers(1, 3))):
        container, key = slots[data.draw(st.integers(0, len(slots) - 1))]
        container[key] = data.draw(_json_values)
    _decode_or_reject(signal, orjson.dumps(doc))
