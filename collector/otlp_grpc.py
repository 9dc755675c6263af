"""OTLP/gRPC receiver: the ``Export`` methods of the trace, logs and metrics services.

Runs on ``grpc.aio`` in the same event loop as the aiohttp servers. Same path as
``otlp_http``: the method handlers take the request as RAW bytes (no deserializer), so
the client's bytes are parsed once with upb (``validate.parse``) for the answer and
then handed to ``envelope`` unchanged -- no re-serialization. gzip and the message-size
limit (``grpc.max_receive_message_length``, checked by grpc itself, also after
inflation) are grpc's job.

Status codes follow the OTLP spec ("Failures"): OK with the Export*ServiceResponse
(``partial_success`` when items were left out), INVALID_ARGUMENT for an undecodable
message or a bad ``x-scope-orgid``, RESOURCE_EXHAUSTED with a ``google.rpc.RetryInfo``
when the ingest buffer is full, UNAVAILABLE while shutting down (``accepting`` is
False). RetryInfo travels in ``grpc-status-details-bin`` (a ``google.rpc.Status``
carrying it, as the spec and the Go/Java exporters read it) and also alone in
``google.rpc.retryinfo-bin`` (what the Python exporter reads).
"""

from __future__ import annotations

import logging

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from meshscope.collector import validate
from meshscope.collector.batcher import Batcher, BufferFull
from meshscope.collector.otlp_http import accept_export
from meshscope.collector.tenant import TenantError, tenant_from_header
from meshscope.selfmetrics import SelfMetrics

log = logging.getLogger("meshscope.otlp_grpc")

SERVICES = {
    "traces": "opentelemetry.proto.collector.trace.v1.TraceService",
    "logs": "opentelemetry.proto.collector.logs.v1.LogsService",
    "metrics": "opentelemetry.proto.collector.metrics.v1.MetricsService",
}
TENANT_METADATA = "x-scope-orgid"
SHUTDOWN_RETRY_SECONDS = 5  # same as the HTTP receiver's Retry-After while shutting down


class _Reject(Exception):
    def __init__(self, code: grpc.StatusCode, message: str, reason: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.retry_after = retry_after


def retry_metadata(code: grpc.StatusCode, message: str, seconds: int) -> tuple[tuple[str, bytes], ...]:
    """Trailing metadata carrying a RetryInfo: in the google.rpc.Status details and on its own."""
    retry = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=seconds))
    detail = any_pb2.Any()
    detail.Pack(retry)
    status = status_pb2.Status(code=code.value[0], message=message, details=[detail])
    return (("grpc-status-details-bin", status.SerializeToString()),
            ("google.rpc.retryinfo-bin", retry.SerializeToString()))


class OtlpGrpcReceiver:
    def __init__(self, batcher: Batcher, metrics: SelfMetrics, max_message_bytes: int) -> None:
        self.batcher = batcher
        self.metrics = metrics
        self.max_message_bytes = max_message_bytes
        self.accepting = True
        self.server: grpc.aio.Server | None = None
        self.port: int | None = None

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        # request_deserializer=None: grpc hands the handler the message's raw bytes (identity);
        # response_serializer=None: the handler returns already serialized bytes.
        return [
            grpc.method_handlers_generic_handler(service, {
                "Export": grpc.unary_unary_rpc_method_handler(
                    self._handler(signal), request_deserializer=None, response_serializer=None),
            })
            for signal, service in SERVICES.items()
        ]

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port (0: any free port); returns the bound port."""
        self.server = grpc.aio.server(
            handlers=self.handlers(),
            options=[
                ("grpc.max_receive_message_length", self.max_message_bytes),
                # grpc sets SO_REUSEPORT by default: a second meshscope on the same port would start
                # silently and steal half the connections. Fail like the HTTP listener does instead.
                ("grpc.so_reuseport", 0),
            ],
        )
        address = f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
        try:
            bound = self.server.add_insecure_port(address)
        except RuntimeError as e:  # grpc >= 1.5x raises; older versions return 0
            bound = 0
            cause: Exception | None = e
        else:
            cause = None
        if not bound:
            self.server = None
            raise OSError(f"cannot listen for OTLP/gRPC on {address}" + (f": {cause}" if cause else ""))
        await self.server.start()
        self.port = bound
        return bound

    async def stop(self, grace: float) -> None:
        """Refuse new exports (UNAVAILABLE), let running ones finish within ``grace`` seconds, close."""
        self.accepting = False
        if self.server is not None:
            await self.server.stop(grace)
            self.server = None

    def _handler(self, signal: str):
        async def export(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            try:
                return await self._export(signal, request, context)
            except _Reject as e:
                self.metrics.requests.labels(signal, "grpc", e.code.name).inc()
                self.metrics.rejected.labels(signal, e.reason).inc()
                trailing = retry_metadata(e.code, e.message, e.retry_after) if e.retry_after is not None else ()
                await context.abort(e.code, e.message, trailing)

        return export

    async def _export(self, signal: str, body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        if not self.accepting:
            raise _Reject(grpc.StatusCode.UNAVAILABLE, "meshscope is shutting down", "shutting_down",
                          SHUTDOWN_RETRY_SECONDS)
        header = None
        for key, value in context.invocation_metadata() or ():
            if key == TENANT_METADATA:
                header = value if isinstance(value, str) else value.decode("latin-1")
                break
        try:
            tenant = tenant_from_header(header)
        except TenantError as e:
            raise _Reject(grpc.StatusCode.INVALID_ARGUMENT, str(e), "malformed") from e
        try:
            self.batcher.check_capacity(signal)
        except BufferFull as e:
            raise _Reject(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e), "backpressure", e.retry_after) from e
        try:
            msg = validate.parse(signal, body)
        except validate.DecodeFailed as e:
            raise _Reject(grpc.StatusCode.INVALID_ARGUMENT, str(e), "malformed") from e
        payload = validate.storable_bytes(msg, body)
        resp = await accept_export(self.batcher, self.metrics, signal, "grpc", msg, payload, tenant)
        self.metrics.requests.labels(signal, "grpc", "OK").inc()
        return resp.SerializeToString()
