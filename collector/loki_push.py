"""Loki push receiver: ``POST /loki/api/v1/push``, so Promtail/Alloy-style agents can send logs.

Two bodies, as Loki takes them:

* ``Content-Type: application/json`` (optionally ``Content-Encoding: gzip``)::

    {"streams":[{"stream":{"job":"x"},"values":[["<unix ns>","<line>"],["<ns>","<line>",{"k":"v"}]]}]}

* anything else (Loki's default, what Promtail and Alloy send): a snappy-compressed (raw block format)
  protobuf ``logproto.PushRequest``. The few messages are defined at run time below (field numbers from
  grafana/loki ``pkg/push/push.proto``); snappy comes from ``cramjam``, imported lazily so that the JSON
  path works without it (a protobuf push then answers 415).

Every stream becomes one ``ResourceLogs`` of an OTLP ``ExportLogsServiceRequest``, which then takes the
normal OTLP write path (envelope with the tenant -> WAL -> one insert per flush):

* resource attributes: the stream labels verbatim (empty values dropped, as Loki does) plus
  ``service.name`` = the ``service_name`` label, else the first of Loki 3's default
  ``discover_service_name`` labels that is present (service, app, application, app_name, name,
  app_kubernetes_io_name, container, container_name, k8s_container_name, component, workload, job,
  k8s_job_name), else ``unknown_service``;
* scope name ``loki-push``;
* each entry a LogRecord: ``time_unix_nano`` = the entry's timestamp, ``observed_time_unix_nano`` = now,
  body = the line (string), structured metadata -> log record attributes;
* severity: the first of metadata ``level``, metadata ``detected_level``, label ``level``, label
  ``detected_level``; ``severity_text`` keeps that value as sent (OTel: "as known at the source"),
  ``severity_number`` maps Loki's level names case-insensitively (trace 1, debug 5, info 9, warn 13,
  error 17, fatal/critical 21, plus common aliases); an unknown value gives number 0.

Answers as Loki does: 204 on success, 400 with a one-line plain-text message for anything malformed,
413 past ``max_request_bytes`` (also after gzip or snappy inflation), 415 for an unsupported
Content-Encoding, 429 with ``Retry-After`` when the ingest buffer is full, 503 while shutting down.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time

import orjson
from aiohttp import web
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from meshscope.collector.batcher import Batcher, BufferFull
from meshscope.collector.otlp_http import RequestError, read_body, tenant_of
from meshscope.collector.otlp_wire import envelope
from meshscope.selfmetrics import SelfMetrics

log = logging.getLogger("meshscope.loki_push")

PATH = "/loki/api/v1/push"
SCOPE_NAME = "loki-push"
PROTOCOL = "loki"
SIGNAL = "logs"

MAX_STREAMS = 10_000
MAX_ENTRIES = 1_000_000
MAX_TIMESTAMP = (1 << 63) - 1  # Loki's timestamps are int64 nanoseconds
# Convert in a worker thread above this body size, so a big push does not stall the event loop.
THREAD_THRESHOLD = 256 * 1024

SERVICE_NAME_LABELS = (
    "service_name", "service", "app", "application", "app_name", "name", "app_kubernetes_io_name", "container",
    "container_name", "k8s_container_name", "component", "workload", "job", "k8s_job_name",
)
UNKNOWN_SERVICE = "unknown_service"
LEVEL_KEYS = ("level", "detected_level")

SEVERITY = {}
for _number, _names in (
    (1, ("trace", "trc")),
    (5, ("debug", "dbg")),
    (9, ("info", "inf", "information", "informational", "notice")),
    (13, ("warn", "warning", "wrn")),
    (17, ("error", "err", "eror")),
    (21, ("fatal", "critical", "crit", "panic", "emerg", "emergency", "alert")),
):
    for _n in _names:
        SEVERITY[_n] = _number

LABEL_NAME_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_DIGITS_RE = re.compile(r"[0-9]{1,20}")


# -- logproto.PushRequest, defined at run time ------------------------------------------------------------

def _build_logproto():
    T = descriptor_pb2.FieldDescriptorProto
    f = descriptor_pb2.FileDescriptorProto(name="meshscope/logproto_push.proto", package="meshscope.logproto",
                                           syntax="proto3")

    def message(name, *fields):
        m = f.message_type.add(name=name)
        for fname, number, ftype, repeated, type_name in fields:
            fd = m.field.add(name=fname, number=number, type=ftype,
                             label=T.LABEL_REPEATED if repeated else T.LABEL_OPTIONAL)
            if type_name:
                fd.type_name = f".meshscope.logproto.{type_name}"

    # Strings are declared as bytes (same wire type): Go producers can send any bytes, and a proto3 string
    # with invalid UTF-8 would fail the whole request in upb. We decode them ourselves.
    message("Timestamp", ("seconds", 1, T.TYPE_INT64, False, None), ("nanos", 2, T.TYPE_INT32, False, None))
    message("LabelPairAdapter", ("name", 1, T.TYPE_BYTES, False, None), ("value", 2, T.TYPE_BYTES, False, None))
    message("EntryAdapter",
            ("timestamp", 1, T.TYPE_MESSAGE, False, "Timestamp"),
            ("line", 2, T.TYPE_BYTES, False, None),
            ("structuredMetadata", 3, T.TYPE_MESSAGE, True, "LabelPairAdapter"),
            ("parsed", 4, T.TYPE_MESSAGE, True, "LabelPairAdapter"))
    message("StreamAdapter",
            ("labels", 1, T.TYPE_BYTES, False, None),
            ("entries", 2, T.TYPE_MESSAGE, True, "EntryAdapter"),
            ("hash", 3, T.TYPE_UINT64, False, None))
    message("PushRequest",
            ("streams", 1, T.TYPE_MESSAGE, True, "StreamAdapter"),
            ("format", 2, T.TYPE_STRING, False, None))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"meshscope.logproto.{name}"))
            for name in ("Timestamp", "LabelPairAdapter", "EntryAdapter", "StreamAdapter", "PushRequest")}


_LOGPROTO = _build_logproto()
PushRequest = _LOGPROTO["PushRequest"]
StreamAdapter = _LOGPROTO["StreamAdapter"]
EntryAdapter = _LOGPROTO["EntryAdapter"]
LabelPairAdapter = _LOGPROTO["LabelPairAdapter"]
Timestamp = _LOGPROTO["Timestamp"]


# -- snappy (raw block format) --------------------------------------------------------------------------

def _snappy_length(data: bytes) -> int:
    """The uncompressed length a snappy block announces in its varint preamble."""
    n = shift = 0
    for b in data[:10]:
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n
        shift += 7
    raise RequestError(400, "body is not snappy-compressed: bad length preamble")


def snappy_decompress(data: bytes, limit: int) -> bytes:
    try:
        import cramjam
    except ImportError as e:  # pragma: no cover - cramjam is a dependency; this keeps the JSON path alive
        raise RequestError(415, "snappy-compressed protobuf pushes need the 'cramjam' package; "
                                "send Content-Type: application/json instead") from e
    size = _snappy_length(data)
    if size > limit:
        raise RequestError(413, f"snappy body inflates to {size} bytes, past the {limit}-byte limit")
    try:
        return bytes(cramjam.snappy.decompress_raw(data))
    except Exception as e:  # cramjam.DecompressionError and friends
        raise RequestError(400, f"body is not valid snappy: {e}") from e


# -- Prometheus label-set text: {job="x", ns="y"} --------------------------------------------------------

_WS = " \t\r\n"
_SIMPLE_ESCAPES = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11, "\\": 92, '"': 34}


class LabelsError(ValueError):
    pass


def _skip_ws(s: str, i: int) -> int:
    while i < len(s) and s[i] in _WS:
        i += 1
    return i


def _go_string(s: str, i: int) -> tuple[str, int]:
    """A Go string literal at s[i] ("..." with escapes, or `raw`): its value and the index after it."""
    if i >= len(s) or s[i] not in '"`':
        raise LabelsError(f"expected a quoted label value at offset {i}")
    if s[i] == "`":
        end = s.find("`", i + 1)
        if end < 0:
            raise LabelsError(f"unterminated raw string at offset {i}")
        return s[i + 1:end].replace("\r", ""), end + 1
    out = bytearray()
    j = i + 1
    n = len(s)
    while True:
        if j >= n:
            raise LabelsError(f"unterminated string at offset {i}")
        c = s[j]
        if c == '"':
            j += 1
            break
        if c == "\n":
            raise LabelsError(f"newline in string at offset {j}")
        if c != "\\":
            k = j
            while k < n and s[k] not in '"\\\n':
                k += 1
            out += s[j:k].encode("utf-8", "surrogatepass")
            j = k
            continue
        if j + 1 >= n:
            raise LabelsError(f"unterminated string at offset {i}")
        e = s[j + 1]
        if e in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[e])
            j += 2
        elif e == "x":
            h = s[j + 2:j + 4]
            if len(h) != 2 or not all(ch in "0123456789abcdefABCDEF" for ch in h):
                raise LabelsError(f"invalid \\x escape at offset {j}")
            out.append(int(h, 16))
            j += 4
        elif e in "01234567":
            o = s[j + 1:j + 4]
            if len(o) != 3 or not all(ch in "01234567" for ch in o) or int(o, 8) > 255:
                raise LabelsError(f"invalid octal escape at offset {j}")
            out.append(int(o, 8))
            j += 4
        elif e in "uU":
            width = 4 if e == "u" else 8
            h = s[j + 2:j + 2 + width]
            if len(h) != width or not all(ch in "0123456789abcdefABCDEF" for ch in h):
                raise LabelsError(f"invalid \\{e} escape at offset {j}")
            cp = int(h, 16)
            if cp > 0x10FFFF or 0xD800 <= cp <= 0xDFFF:
                raise LabelsError(f"escape \\{e}{h} is not a valid code point")
            out += chr(cp).encode()
            j += 2 + width
        else:
            raise LabelsError(f"unknown escape \\{e} at offset {j}")
    try:
        return out.decode("utf-8"), j
    except UnicodeDecodeError as ex:
        raise LabelsError(f"label value at offset {i} is not valid UTF-8") from ex


def parse_labels(text: str) -> list[tuple[str, str]]:
    """Parse ``{name="value", ...}`` strictly (LogQL/Go string rules, only ``=``, no trailing comma)."""
    i = _skip_ws(text, 0)
    if i >= len(text) or text[i] != "{":
        raise LabelsError("a label set starts with '{'")
    i = _skip_ws(text, i + 1)
    pairs: list[tuple[str, str]] = []
    if i < len(text) and text[i] == "}":
        i += 1
    else:
        while True:
            m = LABEL_NAME_RE.match(text, i)
            if not m:
                raise LabelsError(f"expected a label name at offset {i}")
            name = m.group()
            i = _skip_ws(text, m.end())
            if i >= len(text) or text[i] != "=":
                raise LabelsError(f"expected '=' after label {name!r}")
            if text.startswith("=~", i):
                raise LabelsError(f"only '=' is allowed in a stream's labels, not '=~' (label {name!r})")
            i = _skip_ws(text, i + 1)
            value, i = _go_string(text, i)
            pairs.append((name, value))
            i = _skip_ws(text, i)
            if i < len(text) and text[i] == ",":
                i = _skip_ws(text, i + 1)
                continue
            if i < len(text) and text[i] == "}":
                i += 1
                break
            raise LabelsError(f"expected ',' or '}}' at offset {i}")
    if _skip_ws(text, i) != len(text):
        raise LabelsError(f"unexpected text after '}}' at offset {i}")
    return pairs


# -- mapping into OTLP ----------------------------------------------------------------------------------

def _short(v, n: int = 60) -> str:
    r = repr(v)
    return r if len(r) <= n else r[: n - 3] + "..."


def _clip(s: str, n: int = 120) -> str:
    return s if len(s) <= n else s[: n - 3] + "..."


def _one_line(msg: str) -> str:
    return msg.replace("\r", "\\r").replace("\n", "\\n")


def _clean_labels(pairs, where: str) -> dict[str, str]:
    """Check names, refuse duplicates, drop empty values (as Loki does); at least one label must remain."""
    out: dict[str, str] = {}
    for name, value in pairs:
        if not LABEL_NAME_RE.fullmatch(name):
            raise RequestError(400, f"{where}: invalid label name {_short(name)}: use [a-zA-Z_][a-zA-Z0-9_]*")
        if name in out:
            raise RequestError(400, f"{where}: duplicate label name {name!r}")
        out[name] = value
    labels = {k: v for k, v in sorted(out.items()) if v != ""}
    if not labels:
        raise RequestError(400, f"{where}: at least one label pair with a non-empty value is required per stream")
    return labels


def _service_name(labels: dict[str, str]) -> str:
    for key in SERVICE_NAME_LABELS:
        v = labels.get(key)
        if v:
            return v
    return UNKNOWN_SERVICE


def _label_level(labels: dict[str, str]) -> str | None:
    for key in LEVEL_KEYS:
        v = labels.get(key)
        if v:
            return v
    return None


def _metadata_level(metadata: list[tuple[str, str]]) -> str | None:
    found = {k: v for k, v in metadata if k in LEVEL_KEYS and v}
    for key in LEVEL_KEYS:
        if key in found:
            return found[key]
    return None


class _Builder:
    def __init__(self, observed: int) -> None:
        self.req = ExportLogsServiceRequest()
        self.observed = observed
        self.count = 0

    def stream(self, labels: dict[str, str]):
        """The new stream's record list and the level its labels give."""
        rl = self.req.resource_logs.add()
        attrs = rl.resource.attributes
        for k, v in labels.items():
            attrs.add(key=k).value.string_value = v
        attrs.add(key="service.name").value.string_value = _service_name(labels)
        sl = rl.scope_logs.add()
        sl.scope.name = SCOPE_NAME
        return sl.log_records, _label_level(labels)

    def entry(self, stream, ts: int, line: str, metadata: list[tuple[str, str]]) -> None:
        records, level = stream
        lr = records.add()
        lr.time_unix_nano = ts
        lr.observed_time_unix_nano = self.observed
        lr.body.string_value = line
        for k, v in metadata:
            lr.attributes.add(key=k).value.string_value = v
        if metadata:
            level = _metadata_level(metadata) or level
        if level is not None:
            lr.severity_text = level
            lr.severity_number = SEVERITY.get(level.lower(), 0)
        self.count += 1


