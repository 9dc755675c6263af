"""Decode just enough of an OTLP request to answer the client truthfully.

The full decode into rows happens in ClickHouse (see ``otlp_sql``). Here we parse the
bytes with upb (fast, C) to know the body is well formed, count the items, and count
those the store will leave out, using exactly the rules of the SQL WHERE clauses, so
``partial_success.rejected_*`` is honest.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf.message import DecodeError
from google.protobuf.unknown_fields import UnknownFieldSet
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

REQUEST_TYPES = {
    "traces": ExportTraceServiceRequest,
    "logs": ExportLogsServiceRequest,
    "metrics": ExportMetricsServiceRequest,
}

_ZERO_TRACE = bytes(16)


class DecodeFailed(ValueError):
    """The body is not a valid message of the expected type."""


@dataclass
class Counted:
    items: int = 0  # spans, log records or data points in the request
    rejected: int = 0  # of those, how many the store will not keep
    reasons: list[str] = field(default_factory=list)
    kinds: dict[str, int] = field(default_factory=dict)  # metrics: data points per kind

    @property
    def accepted(self) -> int:
        return self.items - self.rejected


def parse(signal: str, body: bytes):
    try:
        return REQUEST_TYPES[signal].FromString(body)
    except (DecodeError, RuntimeError, ValueError) as e:
        # upb raises DecodeError for malformed input and RuntimeError past its recursion limit
        raise DecodeFailed(f"cannot decode {REQUEST_TYPES[signal].__name__}: {e}") from e


def storable_bytes(msg, body: bytes) -> bytes:
    """The bytes to put in the WAL: the client's own, unless they carry top-level unknown fields.

    The envelope appends the tenant as a top-level field, so a client's own top-level field of that number would
    override it (or, with another wire type, poison the segment). No OTLP client sends top-level unknown fields;
    when one does, the request is re-encoded without unknown fields (slow, rare)."""
    if next(iter(UnknownFieldSet(msg)), None) is None:
        return body
    msg.DiscardUnknownFields()
    return msg.SerializeToString()


def count(signal: str, msg) -> Counted:
    return _COUNTERS[signal](msg)


def _count_traces(msg: ExportTraceServiceRequest) -> Counted:
    c = Counted()
    bad_trace = bad_span = bad_parent = 0
    for rs in msg.resource_spans:
        for ss in rs.scope_spans:
            spans = ss.spans
            c.items += len(spans)
            for sp in spans:
                tid = sp.trace_id
                if len(tid) != 16 or tid == _ZERO_TRACE:
                    bad_trace += 1
                elif len(sp.span_id) != 8:
                    bad_span += 1
                elif len(sp.parent_span_id) not in (0, 8):
                    bad_parent += 1
    c.rejected = bad_trace + bad_span + bad_parent
    if bad_trace:
        c.reasons.append(f"{bad_trace} span(s) with a trace_id that is not 16 non-zero bytes")
    if bad_span:
        c.reasons.append(f"{bad_span} span(s) with a span_id that is not 8 bytes")
    if bad_parent:
        c.reasons.append(f"{bad_parent} span(s) with a parent_span_id that is neither empty nor 8 bytes")
    return c


def _count_logs(msg: ExportLogsServiceRequest) -> Counted:
    c = Counted()
    bad = 0
    for rl in msg.resource_logs:
        for sl in rl.scope_logs:
            records = sl.log_records
            c.items += len(records)
            for lr in records:
                if len(lr.trace_id) not in (0, 16) or len(lr.span_id) not in (0, 8):
                    bad += 1
    c.rejected = bad
    if bad:
        c.reasons.append(f"{bad} log record(s) with a trace_id or span_id of the wrong length")
    return c


def _count_metrics(msg: ExportMetricsServiceRequest) -> Counted:
    c = Counted()
    for rm in msg.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                kind = m.WhichOneof("data")
                if kind is None:
                    continue
                n = len(getattr(m, kind).data_points)
                c.items += n
                c.kinds[kind] = c.kinds.get(kind, 0) + n
    return c


_COUNTERS = {"traces": _count_traces, "logs": _count_logs, "metrics": _count_metrics}
