"""The hand-described wire schema must agree with opentelemetry-proto, field by field."""

from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2

from meshscope.collector.otlp_wire import (ATTRIBUTE_DEPTH, TENANT_FIELD, envelope, logs_schema, metrics_schema,
                                           traces_schema)

# descriptor type number -> our scalar names that are wire compatible with it
_COMPATIBLE = {
    1: {"double"}, 3: {"int64"}, 4: {"uint64"}, 5: {"int32"}, 6: {"fixed64"}, 7: {"fixed32"}, 8: {"bool"},
    9: {"string"}, 12: {"bytes"}, 13: {"uint32"}, 14: {"int32"}, 16: {"sfixed64"}, 17: {"sint32"},
}
_RAW_OK = {"array_raw", "kvlist_raw"}  # AnyValue below the unrolled depth: messages read as bytes


def _check(builder, msg_name, descriptor, seen):
    key = (msg_name, descriptor.full_name)
    if key in seen:
        return
    seen.add(key)
    ours = builder.messages[msg_name]
    by_number = {f.number: f for f in descriptor.fields}
    for f in ours.fields:
        if f.name == "tenant" and f.number == TENANT_FIELD:
            continue
        theirs = by_number.get(f.number)
        assert theirs is not None, f"{msg_name}.{f.name} = {f.number} is not a field of {descriptor.full_name}"
        if f.name in _RAW_OK:
            assert theirs.type == 11  # a message, read as bytes (same wire type)
            continue
        assert theirs.name == f.name, f"{msg_name}: field {f.number} is {theirs.name}, we call it {f.name}"
        assert theirs.is_repeated == f.repeated, f"{msg_name}.{f.name}: repeated mismatch"
        if theirs.type == 11:
            _check(builder, f.type, theirs.message_type, seen)
        else:
            assert f.type in _COMPATIBLE[theirs.type], f"{msg_name}.{f.name}: {f.type} vs descriptor type {theirs.type}"


def test_traces_schema_matches_descriptors():
    b = traces_schema()
    _check(b, "TracesEnvelope", trace_service_pb2.ExportTraceServiceRequest.DESCRIPTOR, set())


def test_logs_schema_matches_descriptors():
    b = logs_schema()
    _check(b, "LogsEnvelope", logs_service_pb2.ExportLogsServiceRequest.DESCRIPTOR, set())


def test_metrics_schema_matches_descriptors():
    b = metrics_schema()
    _check(b, "MetricsEnvelope", metrics_service_pb2.ExportMetricsServiceRequest.DESCRIPTOR, set())


def test_anyvalue_unrolled_to_documented_depth():
    b = traces_schema()
    assert f"AnyValue{ATTRIBUTE_DEPTH}_{ATTRIBUTE_DEPTH - 1}" in b.messages
    deepest = b.messages[f"AnyValue{ATTRIBUTE_DEPTH}_{ATTRIBUTE_DEPTH - 1}"]
    assert {f.name for f in deepest.fields} >= _RAW_OK
    _check(b, f"AnyValue{ATTRIBUTE_DEPTH}_0", common_pb2.AnyValue.DESCRIPTOR, set())


def test_envelope_is_the_request_plus_a_tenant_field():
    req = trace_service_pb2.ExportTraceServiceRequest()
    req.resource_spans.add().resource.attributes.add(key="service.name").value.string_value = "x"
    raw = req.SerializeToString()
    rec = envelope(raw, "team-a")
    # strip the length prefix; the rest parses as the same request (the tenant is an unknown field to it)
    assert rec[0] == len(rec) - 1
    again = trace_service_pb2.ExportTraceServiceRequest.FromString(rec[1:])
    assert again.resource_spans[0].resource.attributes[0].value.string_value == "x"
    assert rec.endswith(b"team-a")


def test_segment_reader_stops_at_a_torn_tail(tmp_path):
    from meshscope.collector.batcher import _records

    good = envelope(b"\x0a\x00", "a") + envelope(b"", "b")
    for tail in (b"", b"\x80", b"\xff\xff", envelope(b"\x0a\x00" * 50, "c")[:7]):
        path = tmp_path / "s.seg"
        path.write_bytes(good + tail)
        assert list(_records(str(path))) == [envelope(b"\x0a\x00", "a"), envelope(b"", "b")]
