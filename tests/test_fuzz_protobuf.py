"""Fuzzing the OTLP/HTTP protobuf path of one running ``meshscope serve``.

Random bytes, truncations and byte flips of valid Export{Trace,Logs,Metrics}ServiceRequest bodies, random
tag/varint/length garbage, AnyValue and unknown groups nested far past upb's recursion limit, huge declared
lengths and gzip'd garbage all go to ONE server. Every answer must be 200 or a 4xx with a ``google.rpc.Status``
body, and exactly the one the reference decoder (upb, the same library the receiver uses; zlib for gzip)
predicts: 200 when the body decodes, 400 when it does not, 413 when gzip inflates past the limit. The server
must stay up and, on SIGTERM, insert everything it acknowledged and exit 0 with nothing quarantined and nothing
left in the WAL: an acknowledged request the store cannot take is acknowledged data that is never stored.

The tests at the end pin down inputs that used to be acknowledged and then mishandled by the store side: a
top-level field 15 (the number of the WAL envelope's tenant field) and timestamps over more than 100 days.
"""

from __future__ import annotations

import gzip
import http.client
import os
import signal
import time
import urllib.request
import zlib
from collections import Counter

import pytest
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, status_pb2
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opentelemetry.proto.trace.v1 import trace_pb2

from conftest import read_store, start_server

SIGNALS = ("traces", "logs", "metrics")
REQUESTS = {"traces": ExportTraceServiceRequest, "logs": ExportLogsServiceRequest,
            "metrics": ExportMetricsServiceRequest}
RESPONSES = {"traces": ExportTraceServiceResponse, "logs": ExportLogsServiceResponse,
             "metrics": ExportMetricsServiceResponse}
MAX_REQUEST = 256 * 1024  # --max-request-bytes of the fuzzed server: gzip bombs are cheap to send
TENANT_FIELD = 15  # collector/otlp_wire.py: the envelope's tenant field, appended after the client's bytes
NS_PER_DAY = 86_400 * 10**9


def fuzz_settings(n: int):
    return settings(max_examples=n, deadline=None, database=None, suppress_health_check=list(HealthCheck))


# -- protobuf wire encoding, by hand (so we can build what the protobuf library refuses to) ----------------------
def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def tag(field: int, wire_type: int) -> bytes:
    return varint((field << 3) | wire_type)


def ld(field: int, payload: bytes) -> bytes:
    return tag(field, 2) + varint(len(payload)) + payload


def fixed64(field: int, value: int) -> bytes:
    return tag(field, 1) + (value & (1 << 64) - 1).to_bytes(8, "little")


# -- valid requests to mutate (timestamps now: 7-day TTL) --------------------------------------------------------
def _kv(key: str, **value) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(**value))


def _attrs() -> list[KeyValue]:
    return [
        _kv("s", string_value="v\u00e9"), _kv("b", bool_value=True), _kv("i", int_value=-7),
        _kv("d", double_value=0.1), _kv("y", bytes_value=b"\x00\xff"),
        _kv("a", array_value=ArrayValue(values=[AnyValue(int_value=1), AnyValue(string_value="x")])),
        _kv("m", kvlist_value=KeyValueList(values=[_kv("n", kvlist_value=KeyValueList(values=[_kv("z", int_value=1)]))])),
    ]


def _resource(msg) -> None:
    msg.resource.attributes.extend([_kv("service.name", string_value="fuzz"), _kv("k8s.namespace.name", string_value="ns")])
    msg.resource.dropped_attributes_count = 1


