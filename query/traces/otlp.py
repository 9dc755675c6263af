"""A trace as OTLP JSON (``TracesData``: resourceSpans → scopeSpans → spans), protobuf's JSON mapping.

Ids as lower-case hex, times as decimal strings of ns, enums as integers, int attributes as strings; attribute
types recovered by ``model.typed_value`` (bytes stay their base64 text, arrays and maps their JSON text, both as
``stringValue``: the stored form does not say which they were).
"""
from __future__ import annotations

from .model import KIND_NUMBERS, STATUS_NUMBERS, Trace, typed_value


def any_value(key: str, text: str) -> dict:
    t, v = typed_value(key, text)
    if t == "bool":
        return {"boolValue": v}
    if t == "int64":
        return {"intValue": str(v)}
    if t == "float64":
        return {"doubleValue": v}
    return {"stringValue": text}


def attributes(attrs: dict[str, str]) -> list[dict]:
    return [{"key": k, "value": any_value(k, v)} for k, v in attrs.items()]


def traces_data(trace: Trace) -> dict:
    resources: dict[tuple, dict] = {}
    for s in trace.spans:
        rkey = (s.service, tuple(sorted(s.resource.items())))
        rs = resources.get(rkey)
        if rs is None:
            res = dict(s.resource)
            res.setdefault("service.name", s.service)
            rs = {"resource": {"attributes": attributes(res)}, "scopeSpans": [], "_scopes": {}}
            resources[rkey] = rs
        skey = (s.scope_name, s.scope_version)
        ss = rs["_scopes"].get(skey)
        if ss is None:
            scope: dict = {"name": s.scope_name}
            if s.scope_version:
                scope["version"] = s.scope_version
            ss = {"scope": scope, "spans": []}
            rs["_scopes"][skey] = ss
            rs["scopeSpans"].append(ss)
        span: dict = {
            "traceId": s.trace_id, "spanId": s.span_id, "name": s.name, "kind": KIND_NUMBERS.get(s.kind, 0),
            "startTimeUnixNano": str(s.start_ns), "endTimeUnixNano": str(s.end_ns),
            "attributes": attributes(s.attributes),
            "status": {"code": STATUS_NUMBERS.get(s.status_code, 0)},
        }
        if s.parent_span_id:
            span["parentSpanId"] = s.parent_span_id
        if s.trace_state:
            span["traceState"] = s.trace_state
        if s.flags:
            span["flags"] = s.flags
        if s.status_message:
            span["status"]["message"] = s.status_message
        if s.events:
            span["events"] = [{"timeUnixNano": str(e.ts_ns), "name": e.name, "attributes": attributes(e.attributes)}
                              for e in s.events]
        if s.links:
            span["links"] = [{"traceId": ln.trace_id, "spanId": ln.span_id, "traceState": ln.trace_state,
                              "attributes": attributes(ln.attributes)} for ln in s.links]
        ss["spans"].append(span)
    for rs in resources.values():
        del rs["_scopes"]
    return {"resourceSpans": list(resources.values())}
