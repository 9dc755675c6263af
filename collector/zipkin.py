"""Zipkin v2 receiver: ``POST /api/v2/spans`` (JSON), answered 202 like a Zipkin server.

Zipkin spans (openzipkin/zipkin-api ``zipkin2-api.yaml``) are turned into an OTLP
``ExportTraceServiceRequest`` with the mapping of the OpenTelemetry Collector's
zipkin v2 translator (collector-contrib ``pkg/translator/zipkin/zipkinv2/to_translator.go``),
then take the same write path as OTLP: serialize -> ``envelope`` with the tenant ->
``batcher.submit("traces", ...)``. So the store sees exactly what an OTLP client
sending the translated spans would have produced.

Mapping (translator behaviour unless marked *meshscope*):

- ``traceId`` 1-32 hex digits, left-padded with zeros to 128 bits; ``id`` and
  ``parentId`` 1-16 hex digits, left-padded to 64 bits (Zipkin pads short ids too).
  An all-zero ``parentId`` or one equal to ``id`` means "no parent". A missing,
  empty, non-hex, too long or all-zero ``traceId``/``id`` rejects the request (400),
  like a Zipkin server does.
- ``kind`` CLIENT/SERVER/PRODUCER/CONSUMER -> the SpanKind of that name; absent (or
  unknown) -> UNSPECIFIED, or INTERNAL when tag ``span.kind`` is ``internal`` (the
  ``span.kind`` tag is consumed either way).
- ``timestamp``/``duration`` (epoch microseconds) -> start/end nanoseconds. No
  timestamp -> attribute ``otel.zipkin.absentField.startTime`` and (*meshscope*) the start is
  the first annotation's time, else the time of receipt: the translator's start at the
  epoch would be dropped at once by the store's TTL after a 202.
- ``localEndpoint.serviceName`` -> resource ``service.name`` (or the key named by tag
  ``otlp.service.name.source``); tags that are resource semantic conventions
  (``service.*``, ``k8s.*``, ``host.*``, ...) move to the resource. Spans are grouped
  into one ResourceSpans per distinct resource (*meshscope*: the translator groups by
  service name only and keeps the resource tags of the first span of a group).
- ``localEndpoint`` ipv4/ipv6/port -> span attributes ``net.host.ip``/``net.host.port``;
  ``remoteEndpoint.serviceName`` -> ``peer.service`` and ipv4/ipv6/port ->
  ``net.peer.ip``/``net.peer.port`` (ports as ints). ipv4 wins over ipv6; an invalid
  address is dropped, as Zipkin does.
- tags -> string span attributes. ``otel.library.name``/``otel.library.version`` (or
  ``otel.scope.name``/``otel.scope.version``, *meshscope*) -> instrumentation scope;
  ``w3c.tracestate`` -> trace_state; ``otlp.link.N`` -> links.
- status: ``otel.status_code`` (``OK``/``ERROR``/``UNSET`` or ``STATUS_CODE_*``) with
  ``otel.status_description``; tag ``error`` = ``true`` -> ERROR and the tag is dropped.
  *meshscope*: any other ``error`` value except ``false`` also means ERROR with that
  value as the status message (Brave and the OpenTelemetry Zipkin exporters put the
  error message there), and the tag is kept as an attribute, as in the translator.
- ``annotations`` -> events (name = value; ``name|{json attrs}|dropped`` as written by
  the collector's Zipkin exporter is decoded into name + attributes).
- ``shared: true`` -> bool attribute ``zipkin.shared`` and ``debug: true`` -> bool
  attribute ``zipkin.debug`` (*meshscope*: the translator drops both, but a shared
  server span has the client's span id, which the service graph needs to know).

Errors are plain text: 400 (not JSON, not a list of span objects, wrong field types,
bad ids), 413 (body over ``max_request_bytes``, also after gzip), 415 (content types
other than ``application/json`` or none; ``application/x-protobuf`` gets a "JSON only"
message), 429 with Retry-After under backpressure, 503 while shutting down.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import re
import time

import orjson
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from meshscope.collector import validate
from meshscope.collector.batcher import Batcher, BufferFull
from meshscope.collector.otlp_http import RequestError, read_body, tenant_of
from meshscope.collector.otlp_wire import envelope
from meshscope.selfmetrics import SelfMetrics

log = logging.getLogger("meshscope.zipkin")

PATH = "/api/v2/spans"
JSON = "application/json"
PROTOBUF = "application/x-protobuf"
PROTOCOL = "zipkin"

KINDS = {
    "CLIENT": Span.SPAN_KIND_CLIENT,
    "SERVER": Span.SPAN_KIND_SERVER,
    "PRODUCER": Span.SPAN_KIND_PRODUCER,
    "CONSUMER": Span.SPAN_KIND_CONSUMER,
}

STATUS_CODES = {
    "STATUS_CODE_UNSET": Status.STATUS_CODE_UNSET, "UNSET": Status.STATUS_CODE_UNSET,
    "STATUS_CODE_OK": Status.STATUS_CODE_OK, "OK": Status.STATUS_CODE_OK,
    "STATUS_CODE_ERROR": Status.STATUS_CODE_ERROR, "ERROR": Status.STATUS_CODE_ERROR,
}

# Tag keys the translator moves to the resource: the resource semantic conventions of semconv v1.6.1
# (go.opentelemetry.io/collector/semconv/v1.6.1 GetResourceSemanticConventionAttributeNames) plus the
# OpenCensus leftovers it lists in nonSpanAttributes.
RESOURCE_TAGS = frozenset("""
cloud.provider cloud.account.id cloud.region cloud.availability_zone cloud.platform
aws.ecs.container.arn aws.ecs.cluster.arn aws.ecs.launchtype aws.ecs.task.arn aws.ecs.task.family
aws.ecs.task.revision aws.eks.cluster.arn aws.log.group.names aws.log.group.arns aws.log.stream.names
aws.log.stream.arns container.name container.id container.runtime container.image.name container.image.tag
deployment.environment device.id device.model.identifier device.model.name device.manufacturer
faas.name faas.id faas.version faas.instance faas.max_memory
host.id host.name host.type host.arch host.image.name host.image.id host.image.version
k8s.cluster.name k8s.node.name k8s.node.uid k8s.namespace.name k8s.pod.uid k8s.pod.name k8s.container.name
k8s.container.restart_count k8s.replicaset.uid k8s.replicaset.name k8s.deployment.uid k8s.deployment.name
k8s.statefulset.uid k8s.statefulset.name k8s.daemonset.uid k8s.daemonset.name k8s.job.uid k8s.job.name
k8s.cronjob.uid k8s.cronjob.name os.type os.description os.name os.version
process.pid process.executable.name process.executable.path process.command process.command_line
process.command_args process.owner process.runtime.name process.runtime.version process.runtime.description
service.name service.namespace service.instance.id service.version
telemetry.sdk.name telemetry.sdk.language telemetry.sdk.version telemetry.auto.version
webengine.name webengine.version webengine.description
opencensus.starttime opencensus.exporterversion opencensus.resourcetype
""".split())

TAG_SERVICE_NAME_SOURCE = "otlp.service.name.source"
TAG_ERROR = "error"
TAG_SPAN_KIND = "span.kind"
TAG_TRACE_STATE = "w3c.tracestate"
TAG_STATUS_CODE = "otel.status_code"
TAG_STATUS_DESCRIPTION = "otel.status_description"
SCOPE_TAGS = (("otel.library.name", "otel.library.version"), ("otel.scope.name", "otel.scope.version"))
ATTR_START_TIME_ABSENT = "otel.zipkin.absentField.startTime"
ATTR_SHARED = "zipkin.shared"
ATTR_DEBUG = "zipkin.debug"

_HEX_RE = re.compile(r"[0-9a-fA-F]+")
_MAX_NS = (1 << 63) - 1  # DateTime64(9) and toInt64 in the insert: nothing past 2262
_MAX_LINKS = 128
_INLINE_DECODE_BYTES = 256 * 1024


class ZipkinError(ValueError):
    """The body is not a valid Zipkin v2 JSON list of spans."""


# -- decoding ----------------------------------------------------------------------------------


def decode(body: bytes, now_ns: int | None = None) -> tuple[ExportTraceServiceRequest, int]:
    """Zipkin v2 JSON -> (ExportTraceServiceRequest, number of spans). Raises ZipkinError.

    ``now_ns`` (default: the current time) starts spans that have neither timestamp nor annotations."""
    if now_ns is None:
        now_ns = time.time_ns()
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise ZipkinError(f"body is not valid JSON: {e}") from e
    if not isinstance(doc, list):
        raise ZipkinError(f"expected a JSON list of Zipkin v2 spans, got {_type_name(doc)}")
    req = ExportTraceServiceRequest()
    resources: dict[tuple, tuple[ResourceSpans, dict[tuple, ScopeSpans]]] = {}
    for i, zspan in enumerate(doc):
        where = f"spans[{i}]"
        if not isinstance(zspan, dict):
            raise ZipkinError(f"{where}: expected a span object, got {_type_name(zspan)}")
        try:
            _add_span(req, resources, zspan, where, now_ns)
        except ZipkinError:
            raise
        except ValueError as e:  # protobuf refusing a value (should not happen after orjson's UTF-8 checks)
            raise ZipkinError(f"{where}: {e}") from e
    return req, len(doc)


def _add_span(req: ExportTraceServiceRequest, resources: dict, z: dict, where: str, now_ns: int) -> None:
    trace_id = _id(z, "traceId", 32, where)
    span_id = _id(z, "id", 16, where)
    parent = z.get("parentId")
    parent_id = b""
    if parent is not None and parent != "":
        parent_id = _hex_id(parent, 16, f"{where}.parentId")
        if parent_id == bytes(8) or parent_id == span_id:
            parent_id = b""
    name = _str(z, "name", where) or ""
    kind_text = _str(z, "kind", where)
    timestamp = _uint(z, "timestamp", where)
    duration = _uint(z, "duration", where)
    debug = _bool(z, "debug", where)
    shared = _bool(z, "shared", where)
    local = _endpoint(z, "localEndpoint", where)
    remote = _endpoint(z, "remoteEndpoint", where)
    tags = _tags(z, where)
    annotations = _annotations(z, where)

    # resource: local service name + resource-convention tags
    service = local.get("serviceName") if local else None
    res_attrs: dict[str, str] = {}
    source = tags.pop(TAG_SERVICE_NAME_SOURCE, "")
    if service:
        res_attrs[source or "service.name"] = service
    for key in [k for k in tags if k in RESOURCE_TAGS]:
        res_attrs[key] = tags.pop(key)
    scope_name = scope_version = ""
    for name_key, version_key in SCOPE_TAGS:
        n, v = tags.pop(name_key, ""), tags.pop(version_key, "")
        if not scope_name and n:
            scope_name, scope_version = n, v
    res_key = tuple(sorted(res_attrs.items()))
    entry = resources.get(res_key)
    if entry is None:
        rs = req.resource_spans.add()
        for k, v in res_attrs.items():
            rs.resource.attributes.append(_kv_str(k, v))
        entry = resources[res_key] = (rs, {})
    rs, scopes = entry
    ss = scopes.get((scope_name, scope_version))
    if ss is None:
        ss = rs.scope_spans.add()
        ss.scope.name = scope_name
        ss.scope.version = scope_version
        scopes[(scope_name, scope_version)] = ss

    sp = ss.spans.add()
    sp.trace_id = trace_id
    sp.span_id = span_id
    if parent_id:
        sp.parent_span_id = parent_id
    if TAG_TRACE_STATE in tags:
        sp.trace_state = tags.pop(TAG_TRACE_STATE)
    sp.name = name
    sp.kind = _kind(kind_text, tags)
    _status(tags, sp.status)
    _links(tags, sp)

    attrs = sp.attributes
    for k, v in tags.items():
        attrs.append(_kv_str(k, v))
    endpoint_attrs: list[KeyValue] = []
    if local:
        if "ip" in local:
            endpoint_attrs.append(_kv_str("net.host.ip", local["ip"]))
        if local.get("port"):
            endpoint_attrs.append(KeyValue(key="net.host.port", value=AnyValue(int_value=local["port"])))
    if remote:
        if remote.get("serviceName"):
            endpoint_attrs.append(_kv_str("peer.service", remote["serviceName"]))
        if "ip" in remote:
            endpoint_attrs.append(_kv_str("net.peer.ip", remote["ip"]))
        if remote.get("port"):
            endpoint_attrs.append(KeyValue(key="net.peer.port", value=AnyValue(int_value=remote["port"])))
    if endpoint_attrs:  # the endpoint wins over a tag of the same name (translator: Put after the tags)
        names = {kv.key for kv in endpoint_attrs}
        kept = [kv for kv in attrs if kv.key not in names]
        del attrs[:]
        attrs.extend(kept)
        attrs.extend(endpoint_attrs)
    if shared:
        attrs.append(KeyValue(key=ATTR_SHARED, value=AnyValue(bool_value=True)))
    if debug:
        attrs.append(KeyValue(key=ATTR_DEBUG, value=AnyValue(bool_value=True)))

    dur_ns = (duration or 0) * 1000
    if timestamp:
        start = timestamp * 1000
    else:
        # The translator starts such a span at the epoch; here the store's TTL would drop it at once, so
        # (as Zipkin's own storage does for indexing) take the first annotation, else the time of receipt.
        start = min(ts for ts, _ in annotations) * 1000 if annotations else now_ns
        attrs.append(KeyValue(key=ATTR_START_TIME_ABSENT, value=AnyValue(bool_value=True)))
    if start + dur_ns > _MAX_NS:
        raise ZipkinError(f"{where}: timestamp + duration is past the year 2262 (microseconds expected)")
    sp.start_time_unix_nano = start
    sp.end_time_unix_nano = start + dur_ns

    for ts, value in annotations:
        ev = sp.events.add()
        ev.time_unix_nano = ts * 1000
        _event_from_annotation(value, ev)


def _type_name(v) -> str:
    if v is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
            dict: "an object"}.get(type(v), type(v).__name__)


def _str(obj: dict, key: str, where: str) -> str | None:
    v = obj.get(key)
    if v is None or isinstance(v, str):
        return v
    raise ZipkinError(f"{where}.{key}: expected a string, got {_type_name(v)}")


def _bool(obj: dict, key: str, where: str) -> bool:
    v = obj.get(key)
    if v is None:
        return False
    if isinstance(v, bool):
        return v
    raise ZipkinError(f"{where}.{key}: expected true or false, got {_type_name(v)}")


def _uint(obj: dict, key: str, where: str) -> int | None:
    """A non-negative integer (integral floats such as 1.5e15 accepted); None if absent."""
    v = obj.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ZipkinError(f"{where}.{key}: expected an integer, got {_type_name(v)}")
    if isinstance(v, float):
        if not math.isfinite(v) or v != int(v):
            raise ZipkinError(f"{where}.{key}: expected an integer, got {v!r}")
        v = int(v)
    if v < 0:
        raise ZipkinError(f"{where}.{key}: must not be negative, got {v}")
    if v * 1000 > _MAX_NS:
        raise ZipkinError(f"{where}.{key}: {v} is out of range (epoch microseconds expected)")
    return v


def _hex_id(v, digits: int, where: str) -> bytes:
    if not isinstance(v, str):
        raise ZipkinError(f"{where}: expected a hex string, got {_type_name(v)}")
    if not v or len(v) > digits or not _HEX_RE.fullmatch(v):
        raise ZipkinError(f"{where}: expected 1 to {digits} hex digits, got {v[:40]!r}")
    return bytes.fromhex(v.rjust(digits, "0"))


def _id(obj: dict, key: str, digits: int, where: str) -> bytes:
    v = obj.get(key)
    if v is None or v == "":
        raise ZipkinError(f"{where}.{key} is required")
    raw = _hex_id(v, digits, f"{where}.{key}")
    if raw == bytes(len(raw)):
        raise ZipkinError(f"{where}.{key}: must not be all zeros")
    return raw


def _ip(v, version: int, where: str) -> str | None:
    if v is None or v == "":
        return None
    if not isinstance(v, str):
        raise ZipkinError(f"{where}: expected a string, got {_type_name(v)}")
    try:
        addr = ipaddress.IPv4Address(v) if version == 4 else ipaddress.IPv6Address(v)
    except ValueError:
        return None  # Zipkin drops an address it cannot parse
    if version == 6 and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def _endpoint(obj: dict, key: str, where: str) -> dict | None:
    """{'serviceName', 'ip', 'port'} with only the known keys, or None when absent or empty."""
    v = obj.get(key)
    if v is None:
        return None
    where = f"{where}.{key}"
    if not isinstance(v, dict):
        raise ZipkinError(f"{where}: expected an object, got {_type_name(v)}")
    out: dict = {}
    service = _str(v, "serviceName", where)
    if service:
        out["serviceName"] = service
    ip = _ip(v.get("ipv4"), 4, f"{where}.ipv4") or _ip(v.get("ipv6"), 6, f"{where}.ipv6")
    if ip:
        out["ip"] = ip
    port = v.get("port")
    if port is not None:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ZipkinError(f"{where}.port: expected an integer from 0 to 65535, got {port!r}"[:200])
        if port:
            out["port"] = port
    return out or None


def _tag_value(v, where: str) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):  # lenient: some clients send numbers
        return orjson.dumps(v).decode()
    raise ZipkinError(f"{where}: expected a string, got {_type_name(v)}")


def _tags(obj: dict, where: str) -> dict[str, str]:
    v = obj.get("tags")
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise ZipkinError(f"{where}.tags: expected an object of strings, got {_type_name(v)}")
    return {k: _tag_value(val, f"{where}.tags[{k[:60]!r}]") for k, val in v.items()}


def _annotations(obj: dict, where: str) -> list[tuple[int, str]]:
    v = obj.get("annotations")
    if v is None:
        return []
    if not isinstance(v, list):
        raise ZipkinError(f"{where}.annotations: expected a list, got {_type_name(v)}")
    out = []
    for j, a in enumerate(v):
        w = f"{where}.annotations[{j}]"
        if not isinstance(a, dict):
            raise ZipkinError(f"{w}: expected an object, got {_type_name(a)}")
        ts = _uint(a, "timestamp", w)
        value = _str(a, "value", w)
        if not ts or value is None:
            raise ZipkinError(f"{w}: an annotation needs a timestamp and a value")
        out.append((ts, value))
    return out


def _kind(text: str | None, tags: dict[str, str]) -> int:
    kind = KINDS.get(text.upper()) if text else None
    if kind is not None:
        return kind
    tag = tags.pop(TAG_SPAN_KIND, None)
    return Span.SPAN_KIND_INTERNAL if tag == "internal" else Span.SPAN_KIND_UNSPECIFIED


def _status(tags: dict[str, str], status: Status) -> None:
    if TAG_STATUS_CODE in tags:
        code = tags.pop(TAG_STATUS_CODE)
        status.code = STATUS_CODES.get(code.strip().upper(), Status.STATUS_CODE_UNSET)
        if TAG_STATUS_DESCRIPTION in tags:
            status.message = tags.pop(TAG_STATUS_DESCRIPTION)
    if TAG_ERROR in tags:
        value = tags[TAG_ERROR]
        if value.lower() == "true":
            status.code = Status.STATUS_CODE_ERROR
            del tags[TAG_ERROR]
        elif value.lower() != "false":
            status.code = Status.STATUS_CODE_ERROR
            if value and not status.message:
                status.message = value


def _json_attrs(text: str) -> list[KeyValue] | None:
    """The translator's attribute JSON object: strings, integral numbers as ints, doubles, bools."""
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    out = []
    for k, v in obj.items():
        if isinstance(v, str):
            out.append(_kv_str(k, v))
        elif isinstance(v, bool):
            out.append(KeyValue(key=k, value=AnyValue(bool_value=v)))
        elif isinstance(v, int) and -(2**63) <= v < 2**63:
            out.append(KeyValue(key=k, value=AnyValue(int_value=v)))
        elif isinstance(v, int):
            out.append(KeyValue(key=k, value=AnyValue(double_value=float(v))))
        elif isinstance(v, float) and math.isfinite(v) and v == int(v) and abs(v) < 2**63:
            out.append(KeyValue(key=k, value=AnyValue(int_value=int(v))))
        elif isinstance(v, float):
            out.append(KeyValue(key=k, value=AnyValue(double_value=v)))
    return out


