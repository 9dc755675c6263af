"""The OTLP/HTTP receiver against a real ``meshscope serve`` over real sockets.

Covers README "Sending data": 200 with Export*ServiceResponse (protobuf and JSON), gzip,
partial_success, 400 with google.rpc.Status, 413 (Content-Length, chunked, gzip bomb),
415, 405, tenant validation, 429 with Retry-After, robustness against malformed bodies,
and the self metrics on ``/metrics``.
"""

from __future__ import annotations

import gzip
import http.client
import json
import os
import re
import time
import urllib.error
import urllib.request

import pytest
from google.rpc import code_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric, NumberDataPoint
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from conftest import read_store

PB = "application/x-protobuf"
JSON = "application/json"
OTLP_JSON_PATH = os.path.join(os.path.dirname(__file__), "..", "collector", "otlp_json.py")


# -- request builders --------------------------------------------------------------------------

def now_ns() -> int:
    return time.time_ns()


def trace_id(n: int) -> bytes:
    return (0x1000 + n).to_bytes(16, "big")


def span_id(n: int) -> bytes:
    return (0x100 + n).to_bytes(8, "big")


def traces_request(spans: list[tuple[bytes, bytes]], service: str = "svc") -> ExportTraceServiceRequest:
    """One resource/scope with a span per (trace_id, span_id)."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value=service)))
    ss = rs.scope_spans.add()
    ss.scope.name = "meshscope-tests"
    t = now_ns()
    for i, (tid, sid) in enumerate(spans):
        ss.spans.append(Span(trace_id=tid, span_id=sid, name=f"op-{i}", kind=Span.SPAN_KIND_SERVER,
                             start_time_unix_nano=t, end_time_unix_nano=t + 1_000_000))
    return req


def spans_for(req_no: int, n: int) -> list[tuple[bytes, bytes]]:
    """n valid spans of one trace, unique per request number."""
    return [(trace_id(req_no), span_id(req_no * 10_000 + i)) for i in range(n)]


def logs_request(trace_ids: list[bytes]) -> ExportLogsServiceRequest:
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    rl.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value="svc")))
    sl = rl.scope_logs.add()
    t = now_ns()
    for i, tid in enumerate(trace_ids):
        sl.log_records.append(LogRecord(time_unix_nano=t, observed_time_unix_nano=t, severity_text="INFO",
                                        body=AnyValue(string_value=f"line {i}"), trace_id=tid,
                                        span_id=span_id(i) if tid else b""))
    return req


def metrics_request(gauge_points: int, sum_points: int) -> ExportMetricsServiceRequest:
    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    rm.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value="svc")))
    sm = rm.scope_metrics.add()
    t = now_ns()
    g = Metric(name="temperature", unit="C")
    for i in range(gauge_points):
        g.gauge.data_points.append(NumberDataPoint(time_unix_nano=t + i, as_double=20.5 + i))
    s = Metric(name="requests", unit="1")
    s.sum.is_monotonic = True
    s.sum.aggregation_temporality = 2
    for i in range(sum_points):
        s.sum.data_points.append(NumberDataPoint(start_time_unix_nano=t - 1000, time_unix_nano=t + i, as_int=i))
    sm.metrics.extend([g, s])
    return req


# -- HTTP helpers ------------------------------------------------------------------------------

class Reply:
    def __init__(self, status: int, headers: http.client.HTTPMessage, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def content_type(self) -> str:
        return (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()

    def status_pb(self) -> status_pb2.Status:
        assert self.content_type == PB, (self.status, self.headers, self.body)
        return status_pb2.Status.FromString(self.body)


def post(srv, path: str, body: bytes, content_type: str | None = PB, headers: dict | None = None,
         method: str = "POST", timeout: float = 30) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", srv.otlp_port, timeout=timeout)
    try:
        h = dict(headers or {})
        if content_type is not None:
            h["Content-Type"] = content_type
        conn.request(method, path, body=body, headers=h)
        r = conn.getresponse()
        return Reply(r.status, r.headers, r.read())
    finally:
        conn.close()


def post_chunked(srv, path: str, chunks, content_type: str = PB, headers: dict | None = None) -> Reply:
    """POST with Transfer-Encoding: chunked (no Content-Length)."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.otlp_port, timeout=30)
    try:
        conn.putrequest("POST", path)
        conn.putheader("Content-Type", content_type)
        conn.putheader("Transfer-Encoding", "chunked")
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        conn.endheaders()
        try:
            for c in chunks:
                conn.send(b"%x\r\n%s\r\n" % (len(c), c))
            conn.send(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer 413 and close before reading everything
        r = conn.getresponse()
        return Reply(r.status, r.headers, r.read())
    finally:
        conn.close()


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def assert_status(reply: Reply, status: int, code: int | None = None) -> status_pb2.Status:
    assert reply.status == status, (reply.status, reply.body[:500])
    st = reply.status_pb()
    assert st.message, st
    if code is not None:
        assert st.code == code, st
    return st


def stop_ok(srv) -> None:
    rc = srv.stop()
    assert rc == 0, srv.log()


def count(srv, table: str, where: str = "1") -> int:
    return read_store(srv.data_dir, f"SELECT count() FROM otel.{table} WHERE {where}")[0][0]


def stored_trace_ids(srv) -> dict[str, int]:
    return {r[0]: r[1] for r in read_store(
        srv.data_dir, "SELECT TraceId, count() FROM otel.otel_traces GROUP BY TraceId")}


def need_otlp_json(timeout: float = 240) -> None:
    """``collector/otlp_json.py`` may still be being written: wait for it a few minutes."""
    deadline = time.time() + timeout
    while not os.path.exists(OTLP_JSON_PATH):
        if time.time() > deadline:
            pytest.fail("collector/otlp_json.py does not exist: README promises application/json")
        time.sleep(5)


# -- 200 with protobuf ---------------------------------------------------------------------------

def test_protobuf_traces_logs_metrics_200(server):
    r = post(server, "/v1/traces", traces_request(spans_for(1, 3)).SerializeToString())
    assert r.status == 200, r.body
    assert r.content_type == PB
    resp = ExportTraceServiceResponse.FromString(r.body)
    assert not resp.HasField("partial_success"), resp

    r = post(server, "/v1/logs", logs_request([trace_id(1), b"", trace_id(2)]).SerializeToString())
    assert r.status == 200, r.body
    assert r.content_type == PB
    resp = ExportLogsServiceResponse.FromString(r.body)
    assert not resp.HasField("partial_success"), resp

    r = post(server, "/v1/metrics", metrics_request(gauge_points=2, sum_points=3).SerializeToString())
    assert r.status == 200, r.body
    assert r.content_type == PB
    resp = ExportMetricsServiceResponse.FromString(r.body)
    assert not resp.HasField("partial_success"), resp

    stop_ok(server)
    got = read_store(server.data_dir, f"""SELECT
        (SELECT groupArray((TraceId, c)) FROM (SELECT TraceId, count() AS c FROM otel.otel_traces GROUP BY TraceId)),
        (SELECT count() FROM otel.otel_logs),
        (SELECT countIf(TraceId = '{trace_id(2).hex()}') FROM otel.otel_logs),
        (SELECT count() FROM otel.otel_metrics_gauge),
        (SELECT count() FROM otel.otel_metrics_sum)""")[0]
    assert got == ([[trace_id(1).hex(), 3]], 3, 1, 2, 3), got


# -- JSON ------------------------------------------------------------------------------------------

def test_json_traces_and_logs_200(server):
    need_otlp_json()
    tid, sid, parent = "5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174", "eee19b7ec3c1b173"
    t = now_ns()
    body = {"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "json-svc"}}]},
        "scopeSpans": [{"scope": {"name": "s"}, "spans": [{
            "traceId": tid, "spanId": sid, "parentSpanId": parent, "name": "GET /json", "kind": 2,
            "startTimeUnixNano": str(t), "endTimeUnixNano": t + 5_000_000,
            "attributes": [{"key": "http.status_code", "value": {"intValue": "200"}}],
        }]}],
    }]}
    r = post(server, "/v1/traces", json.dumps(body).encode(), JSON)
    assert r.status == 200, r.body
    assert r.content_type == JSON
    resp = json.loads(r.body)
    assert isinstance(resp, dict) and not resp.get("partialSuccess"), resp

    logs = {"resourceLogs": [{"scopeLogs": [{"logRecords": [{
        "timeUnixNano": str(t), "severityNumber": 9, "body": {"stringValue": "hello json"},
        "traceId": tid, "spanId": sid}]}]}]}
    r = post(server, "/v1/logs", json.dumps(logs).encode(), JSON)
    assert r.status == 200, r.body
    assert r.content_type == JSON
    assert not json.loads(r.body).get("partialSuccess")

    short = {"resourceSpans": [{"scopeSpans": [{"spans": [
        {"traceId": "0102030405060708", "spanId": sid, "name": "short", "startTimeUnixNano": t},
        {"traceId": "00" * 16, "spanId": sid, "name": "zero", "startTimeUnixNano": t}]}]}]}
    r = post(server, "/v1/traces", json.dumps(short).encode(), JSON)
    assert r.status == 200, r.body
    assert r.content_type == JSON
    partial = json.loads(r.body)["partialSuccess"]
    assert int(partial["rejectedSpans"]) == 2 and partial["errorMessage"], partial

    stop_ok(server)
    rows = read_store(server.data_dir, """
        SELECT * FROM (
        SELECT 'span' AS s, TraceId, SpanId, ParentSpanId, SpanName, ServiceName, SpanAttributes['http.status_code']
        FROM otel.otel_traces
        UNION ALL SELECT 'log', TraceId, SpanId, '', Body, '', '' FROM otel.otel_logs) ORDER BY s DESC""")
    assert rows == [("span", tid, sid, parent, "GET /json", "json-svc", "200"),
                    ("log", tid, sid, "", "hello json", "", "")], rows


