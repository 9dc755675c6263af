"""Traces in Jaeger's query JSON (``model/json``), as Jaeger's own OTLP translator renders OTLP spans.

Per span: ``startTime``/``duration`` in µs; the parent as a ``CHILD_OF`` reference, links as ``FOLLOWS_FROM``;
tags are the span attributes (typed by ``model.typed_value``) followed by ``span.kind``, ``otel.status_code``,
``error`` (bool, on error spans), ``otel.status_description``, ``otel.scope.name``/``otel.scope.version`` and
``w3c.tracestate`` when present; events become logs (``event`` field first, then the event's attributes).
Processes: one per distinct (service, resource attributes), numbered ``p1``, ``p2``... in order of appearance, with
the resource attributes other than ``service.name`` as tags.
"""
from __future__ import annotations

from .model import KIND_NAMES, NS_PER_US, STATUS_ERROR, Span, Trace, typed_value


def tags(attrs: dict[str, str]) -> list[dict]:
    out = []
    for k, v in attrs.items():
        t, val = typed_value(k, v)
        out.append({"key": k, "type": t, "value": val})
    return out


def _str_tag(key: str, value: str) -> dict:
    return {"key": key, "type": "string", "value": value}


def span_tags(s: Span) -> list[dict]:
    out = tags(s.attributes)
    if s.kind in KIND_NAMES:
        out.append(_str_tag("span.kind", KIND_NAMES[s.kind]))
    if s.status_code == STATUS_ERROR:
        out.append(_str_tag("otel.status_code", "ERROR"))
        if "error" not in s.attributes:
            out.append({"key": "error", "type": "bool", "value": True})
    elif s.status_code == "STATUS_CODE_OK":
        out.append(_str_tag("otel.status_code", "OK"))
    if s.status_message:
        out.append(_str_tag("otel.status_description", s.status_message))
    if s.scope_name:
        out.append(_str_tag("otel.scope.name", s.scope_name))
    if s.scope_version:
        out.append(_str_tag("otel.scope.version", s.scope_version))
    if s.trace_state:
        out.append(_str_tag("w3c.tracestate", s.trace_state))
    return out


def references(s: Span) -> list[dict]:
    refs = []
    if s.parent_span_id:
        refs.append({"refType": "CHILD_OF", "traceID": s.trace_id, "spanID": s.parent_span_id})
    for ln in s.links:
        if ln.trace_id and ln.span_id:
            refs.append({"refType": "FOLLOWS_FROM", "traceID": ln.trace_id, "spanID": ln.span_id})
    return refs


def logs(s: Span) -> list[dict]:
    out = []
    for e in s.events:
        fields = [] if "event" in e.attributes else [_str_tag("event", e.name)]
        fields += tags(e.attributes)
        out.append({"timestamp": e.ts_ns // NS_PER_US, "fields": fields})
    return out


def trace_json(trace: Trace) -> dict:
    """One element of ``data`` in ``/api/traces`` and ``/api/traces/<id>``."""
    processes: dict[str, dict] = {}
    process_ids: dict[tuple, str] = {}
    spans = []
    for s in trace.spans:
        res = {k: v for k, v in s.resource.items() if k != "service.name"}
        pkey = (s.service, tuple(sorted(res.items())))
        pid = process_ids.get(pkey)
        if pid is None:
            pid = f"p{len(process_ids) + 1}"
            process_ids[pkey] = pid
            processes[pid] = {"serviceName": s.service, "tags": tags(res)}
        spans.append({
            "traceID": s.trace_id,
            "spanID": s.span_id,
            "operationName": s.name,
            "references": references(s),
            "startTime": s.start_ns // NS_PER_US,
            "duration": s.duration_ns // NS_PER_US,
            "tags": span_tags(s),
            "logs": logs(s),
            "processID": pid,
            "warnings": None,
        })
    return {"traceID": trace.trace_id, "spans": spans, "processes": processes,
            "warnings": list(trace.warnings) or None}


def response(data, errors: list[dict] | None = None, total: int = 0, limit: int = 0, offset: int = 0) -> dict:
    """Jaeger's ``structuredResponse`` envelope."""
    return {"data": data, "total": total, "limit": limit, "offset": offset, "errors": errors}


def error_response(code: int, msg: str) -> dict:
    return response(None, [{"code": code, "msg": msg}])
