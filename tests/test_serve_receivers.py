"""``meshscope serve`` listens for OTLP/gRPC and Zipkin next to OTLP/HTTP; real clients' data is stored."""

from __future__ import annotations

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from conftest import read_store


def test_serve_accepts_otlp_grpc(server):
    tp = TracerProvider(resource=Resource.create({"service.name": "grpc-client"}))
    tp.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"127.0.0.1:{server.grpc_port}",
                                                               insecure=True)))
    tracer = tp.get_tracer("t")
    with tracer.start_as_current_span("outer"):
        with tracer.start_as_current_span("inner"):
            pass
    tp.shutdown()
    assert server.stop() == 0
    rows = read_store(server.data_dir, "SELECT SpanName, ServiceName FROM otel.otel_traces ORDER BY SpanName")
    assert rows == [("inner", "grpc-client"), ("outer", "grpc-client")]


def test_serve_accepts_zipkin_v2_json(server):
    import json
    import urllib.request

    span = {"traceId": "5af7183fb1d4cf5f", "id": "6b221d5bc9e6496c", "name": "get /api", "kind": "SERVER",
            "timestamp": 1_000_000 * int(__import__("time").time()), "duration": 2500,
            "localEndpoint": {"serviceName": "zipkin-client"}, "tags": {"http.status_code": "200"}}
    req = urllib.request.Request(f"http://127.0.0.1:{server.zipkin_port}/api/v2/spans", data=json.dumps([span]).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        assert r.status == 202
    assert server.stop() == 0
    rows = read_store(server.data_dir, "SELECT TraceId, SpanName, Duration, MeshResponseCode FROM otel.otel_traces")
    assert rows == [("00000000000000005af7183fb1d4cf5f", "get /api", 2_500_000, "200")]


def test_serve_accepts_loki_push_on_the_query_port(server):
    import json
    import time
    import urllib.request

    ts = str(time.time_ns() - 60 * 10**9)
    payload = {"streams": [{"stream": {"job": "varlogs", "namespace": "shop"},
                            "values": [[ts, "hello from promtail", {"trace_id": "abc"}]]}]}
    req = urllib.request.Request(server.http_url + "/loki/api/v1/push", data=json.dumps(payload).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        assert r.status == 204
    assert server.stop() == 0
    rows = read_store(server.data_dir, "SELECT Body, ResourceAttributes['job'], LogAttributes['trace_id'], "
                                       "MeshNamespace, toString(toUnixTimestamp64Nano(Timestamp)) FROM otel.otel_logs")
    assert rows == [("hello from promtail", "varlogs", "abc", "shop", ts)]