def corpus() -> dict[str, list[bytes]]:
    now = time.time_ns()
    out: dict[str, list[bytes]] = {s: [] for s in SIGNALS}

    tr = ExportTraceServiceRequest()
    rs = tr.resource_spans.add()
    _resource(rs)
    rs.schema_url = "https://opentelemetry.io/schemas/1.21.0"
    ss = rs.scope_spans.add()
    ss.scope.name, ss.scope.version = "fuzz", "1"
    ss.scope.attributes.append(_kv("scope", string_value="x"))
    for i in range(3):
        sp = ss.spans.add(trace_id=bytes([i + 1]) * 16, span_id=bytes([i + 1]) * 8, name=f"op{i}",
                          kind=i + 1, start_time_unix_nano=now + i, end_time_unix_nano=now + 1000 + i,
                          trace_state="a=b", flags=257, dropped_attributes_count=2)
        if i:
            sp.parent_span_id = bytes([i]) * 8
        sp.attributes.extend(_attrs())
        sp.events.add(time_unix_nano=now, name="ev", attributes=[_kv("e", int_value=1)])
        sp.links.add(trace_id=b"\x09" * 16, span_id=b"\x09" * 8, trace_state="l=1", flags=1,
                     attributes=[_kv("l", string_value="x")])
        sp.status.code, sp.status.message = 2, "boom"
    out["traces"].append(tr.SerializeToString())
    small = ExportTraceServiceRequest()
    small.resource_spans.add().scope_spans.add().spans.add(
        trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name="s", start_time_unix_nano=now, end_time_unix_nano=now + 5)
    out["traces"].append(small.SerializeToString())

    lg = ExportLogsServiceRequest()
    rl = lg.resource_logs.add()
    _resource(rl)
    sl = rl.scope_logs.add()
    sl.scope.name = "fuzz"
    bodies = [AnyValue(string_value="GET /x 200"), AnyValue(int_value=3), AnyValue(bytes_value=b"\x01\x02"),
              AnyValue(array_value=ArrayValue(values=[AnyValue(double_value=1.5), AnyValue(bool_value=False)])),
              AnyValue(kvlist_value=KeyValueList(values=_attrs()))]
    for i, body in enumerate(bodies):
        lr = sl.log_records.add(time_unix_nano=now + i, observed_time_unix_nano=now + i, severity_number=9,
                                severity_text="INFO", flags=1, trace_id=b"\x03" * 16, span_id=b"\x04" * 8,
                                event_name="e" if i % 2 else "")
        lr.body.CopyFrom(body)
        lr.attributes.extend(_attrs()[:3])
    out["logs"].append(lg.SerializeToString())
    small = ExportLogsServiceRequest()
    small.resource_logs.add().scope_logs.add().log_records.add(observed_time_unix_nano=now,
                                                               body=AnyValue(string_value="hi"))
    out["logs"].append(small.SerializeToString())

    mt = ExportMetricsServiceRequest()
    rm = mt.resource_metrics.add()
    _resource(rm)
    sm = rm.scope_metrics.add()
    sm.scope.name = "fuzz"
    g = sm.metrics.add(name="g", unit="1", description="gauge")
    g.gauge.data_points.add(time_unix_nano=now, as_int=5, attributes=[_kv("a", string_value="b")])
    g.gauge.data_points.add(time_unix_nano=now, as_double=2.5).exemplars.add(
        time_unix_nano=now, as_double=1.0, span_id=b"\x05" * 8, trace_id=b"\x06" * 16)
    s = sm.metrics.add(name="s")
    s.sum.aggregation_temporality, s.sum.is_monotonic = 2, True
    s.sum.data_points.add(start_time_unix_nano=now - 10, time_unix_nano=now, as_double=7.0)
    h = sm.metrics.add(name="h")
    h.histogram.aggregation_temporality = 1
    h.histogram.data_points.add(time_unix_nano=now, count=3, sum=6.0, bucket_counts=[1, 2, 0],
                                explicit_bounds=[1.0, 5.0], min=0.5, max=4.0)
    e = sm.metrics.add(name="e")
    dp = e.exponential_histogram.data_points.add(time_unix_nano=now, count=4, sum=8.0, scale=2, zero_count=1,
                                                 zero_threshold=0.001)
    dp.positive.offset, dp.negative.offset = -1, 2
    dp.positive.bucket_counts.extend([1, 2])
    dp.negative.bucket_counts.extend([1])
    q = sm.metrics.add(name="q")
    qp = q.summary.data_points.add(time_unix_nano=now, count=2, sum=3.0)
    qp.quantile_values.add(quantile=0.5, value=1.0)
    qp.quantile_values.add(quantile=0.99, value=2.0)
    out["metrics"].append(mt.SerializeToString())
    return out


CORPUS = corpus()