def _split_encoded(value: str, head: int) -> tuple[list[str], list[KeyValue], int] | None:
    """``p0|...|p{head-1}|{json}|dropped`` (the JSON may contain '|'), or None if it is not that."""
    parts = value.split("|")
    if len(parts) < head + 2:
        return None
    dropped = parts[-1]
    if not dropped.isdigit() or not dropped.isascii() or int(dropped) >= 2**32:
        return None
    attrs = _json_attrs("|".join(parts[head:-1]))
    if attrs is None:
        return None
    return parts[:head], attrs, int(dropped)


def _event_from_annotation(value: str, ev) -> None:
    decoded = _split_encoded(value, 1)
    if decoded is None:
        ev.name = value
        return
    (name,), attrs, dropped = decoded
    ev.name = name
    ev.attributes.extend(attrs)
    ev.dropped_attributes_count = dropped


def _links(tags: dict[str, str], sp: Span) -> None:
    """Tags ``otlp.link.0``, ``otlp.link.1``, ...: ``traceid|spanid|tracestate|{json attrs}|dropped``.

    The translator fails the whole request on a malformed one; here it stays a plain attribute."""
    for i in range(_MAX_LINKS):
        key = f"otlp.link.{i}"
        value = tags.get(key)
        if value is None:
            return
        decoded = _split_encoded(value, 3)
        if decoded is None:
            continue
        (tid, sid, state), attrs, dropped = decoded
        try:
            trace_id = bytes.fromhex(tid) if tid else bytes(16)
            span_id = bytes.fromhex(sid) if sid else bytes(8)
        except ValueError:
            continue
        if len(trace_id) != 16 or len(span_id) != 8:
            continue
        del tags[key]
        link = sp.links.add()
        link.trace_id = trace_id
        link.span_id = span_id
        link.trace_state = state
        link.attributes.extend(attrs)
        link.dropped_attributes_count = dropped