def _check_counts(streams: int, entries: int, max_streams: int, max_entries: int) -> None:
    if streams > max_streams:
        raise RequestError(400, f"too many streams in one push: {streams} > {max_streams}")
    if entries > max_entries:
        raise RequestError(400, f"too many entries in one push: {entries} > {max_entries}")


def json_to_otlp(body: bytes, observed: int, max_streams: int = MAX_STREAMS,
                 max_entries: int = MAX_ENTRIES) -> tuple[ExportLogsServiceRequest, int]:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise RequestError(400, f"body is not valid JSON: {e}") from e
    if not isinstance(doc, dict):
        raise RequestError(400, 'body must be a JSON object {"streams": [...]}')
    streams = doc.get("streams")
    if not isinstance(streams, list):
        raise RequestError(400, 'body must have a "streams" array')
    total = 0
    for si, st in enumerate(streams):
        if not isinstance(st, dict):
            raise RequestError(400, f"stream {si}: must be an object with \"stream\" and \"values\"")
        values = st.get("values", [])
        if not isinstance(values, list):
            raise RequestError(400, f"stream {si}: \"values\" must be an array")
        total += len(values)
    _check_counts(len(streams), total, max_streams, max_entries)
    b = _Builder(observed)
    for si, st in enumerate(streams):
        raw = st.get("stream")
        if not isinstance(raw, dict):
            raise RequestError(400, f"stream {si}: \"stream\" must be an object of label names to string values")
        for k, v in raw.items():
            if not isinstance(v, str):
                raise RequestError(400, f"stream {si}: label {_short(k)} must have a string value")
        labels = _clean_labels(raw.items(), f"stream {si}")
        where = f"stream {si} {_clip(_render(labels))}"
        stream = b.stream(labels)
        for ei, entry in enumerate(st.get("values", [])):
            if not isinstance(entry, list) or len(entry) not in (2, 3):
                raise RequestError(400, f"{where}, entry {ei}: must be [\"<unix ns>\", \"<line>\"] with optional "
                                        f"structured metadata object")
            ts = _json_timestamp(entry[0], where, ei)
            line = entry[1]
            if not isinstance(line, str):
                raise RequestError(400, f"{where}, entry {ei}: the line must be a string")
            metadata: list[tuple[str, str]] = []
            if len(entry) == 3:
                md = entry[2]
                if not isinstance(md, dict):
                    raise RequestError(400, f"{where}, entry {ei}: structured metadata must be an object")
                for k, v in md.items():
                    if not isinstance(v, str):
                        raise RequestError(400, f"{where}, entry {ei}: structured metadata {_short(k)} must be "
                                                f"a string")
                    if k == "":
                        raise RequestError(400, f"{where}, entry {ei}: structured metadata name is empty")
                    metadata.append((k, v))
            b.entry(stream, ts, line, metadata)
    return b.req, b.count


