"""``meshscope serve`` listens for OTLP/gRPC next to OTLP/HTTP; the real gRPC exporter's spans are stored."""

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
