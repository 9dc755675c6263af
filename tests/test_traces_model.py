"""Trace shapes without a store: trace-id rules, the attribute typing rule, Jaeger's JSON, OTLP JSON, parameter
parsing and the CLI's waterfall."""
from __future__ import annotations

import pytest

from meshscope.query import tracecli
from meshscope.query.traces import jaeger, otlp
from meshscope.query.traces.model import (BadTraceId, Event, Link, Span, Trace, normalize_trace_id, typed_value)
from meshscope.query.traces_api import BadRequest, parse_duration_ns, parse_tags, parse_time_ns

TID = "0af7651916cd43dd8448eb211c80319c"


def span(sid, parent="", service="front", name="op", start=1_700_000_000_000_000_000, dur=5_000_000, **kw):
    base = dict(trace_id=TID, span_id=sid, parent_span_id=parent, trace_state="", name=name, kind="SPAN_KIND_SERVER",
                service=service, resource={"service.name": service, "k8s.pod.name": f"{service}-1"}, scope_name="",
                scope_version="", attributes={}, start_ns=start, duration_ns=dur, status_code="STATUS_CODE_UNSET",
                status_message="")
    base.update(kw)
    return Span(**base)


@pytest.mark.parametrize("raw, want", [
    (TID.upper(), TID), ("  " + TID + " ", TID), ("abc", "0" * 29 + "abc"), ("1", "0" * 31 + "1"),
])
def test_trace_id_normalised_like_jaeger(raw, want):
    assert normalize_trace_id(raw) == want


@pytest.mark.parametrize("raw", ["", "xyz", "0" * 32, "1" * 33, "12 34", "'; DROP TABLE x", "０１"])
def test_bad_trace_ids(raw):
    with pytest.raises(BadTraceId):
        normalize_trace_id(raw)


@pytest.mark.parametrize("key, text, want", [
    ("k", "true", ("bool", True)), ("k", "false", ("bool", False)), ("http.status_code", "200", ("int64", 200)),
    ("k", "-7", ("int64", -7)), ("k", "0.5", ("float64", 0.5)), ("k", "1e100", ("float64", 1e100)),
    ("k", "1.5e-7", ("float64", 1.5e-7)),
    ("k", "007", ("string", "007")), ("k", "1.50", ("string", "1.50")), ("k", "+1", ("string", "+1")),
    ("k", "9223372036854775808", ("string", "9223372036854775808")), ("k", "inf", ("string", "inf")),
    ("k", "nan", ("string", "nan")), ("k", "", ("string", "")), ("k", "True", ("string", "True")),
    ("service.version", "1.2", ("string", "1.2")), ("user.id", "42", ("string", "42")),
    ("net.protocol.version", "1.1", ("string", "1.1")), ("k", "[1,2]", ("string", "[1,2]")),
])
def test_typed_value_rule(key, text, want):
    assert typed_value(key, text) == want


def test_jaeger_trace_shape():
    root = span("b7ad6b7169203331", attributes={"http.status_code": "500", "ok": "true", "ratio": "0.25",
                                                  "name": "x"},
                status_code="STATUS_CODE_ERROR", status_message="boom", scope_name="lib", scope_version="1.0",
                trace_state="k=v",
                events=[Event(1_700_000_000_001_000_000, "exception", {"exception.type": "E"})],
                links=[Link("1" * 32, "2" * 16, "", {})])
    child = span("c7ad6b7169203331", parent="b7ad6b7169203331", service="back", kind="SPAN_KIND_CLIENT",
                 start=1_700_000_000_001_500_999, dur=2_000_999, status_code="STATUS_CODE_OK")
    other_pod = span("d7ad6b7169203331", parent="c7ad6b7169203331", service="back",
                     resource={"service.name": "back", "k8s.pod.name": "back-2"}, kind="SPAN_KIND_INTERNAL")
    doc = jaeger.response([jaeger.trace_json(Trace(TID, [root, child, other_pod], 3))])
    assert set(doc) == {"data", "total", "limit", "offset", "errors"} and doc["errors"] is None
    t = doc["data"][0]
    assert t["traceID"] == TID and t["warnings"] is None
    s0, s1, s2 = t["spans"]
    assert set(s0) == {"traceID", "spanID", "operationName", "references", "startTime", "duration", "tags", "logs",
                       "processID", "warnings"}
    assert s0["startTime"] == 1_700_000_000_000_000 and s0["duration"] == 5000
    assert s1["startTime"] == 1_700_000_000_001_500 and s1["duration"] == 2000
    assert s0["references"] == [{"refType": "FOLLOWS_FROM", "traceID": "1" * 32, "spanID": "2" * 16}]
    assert s1["references"] == [{"refType": "CHILD_OF", "traceID": TID, "spanID": "b7ad6b7169203331"}]
    tags = {x["key"]: (x["type"], x["value"]) for x in s0["tags"]}
    assert tags["http.status_code"] == ("int64", 500) and tags["ok"] == ("bool", True)
    assert tags["ratio"] == ("float64", 0.25) and tags["name"] == ("string", "x")
    assert tags["span.kind"] == ("string", "server") and tags["otel.status_code"] == ("string", "ERROR")
    assert tags["error"] == ("bool", True) and tags["otel.status_description"] == ("string", "boom")
    assert tags["otel.scope.name"] == ("string", "lib") and tags["w3c.tracestate"] == ("string", "k=v")
    assert {x["key"]: x["value"] for x in s1["tags"]} == {"span.kind": "client", "otel.status_code": "OK"}
    assert s0["logs"] == [{"timestamp": 1_700_000_000_001_000, "fields": [
        {"key": "event", "type": "string", "value": "exception"},
        {"key": "exception.type", "type": "string", "value": "E"}]}]
    procs = t["processes"]
    assert procs["p1"] == {"serviceName": "front", "tags": [{"key": "k8s.pod.name", "type": "string",
                                                             "value": "front-1"}]}
    assert [s["processID"] for s in t["spans"]] == ["p1", "p2", "p3"]
    assert procs["p3"]["serviceName"] == "back"


