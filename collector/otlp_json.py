"""OTLP/HTTP JSON decoder: request body -> the same protobuf message the binary path produces.

OTLP JSON is the proto3 JSON mapping with a few twists (OTLP spec, "JSON Protobuf Encoding"):
trace and span ids are hex strings instead of base64, enums are integers, and receivers must
ignore unknown fields. protobuf's own mapping already accepts enum numbers or names, int64 as
string or number, and lowerCamelCase or snake_case names, so we only rewrite the id fields
(hex -> base64) in place, along the few paths where they can occur, and hand the dict to
``json_format``. Everything that can go wrong with client input becomes :class:`OtlpJsonError`,
whose message the HTTP handler returns in a 400.

Hostile input: ``orjson`` rejects invalid UTF-8, lone surrogates, non-finite numbers and nesting
deeper than 1024 levels without recursing in Python. The parts that are decoded into messages are
limited to :data:`MAX_DEPTH` nested messages (so they never hit Python's recursion limit, and stay
well below upb's limit of 100, which would otherwise reject our own re-encoded payload later);
deeply nested *unknown* fields are never walked, so they cost nothing beyond orjson's parse.
"""

from __future__ import annotations

import re
from binascii import a2b_hex, b2a_base64

import orjson
from google.protobuf import json_format
from google.protobuf import message as _message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

__all__ = ["MAX_DEPTH", "OtlpJsonError", "decode"]

MAX_DEPTH = 64
"""Most nested messages a request may contain (the request itself is level 1)."""

_MAX_MESSAGE = 300  # characters of an error message; it is echoed to the client


class OtlpJsonError(ValueError):
    """message is shown to the client in a 400 response; keep it one clear line"""


class _BadId(Exception):
    """A bad hex id; ``path`` collects the enclosing fields (innermost first) on the way out."""

    def __init__(self, key: str, problem: str):
        super().__init__(problem)
        self.path = [key]
        self.problem = problem


# Where ids live. A spec is (id keys, ((list key, item spec), ...), ((object key, spec), ...));
# both spellings of every name are listed because proto3 JSON parsers must accept either.
def _both(camel: str, snake: str, spec: tuple) -> tuple:
    return (camel, spec), (snake, spec)


_IDS = ("traceId", "trace_id", "spanId", "span_id")
_LINK = (_IDS, (), ())
_SPAN = (_IDS + ("parentSpanId", "parent_span_id"), (("links", _LINK),), ())
_SCOPE_SPANS = ((), (("spans", _SPAN),), ())
_RESOURCE_SPANS = ((), _both("scopeSpans", "scope_spans", _SCOPE_SPANS), ())
_TRACES = ((), _both("resourceSpans", "resource_spans", _RESOURCE_SPANS), ())

_LOG_RECORD = (_IDS, (), ())
_SCOPE_LOGS = ((), _both("logRecords", "log_records", _LOG_RECORD), ())
_RESOURCE_LOGS = ((), _both("scopeLogs", "scope_logs", _SCOPE_LOGS), ())
_LOGS = ((), _both("resourceLogs", "resource_logs", _RESOURCE_LOGS), ())

_EXEMPLAR = (_IDS, (), ())
_POINT = ((), (("exemplars", _EXEMPLAR),), ())
_POINTS = ((), _both("dataPoints", "data_points", _POINT), ())
_METRIC = ((), (), (("gauge", _POINTS), ("sum", _POINTS), ("histogram", _POINTS),
                    *_both("exponentialHistogram", "exponential_histogram", _POINTS), ("summary", _POINTS)))
_SCOPE_METRICS = ((), (("metrics", _METRIC),), ())
_RESOURCE_METRICS = ((), _both("scopeMetrics", "scope_metrics", _SCOPE_METRICS), ())
_METRICS = ((), _both("resourceMetrics", "resource_metrics", _RESOURCE_METRICS), ())

_SIGNALS = {
    "traces": (ExportTraceServiceRequest, _TRACES),
    "logs": (ExportLogsServiceRequest, _LOGS),
    "metrics": (ExportMetricsServiceRequest, _METRICS),
}


def _hex_to_base64(value, key: str) -> str:
    """OTLP ids are hex; json_format wants base64 for bytes fields. Length is checked later, not here."""
    if type(value) is not str:
        raise _BadId(key, "must be a hex string")
    try:
        raw = a2b_hex(value)  # unlike bytes.fromhex, no whitespace; any case
    except ValueError:
        raise _BadId(key, f"is not valid hex: {value[:40]!r}") from None
    return b2a_base64(raw, newline=False).decode("ascii")


