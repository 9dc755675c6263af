"""OTLP/HTTP receiver: ``POST /v1/traces``, ``/v1/logs``, ``/v1/metrics``.

From socket to disk: read the body within ``max_request_bytes`` (also after gzip
inflation, so a small bomb cannot grow past it) -> decode (protobuf with upb, or OTLP
JSON turned into the same protobuf) -> count and validate (``validate``) -> append
an envelope record to the signal's segment (``batcher``) -> answer. The answer follows
the OTLP spec: the Export*ServiceResponse in the request's encoding, with
``partial_success`` when some items were left out; ``google.rpc.Status`` bodies for
400/413/415/429/503.
"""

from __future__ import annotations

import logging
import zlib

from aiohttp import web
from google.protobuf import json_format
from google.rpc import code_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from meshscope.collector import otlp_json, validate
from meshscope.collector.batcher import Batcher, BufferFull
from meshscope.collector.otlp_wire import envelope
from meshscope.collector.tenant import HEADER, TenantError, tenant_from_header
from meshscope.selfmetrics import SelfMetrics

log = logging.getLogger("meshscope.otlp_http")

PROTOBUF = "application/x-protobuf"
JSON = "application/json"

RESPONSES = {
    "traces": (ExportTraceServiceResponse, "rejected_spans"),
    "logs": (ExportLogsServiceResponse, "rejected_log_records"),
    "metrics": (ExportMetricsServiceResponse, "rejected_data_points"),
}



class RequestError(Exception):
    def __init__(self, status: int, message: str, grpc_code: int = code_pb2.INVALID_ARGUMENT,
                 headers: dict | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.grpc_code = grpc_code
        self.headers = headers or {}


def tenant_of(request: web.Request) -> str:
    try:
        return tenant_from_header(request.headers.get(HEADER))
    except TenantError as e:
        raise RequestError(400, str(e)) from e


def inflate(data: bytes, limit: int) -> bytes:
    """gunzip with a hard output limit (413 past it) and a clear error for corrupt input."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(data, limit + 1)
    except zlib.error as e:
        raise RequestError(400, f"body is not valid gzip: {e}") from e
    if len(out) > limit or d.unconsumed_tail:
        raise RequestError(413, f"decompressed body exceeds the {limit}-byte limit", code_pb2.RESOURCE_EXHAUSTED)
    if not d.eof:
        raise RequestError(400, "gzip body is truncated")
    return out


async def read_body(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise RequestError(413, f"body of {request.content_length} bytes exceeds the {limit}-byte limit",
                           code_pb2.RESOURCE_EXHAUSTED)
    chunks = []
    size = 0
    while True:
        chunk = await request.content.read(1 << 20)
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"body exceeds the {limit}-byte limit", code_pb2.RESOURCE_EXHAUSTED)
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding in ("gzip", "x-gzip"):
        return inflate(body, limit)
    raise RequestError(415, f"unsupported Content-Encoding {encoding!r}; use gzip or none",
                       code_pb2.INVALID_ARGUMENT)


def _encoding_of(request: web.Request) -> str:
    ctype = request.content_type.lower()
    if ctype == PROTOBUF:
        return "protobuf"
    if ctype == JSON:
        return "json"
    raise RequestError(415, f"unsupported Content-Type {ctype or '(none)'!r}; use {PROTOBUF} or {JSON}")


def _reply(message, encoding: str, status: int = 200, headers: dict | None = None) -> web.Response:
    if encoding == "json":
        body = json_format.MessageToJson(message, indent=None).encode()
        return web.Response(body=body, status=status, content_type=JSON, headers=headers)
    return web.Response(body=message.SerializeToString(), status=status, content_type=PROTOBUF, headers=headers)


class OtlpHttpReceiver:
    def __init__(self, batcher: Batcher, metrics: SelfMetrics, max_request_bytes: int) -> None:
        self.batcher = batcher
        self.metrics = metrics
        self.max_request_bytes = max_request_bytes
        self.accepting = True

    def routes(self) -> list[web.RouteDef]:
        return [web.post(f"/v1/{signal}", self._handler(signal)) for signal in ("traces", "logs", "metrics")]

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_request_bytes)
        app.add_routes(self.routes())
        return app

    def _handler(self, signal: str):
        async def handle(request: web.Request) -> web.Response:
            encoding = "protobuf"
            try:
                encoding = _encoding_of(request)
                return await self._export(signal, request, encoding)
            except RequestError as e:
                self.metrics.requests.labels(signal, "http", str(e.status)).inc()
                self.metrics.rejected.labels(signal, _reason(e.status)).inc()
                status = status_pb2.Status(code=e.grpc_code, message=e.message)
                return _reply(status, encoding, e.status, e.headers)

        return handle

    async def _export(self, signal: str, request: web.Request, encoding: str) -> web.Response:
        if not self.accepting:
            raise RequestError(503, "meshscope is shutting down", code_pb2.UNAVAILABLE, {"Retry-After": "5"})
        tenant = tenant_of(request)
        try:
            self.batcher.check_capacity(signal)
        except BufferFull as e:
            raise RequestError(429, str(e), code_pb2.RESOURCE_EXHAUSTED, {"Retry-After": str(e.retry_after)}) from e
        body = await read_body(request, self.max_request_bytes)
        if encoding == "json":
            try:
                msg = otlp_json.decode(signal, body)
            except otlp_json.OtlpJsonError as e:
                raise RequestError(400, str(e)) from e
            payload = msg.SerializeToString()
        else:
            try:
                msg = validate.parse(signal, body)
            except validate.DecodeFailed as e:
                raise RequestError(400, str(e)) from e
            payload = validate.storable_bytes(msg, body)
        resp = await accept_export(self.batcher, self.metrics, signal, "http", msg, payload, tenant)
        self.metrics.requests.labels(signal, "http", "200").inc()
        return _reply(resp, encoding)


async def accept_export(batcher: Batcher, metrics: SelfMetrics, signal: str, protocol: str, msg, payload: bytes,
                        tenant: str):
    """What every OTLP receiver does with a decoded request: count it, append what the store will keep to the
    WAL (durably), and answer with the Export*ServiceResponse, ``partial_success`` included."""
    counted = validate.count(signal, msg)
    metrics.received.labels(signal, protocol).inc(counted.items)
    if counted.accepted > 0:
        await batcher.submit(signal, envelope(payload, tenant), counted.accepted, counted.kinds or None)
    if counted.rejected:
        metrics.rejected.labels(signal, "invalid").inc(counted.rejected)
    resp_type, field = RESPONSES[signal]
    resp = resp_type()
    if counted.rejected:
        setattr(resp.partial_success, field, counted.rejected)
        resp.partial_success.error_message = "; ".join(counted.reasons)
    return resp


def _reason(status: int) -> str:
    return {400: "malformed", 413: "too_large", 415: "unsupported", 429: "backpressure", 503: "shutting_down"}.get(
        status, "error")