def test_json_errors_are_json(server):
    need_otlp_json()
    for body in (b"{not json", b"[1, 2, 3]", b'{"resourceSpans": 5}',
                 b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": 12, "name": []}]}]}]}'):
        r = post(server, "/v1/traces", body, JSON)
        assert r.status == 400, (body, r.status, r.body)
        assert r.content_type == JSON, (body, r.headers)
        st = json.loads(r.body)
        assert st.get("message"), (body, st)
        assert st.get("code") == code_pb2.INVALID_ARGUMENT, (body, st)
    assert get(server.http_url + "/ready")[0] == 200


# -- gzip ------------------------------------------------------------------------------------------

def test_gzip_valid_corrupt_truncated(server):
    body = gzip.compress(traces_request(spans_for(7, 4)).SerializeToString())
    r = post(server, "/v1/traces", body, headers={"Content-Encoding": "gzip"})
    assert r.status == 200, r.body
    assert not ExportTraceServiceResponse.FromString(r.body).HasField("partial_success")

    good = gzip.compress(traces_request(spans_for(8, 50)).SerializeToString())
    corrupt = bytearray(good)
    for i in range(12, 40):  # the deflate stream, past the 10-byte gzip header
        corrupt[i] ^= 0x5A
    for bad in (bytes(corrupt), b"this is not gzip at all"):
        r = post(server, "/v1/traces", bad, headers={"Content-Encoding": "gzip"})
        assert_status(r, 400, code_pb2.INVALID_ARGUMENT)
    for cut in (len(good) // 2, len(good) - 4):  # truncated mid-stream, and only the trailer missing
        r = post(server, "/v1/traces", good[:cut], headers={"Content-Encoding": "gzip"})
        assert_status(r, 400, code_pb2.INVALID_ARGUMENT)

    stop_ok(server)
    assert stored_trace_ids(server) == {trace_id(7).hex(): 4}


# -- partial success -------------------------------------------------------------------------------

def test_partial_success_traces_and_logs(server):
    spans = [(trace_id(20), span_id(1)), (b"\x01" * 8, span_id(2)), (bytes(16), span_id(3))]
    r = post(server, "/v1/traces", traces_request(spans).SerializeToString())
    assert r.status == 200, r.body
    resp = ExportTraceServiceResponse.FromString(r.body)
    assert resp.partial_success.rejected_spans == 2, resp
    assert resp.partial_success.error_message

    r = post(server, "/v1/logs", logs_request([trace_id(21), b"\x02" * 5]).SerializeToString())
    assert r.status == 200, r.body
    resp = ExportLogsServiceResponse.FromString(r.body)
    assert resp.partial_success.rejected_log_records == 1, resp
    assert resp.partial_success.error_message

    stop_ok(server)
    rows = read_store(server.data_dir, "SELECT * FROM (SELECT 'span' AS s, TraceId FROM otel.otel_traces "
                                       "UNION ALL SELECT 'log', TraceId FROM otel.otel_logs) ORDER BY s DESC")
    assert rows == [("span", trace_id(20).hex()), ("log", trace_id(21).hex())], rows


# -- 400 / 405 / 415 -------------------------------------------------------------------------------

def test_garbage_protobuf_400_with_status(server):
    for path in ("/v1/traces", "/v1/logs", "/v1/metrics"):
        r = post(server, path, b"\xff" * 64)
        assert_status(r, 400, code_pb2.INVALID_ARGUMENT)


def test_unsupported_media_method_and_tenant(server):
    body = traces_request(spans_for(30, 1)).SerializeToString()
    r = post(server, "/v1/traces", b"hello", "text/plain")
    assert r.status == 415, r.body
    r = post(server, "/v1/traces", body, None)
    assert r.status == 415, r.body
    for encoding in ("br", "deflate", "zstd", "compress"):
        r = post(server, "/v1/traces", body, headers={"Content-Encoding": encoding})
        assert_status(r, 415)
    r = post(server, "/v1/traces", b"", None, method="GET")
    assert r.status == 405, r.body
    for bad in ("team:a", "a" * 151, "..", "a b", "x/y"):
        r = post(server, "/v1/traces", body, headers={"X-Scope-OrgID": bad})
        assert_status(r, 400, code_pb2.INVALID_ARGUMENT)
    r = post(server, "/v1/traces", body, headers={"X-Scope-OrgID": "t" * 150})
    assert r.status == 200, r.body
    stop_ok(server)
    assert read_store(server.data_dir, "SELECT TenantId, count() FROM otel.otel_traces GROUP BY TenantId") == [
        ("t" * 150, 1)]


# -- 413 -------------------------------------------------------------------------------------------

def test_request_too_large_413(server_factory):
    srv = server_factory("--max-request-bytes", "65536", "--flush-interval", "0.2")
    big = traces_request(spans_for(40, 5000)).SerializeToString()
    assert len(big) > 65536
    # with Content-Length
    r = post(srv, "/v1/traces", big)
    assert_status(r, 413, code_pb2.RESOURCE_EXHAUSTED)
    # chunked, no Content-Length
    chunks = [big[i:i + 8192] for i in range(0, len(big), 8192)]
    r = post_chunked(srv, "/v1/traces", chunks)
    assert_status(r, 413, code_pb2.RESOURCE_EXHAUSTED)
    # a gzip bomb: ~10 kB on the wire, 10 MB inflated (also chunked)
    bomb = gzip.compress(bytes(10 * 1024 * 1024))
    assert len(bomb) < 65536
    r = post(srv, "/v1/traces", bomb, headers={"Content-Encoding": "gzip"})
    assert_status(r, 413, code_pb2.RESOURCE_EXHAUSTED)
    r = post_chunked(srv, "/v1/traces", [bomb], headers={"Content-Encoding": "gzip"})
    assert_status(r, 413, code_pb2.RESOURCE_EXHAUSTED)
    # a real request that inflates just past the limit
    inflates = traces_request(spans_for(41, 4000)).SerializeToString()
    assert len(inflates) > 65536 > len(gzip.compress(inflates))
    r = post(srv, "/v1/traces", gzip.compress(inflates), headers={"Content-Encoding": "gzip"})
    assert_status(r, 413, code_pb2.RESOURCE_EXHAUSTED)
    # under the limit still works, plain and chunked
    ok = traces_request(spans_for(42, 10)).SerializeToString()
    assert post(srv, "/v1/traces", ok).status == 200
    assert post_chunked(srv, "/v1/traces", [ok[:10], ok[10:]]).status == 200
    assert get(srv.http_url + "/ready")[0] == 200
    stop_ok(srv)
    assert stored_trace_ids(srv) == {trace_id(42).hex(): 20}


# -- 429 -------------------------------------------------------------------------------------------

def test_backpressure_429_then_sigterm_keeps_acknowledged(server_factory):
    srv = server_factory("--max-buffered-rows", "10", "--flush-interval", "60", "--flush-rows", "1000000")
    accepted, refused = [], []
    retry_after = None
    for n in range(1, 30):
        r = post(srv, "/v1/traces", traces_request(spans_for(100 + n, 3)).SerializeToString())
        if r.status == 200:
            assert not refused, "200 after a 429 although nothing was flushed"
            accepted.append(n)
        else:
            assert_status(r, 429, code_pb2.RESOURCE_EXHAUSTED)
            retry_after = r.headers.get("Retry-After")
            assert retry_after is not None and re.fullmatch(r"\d+", retry_after), r.headers
            assert int(retry_after) > 0
            refused.append(n)
            if len(refused) >= 3:
                break
    assert refused, "never answered 429"
    assert len(accepted) == 4  # 0, 3, 6, 9 rows buffered: below 10, so accepted
    stop_ok(srv)
    assert stored_trace_ids(srv) == {trace_id(100 + n).hex(): 3 for n in accepted}


# -- robustness ------------------------------------------------------------------------------------

def malformed_bodies() -> list[tuple[str, str, bytes]]:
    """(path, content type, body) that must each be answered 400."""
    valid = traces_request(spans_for(999, 5)).SerializeToString()
    bad_utf8 = ExportTraceServiceRequest()
    bad_utf8.resource_spans.add().scope_spans.add().spans.add(trace_id=trace_id(998), span_id=span_id(1), name="N")
    raw = bad_utf8.SerializeToString()
    assert raw.count(b"\x2a\x01N") == 1  # span.name (field 5, length 1)
    raw = raw.replace(b"\x2a\x01N", b"\x2a\x01\xff")  # a string field that is not UTF-8
    out = [
        ("/v1/traces", PB, b"\xff" * 64),
        # unknown varint fields (skipped), then wire type 7; fixed bytes: random ones can form a length prefix
        # that swallows the bad tag, and the self-check below then fails by chance
        ("/v1/traces", PB, b"\x10\x01" * 4 + b"\x0f" + bytes(range(16))),
        ("/v1/traces", PB, valid[: len(valid) // 2]),
        ("/v1/traces", PB, valid[:-3]),
        ("/v1/traces", PB, b"\x0f"),  # wire type 7 does not exist
        ("/v1/traces", PB, raw),
        ("/v1/logs", PB, b"\x0a\x05abc"),  # length prefix past the end
        ("/v1/metrics", PB, valid[:17]),
        ("/v1/traces", PB, b'{"resourceSpans": []}'),  # JSON sent as protobuf
        ("/v1/traces", PB, valid + b"\x0a\xff\xff\xff\xff\x0f"),  # trailing field far past the end
    ]
    if os.path.exists(OTLP_JSON_PATH):
        out += [
            ("/v1/traces", JSON, b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": 12}]}]}]}'),
            ("/v1/traces", JSON, b'{"resourceSpans": "nope"}'),
            ("/v1/logs", JSON, b'{"resourceLogs": [{"scopeLogs": [{"logRecords": [{"timeUnixNano": "x"}]}]}]}'),
            ("/v1/traces", JSON, b"\x00\x01\x02"),
            ("/v1/traces", JSON, valid),
        ]
    return out


def test_robust_against_interleaved_malformed_requests(server):
    from meshscope.collector import validate

    bad = malformed_bodies()
    for path, ctype, body in bad:
        if ctype == PB:  # self-check: each protobuf body really is undecodable
            with pytest.raises(validate.DecodeFailed):
                validate.parse(path.rsplit("/", 1)[1], body)
    sent = {}
    for n in range(20):
        r = post(server, "/v1/traces", traces_request(spans_for(200 + n, 5)).SerializeToString())
        assert r.status == 200, r.body
        assert not ExportTraceServiceResponse.FromString(r.body).HasField("partial_success")
        sent[trace_id(200 + n).hex()] = 5
        path, ctype, body = bad[n % len(bad)]
        r = post(server, path, body, ctype)
        assert r.status == 400, (path, ctype, body[:40], r.status, r.body[:300])
        if ctype == JSON:
            assert r.content_type == JSON and json.loads(r.body).get("message")
        else:
            assert r.status_pb().message
    assert get(server.http_url + "/ready")[0] == 200
    assert server.proc.poll() is None
    stop_ok(server)
    assert stored_trace_ids(server) == sent
    quarantine = os.path.join(server.data_dir, "wal", "quarantine")
    assert not os.path.isdir(quarantine) or not os.listdir(quarantine)


def span_with_extra_bytes(n: int, extra: bytes) -> bytes:
    """A request with one valid span whose encoding ends with ``extra`` (raw protobuf bytes)."""
    from google.protobuf.internal.encoder import _VarintBytes

    t = now_ns()
    sp = Span(trace_id=trace_id(n), span_id=span_id(n), name=f"case-{n}", start_time_unix_nano=t,
              end_time_unix_nano=t + 1000).SerializeToString() + extra
    ss = b"\x12" + _VarintBytes(len(sp)) + sp  # ScopeSpans.spans = 2
    rs = b"\x12" + _VarintBytes(len(ss)) + ss  # ResourceSpans.scope_spans = 2
    return b"\x0a" + _VarintBytes(len(rs)) + rs  # ExportTraceServiceRequest.resource_spans = 1


WRONG_WIRE_TYPES = {
    50: b"\x28\x05",  # Span.name (5, string) sent as a varint
    51: b"\x38\x96\x01",  # Span.start_time_unix_nano (7, fixed64) sent as a varint
    52: b"\x45\x01\x02\x03\x04",  # Span.end_time_unix_nano (8, fixed64) sent as fixed32
    54: b"\xa3\x06\x08\x01\xa4\x06",  # unknown field 100 as a (legal, deprecated) group
}


def check_wrong_wire_types(server, cases):
    answered = {}
    for n, extra in cases.items():
        r = post(server, "/v1/traces", span_with_extra_bytes(n, extra))
        assert r.status in (200, 400), (n, r.status, r.body)
        if r.status == 200:
            assert not ExportTraceServiceResponse.FromString(r.body).HasField("partial_success")
        answered[n] = r.status
    stop_ok(server)
    stored = stored_trace_ids(server)
    expected = {trace_id(n).hex(): 1 for n, st in answered.items() if st == 200}
    assert stored == expected, (answered, stored)


def test_wrong_wire_types_are_refused_or_stored(server):
    """Protobuf 'wrong types': each answer must be honest, 400, or 200 with the span really stored.

    upb keeps such fields as unknown fields; ClickHouse refuses the record, and the batcher re-encodes it
    without unknown fields (collector/batcher.py sanitize_record) before it would quarantine it."""
    check_wrong_wire_types(server, WRONG_WIRE_TYPES)


@pytest.mark.xfail(reason="known limitation: a second trace_id field (number 1) sent with the fixed64 wire type is "
                   "an unknown field to upb (the request counts as valid) but ClickHouse reads it as the trace id "
                   "(8 bytes), so the SQL WHERE leaves the span out although it was acknowledged", strict=True)
def test_trace_id_repeated_with_another_wire_type(server):
    check_wrong_wire_types(server, {53: b"\x09" + b"\x01" * 8})


# -- /metrics and /ready ---------------------------------------------------------------------------

def metric_value(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        m = re.match(r"^(\w+)(?:\{(.*)\})?\s+(\S+)$", line)
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total


def test_self_metrics_and_ready(server):
    assert get(server.http_url + "/ready") == (200, "ready\n")
    for n in range(3):
        assert post(server, "/v1/traces", traces_request(spans_for(300 + n, 4)).SerializeToString()).status == 200
    spans = [(trace_id(310), span_id(1)), (bytes(16), span_id(2))]
    assert post(server, "/v1/traces", traces_request(spans).SerializeToString()).status == 200
    assert post(server, "/v1/logs", logs_request([trace_id(1), b""]).SerializeToString()).status == 200
    assert post(server, "/v1/traces", b"\xff" * 10).status == 400

    deadline = time.time() + 20
    while True:
        status, text = get(server.http_url + "/metrics")
        assert status == 200
        inserted = metric_value(text, "meshscope_inserted_rows_total", signal="traces")
        if inserted >= 13 or time.time() > deadline:
            break
        time.sleep(0.2)
    assert metric_value(text, "meshscope_received_items_total", signal="traces", protocol="http") == 14
    assert metric_value(text, "meshscope_received_items_total", signal="logs", protocol="http") == 2
    assert metric_value(text, "meshscope_inserted_rows_total", signal="traces", table="otel_traces") == 13
    while metric_value(text, "meshscope_inserted_rows_total", signal="logs") < 2 and time.time() < deadline:
        time.sleep(0.2)
        text = get(server.http_url + "/metrics")[1]
    assert metric_value(text, "meshscope_inserted_rows_total", signal="logs", table="otel_logs") == 2
    assert metric_value(text, "meshscope_rejected_items_total", signal="traces", reason="invalid") == 1
    assert metric_value(text, "meshscope_rejected_items_total", signal="traces", reason="malformed") == 1
    assert metric_value(text, "meshscope_requests_total", signal="traces", code="200") == 4
    assert metric_value(text, "meshscope_requests_total", signal="traces", code="400") == 1
    assert metric_value(text, "meshscope_buffered_rows", signal="traces") == 0
    stop_ok(server)
    assert count(server, "otel_traces") == 13