# -- the reference decoder ---------------------------------------------------------------------------------------
def inflate(body: bytes) -> tuple[int, bytes]:
    """What the receiver does with a gzip body: (400|413, b"") on failure, (0, inflated) otherwise."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(body, MAX_REQUEST + 1)
    except zlib.error:
        return 400, b""
    if len(out) > MAX_REQUEST or d.unconsumed_tail:
        return 413, b""
    if not d.eof:
        return 400, b""
    return 0, out


def decode(signal_: str, raw: bytes):
    try:
        return REQUESTS[signal_].FromString(raw)
    except (DecodeError, RuntimeError, ValueError):
        return None


def expected_status(signal_: str, body: bytes, gz: bool) -> int:
    if len(body) > MAX_REQUEST:
        return 413
    raw = body
    if gz:
        status, raw = inflate(body)
        if status:
            return status
    return 200 if decode(signal_, raw) is not None else 400


# -- the server under fuzz ------------------------------------------------------------------------------------
class Target:
    def __init__(self, srv) -> None:
        self.srv = srv
        self.conn: http.client.HTTPConnection | None = None
        self.answers: Counter = Counter()
        self.acked = 0

    def post(self, signal_: str, body: bytes, gz: bool = False, tenant: str | None = None):
        headers = {"Content-Type": "application/x-protobuf"}
        if gz:
            headers["Content-Encoding"] = "gzip"
        if tenant:
            headers["X-Scope-OrgID"] = tenant
        for attempt in range(2):
            try:
                if self.conn is None:
                    # a hang shows up as this timeout, with the input in the message
                    self.conn = http.client.HTTPConnection("127.0.0.1", self.srv.otlp_port, timeout=30)
                self.conn.request("POST", f"/v1/{signal_}", body=body, headers=headers)
                r = self.conn.getresponse()
                data = r.read()
            except (OSError, http.client.HTTPException) as e:
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
                if attempt == 0 and self.srv.proc.poll() is None and not isinstance(e, TimeoutError):
                    continue  # a keep-alive connection the server had closed: once more on a new one
                rc = self.srv.proc.poll()
                raise AssertionError(
                    f"no answer ({e!r}); server {'exited with %s' % rc if rc is not None else 'still running'}; "
                    f"input {signal_} gzip={gz} {len(body)} bytes: {body[:400].hex()}\n"
                    f"{self.srv.log()[-3000:]}") from None
            if r.will_close:
                self.conn.close()
                self.conn = None
            return r, data
        raise AssertionError("unreachable")

    def check(self, signal_: str, body: bytes, gz: bool = False) -> int:
        """Send one input and check the answer against the reference decoder."""
        want = expected_status(signal_, body, gz)
        r, data = self.post(signal_, body, gz)
        ctx = (f"{signal_} gzip={gz} {len(body)}-byte input {body[:400].hex()} -> {r.status} {data[:300]!r} "
               f"(expected {want})")
        self.answers[r.status] += 1
        assert r.status == 200 or 400 <= r.status < 500, ctx
        assert r.getheader("Content-Type", "").startswith("application/x-protobuf"), ctx
        if r.status == 200:
            RESPONSES[signal_].FromString(data)
            self.acked += 1
        else:
            status = status_pb2.Status.FromString(data)
            assert status.code != code_pb2.OK and status.message, ctx
        assert r.status == want, ctx
        return r.status

    def assert_ready(self) -> None:
        assert self.srv.proc.poll() is None, self.srv.log()[-3000:]
        with urllib.request.urlopen(self.srv.http_url + "/ready", timeout=10) as r:
            assert r.status == 200


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    data = tmp_path_factory.mktemp("fuzz") / "data"
    srv = start_server(str(data), "--flush-interval", "0.25", "--max-request-bytes", str(MAX_REQUEST))
    t = Target(srv)
    yield t
    if srv.proc.poll() is None:
        srv.stop(signal.SIGKILL, timeout=30)


signals = st.sampled_from(SIGNALS)


# -- 1. random bytes --------------------------------------------------------------------------------------------
@fuzz_settings(250)
@given(signal_=signals, body=st.binary(max_size=2048))
@example(signal_="traces", body=b"")
@example(signal_="logs", body=b"\x00")
@example(signal_="metrics", body=b"\xff" * 11)
def test_random_bytes(target, signal_, body):
    target.check(signal_, body)


# -- 2. truncations and byte flips of valid requests ------------------------------------------------------------
@st.composite
def mutated(draw, signal_: str) -> bytes:
    base = bytearray(draw(st.sampled_from(CORPUS[signal_])))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(("flip", "flip", "truncate", "insert", "delete", "duplicate", "varint")))
        pos = draw(st.integers(0, max(len(base) - 1, 0)))
        if op == "flip" and base:
            base[pos] ^= draw(st.integers(1, 255))
        elif op == "truncate":
            del base[pos:]
        elif op == "insert":
            base[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del base[pos:pos + draw(st.integers(1, 32))]
        elif op == "duplicate":
            base[pos:pos] = base[pos:pos + draw(st.integers(1, 64))]
        elif op == "varint":
            base[pos:pos + draw(st.integers(0, 2))] = varint(draw(st.integers(0, (1 << 64) - 1)))
    return bytes(base)


@fuzz_settings(500)
@given(data=st.data(), signal_=signals)
def test_mutated_valid_requests(target, data, signal_):
    target.check(signal_, data.draw(mutated(signal_)))


def test_unmutated_corpus_is_accepted(target):
    for signal_, bodies in CORPUS.items():
        for body in bodies:
            assert target.check(signal_, body) == 200


# -- 3. random tags, varints and lengths, nested ------------------------------------------------------------------
field_numbers = st.one_of(st.integers(1, 16), st.sampled_from([0, 17, 100, 19000, (1 << 29) - 1, 1 << 29]))
leaf = st.one_of(
    st.tuples(st.just("varint"), field_numbers, st.integers(0, (1 << 64) - 1)),
    st.tuples(st.just("fixed64"), field_numbers, st.integers(0, (1 << 64) - 1)),
    st.tuples(st.just("fixed32"), field_numbers, st.binary(min_size=4, max_size=4)),
    st.tuples(st.just("bytes"), field_numbers, st.binary(max_size=24), st.integers(-3, 3)),
    st.tuples(st.just("tag"), field_numbers, st.integers(0, 7)),  # a bare tag of any wire type, 6 and 7 invalid
    st.tuples(st.just("raw"), st.binary(min_size=1, max_size=8)),
)


def _encode(fields) -> bytes:
    out = bytearray()
    for f in fields:
        kind = f[0]
        if kind == "varint":
            out += tag(f[1], 0) + varint(f[2])
        elif kind == "fixed64":
            out += fixed64(f[1], f[2])
        elif kind == "fixed32":
            out += tag(f[1], 5) + f[2]
        elif kind == "bytes":  # the declared length may lie by a few bytes
            out += tag(f[1], 2) + varint(max(0, len(f[2]) + f[3])) + f[2]
        elif kind == "tag":
            out += tag(f[1], f[2])
        elif kind == "raw":
            out += f[1]
        elif kind == "message":
            out += ld(f[1], _encode(f[2]))
        elif kind == "group":
            out += tag(f[1], 3) + _encode(f[2]) + tag(f[1], 4)
    return bytes(out)


garbage = st.recursive(
    st.lists(leaf, max_size=4),
    lambda children: st.lists(st.one_of(
        leaf,
        st.tuples(st.just("message"), field_numbers, children),
        st.tuples(st.just("group"), field_numbers, children),
    ), max_size=6),
    max_leaves=40,
)


@fuzz_settings(250)
@given(signal_=signals, fields=garbage)
def test_structured_garbage(target, signal_, fields):
    target.check(signal_, _encode(fields))


# -- 4. nesting far past upb's recursion limit (100) ------------------------------------------------------------
def nested_any_value(depth: int, kind: str) -> bytes:
    """AnyValue bytes nested `depth` levels of kvlist (KeyValueList{KeyValue{key, value}}) and/or arrays."""
    v = ld(1, b"leaf")  # AnyValue.string_value
    for i in range(depth):
        k = kind if kind != "mixed" else ("kvlist", "array")[i % 2]
        if k == "kvlist":
            v = ld(6, ld(1, ld(1, b"k") + ld(2, v)))  # AnyValue.kvlist_value.values[0] = KeyValue{k, value}
        else:
            v = ld(5, ld(1, v))  # AnyValue.array_value.values[0]
    return v


def nested_request(signal_: str, where: str, depth: int, kind: str) -> bytes:
    now = time.time_ns()
    if where == "unknown_groups":  # unknown field 2 as groups inside groups: upb recurses into them
        inner = tag(2, 3) * depth + tag(2, 4) * depth
        return CORPUS[signal_][-1] + inner
    if where == "unknown_messages":  # unknown length-delimited fields: opaque to upb
        inner = b""
        for _ in range(depth):
            inner = ld(2, inner)
        return inner + CORPUS[signal_][-1]
    value = nested_any_value(depth, kind)
    if signal_ == "logs":
        record = fixed64(1, now) + fixed64(11, now)
        record += ld(5, value) if where == "body" else ld(6, ld(1, b"deep") + ld(2, value))
        return ld(1, ld(2, ld(2, record)))  # ExportLogs.resource_logs.scope_logs.log_records
    if signal_ == "traces":
        span = ld(1, b"\x07" * 16) + ld(2, b"\x08" * 8) + ld(5, b"deep") + fixed64(7, now) + fixed64(8, now + 1)
        span += ld(9, ld(1, b"deep") + ld(2, value))
        return ld(1, ld(2, ld(2, span)))  # ExportTrace.resource_spans.scope_spans.spans
    point = fixed64(3, now) + ld(7, ld(1, b"deep") + ld(2, value)) + tag(6, 1) + (5).to_bytes(8, "little")
    metric = ld(1, b"deep") + ld(5, ld(1, point))  # Metric.gauge.data_points (as_int)
    return ld(1, ld(2, ld(2, metric)))


@fuzz_settings(120)
@given(
    signal_=signals,
    where=st.sampled_from(("body", "attribute", "unknown_groups", "unknown_messages")),
    depth=st.one_of(st.integers(1, 40), st.sampled_from([31, 32, 33, 34, 99, 100, 101, 200, 1000, 20000]),
                    st.integers(40, 400)),
    kind=st.sampled_from(("kvlist", "array", "mixed")),
)
@example(signal_="logs", where="body", depth=200, kind="kvlist")
@example(signal_="traces", where="attribute", depth=200, kind="kvlist")
@example(signal_="metrics", where="unknown_groups", depth=20000, kind="kvlist")
def test_deep_nesting(target, signal_, where, depth, kind):
    if where != "unknown_groups":
        depth = min(depth, 2000)  # stays under --max-request-bytes (the length prefixes grow with the depth)
    body = nested_request(signal_, where, depth, kind)
    status = target.check(signal_, body)
    if where in ("body", "attribute") and depth >= 60:  # 2-3 messages per level: way past upb's 100
        assert status == 400


# -- 5. huge declared lengths and broken varints ----------------------------------------------------------------
@fuzz_settings(120)
@given(
    signal_=signals,
    data=st.data(),
    declared=st.one_of(st.sampled_from([2**31 - 1, 2**31, 2**32, 2**32 + 1, 2**63 - 1, 2**63, 2**64 - 1]),
                       st.integers(0, (1 << 64) - 1)),
    how=st.sampled_from(("append", "replace_first_length", "overlong_varint", "unterminated_varint")),
)
def test_huge_declared_lengths(target, signal_, data, declared, how):
    base = data.draw(st.sampled_from(CORPUS[signal_]))
    if how == "append":
        cut = data.draw(st.integers(0, len(base)))
        body = base[:cut] + tag(data.draw(st.integers(1, 16)), 2) + varint(declared) + data.draw(st.binary(max_size=32))
    elif how == "replace_first_length":  # the outermost resource_* message claims to be longer than the body
        assert base[0] == 0x0A  # field 1, length-delimited
        end = 1
        while base[end] & 0x80:
            end += 1
        body = base[:1] + varint(max(declared, len(base))) + base[end + 1:]
    elif how == "overlong_varint":  # more than 10 varint bytes
        body = tag(1, 2) + b"\xff" * data.draw(st.integers(10, 40)) + b"\x01" + base
    else:
        body = base + tag(1, 2) + b"\x80" * data.draw(st.integers(1, 12))
    target.check(signal_, body)


# -- 6. gzip --------------------------------------------------------------------------------------------------------
@fuzz_settings(260)
@given(
    signal_=signals,
    data=st.data(),
    how=st.sampled_from(("random", "mutated", "valid", "corrupt", "truncated", "bomb", "not_gzip", "trailing")),
)
def test_gzip(target, signal_, data, how):
    if how == "bomb":  # inflates past --max-request-bytes: 413, however small the upload
        body = gzip.compress(CORPUS[signal_][0] * (MAX_REQUEST // len(CORPUS[signal_][0]) + 2))
        assert target.check(signal_, body, gz=True) == 413
        return
    if how == "random":
        body = gzip.compress(data.draw(st.binary(max_size=1024)))
    elif how == "mutated":
        body = gzip.compress(data.draw(mutated(signal_)))
    elif how == "valid":
        body = gzip.compress(data.draw(st.sampled_from(CORPUS[signal_])))
    elif how == "corrupt":
        b = bytearray(gzip.compress(data.draw(st.sampled_from(CORPUS[signal_]))))
        for _ in range(data.draw(st.integers(1, 3))):
            b[data.draw(st.integers(0, len(b) - 1))] ^= data.draw(st.integers(1, 255))
        body = bytes(b)
    elif how == "truncated":
        b = gzip.compress(data.draw(st.sampled_from(CORPUS[signal_])))
        body = b[:data.draw(st.integers(0, len(b) - 1))]
    elif how == "not_gzip":
        body = b"\x1f\x8b" + data.draw(st.binary(max_size=256))
    else:  # trailing bytes after a complete gzip member
        body = gzip.compress(data.draw(st.sampled_from(CORPUS[signal_]))) + data.draw(st.binary(min_size=1, max_size=64))
    target.check(signal_, body, gz=True)


# -- the end: still up, everything acknowledged stored, clean exit -----------------------------------------------
def _records(path: str):
    with open(path, "rb") as f:
        data = f.read()
    pos = 0
    while pos < len(data):
        n = shift = 0
        while pos < len(data):
            b = data[pos]
            pos += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        yield data[pos:pos + n]
        pos += n


def test_server_survived_and_stored_everything_it_acknowledged(target):
    target.assert_ready()
    srv = target.srv
    t0 = time.monotonic()
    rc = srv.stop(signal.SIGTERM, timeout=120)
    took = time.monotonic() - t0
    log = srv.log()
    wal = os.path.join(srv.data_dir, "wal")
    left = {}
    for sub in (*SIGNALS, "quarantine"):
        d = os.path.join(wal, sub)
        if os.path.isdir(d):
            for name in sorted(os.listdir(d)):
                left[f"{sub}/{name}"] = [r[:300].hex() for r in _records(os.path.join(d, name))]
    summary = f"answers {dict(target.answers)}, exit {rc} after {took:.1f}s"
    assert rc == 0, f"{summary}\n{log[-5000:]}"
    assert not left, f"{summary}; acknowledged but not stored (file: inputs as hex, envelope included):\n{left}"
    assert "Traceback" not in log, log[-5000:]


# -- inputs that used to be acknowledged, then mishandled by the store side ------------------------------------
def _span_request(name: str, now: int, span_id: int = 1, days: int = 1) -> bytes:
    req = ExportTraceServiceRequest()
    ss = req.resource_spans.add().scope_spans.add()
    ss.spans.extend(
        trace_pb2.Span(trace_id=b"\x0f" * 16, span_id=(span_id + d).to_bytes(8, "big"), name=name,
                       start_time_unix_nano=now - d * NS_PER_DAY, end_time_unix_nano=now - d * NS_PER_DAY + 1)
        for d in range(days))
    return req.SerializeToString()


def test_field_15_in_the_body_cannot_change_the_tenant(tmp_path):
    """The envelope appends the tenant as top-level field 15; a client's own field 15 must not override it,
    neither on the fast path nor when the store rejects the record and it is re-encoded."""
    srv = start_server(str(tmp_path / "data"), "--flush-interval", "0.2")
    t = Target(srv)
    try:
        now = time.time_ns()
        spoof = ld(TENANT_FIELD, b"mallory")
        for body in (_span_request("control", now, 1),
                     spoof + _span_request("fast-path", now, 10),
                     # a known field (resource_spans) with another wire type makes the store reject the record,
                     # so it goes through the re-encode path
                     spoof + _span_request("re-encoded", now, 20) + tag(1, 0) + varint(1)):
            r, data = t.post("traces", body, tenant="alice")
            assert r.status == 200, data
            time.sleep(0.5)  # one segment each
        assert srv.stop(timeout=60) == 0, srv.log()[-3000:]
    finally:
        if srv.proc.poll() is None:
            srv.stop(signal.SIGKILL)
    rows = read_store(srv.data_dir, "SELECT SpanName, TenantId FROM otel.otel_traces ORDER BY SpanName")
    assert rows == [("control", "alice"), ("fast-path", "alice"), ("re-encoded", "alice")]


def test_varint_field_15_does_not_block_other_requests(tmp_path):
    """A top-level field 15 of another wire type (2 bytes, accepted by upb) used to crash the re-encode path and
    hold back every other acknowledged request of its segment."""
    srv = start_server(str(tmp_path / "data"), "--flush-interval", "0.5")
    t = Target(srv)
    try:
        now = time.time_ns()
        r, _ = t.post("traces", tag(TENANT_FIELD, 0) + varint(5) + _span_request("poison", now, 1), tenant="eve")
        assert r.status == 200
        acked = []
        for i in range(10):
            r, _ = t.post("traces", _span_request(f"ok{i}", now, 100 + i), tenant="bob")
            assert r.status == 200
            acked.append(f"ok{i}")
        time.sleep(2)
        rc = srv.stop(timeout=60)
    finally:
        if srv.proc.poll() is None:
            srv.stop(signal.SIGKILL)
    rows = read_store(srv.data_dir, "SELECT SpanName FROM otel.otel_traces WHERE TenantId = 'bob' ORDER BY SpanName")
    assert sorted(r[0] for r in rows) == sorted(acked)
    assert rc == 0, srv.log()[-3000:]


def test_request_spanning_more_than_100_days_is_stored(tmp_path):
    """More than 100 partitions (days) in one insert used to fail with TOO_MANY_PARTS, retried forever."""
    srv = start_server(str(tmp_path / "data"), "--flush-interval", "0.2")
    t = Target(srv)
    try:
        r, _ = t.post("traces", _span_request("backfill", time.time_ns(), 1, days=101))
        assert r.status == 200
        deadline = time.monotonic() + 10
        inserted = 0.0
        while time.monotonic() < deadline:
            with urllib.request.urlopen(srv.http_url + "/metrics", timeout=10) as resp:
                text = resp.read().decode()
            inserted = sum(float(line.split()[-1]) for line in text.splitlines()
                           if line.startswith('meshscope_inserted_rows_total{signal="traces"'))
            if inserted >= 101:
                break
            time.sleep(0.2)
        assert inserted == 101, [line for line in text.splitlines() if line.startswith("meshscope_insert_failures")]
    finally:
        if srv.proc.poll() is None:
            srv.stop(signal.SIGKILL)


def test_one_store_rejected_request_does_not_stall_its_segment(tmp_path):
    srv = start_server(str(tmp_path / "data"), "--flush-interval", "1")
    t = Target(srv)
    try:
        now = time.time_ns()
        span = ld(1, b"\x07" * 16) + ld(2, b"\x08" * 8) + tag(5, 0) + varint(3) + fixed64(7, now) + fixed64(8, now)
        bad = ld(1, ld(2, ld(2, span)))  # Span.name (field 5, a string) as a varint
        assert expected_status("traces", bad, False) == 200
        for body in [bad] + [_span_request(f"ok{i}", now, 100 + i) for i in range(100)]:  # one segment
            r, _ = t.post("traces", body)
            assert r.status == 200
        wal = os.path.join(srv.data_dir, "wal", "traces")
        deadline = time.monotonic() + 12  # 1 s flush interval + some inserts
        while any(n.endswith(".seg") for n in os.listdir(wal)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(n.endswith(".seg") for n in os.listdir(wal)), "the segment is still being inserted"
        assert srv.stop(timeout=60) == 0
    finally:
        if srv.proc.poll() is None:
            srv.stop(signal.SIGKILL)
    assert read_store(srv.data_dir, "SELECT count() FROM otel.otel_traces") == [(101,)]
