"""The Zipkin v2 receiver (``collector/zipkin.py``) in-process, over real sockets, into the real store.

A background thread runs one asyncio loop with a real ``Batcher`` over the session ``store`` and the
receiver's aiohttp app on port 0; the tests post with an aiohttp client on that loop, then
``batcher.stop()`` flushes and the rows are read back with ``store.query``. Service names carry a
per-run suffix because the store is shared by the whole session.

Covers: the mapping of every column (ids padded to 128 bits, kinds, µs -> ns, endpoints, tags, status,
annotations, shared/debug, resource grouping, scope, links, tenant), gzip and content types, the error
answers (400/405/413/415/429/503), all-or-nothing rejection, self metrics, and a hypothesis fuzz test
(random JSON values, span-shaped objects and random bytes: only 202 or 4xx, never 500).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
import time
import uuid

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshscope.collector.batcher import Batcher, FlushPolicy
from meshscope.collector.zipkin import ZipkinReceiver, decode
from meshscope.selfmetrics import SelfMetrics

JSON = "application/json"
RUN = uuid.uuid4().hex[:8]
# Recent µs timestamps: the store's TTL (7 days) drops older rows at insert.
T0 = time.time_ns() // 1000 - 60_000_000


def svc(name: str) -> str:
    return f"zk-{name}-{RUN}"


class Harness:
    """Batcher + ZipkinReceiver on a private event loop in a thread; ``call`` runs a coroutine there."""

    def __init__(self, store, data_dir: str, max_request_bytes: int = 1 << 20,
                 policy: FlushPolicy | None = None) -> None:
        self.store = store
        self.data_dir = data_dir
        self.max_request_bytes = max_request_bytes
        self.policy = policy or FlushPolicy(interval=0.2)
        self.metrics = SelfMetrics()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.stopped = False

    def call(self, coro, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self) -> None:
        self.batcher = Batcher(self.store, self.data_dir, self.policy, self.metrics)
        await self.batcher.start()
        self.receiver = ZipkinReceiver(self.batcher, self.metrics, self.max_request_bytes)
        self.runner = web.AppRunner(self.receiver.app(), auto_decompress=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/api/v2/spans"
        self.session = aiohttp.ClientSession(auto_decompress=False)

    async def _post(self, body, headers, method, chunked=False):
        if chunked:  # no Content-Length: the receiver must count while reading
            data, body = body, None

            async def chunks():
                for i in range(0, len(data), 1000):
                    yield data[i:i + 1000]

            body = chunks()
        async with self.session.request(method, self.url, data=body, headers=headers,
                                        skip_auto_headers=["Content-Type"]) as r:
            return r.status, await r.text(), dict(r.headers)

    def post(self, payload=None, *, body: bytes | None = None, content_type: str | None = JSON,
             headers: dict | None = None, gzipped: bool = False, method: str = "POST", chunked: bool = False):
        """Returns (status, text, headers). ``payload`` is JSON-encoded unless ``body`` is given."""
        if body is None:
            body = json.dumps(payload).encode()
        h = dict(headers or {})
        if content_type is not None:
            h["Content-Type"] = content_type
        if gzipped:
            body = gzip.compress(body)
            h["Content-Encoding"] = "gzip"
        return self.call(self._post(body, h, method, chunked))

    def flush(self) -> None:
        """Insert everything acknowledged (``batcher.stop()``); the receiver is unusable afterwards."""
        if not self.stopped:
            self.stopped = True
            self.call(self.batcher.stop(), timeout=120)

    async def _close(self) -> None:
        await self.session.close()
        await self.runner.cleanup()

    def __enter__(self) -> "Harness":
        self.thread.start()
        self.call(self._start())
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.flush()
            self.call(self._close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    def metric(self, name: str, **labels) -> float:
        v = self.metrics.registry.get_sample_value(name, labels)
        return v or 0.0


@pytest.fixture
def harness(store, tmp_path):
    with Harness(store, str(tmp_path)) as h:
        yield h


def rows(store, sql_where: str, columns: str) -> list[dict]:
    r = store.query(f"SELECT {columns} FROM otel.otel_traces WHERE {sql_where} ORDER BY SpanName, SpanKind")
    return r.named_results() if hasattr(r, "named_results") else [dict(zip(r.columns, row)) for row in r.rows]


COLUMNS = ("TenantId, toUnixTimestamp64Nano(Timestamp) AS ts, TraceId, SpanId, ParentSpanId, TraceState, "
           "SpanName, SpanKind, ServiceName, ResourceAttributes, ScopeName, ScopeVersion, SpanAttributes, Duration, "
           "StatusCode, StatusMessage, arrayMap(t -> toUnixTimestamp64Nano(t), Events.Timestamp) AS ev_ts, "
           "Events.Name AS ev_name, Events.Attributes AS ev_attrs, Links.TraceId AS link_trace, "
           "Links.SpanId AS link_span, Links.TraceState AS link_state, Links.Attributes AS link_attrs")


def by_service(store, *services: str) -> list[dict]:
    names = ", ".join(f"'{s}'" for s in services)
    return rows(store, f"ServiceName IN ({names})", COLUMNS)


# -- mapping ------------------------------------------------------------------------------------


def test_documented_example(harness, store):
    """The span of Zipkin's quickstart (zipkin README), a SERVER span with a 64-bit trace id.

    Only the service name (unique per run) and the timestamp (recent, for the TTL) differ from it."""
    service = svc("backend")
    span = {
        "id": "352bff9a74ca9ad2", "traceId": "5af7183fb1d4cf5f", "parentId": "6b221d5bc9e6496c",
        "name": "get /api", "timestamp": T0 + 355737, "duration": 1431, "kind": "SERVER",
        "localEndpoint": {"serviceName": service, "ipv4": "192.168.99.1", "port": 3306},
        "remoteEndpoint": {"ipv4": "172.19.0.2", "port": 58648},
        "tags": {"http.method": "GET", "http.path": "/api"},
    }
    status, text, _ = harness.post([span])
    assert (status, text) == (202, "")
    harness.flush()
    [r] = by_service(store, service)
    assert r["TenantId"] == "default"
    assert r["TraceId"] == "00000000000000005af7183fb1d4cf5f"  # 64-bit id padded to 128 bits
    assert r["SpanId"] == "352bff9a74ca9ad2"
    assert r["ParentSpanId"] == "6b221d5bc9e6496c"
    assert r["SpanName"] == "get /api"
    assert r["SpanKind"] == "SPAN_KIND_SERVER"
    assert r["ts"] == (T0 + 355737) * 1000
    assert r["Duration"] == 1431 * 1000
    assert r["ServiceName"] == service
    assert r["ResourceAttributes"] == {"service.name": service}
    assert r["SpanAttributes"] == {
        "http.method": "GET", "http.path": "/api",
        "net.host.ip": "192.168.99.1", "net.host.port": "3306",
        "net.peer.ip": "172.19.0.2", "net.peer.port": "58648",
    }
    assert r["StatusCode"] == "STATUS_CODE_UNSET" and r["StatusMessage"] == ""
    assert r["ev_name"] == [] and r["link_trace"] == []
    assert harness.metric("meshscope_requests_total", signal="traces", protocol="zipkin", code="202") == 1
    assert harness.metric("meshscope_received_items_total", signal="traces", protocol="zipkin") == 1
    assert harness.metric("meshscope_inserted_rows_total", signal="traces", table="otel_traces") == 1


def test_shared_client_server_pair(harness, store):
    """Old-style Zipkin RPC: client and server report the same span id; the server marks it shared."""
    front, back = svc("front"), svc("back")
    t0 = T0 + 123456
    client = {
        "traceId": "a1b2c3d4e5f60718", "id": "1111111111111111", "parentId": "2222222222222222",
        "kind": "CLIENT", "name": "get /items", "timestamp": t0, "duration": 5000,
        "localEndpoint": {"serviceName": front, "ipv4": "10.0.0.1"},
        "remoteEndpoint": {"serviceName": back, "ipv4": "10.0.0.2", "port": 8080},
        "annotations": [{"timestamp": t0 + 10, "value": "ws"}, {"timestamp": t0 + 4990, "value": "wr"}],
        "tags": {"http.status_code": "200"},
    }
    server = {
        "traceId": "a1b2c3d4e5f60718", "id": "1111111111111111", "parentId": "2222222222222222",
        "kind": "SERVER", "name": "get /items", "timestamp": t0 + 1000, "duration": 3000, "shared": True,
        "localEndpoint": {"serviceName": back, "ipv6": "2001:db8::c001", "port": 8080},
        "remoteEndpoint": {"ipv4": "10.0.0.1", "port": 51000},
        "debug": True,
    }
    assert harness.post([client, server], headers={"X-Scope-OrgID": "team-zipkin"})[0] == 202
    harness.flush()
    c, s = sorted(by_service(store, front, back), key=lambda r: r["SpanKind"])
    assert (c["ServiceName"], c["SpanKind"], s["ServiceName"], s["SpanKind"]) == (
        front, "SPAN_KIND_CLIENT", back, "SPAN_KIND_SERVER")
    for r in (c, s):
        assert r["TenantId"] == "team-zipkin"
        assert r["TraceId"] == "0000000000000000a1b2c3d4e5f60718"
        assert r["SpanId"] == "1111111111111111" and r["ParentSpanId"] == "2222222222222222"
    assert (c["ts"], c["Duration"]) == (t0 * 1000, 5_000_000)
    assert (s["ts"], s["Duration"]) == ((t0 + 1000) * 1000, 3_000_000)
    assert c["SpanAttributes"] == {"http.status_code": "200", "net.host.ip": "10.0.0.1", "peer.service": back,
                                   "net.peer.ip": "10.0.0.2", "net.peer.port": "8080"}
    assert s["SpanAttributes"] == {"net.host.ip": "2001:db8::c001", "net.host.port": "8080",
                                   "net.peer.ip": "10.0.0.1", "net.peer.port": "51000",
                                   "zipkin.shared": "true", "zipkin.debug": "true"}
    assert c["ev_name"] == ["ws", "wr"]
    assert c["ev_ts"] == [(t0 + 10) * 1000, (t0 + 4990) * 1000]
    assert s["ev_name"] == []


def test_status_and_kind(harness, store):
    service = svc("status")
    trace = "4e441824ec2b6a44ffdc9bb9a6453df3"  # 128-bit id kept as is
    cases = {
        # name: (extra span fields, expected kind, status, message, attributes)
        "a-error-true": ({"kind": "CLIENT", "tags": {"error": "true"}},
                         "SPAN_KIND_CLIENT", "STATUS_CODE_ERROR", "", {}),
        "b-error-message": ({"kind": "PRODUCER", "tags": {"error": "connection refused"}},
                            "SPAN_KIND_PRODUCER", "STATUS_CODE_ERROR", "connection refused",
                            {"error": "connection refused"}),
        "c-error-false": ({"kind": "CONSUMER", "tags": {"error": "false"}},
                          "SPAN_KIND_CONSUMER", "STATUS_CODE_UNSET", "", {"error": "false"}),
        "d-otel-ok": ({"tags": {"otel.status_code": "OK", "otel.status_description": "fine"}},
                      "SPAN_KIND_UNSPECIFIED", "STATUS_CODE_OK", "fine", {}),
        "e-otel-error": ({"tags": {"otel.status_code": "STATUS_CODE_ERROR", "otel.status_description": "boom",
                                   "error": "boom"}},
                         "SPAN_KIND_UNSPECIFIED", "STATUS_CODE_ERROR", "boom", {"error": "boom"}),
        "f-internal": ({"tags": {"span.kind": "internal"}}, "SPAN_KIND_INTERNAL", "STATUS_CODE_UNSET", "", {}),
        "g-null-kind": ({"kind": None, "tags": {"span.kind": "server"}},
                        "SPAN_KIND_UNSPECIFIED", "STATUS_CODE_UNSET", "", {}),
        "h-tracestate": ({"kind": "SERVER", "tags": {"w3c.tracestate": "vendor=abc", "n": "1"}},
                         "SPAN_KIND_SERVER", "STATUS_CODE_UNSET", "", {"n": "1"}),
    }
    spans = [dict({"traceId": trace, "id": f"{i + 1:016x}", "name": name, "timestamp": T0,
                   "localEndpoint": {"serviceName": service}}, **extra)
             for i, (name, (extra, *_)) in enumerate(cases.items())]
    assert harness.post(spans)[0] == 202
    harness.flush()
    got = {r["SpanName"]: r for r in by_service(store, service)}
    assert set(got) == set(cases)
    for name, (_, kind, code, message, attrs) in cases.items():
        r = got[name]
        assert r["TraceId"] == trace
        assert (r["SpanKind"], r["StatusCode"], r["StatusMessage"], r["SpanAttributes"]) == (
            kind, code, message, attrs), name
        assert r["Duration"] == 0 and r["ParentSpanId"] == ""
    assert got["h-tracestate"]["TraceState"] == "vendor=abc"


def test_resources_scopes_links_and_events(harness, store):
    a, b = svc("res-a"), svc("res-b")
    base = {"traceId": "00000000000000000000000000000abc", "timestamp": T0, "duration": 1}
    spans = [
        dict(base, id="a1", name="a-1", localEndpoint={"serviceName": a},
             tags={"k8s.pod.name": "pod-1", "otel.library.name": "lib", "otel.library.version": "1.2",
                   "otlp.link.0": "0102030405060708090a0b0c0d0e0f10|0102030405060708|k=v|{\"x\":1,\"y\":\"a|b\"}|3",
                   "otlp.link.1": "not|a|link"}),
        dict(base, id="a2", name="a-2", parentId="00000000000000a1", localEndpoint={"serviceName": a},
             tags={"k8s.pod.name": "pod-2"},
             annotations=[{"timestamp": T0 + 5, "value": "retry|{\"attempt\":2,\"ok\":true}|0"},
                          {"timestamp": T0 + 6, "value": "a|b"}]),
        dict(base, id="b1", name="b-1", parentId="a2", localEndpoint={"serviceName": b}),
        dict(base, id="b2", name="b-2", parentId="0000000000000000", localEndpoint={"serviceName": b},
             tags={"otel.scope.name": "scoped", "otel.scope.version": "9"}),
        dict(base, id="b3", name="b-3", parentId="b3", localEndpoint={"serviceName": b}),
    ]
    assert harness.post(spans)[0] == 202
    harness.flush()
    got = {r["SpanName"]: r for r in by_service(store, a, b)}
    a1, a2, b1, b2, b3 = (got[n] for n in ("a-1", "a-2", "b-1", "b-2", "b-3"))
    assert a1["TraceId"] == "00000000000000000000000000000abc"
    assert a1["SpanId"] == "00000000000000a1" and a1["ParentSpanId"] == ""
    assert a1["ResourceAttributes"] == {"service.name": a, "k8s.pod.name": "pod-1"}
    assert a2["ResourceAttributes"] == {"service.name": a, "k8s.pod.name": "pod-2"}  # not merged with a-1's
    assert (a1["ScopeName"], a1["ScopeVersion"]) == ("lib", "1.2")
    assert a1["SpanAttributes"] == {"otlp.link.1": "not|a|link"}
    assert a1["link_trace"] == ["0102030405060708090a0b0c0d0e0f10"]
    assert a1["link_span"] == ["0102030405060708"] and a1["link_state"] == ["k=v"]
    assert a1["link_attrs"] == [{"x": "1", "y": "a|b"}]
    assert a2["ParentSpanId"] == "00000000000000a1" and a2["SpanAttributes"] == {}
    assert a2["ev_name"] == ["retry", "a|b"]
    assert a2["ev_attrs"] == [{"attempt": "2", "ok": "true"}, {}]
    assert a2["ev_ts"] == [(T0 + 5) * 1000, (T0 + 6) * 1000]
    assert b1["ResourceAttributes"] == {"service.name": b} and b1["ParentSpanId"] == "00000000000000a2"
    assert (b2["ScopeName"], b2["ScopeVersion"], b2["ParentSpanId"]) == ("scoped", "9", "")
    assert b3["ParentSpanId"] == ""  # parentId == id: dropped, as the translator does
    assert all(r["Duration"] == 1000 for r in got.values())


def test_gzip_and_content_types(harness, store):
    service = svc("ctype")

    def span(i: int) -> list:
        return [{"traceId": "f" * 32, "id": f"{i:016x}", "name": f"s{i}", "timestamp": T0,
                 "localEndpoint": {"serviceName": service}}]

    assert harness.post(span(1), gzipped=True)[0] == 202
    assert harness.post(span(2), content_type=None)[0] == 202  # Zipkin clients that send no type
    assert harness.post(span(3), content_type="application/json; charset=utf-8")[0] == 202
    assert harness.post([])[0] == 202
    harness.flush()
    assert sorted(r["SpanName"] for r in by_service(store, service)) == ["s1", "s2", "s3"]


def test_large_batch(harness, store):
    """A body past the inline-decode size (decoded off the event loop), gzipped, spread over services."""
    services = [svc(f"bulk{i}") for i in range(3)]
    spans = [{"traceId": f"{i // 10 + 1:032x}", "id": f"{i + 1:016x}", "name": "op", "timestamp": T0 + i,
              "duration": 10, "kind": "SERVER", "localEndpoint": {"serviceName": services[i % 3]},
              "tags": {"http.path": "/x" * 20, "n": str(i)}} for i in range(3000)]
    body = json.dumps(spans).encode()
    assert len(body) > 256 * 1024
    assert harness.post(body=body, gzipped=True)[0] == 202
    harness.flush()
    r = store.query("SELECT ServiceName, count(), uniqExact(SpanId), min(toUnixTimestamp64Nano(Timestamp)) "
                    f"FROM otel.otel_traces WHERE ServiceName IN ('{services[0]}', '{services[1]}', '{services[2]}') "
                    "GROUP BY ServiceName ORDER BY ServiceName")
    assert r.rows == [(services[i], 1000, 1000, (T0 + i) * 1000) for i in range(3)]


def test_missing_timestamp(harness, store):
    """No timestamp: flagged like the translator does, started at the first annotation, else at receipt
    (the translator's epoch start would be dropped by the TTL right after the 202)."""
    msg, n = decode(json.dumps([{"traceId": "1", "id": "2", "duration": 7}]).encode(), now_ns=5_000_000_000)
    sp = msg.resource_spans[0].scope_spans[0].spans[0]
    assert n == 1 and len(msg.resource_spans[0].resource.attributes) == 0  # no local service: empty resource
    assert (sp.trace_id.hex(), sp.span_id.hex()) == ("0" * 31 + "1", "0" * 15 + "2")
    assert (sp.start_time_unix_nano, sp.end_time_unix_nano) == (5_000_000_000, 5_000_007_000)
    assert [(a.key, a.value.bool_value) for a in sp.attributes] == [("otel.zipkin.absentField.startTime", True)]

    service = svc("no-ts")
    before = time.time_ns()
    spans = [{"traceId": "abc", "id": "1", "name": "late-tags", "localEndpoint": {"serviceName": service}},
             {"traceId": "abc", "id": "2", "name": "annotated", "duration": 3,
              "localEndpoint": {"serviceName": service},
              "annotations": [{"timestamp": T0 + 9, "value": "b"}, {"timestamp": T0 + 2, "value": "a"}]}]
    assert harness.post(spans)[0] == 202
    harness.flush()
    got = {r["SpanName"]: r for r in by_service(store, service)}
    assert got["annotated"]["ts"] == (T0 + 2) * 1000 and got["annotated"]["Duration"] == 3000
    assert got["annotated"]["ev_name"] == ["b", "a"]
    assert before <= got["late-tags"]["ts"] <= time.time_ns() and got["late-tags"]["Duration"] == 0
    for r in got.values():
        assert r["SpanAttributes"] == {"otel.zipkin.absentField.startTime": "true"}


# -- errors -------------------------------------------------------------------------------------

GOOD = {"traceId": "5af7183fb1d4cf5f", "id": "352bff9a74ca9ad2", "timestamp": T0}


@pytest.mark.parametrize("body, needle", [
    (b"{not json", "not valid JSON"),
    (b"", "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    (json.dumps({"spans": []}).encode(), "expected a JSON list"),
    (json.dumps([1]).encode(), "spans[0]: expected a span object"),
    (json.dumps([GOOD, None]).encode(), "spans[1]: expected a span object"),
    (json.dumps([dict(GOOD, traceId=None)]).encode(), "spans[0].traceId is required"),
    (json.dumps([{"traceId": "5af7183fb1d4cf5f"}]).encode(), "spans[0].id is required"),
    (json.dumps([dict(GOOD, traceId="xyz")]).encode(), "spans[0].traceId: expected 1 to 32 hex digits"),
    (json.dumps([dict(GOOD, traceId="a" * 33)]).encode(), "spans[0].traceId: expected 1 to 32 hex digits"),
    (json.dumps([dict(GOOD, traceId="0" * 32)]).encode(), "spans[0].traceId: must not be all zeros"),
    (json.dumps([dict(GOOD, traceId=12345)]).encode(), "spans[0].traceId: expected a hex string"),
    (json.dumps([dict(GOOD, id="a" * 17)]).encode(), "spans[0].id: expected 1 to 16 hex digits"),
    (json.dumps([dict(GOOD, id="0" * 16)]).encode(), "spans[0].id: must not be all zeros"),
    (json.dumps([dict(GOOD, parentId="zz")]).encode(), "spans[0].parentId: expected 1 to 16 hex digits"),
    (json.dumps([dict(GOOD, timestamp="1700000000000000")]).encode(), "spans[0].timestamp: expected an integer"),
    (json.dumps([dict(GOOD, duration=-1)]).encode(), "spans[0].duration: must not be negative"),
    (json.dumps([dict(GOOD, timestamp=2**62)]).encode(), "spans[0].timestamp: 4611686018427387904 is out of range"),
    (json.dumps([dict(GOOD, name=["x"])]).encode(), "spans[0].name: expected a string"),
    (json.dumps([dict(GOOD, kind=1)]).encode(), "spans[0].kind: expected a string"),
    (json.dumps([dict(GOOD, shared="yes")]).encode(), "spans[0].shared: expected true or false"),
    (json.dumps([dict(GOOD, tags=["a"])]).encode(), "spans[0].tags: expected an object"),
    (json.dumps([dict(GOOD, tags={"a": None})]).encode(), "spans[0].tags['a']: expected a string"),
    (json.dumps([dict(GOOD, annotations=[{"value": "ws"}])]).encode(), "annotations[0]: an annotation needs"),
    (json.dumps([dict(GOOD, annotations={"a": 1})]).encode(), "spans[0].annotations: expected a list"),
    (json.dumps([dict(GOOD, localEndpoint="svc")]).encode(), "spans[0].localEndpoint: expected an object"),
    (json.dumps([dict(GOOD, remoteEndpoint={"port": 70000})]).encode(), "remoteEndpoint.port: expected an integer"),
    (json.dumps([dict(GOOD, localEndpoint={"serviceName": 5})]).encode(), "localEndpoint.serviceName: expected"),
])
def test_bad_requests_are_400(harness, body, needle):
    status, text, headers = harness.post(body=body)
    assert status == 400, text
    assert needle in text
    assert headers["Content-Type"].startswith("text/plain")


def test_rejection_is_all_or_nothing(harness, store):
    service = svc("partial")
    good = dict(GOOD, name="kept?", localEndpoint={"serviceName": service})
    assert harness.post([good, dict(good, id="nothex")])[0] == 400
    harness.flush()
    assert by_service(store, service) == []
    assert harness.metric("meshscope_requests_total", signal="traces", protocol="zipkin", code="400") == 1
    assert harness.metric("meshscope_rejected_items_total", signal="traces", reason="malformed") == 1
    assert harness.metric("meshscope_received_items_total", signal="traces", protocol="zipkin") == 0


def test_content_type_encoding_tenant_method(harness):
    body = json.dumps([GOOD]).encode()
    status, text, _ = harness.post(body=b"\n\x00", content_type="application/x-protobuf")
    assert status == 415 and "JSON" in text and "protobuf" in text
    status, text, _ = harness.post(body=body, content_type="text/plain")
    assert status == 415 and "application/json" in text
    status, text, _ = harness.post(body=body, headers={"Content-Encoding": "br"})
    assert status == 415 and "Content-Encoding" in text
    status, text, _ = harness.post(body=b"not gzip", headers={"Content-Encoding": "gzip"})
    assert status == 400 and "gzip" in text
    status, text, _ = harness.post(body=gzip.compress(body)[:-8], headers={"Content-Encoding": "gzip"})
    assert status == 400 and "truncated" in text
    status, text, _ = harness.post(body=body, headers={"X-Scope-OrgID": "bad tenant/"})
    assert status == 400 and "X-Scope-OrgID" in text
    assert harness.post(body=body, method="GET")[0] == 405
    assert harness.post(body=body, method="PUT")[0] == 405


def test_size_limit(store, tmp_path):
    with Harness(store, str(tmp_path), max_request_bytes=4096) as h:
        big = json.dumps([dict(GOOD, name="x" * 5000)]).encode()
        status, text, _ = h.post(body=big)
        assert status == 413 and "4096" in text
        status, text, _ = h.post(body=big, gzipped=True)  # compresses to little, inflates past the limit
        assert status == 413 and "decompressed" in text
        assert h.post(body=b"[" + b" " * 5000 + b"]", chunked=True)[0] == 413
        assert h.post([GOOD])[0] == 202
        assert h.metric("meshscope_rejected_items_total", signal="traces", reason="too_large") == 3


def test_backpressure_and_shutdown(store, tmp_path):
    with Harness(store, str(tmp_path), policy=FlushPolicy(interval=0.2, max_buffered_rows=0)) as h:
        status, text, headers = h.post([GOOD])
        assert status == 429 and "retry" in text and headers["Retry-After"] == "1"
        h.receiver.accepting = False
        status, _, headers = h.post([GOOD])
        assert status == 503 and headers["Retry-After"] == "5"
        assert h.metric("meshscope_requests_total", signal="traces", protocol="zipkin", code="429") == 1


# -- a real Zipkin client ------------------------------------------------------------------------


def test_opentelemetry_zipkin_json_exporter(harness, store):
    """Spans from the OpenTelemetry SDK's Zipkin JSON exporter (a real Zipkin v2 client)."""
    zipkin_json = pytest.importorskip("opentelemetry.exporter.zipkin.json")
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.trace import SpanKind, Status, StatusCode

    service = svc("otel-sdk")
    exporter = zipkin_json.ZipkinExporter(endpoint=harness.url)
    provider = TracerProvider(resource=Resource.create({"service.name": service, "k8s.namespace.name": "shop"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("checkout-lib", "0.3")
    with tracer.start_as_current_span("parent", kind=SpanKind.SERVER) as parent:
        with tracer.start_as_current_span("child", kind=SpanKind.CLIENT, attributes={"peer.service": "db"}) as c:
            c.add_event("cache-miss")
            c.set_status(Status(StatusCode.ERROR, "timeout"))
    provider.shutdown()
    harness.flush()
    got = {r["SpanName"]: r for r in by_service(store, service)}
    p, c = got["parent"], got["child"]
    pctx = parent.get_span_context()
    assert p["TraceId"] == f"{pctx.trace_id:032x}" and p["SpanId"] == f"{pctx.span_id:016x}"
    assert c["ParentSpanId"] == p["SpanId"]
    assert (p["SpanKind"], c["SpanKind"]) == ("SPAN_KIND_SERVER", "SPAN_KIND_CLIENT")
    assert (c["StatusCode"], c["StatusMessage"]) == ("STATUS_CODE_ERROR", "timeout")
    assert (c["ScopeName"], c["ScopeVersion"]) == ("checkout-lib", "0.3")
    assert c["ResourceAttributes"]["k8s.namespace.name"] == "shop"
    assert c["SpanAttributes"]["peer.service"] == "db"
    assert "service.name" not in c["SpanAttributes"]
    assert c["ev_name"] == ['{"cache-miss": {}}']  # that exporter's annotation encoding
    assert p["ts"] == (parent.start_time + 500) // 1000 * 1000 and p["Duration"] > 0  # µs, rounded


# -- fuzz ----------------------------------------------------------------------------------------

# Seeds in Zipkin's format; the fuzz mutates their bytes, swaps any member for any JSON value, or sends
# random JSON values and random bytes. One or two draws per example: hypothesis' per-draw cost dominated.
_FUZZ_SEEDS = [
    [{"traceId": "5af7183fb1d4cf5f", "id": "352bff9a74ca9ad2", "parentId": "6b221d5bc9e6496c", "name": "get /api",
      "timestamp": T0, "duration": 1431, "kind": "SERVER",
      "localEndpoint": {"serviceName": "zk-fuzz-a", "ipv4": "192.168.99.1", "port": 3306},
      "remoteEndpoint": {"ipv4": "172.19.0.2", "port": 58648}, "tags": {"http.method": "GET", "error": "true"}}],
    [{"traceId": "4e441824ec2b6a44ffdc9bb9a6453df3", "id": "1", "kind": "CLIENT", "timestamp": T0, "duration": 5,
      "localEndpoint": {"serviceName": "zk-fuzz-a", "ipv6": "::ffff:10.0.0.1"},
      "remoteEndpoint": {"serviceName": "zk-fuzz-b", "ipv6": "2001:db8::1", "port": 80},
      "annotations": [{"timestamp": T0 + 1, "value": "ws"}, {"timestamp": T0 + 2, "value": "e|{\"k\":1}|0"}]},
     {"traceId": "4e441824ec2b6a44ffdc9bb9a6453df3", "id": "1", "kind": "SERVER", "shared": True, "debug": True,
      "localEndpoint": {"serviceName": "zk-fuzz-b"}, "tags": {"otel.status_code": "ERROR", "span.kind": "x"}}],
    [{"traceId": "ab", "id": "cd", "parentId": "cd", "name": "n", "annotations": [{"timestamp": T0, "value": "a"}],
      "tags": {"k8s.pod.name": "p", "otel.library.name": "l", "w3c.tracestate": "a=b", "otlp.service.name.source": "x",
               "otlp.link.0": "0102030405060708090a0b0c0d0e0f10|0102030405060708|k=v|{\"a\":1.5}|1"}}],
]
_SEED_BYTES = [json.dumps(d).encode() for d in _FUZZ_SEEDS]
_TOKENS = [b'"', b"{", b"}", b"[", b"]", b",", b":", b"null", b"true", b"0", b"-1", b"1e999", b"1.5",
           b"18446744073709551616", b'""', b'"zz"', b"[]", b"{}", b"\\", b"\\u0000", b"\\ud800", b"\xff",
           b'"traceId":', b'"id":"0"', b'"timestamp":', b'"tags":{"error":', b'"annotations":[{']
_json_values = st.recursive(
    st.sampled_from([None, True, False, 0, -1, 1, 65536, 2**53, 2**63, 2**64 - 1, -(2**63), 1.5, -0.0, 1e308, "",
                     "x", "0", "00000000000000000000000000000000", "AbCd", "g", "CLIENT", "true", "1.2.3.4", "::1",
                     "a|{}|0", "\u00e9", "\u2603" * 3]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["", "a", "traceId", "id", "serviceName", "timestamp", "value", "port"]), inner, max_size=2),
    max_leaves=6)


def _mutate(body: bytes, program: bytes) -> bytes:
    """Up to 4 byte-level edits, 4 program bytes each: (operation, position hi, position lo, argument)."""
    b = bytearray(body)
    for i in range(0, len(program) - 3, 4):
        op, pos, arg = program[i] % 4, (program[i + 1] << 8 | program[i + 2]) % (len(b) + 1), program[i + 3]
        if op == 0 and pos < len(b):
            b[pos] ^= arg or 0x20
        elif op == 1:
            b[pos:pos] = _TOKENS[arg % len(_TOKENS)]
        elif op == 2:
            del b[pos:pos + arg % 16 + 1]
        elif op == 3 and arg < 32:
            del b[pos:]
    return bytes(b)


def _slots(node, out):
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        out.append((node, key))
        _slots(value, out)
    return out


def _replace(args) -> bytes:
    """Any member of a seed (span, field, tag, endpoint part...) replaced by any JSON value."""
    seed, edits = args
    doc = json.loads(_SEED_BYTES[seed])
    for where, value in edits:
        slots = _slots(doc, [])
        container, key = slots[where % len(slots)]
        container[key] = value
    return json.dumps(doc).encode()


fuzz_bodies = st.one_of(
    st.binary(max_size=300),
    _json_values.map(lambda v: json.dumps(v).encode()),
    st.tuples(st.integers(0, len(_SEED_BYTES) - 1), st.binary(min_size=4, max_size=16)).map(
        lambda a: _mutate(_SEED_BYTES[a[0]], a[1])),
    st.tuples(st.integers(0, len(_SEED_BYTES) - 1),
              st.lists(st.tuples(st.integers(0, 1000), _json_values), min_size=1, max_size=2)).map(_replace),
)


def test_fuzz_never_500(store, tmp_path):
    policy = FlushPolicy(interval=0.2, fsync=False)
    with Harness(store, str(tmp_path), max_request_bytes=64 * 1024, policy=policy) as h:
        seen: dict[int, int] = {}

        @settings(max_examples=1000, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(body=fuzz_bodies, gzipped=st.booleans())
        def check(body: bytes, gzipped: bool) -> None:
            status, text, _ = h.post(body=body, gzipped=gzipped, headers={"X-Scope-OrgID": "zipkin-fuzz"})
            seen[status] = seen.get(status, 0) + 1
            assert status == 202 or 400 <= status < 500, (status, text, body[:300])

        t0 = time.monotonic()
        check()
        assert seen.get(202, 0) > 20 and seen.get(400, 0) > 100, seen  # the fuzz reaches both outcomes
        # the server survived and everything it accepted is insertable
        assert h.post([dict(GOOD, localEndpoint={"serviceName": svc("after-fuzz")})])[0] == 202
        h.flush()
        assert h.metric("meshscope_insert_failures_total", signal="traces") == 0
        assert h.metric("meshscope_quarantined_requests_total", signal="traces") == 0
        assert len(by_service(store, svc("after-fuzz"))) == 1
        assert time.monotonic() - t0 < 60
