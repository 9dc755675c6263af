"""The OTLP/gRPC receiver (``collector/otlp_grpc.py``) with the real OTLP/gRPC SDK exporters.

``meshscope serve`` does not start the receiver in these tests: each test runs its own event
loop with a real ``Batcher`` (temporary data dir, the session's embedded ``store``) and the
receiver on a free port, runs the synchronous clients in a thread, stops the receiver and the
batcher (which inserts every acknowledged item) and reads the store. The store is shared, so
every test filters rows by its own service.name.

Covers: traces, logs and metrics stored; gzip; tenant metadata; INVALID_ARGUMENT for
undecodable messages and bad tenants; RESOURCE_EXHAUSTED over the message-size limit (also
after gzip inflation) and under backpressure (with RetryInfo); UNAVAILABLE while shutting
down; partial_success; a fuzz test with random and mutated messages.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.exporter.otlp.proto.grpc import _log_exporter as grpc_log_exporter
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.exporter.otlp.proto.grpc.exporter import Compression
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, LogRecordExportResult, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricExportResult
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from meshscope.collector.batcher import Batcher, FlushPolicy
from meshscope.collector.otlp_grpc import SERVICES, OtlpGrpcReceiver, tenant_from_header
from meshscope.selfmetrics import SelfMetrics

OTLPLogExporter = grpc_log_exporter.OTLPLogExporter
MiB = 1024 * 1024


# -- harness ------------------------------------------------------------------------------------

class Harness:
    def __init__(self, addr: str, receiver: OtlpGrpcReceiver, metrics: SelfMetrics) -> None:
        self.addr = addr
        self.endpoint = f"http://{addr}"
        self.receiver = receiver
        self.metrics = metrics

    def requests(self, signal: str, code: str) -> float:
        return self.metrics.registry.get_sample_value(
            "meshscope_requests_total", {"signal": signal, "protocol": "grpc", "code": code}) or 0.0


def run(store, tmp_path, client, policy: FlushPolicy | None = None, max_message_bytes: int = 4 * MiB):
    """Batcher + receiver on a free port in a fresh event loop; ``client(harness)`` runs in a thread."""

    async def main():
        metrics = SelfMetrics()
        batcher = Batcher(store, str(tmp_path / "data"), policy or FlushPolicy(interval=0.2), metrics)
        await batcher.start()
        receiver = OtlpGrpcReceiver(batcher, metrics, max_message_bytes)
        try:
            port = await receiver.start("127.0.0.1", 0)
            assert port > 0
            return await asyncio.to_thread(client, Harness(f"127.0.0.1:{port}", receiver, metrics))
        finally:
            await receiver.stop(2)
            await batcher.stop()

    return asyncio.run(main())


def raw_call(channel: grpc.Channel, signal: str):
    return channel.unary_unary(f"/{SERVICES[signal]}/Export", request_serializer=None, response_deserializer=None)


def raw_export(h: Harness, signal: str, body: bytes, metadata=None, compression=None) -> bytes:
    with grpc.insecure_channel(h.addr) as ch:
        return raw_call(ch, signal)(body, metadata=metadata, timeout=10, compression=compression)


def rpc_error(fn, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, **kwargs)
    return info.value


def resource(service: str) -> Resource:
    return Resource.create({"service.name": service})


def spans_of(service: str, names: list[str]):
    mem = InMemorySpanExporter()
    tp = TracerProvider(resource=resource(service))
    tp.add_span_processor(SimpleSpanProcessor(mem))
    tracer = tp.get_tracer("grpc-tests")
    for n in names:
        with tracer.start_as_current_span(n, attributes={"n": n}):
            pass
    tp.shutdown()
    return mem.get_finished_spans()


def logs_of(service: str, bodies: list[str]):
    mem = InMemoryLogRecordExporter()
    lp = LoggerProvider(resource=resource(service))
    lp.add_log_record_processor(SimpleLogRecordProcessor(mem))
    for b in bodies:
        lp.get_logger("grpc-tests").emit(LogRecord(body=b, severity_number=SeverityNumber.WARN))
    lp.shutdown()
    return mem.get_finished_logs()


def metrics_of(service: str, counter: str, value: int):
    reader = InMemoryMetricReader()
    mp = MeterProvider(resource=resource(service), metric_readers=[reader])
    mp.get_meter("grpc-tests").create_counter(counter).add(value, {"route": "/r"})
    data = reader.get_metrics_data()
    mp.shutdown()
    return data


def traces_request(service: str, spans: list[tuple[bytes, bytes]], attr: str = "") -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value=service)))
    ss = rs.scope_spans.add()
    t = time.time_ns()
    for i, (tid, sid) in enumerate(spans):
        sp = Span(trace_id=tid, span_id=sid, name=f"op-{i}", start_time_unix_nano=t, end_time_unix_nano=t + 1000)
        if attr:
            sp.attributes.append(KeyValue(key="big", value=AnyValue(string_value=attr)))
        ss.spans.append(sp)
    return req


def tid(n: int) -> bytes:
    return (0xABC000 + n).to_bytes(16, "big")


def sid(n: int) -> bytes:
    return (0x100 + n).to_bytes(8, "big")


def exporters(h: Harness, **kw):
    kw = {"endpoint": h.endpoint, "insecure": True, "timeout": 10} | kw
    return OTLPSpanExporter(**kw), OTLPLogExporter(**kw), OTLPMetricExporter(**kw)


def export_all(h: Harness, service: str, **kw) -> None:
    span_exp, log_exp, metric_exp = exporters(h, **kw)
    try:
        assert span_exp.export(spans_of(service, ["a", "b"])) == SpanExportResult.SUCCESS
        assert log_exp.export(logs_of(service, ["hello over grpc"])) == LogRecordExportResult.SUCCESS
        assert metric_exp.export(metrics_of(service, "grpc.requests", 7)) == MetricExportResult.SUCCESS
    finally:
        for e in (span_exp, log_exp, metric_exp):
            e.shutdown()


def stored(store, service: str) -> list[tuple]:
    return sorted(tuple(r) for r in store.query(
        """SELECT 'trace', SpanName, TenantId FROM otel.otel_traces WHERE ServiceName = {s:String}
           UNION ALL SELECT 'log', Body, TenantId FROM otel.otel_logs WHERE ServiceName = {s:String}
           UNION ALL SELECT 'sum', concat(MetricName, '=', toString(Value)), TenantId FROM otel.otel_metrics_sum
                     WHERE ServiceName = {s:String}""", parameters={"s": service}).rows)


def expected(tenant: str) -> list[tuple]:
    return [("log", "hello over grpc", tenant), ("sum", "grpc.requests=7", tenant),
            ("trace", "a", tenant), ("trace", "b", tenant)]


# -- the SDK exporters -------------------------------------------------------------------------

def test_sdk_exporters_store_traces_logs_and_metrics(store, tmp_path):
    def client(h: Harness):
        export_all(h, "grpc-plain")
        return {s: h.requests(s, "OK") for s in ("traces", "logs", "metrics")}

    assert run(store, tmp_path, client) == {"traces": 1, "logs": 1, "metrics": 1}
    assert stored(store, "grpc-plain") == expected("default")
    attrs = store.query("SELECT SpanAttributes FROM otel.otel_traces WHERE ServiceName = 'grpc-plain' "
                        "ORDER BY SpanName").rows
    assert [r[0] for r in attrs] == [{"n": "a"}, {"n": "b"}]


def test_gzip_exporters_and_tenant_metadata(store, tmp_path):
    def client(h: Harness):
        export_all(h, "grpc-gzip", compression=Compression.Gzip)
        export_all(h, "grpc-tenant", compression=Compression.Gzip, headers={"x-scope-orgid": "team-g"})
        # the SDK reads OTEL_EXPORTER_OTLP_HEADERS like this, lower-casing the key
        export_all(h, "grpc-tenant-env", headers="X-Scope-OrgID=team-env")

    run(store, tmp_path, client)
    assert stored(store, "grpc-gzip") == expected("default")
    assert stored(store, "grpc-tenant") == expected("team-g")
    assert stored(store, "grpc-tenant-env") == expected("team-env")


def test_tenant_rules_match_the_http_receiver():
    assert tenant_from_header(None) == tenant_from_header("  ") == "default"
    assert tenant_from_header(" team-a ") == "team-a"
    for bad in (".", "..", "a/b", "a b", "x" * 151, "é"):
        with pytest.raises(ValueError):
            tenant_from_header(bad)


# -- status codes ------------------------------------------------------------------------------

def test_partial_success_and_invalid_argument(store, tmp_path):
    good = traces_request("grpc-partial", [(tid(1), sid(1)), (b"\x01\x02\x03", sid(2)), (bytes(16), sid(3))])

    def client(h: Harness):
        resp = ExportTraceServiceResponse.FromString(raw_export(h, "traces", good.SerializeToString()))
        garbage = rpc_error(raw_export, h, "traces", b"\xff\xff")
        bad_tenant = rpc_error(raw_export, h, "traces", good.SerializeToString(), metadata=(("x-scope-orgid", "../x"),))
        return resp, garbage, bad_tenant, h.requests("traces", "INVALID_ARGUMENT")

    resp, garbage, bad_tenant, invalid_count = run(store, tmp_path, client)
    assert resp.partial_success.rejected_spans == 2
    assert "trace_id" in resp.partial_success.error_message
    assert garbage.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "cannot decode ExportTraceServiceRequest" in garbage.details()
    assert bad_tenant.code() == grpc.StatusCode.INVALID_ARGUMENT and "X-Scope-OrgID" in bad_tenant.details()
    assert invalid_count == 2
    rows = store.query("SELECT SpanName, TenantId FROM otel.otel_traces WHERE ServiceName = 'grpc-partial'").rows
    assert [tuple(r) for r in rows] == [("op-0", "default")]


def test_oversize_messages_get_resource_exhausted(store, tmp_path):
    limit = 64 * 1024
    big = traces_request("grpc-big", [(tid(2), sid(2))], attr="x" * (2 * limit)).SerializeToString()
    fits = traces_request("grpc-big", [(tid(3), sid(3))], attr="y" * (limit // 2)).SerializeToString()

    def client(h: Harness):
        plain = rpc_error(raw_export, h, "traces", big)
        # a gzip bomb: tiny on the wire, past the limit once inflated
        gz = rpc_error(raw_export, h, "traces", big, compression=grpc.Compression.Gzip)
        raw_export(h, "traces", fits, compression=grpc.Compression.Gzip)
        return plain, gz

    plain, gz = run(store, tmp_path, client, max_message_bytes=limit)
    for err in (plain, gz):
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (err.code(), err.details())
    rows = store.query("SELECT SpanName, length(SpanAttributes['big']) FROM otel.otel_traces "
                       "WHERE ServiceName = 'grpc-big'").rows
    assert [tuple(r) for r in rows] == [("op-0", limit // 2)]


def test_backpressure_answers_resource_exhausted_with_retry_info(store, tmp_path):
    req = traces_request("grpc-backpressure", [(tid(4), sid(4))]).SerializeToString()

    def client(h: Harness):
        raw_export(h, "traces", req)  # fills the buffer (max_buffered_rows=1)
        err = rpc_error(raw_export, h, "traces", req)
        # the SDK exporter honours the RetryInfo delay (1s) and gives up once it passes its timeout
        span_exp = OTLPSpanExporter(endpoint=h.endpoint, insecure=True, timeout=0.5)
        t0 = time.monotonic()
        result = span_exp.export(spans_of("grpc-backpressure", ["refused"]))
        span_exp.shutdown()
        return err, result, time.monotonic() - t0, h.requests("traces", "RESOURCE_EXHAUSTED")

    err, result, took, count = run(store, tmp_path, client, FlushPolicy(max_buffered_rows=1, interval=60))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    trailing = dict(err.trailing_metadata())
    status = status_pb2.Status.FromString(trailing["grpc-status-details-bin"])
    assert status.code == code_pb2.RESOURCE_EXHAUSTED and "buffer is full" in status.message
    (detail,) = status.details
    info = error_details_pb2.RetryInfo()
    assert detail.Unpack(info) and info.retry_delay.seconds == 1
    assert error_details_pb2.RetryInfo.FromString(trailing["google.rpc.retryinfo-bin"]) == info
    assert result == SpanExportResult.FAILURE and took < 5
    assert count == 2
    # the acknowledged request was inserted at stop, the refused ones were not
    rows = store.query("SELECT SpanName FROM otel.otel_traces WHERE ServiceName = 'grpc-backpressure'").rows
    assert [tuple(r) for r in rows] == [("op-0",)]


def test_unavailable_while_shutting_down(store, tmp_path):
    def client(h: Harness):
        h.receiver.accepting = False
        err = rpc_error(raw_export, h, "logs", b"")
        return err, h.requests("logs", "UNAVAILABLE")

    err, count = run(store, tmp_path, client)
    assert err.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in err.details()
    status = status_pb2.Status.FromString(dict(err.trailing_metadata())["grpc-status-details-bin"])
    assert status.code == code_pb2.UNAVAILABLE
    assert count == 1


def test_port_in_use_is_an_oserror(store, tmp_path):
    async def main():
        metrics = SelfMetrics()
        batcher = Batcher(store, str(tmp_path / "data"), FlushPolicy(), metrics)
        first = OtlpGrpcReceiver(batcher, metrics, MiB)
        port = await first.start("127.0.0.1", 0)
        try:
            with pytest.raises(OSError):
                await OtlpGrpcReceiver(batcher, metrics, MiB).start("127.0.0.1", port)
        finally:
            await first.stop(0)

    asyncio.run(main())


# -- fuzz --------------------------------------------------------------------------------------

_SEED = traces_request("grpc-fuzz", [(tid(6), sid(6)), (tid(7), sid(7))], attr="v").SerializeToString()


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(_SEED)
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(("flip", "insert", "delete", "truncate")))
        if op == "flip":
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 8))]
        else:
            del data[pos:]
        if not data:
            break
    return bytes(data)


def test_fuzz_random_messages_get_ok_or_invalid_argument(store, tmp_path):
    answers: dict[str, int] = {}

    def client(h: Harness):
        with grpc.insecure_channel(h.addr) as ch:
            calls = {s: raw_call(ch, s) for s in SERVICES}

            @settings(max_examples=300, deadline=None, database=None,
                      suppress_health_check=[HealthCheck.too_slow])
            @given(st.sampled_from(sorted(SERVICES)), st.one_of(st.binary(max_size=300), mutated()))
            def one(signal: str, body: bytes) -> None:
                try:
                    calls[signal](body, timeout=10)
                    code = grpc.StatusCode.OK
                except grpc.RpcError as e:
                    code = e.code()
                assert code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT), (signal, body, code)
                answers[code.name] = answers.get(code.name, 0) + 1

            one()
            # still up and storing
            raw_call(ch, "traces")(traces_request("grpc-fuzz-after", [(tid(8), sid(8))]).SerializeToString(),
                                   timeout=10)

    run(store, tmp_path, client)
    assert answers.get("OK") and answers.get("INVALID_ARGUMENT"), answers
    rows = store.query("SELECT SpanName FROM otel.otel_traces WHERE ServiceName = 'grpc-fuzz-after'").rows
    assert [tuple(r) for r in rows] == [("op-0",)]