def _kv_str(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


# -- HTTP ------------------------------------------------------------------------------------


class ZipkinReceiver:
    def __init__(self, batcher: Batcher, metrics: SelfMetrics, max_request_bytes: int) -> None:
        self.batcher = batcher
        self.metrics = metrics
        self.max_request_bytes = max_request_bytes
        self.accepting = True

    def routes(self) -> list[web.RouteDef]:
        return [web.post(PATH, self.handle)]

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_request_bytes)
        app.add_routes(self.routes())
        return app

    async def handle(self, request: web.Request) -> web.Response:
        try:
            return await self._export(request)
        except RequestError as e:
            self.metrics.requests.labels("traces", PROTOCOL, str(e.status)).inc()
            self.metrics.rejected.labels("traces", _reason(e.status)).inc()
            return web.Response(status=e.status, text=e.message + "\n", headers=e.headers)

    async def _export(self, request: web.Request) -> web.Response:
        _check_content_type(request)
        if not self.accepting:
            raise RequestError(503, "meshscope is shutting down", headers={"Retry-After": "5"})
        tenant = tenant_of(request)
        try:
            self.batcher.check_capacity("traces")
        except BufferFull as e:
            raise RequestError(429, str(e), headers={"Retry-After": str(e.retry_after)}) from e
        body = await read_body(request, self.max_request_bytes)
        try:
            if len(body) > _INLINE_DECODE_BYTES:  # ~25k spans/s: let the loop breathe during big bodies
                msg, n = await asyncio.to_thread(decode, body)
            else:
                msg, n = decode(body)
        except ZipkinError as e:
            raise RequestError(400, str(e)) from e
        except RecursionError as e:  # protobuf or Python recursion on absurd input
            raise RequestError(400, "body is nested too deeply") from e
        self.metrics.received.labels("traces", PROTOCOL).inc(n)
        counted = validate.count("traces", msg)
        if counted.accepted > 0:
            await self.batcher.submit("traces", envelope(msg.SerializeToString(), tenant), counted.accepted)
        if counted.rejected:  # not expected: decode only builds valid ids
            self.metrics.rejected.labels("traces", "invalid").inc(counted.rejected)
        self.metrics.requests.labels("traces", PROTOCOL, "202").inc()
        return web.Response(status=202)


def _check_content_type(request: web.Request) -> None:
    if "Content-Type" not in request.headers:
        return  # Zipkin clients vary; a missing type is taken as JSON
    ctype = request.content_type.lower()
    if ctype == JSON:
        return
    if ctype == PROTOBUF:
        raise RequestError(415, "Zipkin protobuf (application/x-protobuf) is not supported; "
                                "send Zipkin v2 JSON (application/json)")
    raise RequestError(415, f"unsupported Content-Type {ctype or '(empty)'!r}; send Zipkin v2 JSON ({JSON})")


def _reason(status: int) -> str:
    return {400: "malformed", 413: "too_large", 415: "unsupported", 429: "backpressure", 503: "shutting_down"}.get(
        status, "error")