def _json_timestamp(v, where: str, ei: int) -> int:
    if isinstance(v, str) and _DIGITS_RE.fullmatch(v):
        ts = int(v)
    elif isinstance(v, int) and not isinstance(v, bool) and v >= 0:
        ts = v
    else:
        raise RequestError(400, f"{where}, entry {ei}: timestamp {_short(v)} is not an integer number of "
                                f"nanoseconds since the epoch")
    if ts > MAX_TIMESTAMP:
        raise RequestError(400, f"{where}, entry {ei}: timestamp {v} is out of range")
    return ts


def _render(labels: dict[str, str]) -> str:
    return "{" + ", ".join(f"{k}={orjson.dumps(v).decode()}" for k, v in labels.items()) + "}"


def protobuf_to_otlp(body: bytes, observed: int, max_streams: int = MAX_STREAMS,
                     max_entries: int = MAX_ENTRIES) -> tuple[ExportLogsServiceRequest, int]:
    try:
        msg = PushRequest.FromString(body)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise RequestError(400, f"cannot decode logproto.PushRequest: {e}") from e
    _check_counts(len(msg.streams), sum(len(s.entries) for s in msg.streams), max_streams, max_entries)
    b = _Builder(observed)
    for si, st in enumerate(msg.streams):
        try:
            text = st.labels.decode("utf-8")
            pairs = parse_labels(text)
        except (UnicodeDecodeError, LabelsError) as e:
            raise RequestError(400, f"stream {si}: invalid labels {_short(st.labels.decode('utf-8', 'replace'), 120)}: "
                                    f"{e}") from e
        labels = _clean_labels(pairs, f"stream {si}")
        where = f"stream {si} {_clip(_render(labels))}"
        stream = b.stream(labels)
        for ei, e in enumerate(st.entries):
            seconds, nanos = e.timestamp.seconds, e.timestamp.nanos
            if seconds < 0 or not 0 <= nanos < 1_000_000_000:
                raise RequestError(400, f"{where}, entry {ei}: timestamp {seconds}s {nanos}ns is not a valid "
                                        f"time after the epoch")
            ts = seconds * 1_000_000_000 + nanos
            if ts > MAX_TIMESTAMP:
                raise RequestError(400, f"{where}, entry {ei}: timestamp {seconds}s {nanos}ns is out of range")
            metadata = [(p.name.decode("utf-8", "replace"), p.value.decode("utf-8", "replace"))
                        for p in e.structuredMetadata]
            if any(k == "" for k, _ in metadata):
                raise RequestError(400, f"{where}, entry {ei}: structured metadata name is empty")
            b.entry(stream, ts, e.line.decode("utf-8", "replace"), metadata)
    return b.req, b.count