def test_jaeger_warning_when_capped():
    t = jaeger.trace_json(Trace(TID, [span("1" * 16)], 12000, ["trace has 12000 spans; showing the first 1"]))
    assert t["warnings"] == ["trace has 12000 spans; showing the first 1"]


def test_otlp_json():
    s = span("b7ad6b7169203331", attributes={"n": "3", "f": "0.5", "b": "false", "s": "hello"},
             status_code="STATUS_CODE_ERROR", status_message="bad", scope_name="lib",
             events=[Event(5, "e", {"k": "v"})], links=[Link("1" * 32, "2" * 16, "ts", {})])
    doc = otlp.traces_data(Trace(TID, [s, span("c" * 16, parent="b7ad6b7169203331")], 2))
    rs = doc["resourceSpans"]
    assert len(rs) == 1 and rs[0]["resource"]["attributes"][0] == {"key": "service.name",
                                                                   "value": {"stringValue": "front"}}
    spans = rs[0]["scopeSpans"][0]["spans"]
    assert rs[0]["scopeSpans"][0]["scope"] == {"name": "lib"}
    o = spans[0]
    assert o["kind"] == 2 and o["status"] == {"code": 2, "message": "bad"}
    assert o["startTimeUnixNano"] == "1700000000000000000" and o["endTimeUnixNano"] == "1700000000005000000"
    attrs = {a["key"]: a["value"] for a in o["attributes"]}
    assert attrs == {"n": {"intValue": "3"}, "f": {"doubleValue": 0.5}, "b": {"boolValue": False},
                     "s": {"stringValue": "hello"}}
    assert o["events"][0] == {"timeUnixNano": "5", "name": "e", "attributes": [{"key": "k",
                                                                                "value": {"stringValue": "v"}}]}
    assert o["links"][0]["traceId"] == "1" * 32
    assert "parentSpanId" not in o


@pytest.mark.parametrize("raw, ns", [("100ms", 100_000_000), ("1.5s", 1_500_000_000), ("250us", 250_000),
                                     ("250µs", 250_000), ("1h30m", 5400 * 10**9), ("2d", 2 * 86400 * 10**9),
                                     ("", 0)])
def test_durations(raw, ns):
    assert parse_duration_ns("minDuration", raw) == ns


@pytest.mark.parametrize("raw", ["abc", "-1s", "10", "1y"])
def test_bad_durations(raw):
    with pytest.raises(BadRequest):
        parse_duration_ns("minDuration", raw)


def test_times():
    assert parse_time_ns("start", "1700000000000000", 1000) == 1_700_000_000_000_000_000  # Jaeger µs
    assert parse_time_ns("start", "1700000000") == 1_700_000_000 * 10**9
    assert parse_time_ns("start", "1700000000000") == 1_700_000_000 * 10**9
    assert parse_time_ns("start", "2023-11-14T22:13:20Z") == 1_700_000_000 * 10**9
    for bad in ("soon", "1e400", "99999999999999999999999"):
        with pytest.raises(BadRequest):
            parse_time_ns("start", bad, 1000)


def test_tags_jaeger_and_own_forms():
    from multidict import MultiDict

    q = MultiDict([("tag", "http.url:http://x:1/"), ("tags", '{"error":"true","n":5}')])
    assert parse_tags(q, jaeger_style=True) == [("http.url", "http://x:1/"), ("error", "true"), ("n", "5")]
    assert parse_tags(MultiDict([("tag", "a=b:c")]), jaeger_style=False) == [("a", "b:c")]
    for bad in (MultiDict([("tag", "novalue")]), MultiDict([("tags", "{bad")]), MultiDict([("tags", "[1]")]),
                MultiDict([("tag", f"k{i}:v") for i in range(21)])):
        with pytest.raises(BadRequest):
            parse_tags(bad, jaeger_style=True)


def test_waterfall():
    root = span("a" * 16, name="GET /", dur=100_000_000)
    c1 = span("b" * 16, parent="a" * 16, service="back", name="query", start=root.start_ns + 10_000_000,
              dur=50_000_000, status_code="STATUS_CODE_ERROR")
    c2 = span("c" * 16, parent="b" * 16, service="db", name="SELECT", start=root.start_ns + 20_000_000,
              dur=10_000_000)
    orphan = span("d" * 16, parent="f" * 16, service="late", name="lost", start=root.start_ns + 5_000_000,
                  dur=1_000_000)
    doc = jaeger.trace_json(Trace(TID, [root, orphan, c2, c1], 4))
    text = tracecli.format_waterfall(doc, width=20)
    lines = text.splitlines()
    assert lines[0].startswith(f"trace {TID}") and "4 spans, 4 services, 1 errors" in lines[0]
    assert lines[1].startswith("front: GET /")
    assert lines[2].startswith("  back: query !")
    assert lines[3].startswith("    db: SELECT")
    assert lines[4].startswith("late: lost")
    bars = [ln.split("|")[1] for ln in lines[1:]]
    assert all(len(b) == 20 for b in bars)
    assert bars[0] == "▇" * 20 and bars[1] == "  " + "▇" * 10 + " " * 8 and bars[3] == " ▇" + " " * 18
    assert "10.0ms" in lines[2] and "50.0ms" in lines[2]