def _fix_ids(obj: dict, spec: tuple) -> None:
    """Rewrite the ids below ``obj`` in place. Values of the wrong type are skipped: the parser reports them."""
    ids, lists, objects = spec
    for key in ids:
        value = obj.get(key)
        if value:  # absent, null and "" need no rewrite; other falsy values fail in the parser
            obj[key] = _hex_to_base64(value, key)
    for key, child in lists:
        items = obj.get(key)
        if type(items) is list:
            for i, item in enumerate(items):
                if type(item) is dict:
                    try:
                        _fix_ids(item, child)
                    except _BadId as e:
                        e.path.append(f"{key}[{i}]")
                        raise
    for key, child in objects:
        sub = obj.get(key)
        if type(sub) is dict:
            try:
                _fix_ids(sub, child)
            except _BadId as e:
                e.path.append(key)
                raise


class _Rejected(Exception):
    """Raised from inside json_format's parser; not a ParseError/ValueError/TypeError, so it is not re-wrapped."""


class _StrictParser(json_format._Parser):  # noqa: SLF001 - the public ParseDict has neither hook
    """json_format's parser, but a message must be a JSON object and nesting is capped at MAX_DEPTH.

    Stock json_format iterates whatever it is given, so ``"resource": "abc"`` or ``"resource": []``
    silently become empty messages when unknown fields are ignored; a client sending that has a
    bug we should report, not hide. Our own depth check gives a clearer message than its
    ``max_recursion_depth`` (which stays as a backstop).
    """

    def ConvertMessage(self, value, message, path):  # noqa: N802 - overrides protobuf's name
        if type(value) is not dict or self.recursion_depth >= MAX_DEPTH:  # runs once per message: keep it lean
            where = path or message.DESCRIPTOR.name
            if type(value) is not dict:
                raise _Rejected(f"expected a JSON object at {where}, got {_json_kind(value)}")
            raise _Rejected(f"messages nested deeper than {MAX_DEPTH} levels at {where}")
        _convert_message(self, value, message, path)


_convert_message = json_format._Parser.ConvertMessage  # noqa: SLF001


def _json_kind(value) -> str:
    if value is None:
        return "null"
    return {dict: "object", list: "array", str: "string", bool: "boolean"}.get(type(value), "number")


# Anything json_format or upb can raise on bad values (upb raises TypeError/ValueError/OverflowError
# from setters; RecursionError is a last resort, MAX_DEPTH should stop nesting well before it).
_PARSE_ERRORS = (json_format.ParseError, _message.Error, TypeError, ValueError, KeyError, IndexError,
                 AttributeError, RecursionError, OverflowError)

_WRAPPED = re.compile(r"Failed to parse (\S+) field: ")


def _tidy(error: BaseException) -> str:
    """One short line from json_format's nested "Failed to parse a field: Failed to parse b field: ..." text."""
    if isinstance(error, RecursionError):
        return "invalid OTLP JSON: request is nested too deeply"
    text = str(error)
    names, pos = [], 0
    while m := _WRAPPED.match(text, pos):
        names.append(m.group(1))
        pos = m.end()
    text = " ".join(text[pos:].split()).rstrip(".")  # one line; json_format appends a dot per level
    if names and " at " not in text:  # the innermost message names no path: give the field chain
        text = f"{'.'.join(names)}: {text}"
    return f"invalid OTLP JSON: {_short(text)}"


def _short(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE else text[:_MAX_MESSAGE - 3] + "..."


def decode(signal: str, body: bytes):
    """Return the protobuf message (ExportTraceServiceRequest / ExportLogsServiceRequest / ExportMetricsServiceRequest
    from the opentelemetry-proto package) for an OTLP JSON body. Raise OtlpJsonError for anything malformed.

    Ids of a wrong length but valid hex decode fine: validation later turns those into partial_success.
    """
    try:
        cls, spec = _SIGNALS[signal]
    except KeyError:
        raise ValueError(f"unknown OTLP signal {signal!r}") from None  # a caller bug, not a client error
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise OtlpJsonError(f"body is not valid JSON: {_short(' '.join(str(e).split()))}") from e
    if type(doc) is not dict:
        raise OtlpJsonError(f"body must be a JSON object, not {_json_kind(doc)}")
    try:
        _fix_ids(doc, spec)
    except _BadId as e:
        raise OtlpJsonError(f"invalid OTLP JSON: {'.'.join(reversed(e.path))} {e.problem}") from None
    msg = cls()
    try:
        _StrictParser(True, None, MAX_DEPTH + 1).ConvertMessage(doc, msg, "")
    except _Rejected as e:
        raise OtlpJsonError(f"invalid OTLP JSON: {_short(str(e))}") from None
    except _PARSE_ERRORS as e:
        raise OtlpJsonError(_tidy(e)) from e
    return msg