# -- the receiver ---------------------------------------------------------------------------------------

async def _read_raw(request: web.Request, limit: int) -> bytes:
    """The body as sent (for Content-Encoding: snappy, which read_body does not know), within the limit."""
    if request.content_length is not None and request.content_length > limit:
        raise RequestError(413, f"body of {request.content_length} bytes exceeds the {limit}-byte limit")
    chunks, size = [], 0
    while chunk := await request.content.read(1 << 20):
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"body exceeds the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def _is_json(request: web.Request) -> bool:
    # Loki: application/json is JSON; anything else (including no Content-Type) is snappy protobuf.
    raw = request.headers.get("Content-Type")
    return raw is not None and request.content_type.lower() == "application/json"


class LokiPushReceiver:
    def __init__(self, batcher: Batcher, metrics: SelfMetrics, max_request_bytes: int, *,
                 max_streams: int = MAX_STREAMS, max_entries: int = MAX_ENTRIES) -> None:
        self.batcher = batcher
        self.metrics = metrics
        self.max_request_bytes = max_request_bytes
        self.max_streams = max_streams
        self.max_entries = max_entries
        self.accepting = True

    def routes(self) -> list[web.RouteDef]:
        return [web.post(PATH, self.handle)]

    async def handle(self, request: web.Request) -> web.Response:
        try:
            n = await self._push(request)
        except RequestError as e:
            self.metrics.requests.labels(SIGNAL, PROTOCOL, str(e.status)).inc()
            self.metrics.rejected.labels(SIGNAL, _reason(e.status)).inc()
            return web.Response(status=e.status, text=_one_line(e.message) + "\n", content_type="text/plain",
                                headers=e.headers)
        self.metrics.requests.labels(SIGNAL, PROTOCOL, "204").inc()
        self.metrics.received.labels(SIGNAL, PROTOCOL).inc(n)
        return web.Response(status=204)

    async def _push(self, request: web.Request) -> int:
        if not self.accepting:
            raise RequestError(503, "meshscope is shutting down", headers={"Retry-After": "5"})
        tenant = tenant_of(request)
        try:
            self.batcher.check_capacity(SIGNAL)
        except BufferFull as e:
            raise RequestError(429, str(e), headers={"Retry-After": str(e.retry_after)}) from e
        is_json = _is_json(request)
        limit = self.max_request_bytes
        encoding = request.headers.get("Content-Encoding", "").strip().lower()
        if encoding == "snappy" and not is_json:
            body = await _read_raw(request, limit)  # the protobuf body is snappy anyway
        else:
            body = await read_body(request, limit)
        observed = time.time_ns()
        if is_json:
            convert = json_to_otlp
        else:
            def convert(data, observed, max_streams, max_entries):
                return protobuf_to_otlp(snappy_decompress(data, limit), observed, max_streams, max_entries)
        args = (body, observed, self.max_streams, self.max_entries)
        if len(body) > THREAD_THRESHOLD:
            req, n = await asyncio.to_thread(convert, *args)
        else:
            req, n = convert(*args)
        if n:
            await self.batcher.submit(SIGNAL, envelope(req.SerializeToString(), tenant), n)
        return n


def _reason(status: int) -> str:
    return {400: "malformed", 413: "too_large", 415: "unsupported", 429: "backpressure", 503: "shutting_down"}.get(
        status, "error")
