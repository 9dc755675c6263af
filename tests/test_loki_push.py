"""Loki push (``POST /loki/api/v1/push``) in process: real aiohttp server and client, real Batcher, real store.

Covers the mapping into otel_logs (labels -> ResourceAttributes verbatim plus service.name, line -> Body, exact
ns timestamps, structured metadata -> LogAttributes, level -> SeverityText/SeverityNumber), JSON (plain and gzip),
snappy protobuf (runtime classes and a hand-encoded body, so the field numbers are checked independently), the
strict label-set parser, every error answer, and a fuzz test (every answer 204 or 4xx, never 500).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import time
import uuid

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshscope.collector.batcher import Batcher, FlushPolicy
from meshscope.collector.loki_push import (
    SEVERITY,
    LabelsError,
    LokiPushReceiver,
    PushRequest,
    parse_labels,
)
from meshscope.selfmetrics import SelfMetrics

cramjam = pytest.importorskip("cramjam")

JSON = "application/json"
PB = "application/x-protobuf"
LIMIT = 1 << 20
# An hour ago, whole seconds: inside the store's TTL (entries older than --retention are dropped at insert).
RECENT_S = int(time.time()) - 3600


def snappy(data: bytes) -> bytes:
    return bytes(cramjam.snappy.compress_raw(data))


# -- harness -------------------------------------------------------------------------------------------

class Harness:
    """Batcher + receiver on an aiohttp server on port 0 + a client session, inside one event loop."""

    def __init__(self, store, tmp_path, policy: FlushPolicy | None = None, limit: int = LIMIT, **kw) -> None:
        self.store, self.tmp, self.policy, self.limit, self.kw = store, tmp_path, policy, limit, kw

    async def __aenter__(self) -> "Harness":
        self.metrics = SelfMetrics()
        self.batcher = Batcher(self.store, str(self.tmp), self.policy or FlushPolicy(interval=0.2), self.metrics)
        await self.batcher.start()
        self.receiver = LokiPushReceiver(self.batcher, self.metrics, self.limit, **self.kw)
        app = web.Application()
        app.add_routes(self.receiver.routes())
        self.runner = web.AppRunner(app, auto_decompress=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/loki/api/v1/push"
        self.session = aiohttp.ClientSession(auto_decompress=False)
        self.stopped = False
        return self

    async def post(self, body: bytes, content_type: str | None = JSON, headers: dict | None = None):
        h = dict(headers or {})
        skip = []
        if content_type is None:
            skip.append("Content-Type")
        else:
            h["Content-Type"] = content_type
        async with self.session.post(self.url, data=body, headers=h, skip_auto_headers=skip) as r:
            return r.status, await r.text(), r.headers

    async def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            await self.session.close()
            await self.runner.cleanup()
            await self.batcher.stop()

    async def __aexit__(self, *exc) -> None:
        await self.stop()


def run(coro):
    return asyncio.run(coro)


def rows(store, run_id: str, columns: str = "*") -> list[dict]:
    return store.query(
        f"SELECT {columns} FROM otel.otel_logs WHERE ResourceAttributes['run'] = {{run:String}} "
        "ORDER BY Timestamp, Body", {"run": run_id}).dicts()


COLUMNS = ("TenantId, toUnixTimestamp64Nano(Timestamp) AS ts, toUnixTimestamp64Nano(ObservedTimestamp) AS observed, "
           "ServiceName, Body, BodyType, SeverityText, SeverityNumber, ResourceAttributes, LogAttributes, ScopeName")


def jdoc(*streams) -> bytes:
    return json.dumps({"streams": list(streams)}).encode()


# -- hand-encoded protobuf (independent of the module's runtime classes) -------------------------------------

def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int64 values go as ten-byte two's complement, as protobuf does
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _ld(field: int, data: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def _vi(field: int, n: int) -> bytes:
    return _varint(field << 3) + _varint(n)


def hand_push(streams: list[tuple[str, list[tuple[int, int, str, list[tuple[str, str]]]]]]) -> bytes:
    """PushRequest{streams=1: StreamAdapter{labels=1, entries=2: EntryAdapter{timestamp=1{seconds=1,nanos=2},
    line=2, structuredMetadata=3: LabelPairAdapter{name=1, value=2}}, hash=3}}"""
    out = b""
    for labels, entries in streams:
        s = _ld(1, labels.encode())
        for sec, nanos, line, md in entries:
            e = _ld(1, _vi(1, sec) + _vi(2, nanos)) + _ld(2, line.encode())
            for k, v in md:
                e += _ld(3, _ld(1, k.encode()) + _ld(2, v.encode()))
            s += _ld(2, e)
        s += _vi(3, 12345)
        out += _ld(1, s)
    return out


# -- mapping ------------------------------------------------------------------------------------------------

def test_json_push_maps_into_otel_logs(store, tmp_path):
    rid = uuid.uuid4().hex
    t0 = RECENT_S * 10**9 + 123_456_789

    async def go():
        async with Harness(store, tmp_path) as h:
            before = time.time_ns()
            body = jdoc(
                {"stream": {"run": rid, "service_name": "checkout", "job": "ns/checkout", "namespace": "shop",
                            "level": "warn", "empty": ""},
                 "values": [[str(t0), "first line"],
                            [str(t0 + 1), "second line", {"trace_id": "abc", "user": "ü"}],
                            [str(t0 + 2), "third", {"level": "ERROR"}]]},
                {"stream": {"run": rid, "job": "batch"}, "values": [[str(t0 + 3), "no level here"]]},
            )
            status, text, _ = await h.post(body, headers={"X-Scope-OrgID": "team-loki"})
            assert (status, text) == (204, "")
            after = time.time_ns()
        return before, after

    before, after = run(go())
    got = rows(store, rid, COLUMNS)
    assert [r["ts"] for r in got] == [t0, t0 + 1, t0 + 2, t0 + 3]
    assert [r["Body"] for r in got] == ["first line", "second line", "third", "no level here"]
    assert all(r["TenantId"] == "team-loki" and r["ScopeName"] == "loki-push" and r["BodyType"] == "string"
               for r in got)
    assert all(before <= r["observed"] <= after for r in got)
    assert got[0]["ResourceAttributes"] == {"run": rid, "service_name": "checkout", "job": "ns/checkout",
                                            "namespace": "shop", "level": "warn", "service.name": "checkout"}
    assert got[0]["ServiceName"] == "checkout"
    assert got[3]["ResourceAttributes"] == {"run": rid, "job": "batch", "service.name": "batch"}
    assert got[3]["ServiceName"] == "batch"
    assert [r["LogAttributes"] for r in got] == [{}, {"trace_id": "abc", "user": "ü"}, {"level": "ERROR"}, {}]
    # stream label level=warn; metadata level wins over the label for its entry; no level -> unspecified
    assert [(r["SeverityText"], r["SeverityNumber"]) for r in got] == [
        ("warn", 13), ("warn", 13), ("ERROR", 17), ("", 0)]


def test_service_name_and_levels(store, tmp_path):
    rid = uuid.uuid4().hex
    t = (RECENT_S + 100) * 10**9
    cases = [  # (labels, metadata, expected service, expected severity text/number)
        ({"app": "web", "job": "j"}, {}, "web", ("", 0)),
        ({"job": "only-job"}, {}, "only-job", ("", 0)),
        ({"namespace": "x"}, {}, "unknown_service", ("", 0)),
        ({"service_name": "svc", "app": "a"}, {}, "svc", ("", 0)),
        ({"job": "l", "level": "TRACE"}, {}, "l", ("TRACE", 1)),
        ({"job": "l", "level": "dbg"}, {}, "l", ("dbg", 5)),
        ({"job": "l", "detected_level": "info"}, {}, "l", ("info", 9)),
        ({"job": "l", "level": "Warning"}, {}, "l", ("Warning", 13)),
        ({"job": "l"}, {"detected_level": "err"}, "l", ("err", 17)),
        ({"job": "l"}, {"level": "fatal", "detected_level": "info"}, "l", ("fatal", 21)),
        ({"job": "l", "level": "critical"}, {}, "l", ("critical", 21)),
        ({"job": "l", "level": "chatty"}, {}, "l", ("chatty", 0)),
    ]

    async def go():
        async with Harness(store, tmp_path) as h:
            streams = [{"stream": {"run": rid, "case": str(i), **labels}, "values": [[str(t + i), f"line {i}", md]]}
                       for i, (labels, md, _, _) in enumerate(cases)]
            assert (await h.post(jdoc(*streams)))[0] == 204

    run(go())
    got = rows(store, rid, COLUMNS)
    assert len(got) == len(cases)
    for r, (_, _, service, sev) in zip(got, cases):
        assert r["ServiceName"] == service, r
        assert r["ResourceAttributes"]["service.name"] == service
        assert (r["SeverityText"], r["SeverityNumber"]) == sev, r
    assert {SEVERITY[k] for k in ("trace", "debug", "info", "warn", "error", "fatal")} == {1, 5, 9, 13, 17, 21}


def test_gzip_json(store, tmp_path):
    rid = uuid.uuid4().hex
    t = (RECENT_S + 200) * 10**9 + 1

    async def go():
        async with Harness(store, tmp_path) as h:
            body = gzip.compress(jdoc({"stream": {"run": rid, "job": "gz"},
                                       "values": [[str(t + i), f"gz line {i}"] for i in range(50)]}))
            assert (await h.post(body, headers={"Content-Encoding": "gzip"}))[0] == 204
            assert h.metrics.received.labels("logs", "loki")._value.get() == 50
            assert h.metrics.requests.labels("logs", "loki", "204")._value.get() == 1

    run(go())
    got = rows(store, rid, COLUMNS)
    assert [r["ts"] for r in got] == [t + i for i in range(50)]
    assert got[7]["Body"] == "gz line 7" and got[0]["TenantId"] == "default"


def test_snappy_protobuf(store, tmp_path):
    rid = uuid.uuid4().hex
    t_sec = RECENT_S + 300

    # built with the module's runtime classes
    req = PushRequest()
    s = req.streams.add(labels=f'{{run="{rid}", job="pb", quote="a\\"b\\\\c\\n", uni="\\u00e9"}}'.encode())
    e = s.entries.add(line="runtime classes".encode())
    e.timestamp.seconds, e.timestamp.nanos = t_sec, 5
    e.structuredMetadata.add(name=b"trace_id", value=b"0af7651916cd43dd8448eb211c80319c")
    e.structuredMetadata.add(name=b"detected_level", value=b"debug")
    s.entries.add(line=b"bad utf8 \xff kept").timestamp.seconds = t_sec + 1
    runtime_body = req.SerializeToString()

    # hand-encoded, field numbers spelled out
    hand_body = hand_push([
        (f'{{ run = "{rid}" , job=`raw\\s`, app="hand" }}',
         [(t_sec + 2, 999_999_999, "hand encoded", [("k", "v")]),
          (t_sec + 3, 0, "second hand", [])]),
    ])

    async def go():
        async with Harness(store, tmp_path) as h:
            assert (await h.post(snappy(runtime_body), PB))[0] == 204
            # no Content-Type at all: Loki's default is snappy protobuf too; Content-Encoding: snappy is accepted
            assert (await h.post(snappy(hand_body), None, {"Content-Encoding": "snappy"}))[0] == 204

    run(go())
    got = rows(store, rid, COLUMNS)
    assert [r["ts"] for r in got] == [t_sec * 10**9 + 5, (t_sec + 1) * 10**9, (t_sec + 2) * 10**9 + 999_999_999,
                                      (t_sec + 3) * 10**9]
    assert [r["Body"] for r in got] == ["runtime classes", "bad utf8 \ufffd kept", "hand encoded", "second hand"]
    assert got[0]["ResourceAttributes"] == {"run": rid, "job": "pb", "quote": 'a"b\\c\n', "uni": "é",
                                            "service.name": "pb"}
    assert got[0]["LogAttributes"] == {"trace_id": "0af7651916cd43dd8448eb211c80319c", "detected_level": "debug"}
    assert (got[0]["SeverityText"], got[0]["SeverityNumber"]) == ("debug", 5)
    assert got[2]["ResourceAttributes"] == {"run": rid, "job": "raw\\s", "app": "hand", "service.name": "hand"}
    assert got[2]["LogAttributes"] == {"k": "v"}


def test_empty_push_is_accepted(store, tmp_path):
    async def go():
        async with Harness(store, tmp_path) as h:
            assert (await h.post(b'{"streams":[]}'))[0] == 204
            assert (await h.post(jdoc({"stream": {"job": "x"}, "values": []})))[0] == 204
            assert (await h.post(snappy(b""), PB))[0] == 204
            assert h.batcher.buffers["logs"].current is None

    run(go())


# -- the label-set parser -------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, pairs", [
    ('{job="x"}', [("job", "x")]),
    ('{job="x", ns="y"}', [("job", "x"), ("ns", "y")]),
    ('  {\tjob = "x" ,\n_ns9="y"}  ', [("job", "x"), ("_ns9", "y")]),
    ("{}", []),
    ('{a=""}', [("a", "")]),
    (r'{a="\"\\\n\t\r\a\b\f\v"}', [("a", '"\\\n\t\r\x07\x08\x0c\x0b')]),
    (r'{a="\x41\101\u00e9\U0001F600"}', [("a", "AAé😀")]),
    (r'{a="\xc3\xa9"}', [("a", "é")]),
    ('{a=`raw "\\ string`}', [("a", 'raw "\\ string')]),
    ('{a="ü,}="}', [("a", "ü,}=")]),
])
def test_parse_labels_valid(text, pairs):
    assert parse_labels(text) == pairs


@pytest.mark.parametrize("text", [
    "", "job", 'job="x"', "{", '{job="x"', '{job="x",}', '{job="x" ns="y"}', '{job=x}', "{job='x'}",
    '{job=~"x"}', '{job!="x"}', '{1job="x"}', '{jo-b="x"}', '{job.name="x"}', '{="x"}', '{job="x"} trailing',
    '{job="x"}}', '{job="unterminated}', '{job="new\nline"}', r'{job="\q"}', r'{job="\x4"}', r'{job="\400"}',
    r'{job="\ud800"}', r'{job="\U00110000"}', r'{job="\xff"}', '{job=`open}', '{job="x",,ns="y"}',
])
def test_parse_labels_invalid(text):
    with pytest.raises(LabelsError):
        parse_labels(text)


# -- errors ------------------------------------------------------------------------------------------------

def _pb(labels: str, sec: int = 1_700_000_000, nanos: int = 0) -> bytes:
    return snappy(hand_push([(labels, [(sec, nanos, "l", [])])]))


def _bomb() -> bytes:
    return gzip.compress(b'{"streams":[' + b" " * (2 * LIMIT) + b"]}")


V = [["1700000000000000000", "line"]]
ERROR_CASES = [
    # (id, body, content type, headers, status, text in message)
    ("not-json", b"{nope", JSON, {}, 400, "not valid JSON"),
    ("json-array", b"[]", JSON, {}, 400, "JSON object"),
    ("no-streams", b"{}", JSON, {}, 400, '"streams"'),
    ("streams-not-list", b'{"streams":{}}', JSON, {}, 400, '"streams"'),
    ("stream-not-object", jdoc(1), JSON, {}, 400, "stream 0"),
    ("labels-missing", jdoc({"values": V}), JSON, {}, 400, "stream 0"),
    ("label-not-string", jdoc({"stream": {"job": 1}, "values": V}), JSON, {}, 400, "string value"),
    ("label-name-dots", jdoc({"stream": {"job.name": "x"}, "values": V}), JSON, {}, 400, "invalid label name"),
    ("label-name-digit", jdoc({"stream": {"1a": "x"}, "values": V}), JSON, {}, 400, "invalid label name"),
    ("label-name-empty", jdoc({"stream": {"": "x"}, "values": V}), JSON, {}, 400, "invalid label name"),
    ("no-labels", jdoc({"stream": {}, "values": V}), JSON, {}, 400, "at least one label"),
    ("only-empty-labels", jdoc({"stream": {"a": ""}, "values": V}), JSON, {}, 400, "at least one label"),
    ("values-not-list", jdoc({"stream": {"a": "b"}, "values": {}}), JSON, {}, 400, "values"),
    ("entry-not-list", jdoc({"stream": {"a": "b"}, "values": ["x"]}), JSON, {}, 400, "entry 0"),
    ("entry-arity", jdoc({"stream": {"a": "b"}, "values": [["1"]]}), JSON, {}, 400, "entry 0"),
    ("ts-float", jdoc({"stream": {"a": "b"}, "values": V + [["1.5", "x"]]}), JSON, {}, 400,
     'stream 0 {a="b"}, entry 1: timestamp'),
    ("ts-text", jdoc({"stream": {"a": "b"}, "values": [["soon", "x"]]}), JSON, {}, 400, "entry 0: timestamp"),
    ("ts-negative", jdoc({"stream": {"a": "b"}, "values": [["-1", "x"]]}), JSON, {}, 400, "timestamp"),
    ("ts-json-float", jdoc({"stream": {"a": "b"}, "values": [[1.0, "x"]]}), JSON, {}, 400, "timestamp"),
    ("ts-bool", jdoc({"stream": {"a": "b"}, "values": [[True, "x"]]}), JSON, {}, 400, "timestamp"),
    ("ts-too-big", jdoc({"stream": {"a": "b"}, "values": [[str(1 << 63), "x"]]}), JSON, {}, 400, "out of range"),
    ("line-not-string", jdoc({"stream": {"a": "b"}, "values": [["1", 5]]}), JSON, {}, 400, "line"),
    ("metadata-not-object", jdoc({"stream": {"a": "b"}, "values": [["1", "x", []]]}), JSON, {}, 400, "metadata"),
    ("metadata-not-string", jdoc({"stream": {"a": "b"}, "values": [["1", "x", {"k": 1}]]}), JSON, {}, 400,
     "metadata"),
    ("too-many-streams", jdoc(*[{"stream": {"a": str(i)}, "values": V} for i in range(4)]), JSON, {}, 400,
     "too many streams"),
    ("too-many-entries", jdoc({"stream": {"a": "b"}, "values": V * 11}), JSON, {}, 400, "too many entries"),
    ("bad-gzip", b"not gzip", JSON, {"Content-Encoding": "gzip"}, 400, "gzip"),
    ("gzip-bomb", _bomb(), JSON, {"Content-Encoding": "gzip"}, 413, "limit"),
    ("too-large", b" " * (LIMIT + 1), JSON, {}, 413, "limit"),
    ("brotli", b"{}", JSON, {"Content-Encoding": "br"}, 415, "Content-Encoding"),
    ("json-snappy", snappy(b"{}"), JSON, {"Content-Encoding": "snappy"}, 415, "Content-Encoding"),
    ("bad-tenant", b'{"streams":[]}', JSON, {"X-Scope-OrgID": "a/b"}, 400, "X-Scope-OrgID"),
    ("not-snappy", b"\x0a\x05hello", PB, {}, 400, "snappy"),
    ("snappy-preamble", b"\xff" * 12, PB, {}, 400, "snappy"),
    ("snappy-bomb", _varint(LIMIT + 1) + b"\x00", PB, {}, 413, "limit"),
    ("not-protobuf", snappy(b"\xff\xff\xff"), PB, {}, 400, "PushRequest"),
    ("pb-bad-labels", _pb('{job="x"'), PB, {}, 400, "invalid labels"),
    ("pb-regex-labels", _pb('{job=~"x"}'), PB, {}, 400, "invalid labels"),
    ("pb-dup-labels", _pb('{job="x", job="y"}'), PB, {}, 400, "duplicate label"),
    ("pb-no-labels", _pb("{}"), PB, {}, 400, "at least one label"),
    ("pb-bad-utf8-labels", snappy(_ld(1, _ld(1, b'{job="\xff"}'))), PB, {}, 400, "invalid labels"),
    ("pb-negative-ts", _pb('{job="x"}', sec=-5), PB, {}, 400, 'stream 0 {job="x"}, entry 0: timestamp'),
    ("pb-bad-nanos", _pb('{job="x"}', nanos=1_000_000_000), PB, {}, 400, "entry 0: timestamp"),
    ("pb-ts-too-big", _pb('{job="x"}', sec=1 << 40), PB, {}, 400, "out of range"),
    ("pb-too-many-entries", snappy(hand_push([('{a="b"}', [(1, 0, "l", [])] * 11)])), PB, {}, 400,
     "too many entries"),
    ("octet-stream-json", jdoc({"stream": {"a": "b"}, "values": V}), "application/octet-stream", {}, 400, "snappy"),
]


@pytest.mark.parametrize("case", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_errors(store, tmp_path, case):
    _, body, ctype, headers, status, needle = case

    async def go():
        async with Harness(store, tmp_path, max_streams=3, max_entries=10) as h:
            got, text, hdrs = await h.post(body, ctype, headers)
            assert got == status, text
            assert needle in text
            assert text.endswith("\n") and "\n" not in text[:-1]
            assert hdrs["Content-Type"].startswith("text/plain")
            assert h.batcher.buffers["logs"].current is None  # nothing was written
            assert h.metrics.requests.labels("logs", "loki", str(status))._value.get() == 1

    run(go())


def test_backpressure_shutdown_and_method(store, tmp_path):
    body = jdoc({"stream": {"job": "bp"}, "values": V})

    async def go():
        async with Harness(store, tmp_path, FlushPolicy(interval=0.2, max_buffered_rows=0)) as h:
            status, text, hdrs = await h.post(body)
            assert status == 429 and hdrs["Retry-After"] == "1" and "buffer is full" in text
        async with Harness(store, tmp_path) as h:
            h.receiver.accepting = False
            status, _, hdrs = await h.post(body)
            assert status == 503 and hdrs["Retry-After"]
            async with h.session.get(h.url) as r:
                assert r.status == 405

    run(go())


# -- fuzz ----------------------------------------------------------------------------------------------------

_json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**64), 2**64), st.floats(allow_nan=False),
                       st.text(max_size=20))
_json_any = st.recursive(_json_leaf, lambda c: st.one_of(st.lists(c, max_size=4),
                                                         st.dictionaries(st.text(max_size=8), c, max_size=4)),
                         max_leaves=12)
_label_name = st.one_of(st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,8}", fullmatch=True), st.text(max_size=8))
_ts = st.one_of(st.integers(0, 2**63 - 1).map(str), st.integers(-(2**64), 2**65), st.text(max_size=22),
                _json_any)
_entry = st.one_of(
    st.tuples(_ts, st.text(max_size=30)).map(list),
    st.tuples(_ts, st.text(max_size=30), st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3))
    .map(list),
    _json_any,
)
_stream = st.one_of(
    st.fixed_dictionaries({"stream": st.dictionaries(_label_name, st.one_of(st.text(max_size=10), _json_any),
                                                     max_size=4),
                           "values": st.lists(_entry, max_size=4)}),
    _json_any,
)
_doc = st.one_of(st.fixed_dictionaries({"streams": st.lists(_stream, max_size=4)}), _json_any)


@st.composite
def _mutated(draw, data: bytes) -> bytes:
    """A few random byte edits (flip, delete, insert) of a valid body."""
    b = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        if not b:
            break
        i = draw(st.integers(0, len(b) - 1))
        op = draw(st.sampled_from(["flip", "del", "ins"]))
        if op == "flip":
            b[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "del":
            del b[i]
        else:
            b.insert(i, draw(st.integers(0, 255)))
    return bytes(b)


_VALID_JSON = jdoc({"stream": {"job": "fuzz", "app": "x"}, "values": [["1700000000000000000", "a"],
                                                                        ["1700000000000000001", "b", {"k": "v"}]]})
_VALID_PB = hand_push([('{job="fuzz", app="x\\n"}', [(1_700_000_000, 1, "a", [("k", "v")])])])
_label_text = st.one_of(st.text(max_size=40),
                        st.text(alphabet='{}=",`\\ _ajob0x\nu', max_size=40),
                        _mutated(b'{job="x", ns="y\\u00e9"}').map(lambda b: b.decode("latin-1")))

_request = st.one_of(
    # random bytes, any content type / encoding
    st.tuples(st.binary(max_size=300), st.sampled_from([JSON, PB, None, "text/plain"]),
              st.sampled_from([None, "gzip", "snappy"])),
    # JSON documents with junk in every place, plain or gzip
    st.tuples(_doc.map(lambda d: json.dumps(d).encode()), st.just(JSON), st.sampled_from([None, "gzip"])),
    # byte edits of a valid JSON body
    st.tuples(_mutated(_VALID_JSON), st.just(JSON), st.just(None)),
    # byte edits of a valid protobuf body, then snappy
    st.tuples(_mutated(_VALID_PB).map(snappy), st.just(PB), st.just(None)),
    # random label texts in an otherwise valid protobuf body
    st.tuples(_label_text.map(lambda t: snappy(hand_push([(t, [(1_700_000_000, 0, "l", [])])]))),
              st.just(PB), st.just(None)),
    # a valid protobuf body with a random snappy-level edit
    st.tuples(_mutated(snappy(_VALID_PB)), st.just(PB), st.just(None)),
)


def test_fuzz_never_500(store, tmp_path):
    loop = asyncio.new_event_loop()
    h = Harness(store, tmp_path, FlushPolicy(interval=0.2, fsync=False), max_streams=3, max_entries=10)
    loop.run_until_complete(h.__aenter__())
    seen: dict[int, int] = {}

    @settings(max_examples=1000, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
    @given(_request)
    def check(req):
        body, ctype, enc = req
        headers = {}
        if enc == "gzip":
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
        elif enc == "snappy":
            headers["Content-Encoding"] = "snappy"
        status, text, _ = loop.run_until_complete(h.post(body, ctype, headers))
        seen[status] = seen.get(status, 0) + 1
        assert status == 204 or 400 <= status < 500, (status, text)
        if status != 204:
            assert text.endswith("\n") and "\n" not in text[:-1], text

    try:
        check()
    finally:
        loop.run_until_complete(h.stop())
        loop.close()
    assert seen.get(204, 0) > 0 and seen.get(400, 0) > 0, seen
    # everything acknowledged was readable by the store
    assert h.metrics.quarantined.labels("logs")._value.get() == 0
    assert h.metrics.insert_failures.labels("logs")._value.get() == 0
