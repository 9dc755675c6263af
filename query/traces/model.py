"""Span and trace records, trace-id rules, and the typing rule for stored attribute values.

Attribute maps hold strings (README "Attribute values"); the OTLP type of each value is not stored. Jaeger tags
and OTLP JSON want a type back, so ``typed_value`` recovers it where the text says it unambiguously:

* ``true`` / ``false`` → bool;
* canonical decimal integers (no sign other than ``-``, no leading zeros, within int64) → int64;
* doubles in ClickHouse's shortest round-trip form that contain ``.`` or ``e`` and are finite → float64;
* everything else, and every value of a key that semantic conventions define as a string (``*.id``, ``*.name``,
  ``*.version``, addresses, routes, URLs, statements, ...), stays a string.

So a string attribute ``"42"`` comes back as int64 42 (rendered the same), a version ``"1.10"`` stays a string,
bytes stay their base64 text and arrays/maps their JSON text (as Jaeger's own OTLP translator renders them).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

NS_PER_US = 1000

KIND_NAMES = {  # stored SpanKind → Jaeger's span.kind tag (unspecified has none)
    "SPAN_KIND_SERVER": "server", "SPAN_KIND_CLIENT": "client", "SPAN_KIND_PRODUCER": "producer",
    "SPAN_KIND_CONSUMER": "consumer", "SPAN_KIND_INTERNAL": "internal",
}
KIND_NUMBERS = {"SPAN_KIND_UNSPECIFIED": 0, "SPAN_KIND_INTERNAL": 1, "SPAN_KIND_SERVER": 2, "SPAN_KIND_CLIENT": 3,
                "SPAN_KIND_PRODUCER": 4, "SPAN_KIND_CONSUMER": 5}
KIND_BY_NAME = {v: k for k, v in KIND_NAMES.items()} | {"unspecified": "SPAN_KIND_UNSPECIFIED"}
STATUS_ERROR = "STATUS_CODE_ERROR"
STATUS_BY_NAME = {"error": "STATUS_CODE_ERROR", "ok": "STATUS_CODE_OK", "unset": "STATUS_CODE_UNSET"}
STATUS_NUMBERS = {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}

_HEX = re.compile(r"[0-9a-f]{1,32}")
_INT = re.compile(r"-?(?:0|[1-9][0-9]{0,18})")
_FLOAT = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:e-?[0-9]+)?")
_STRING_SUFFIXES = (".id", "_id", ".name", ".version", ".address", ".ip", ".addr", ".host", ".route", ".path",
                    ".target", ".url", ".full", ".query", ".statement", ".text", ".original", ".message",
                    ".principal", ".uid", ".sha", ".hash", ".zone", ".region", ".code_string")
_STRING_KEYS = {"guid:x-request-id", "node_id", "upstream_cluster", "downstream_cluster", "http.flavor",
                "response_flags", "peer.service", "service.peer.name", "component", "user_agent"}


class BadTraceId(ValueError):
    """A trace id that is not 1-32 hex digits (or is all zeros)."""


def normalize_trace_id(value: str) -> str:
    """Jaeger's ``TraceIDFromString`` rule: 1-32 hex digits, any case, left-padded with zeros to 32."""
    v = (value or "").strip().lower()
    if not _HEX.fullmatch(v) or not v.strip("0"):
        raise BadTraceId(f"invalid trace id {value[:40]!r}: use 1 to 32 hex digits")
    return v.rjust(32, "0")


def ch_float_text(f: float) -> str:
    """ClickHouse's shortest round-trip text of a finite double (``0.1``, ``3``, ``1e100``, ``1.5e-7``)."""
    s = repr(f)
    if s.endswith(".0"):
        s = s[:-2]
    if "e" in s:
        mant, exp = s.split("e")
        s = f"{mant}e{'-' if exp.startswith('-') else ''}{exp.lstrip('+-').lstrip('0') or '0'}"
    return s


def string_typed_key(key: str) -> bool:
    return key in _STRING_KEYS or key.endswith(_STRING_SUFFIXES)


def typed_value(key: str, text: str) -> tuple[str, object]:
    """(type, value) with type one of ``string``, ``bool``, ``int64``, ``float64``; see the module docstring."""
    if not text or len(text) > 32 or string_typed_key(key):
        return "string", text
    if text == "true":
        return "bool", True
    if text == "false":
        return "bool", False
    if _INT.fullmatch(text):
        n = int(text)
        if -(1 << 63) <= n < (1 << 63):
            return "int64", n
        return "string", text
    if ("." in text or "e" in text) and _FLOAT.fullmatch(text):
        f = float(text)
        if math.isfinite(f) and ch_float_text(f) == text:
            return "float64", f
    return "string", text


@dataclass
class Event:
    ts_ns: int
    name: str
    attributes: dict[str, str]


@dataclass
class Link:
    trace_id: str
    span_id: str
    trace_state: str
    attributes: dict[str, str]


@dataclass
class Span:
    trace_id: str
    span_id: str
    parent_span_id: str
    trace_state: str
    name: str
    kind: str
    service: str
    resource: dict[str, str]
    scope_name: str
    scope_version: str
    attributes: dict[str, str]
    start_ns: int
    duration_ns: int
    status_code: str
    status_message: str
    events: list[Event] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)
    flags: int = 0

    @property
    def end_ns(self) -> int:
        return self.start_ns + self.duration_ns

    @property
    def is_error(self) -> bool:
        return self.status_code == STATUS_ERROR


@dataclass
class Trace:
    trace_id: str
    spans: list[Span]
    total_spans: int  # spans stored; more than len(spans) when the answer was capped
    warnings: list[str] = field(default_factory=list)

    @property
    def truncated(self) -> bool:
        return self.total_spans > len(self.spans)


@dataclass
class TraceSummary:
    trace_id: str
    root_service: str
    root_operation: str
    root_missing: bool  # no span without a parent: the root was not (yet) received
    start_ns: int
    duration_ns: int
    span_count: int
    error_count: int
    services: list[dict]  # [{"name", "spans", "errors"}]

    def to_json(self) -> dict:
        return {"traceID": self.trace_id, "rootServiceName": self.root_service,
                "rootTraceName": self.root_operation, "rootMissing": self.root_missing,
                "startTimeUnixNano": str(self.start_ns), "durationMs": round(self.duration_ns / 1e6, 3),
                "durationNano": str(self.duration_ns), "spanCount": self.span_count, "errorCount": self.error_count,
                "services": self.services}
