"""The trace routes over the real embedded store: Jaeger's API (shapes, 400/404 in Jaeger's error JSON, search
semantics, limits), trace summaries, the per-trace cap, OTLP JSON, logs of a trace, RED, tenancy."""
from __future__ import annotations

import asyncio
import time
import uuid

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from meshscope.query.traces_api import TracesService
from meshscope.sqlutil import quote_string

S = 1_000_000_000
MS = 1_000_000
NOW_NS = (int(time.time()) - 120) * S


def _map(d: dict) -> str:
    if not d:
        return "map()"
    return "map(" + ", ".join(f"{quote_string(k)}, {quote_string(v)}" for k, v in d.items()) + ")"


def insert_spans(store, tenant: str, spans: list[dict]) -> None:
    rows = []
    for s in spans:
        ev = s.get("events", [])
        rows.append(
            f"({quote_string(tenant)}, fromUnixTimestamp64Nano({int(s['start'])}), {quote_string(s['trace'])}, "
            f"{quote_string(s['span'])}, {quote_string(s.get('parent', ''))}, {quote_string(s.get('name', 'op'))}, "
            f"{quote_string(s.get('kind', 'SPAN_KIND_SERVER'))}, {quote_string(s['service'])}, "
            f"{_map({'service.name': s['service'], **s.get('resource', {})})}, {_map(s.get('attrs', {}))}, "
            f"{int(s['dur'])}, {quote_string(s.get('status', 'STATUS_CODE_UNSET'))}, "
            f"{quote_string(s.get('namespace', ''))}, "
            f"[{', '.join(f'fromUnixTimestamp64Nano({int(t)})' for t, _ in ev)}], "
            f"[{', '.join(quote_string(n) for _, n in ev)}], [{', '.join('map()' for _ in ev)}], "
            f"[{', '.join('0' for _ in ev)}])")
    store.command(
        "INSERT INTO otel.otel_traces (TenantId, Timestamp, TraceId, SpanId, ParentSpanId, SpanName, SpanKind, "
        "ServiceName, ResourceAttributes, SpanAttributes, Duration, StatusCode, MeshNamespace, `Events.Timestamp`, "
        "`Events.Name`, `Events.Attributes`, `Events.DroppedAttributesCount`) VALUES " + ", ".join(rows))


def tid(n: int) -> str:
    return f"{0xabc0000 + n:032x}"


def sid(t: int, k: int) -> str:
    return f"{t:08x}{k:08x}"


def make_trace(n: int, start: int, root_ms: int, *, error: bool = False, spans: int = 3, root_service="front"):
    """root (front SERVER) → client (front) → back SERVER, plus extra internal spans under the back span."""
    t = tid(n)
    out = [dict(trace=t, span=sid(n, 0), service=root_service, name="GET /home", start=start, dur=root_ms * MS,
                attrs={"http.response.status_code": "500" if error else "200", "user.tier": "gold" if n % 2 else
                       "free"}, resource={"k8s.namespace.name": "shop"}, namespace="shop",
                status="STATUS_CODE_ERROR" if error else "STATUS_CODE_UNSET",
                events=[(start + MS, "exception")] if error else []),
           dict(trace=t, span=sid(n, 1), parent=sid(n, 0), service=root_service, name="GET", kind="SPAN_KIND_CLIENT",
                start=start + MS, dur=(root_ms - 2) * MS, attrs={"server.address": "back"},
                resource={"k8s.namespace.name": "shop"}),
           dict(trace=t, span=sid(n, 2), parent=sid(n, 1), service="back", name="GET /api", start=start + 2 * MS,
                dur=(root_ms - 4) * MS, attrs={"http.route": "/api"}, resource={"k8s.namespace.name": "shop"})]
    for k in range(3, spans):
        out.append(dict(trace=t, span=sid(n, k), parent=sid(n, 2), service="back", name="work",
                        kind="SPAN_KIND_INTERNAL", start=start + (2 + k) * MS, dur=MS))
    return out


@pytest.fixture(scope="module")
def data(store):
    tenant = f"tr-{uuid.uuid4().hex[:8]}"
    spans = []
    # 10 fast traces, 3 slow ones (1.5 s root), one error trace, one of 30 spans; a minute apart
    for n in range(10):
        spans += make_trace(n, NOW_NS - (30 - n) * 60 * S, 20 + n)
    for n in range(10, 13):
        spans += make_trace(n, NOW_NS - (30 - n) * 60 * S, 1500)
    spans += make_trace(13, NOW_NS - 10 * 60 * S, 40, error=True)
    spans += make_trace(14, NOW_NS - 5 * 60 * S, 50, spans=30)
    insert_spans(store, tenant, spans)
    # a trace of another tenant with the same id as trace 0: never visible here
    insert_spans(store, tenant + "-other", make_trace(0, NOW_NS - 60 * S, 10, root_service="intruder"))
    store.command(
        "INSERT INTO otel.otel_logs (TenantId, Timestamp, TraceId, SpanId, SeverityText, SeverityNumber, ServiceName, "
        "Body) VALUES " + ", ".join(
            f"({quote_string(tenant)}, fromUnixTimestamp64Nano({NOW_NS - 10 * 60 * S + k * MS}), "
            f"{quote_string(tid(13))}, {quote_string(sid(13, k))}, 'ERROR', 17, 'front', 'failed step {k}')"
            for k in range(3)))
    return tenant


def call(store, path, params=None, tenant=None, **svc_kwargs):
    async def run():
        svc = TracesService(store, clock=lambda: NOW_NS / S + 60, **svc_kwargs)
        app = web.Application()
        app.add_routes(svc.routes())
        try:
            async with TestClient(TestServer(app)) as client:
                headers = {"X-Scope-OrgID": tenant} if tenant else {}
                r = await client.get(path, params=params or {}, headers=headers)
                return r.status, r.headers.get("Content-Type", ""), await r.read()
        finally:
            svc.close()
    return asyncio.run(run())


def jget(store, path, params=None, tenant=None, status=200, **kw):
    st, ctype, body = call(store, path, params, tenant, **kw)
    assert st == status, body
    assert ctype.startswith("application/json")
    return orjson.loads(body)


def test_services_and_operations(store, data):
    doc = jget(store, "/api/services", tenant=data)
    assert doc == {"data": ["back", "front"], "total": 2, "limit": 0, "offset": 0, "errors": None}
    assert jget(store, "/api/services/front/operations", tenant=data)["data"] == ["GET", "GET /home"]
    doc = jget(store, "/api/operations", {"service": "front", "spanKind": "server"}, tenant=data)
    assert doc["data"] == [{"name": "GET /home", "spanKind": "server"}]
    assert jget(store, "/api/services")["data"] == [] or "front" not in jget(store, "/api/services")["data"]


def test_trace_by_id_jaeger_shape(store, data):
    doc = jget(store, f"/api/traces/{tid(13)}", tenant=data)
    assert doc["errors"] is None and len(doc["data"]) == 1
    t = doc["data"][0]
    assert t["traceID"] == tid(13) and len(t["spans"]) == 3
    root, client, server = t["spans"]
    assert root["references"] == []
    assert client["references"] == [{"refType": "CHILD_OF", "traceID": tid(13), "spanID": sid(13, 0)}]
    assert server["references"][0]["spanID"] == sid(13, 1)
    assert root["startTime"] == (NOW_NS - 10 * 60 * S) // 1000 and root["duration"] == 40_000
    tags = {x["key"]: (x["type"], x["value"]) for x in root["tags"]}
    assert tags["http.response.status_code"] == ("int64", 500) and tags["error"] == ("bool", True)
    assert tags["span.kind"] == ("string", "server") and tags["otel.status_code"] == ("string", "ERROR")
    assert root["logs"][0]["fields"][0] == {"key": "event", "type": "string", "value": "exception"}
    procs = t["processes"]
    assert sorted(p["serviceName"] for p in procs.values()) == ["back", "front"]
    assert {root["processID"], client["processID"]} == {next(k for k, p in procs.items() if p["serviceName"] ==
                                                             "front")}


def test_short_id_is_left_padded(store, data):
    short = tid(13).lstrip("0")
    assert jget(store, f"/api/traces/{short}", tenant=data)["data"][0]["traceID"] == tid(13)


def test_unknown_and_malformed_ids(store, data):
    doc = jget(store, f"/api/traces/{'f' * 32}", tenant=data, status=404)
    assert doc == {"data": None, "total": 0, "limit": 0, "offset": 0,
                   "errors": [{"code": 404, "msg": "trace not found"}]}
    for bad in ("xyz", "1" * 33, "0" * 32):
        doc = jget(store, f"/api/traces/{bad}", tenant=data, status=400)
        assert doc["data"] is None and doc["errors"][0]["code"] == 400
    # another tenant's trace with the same id is not visible, and the default tenant sees nothing
    assert jget(store, f"/api/traces/{tid(0)}", tenant=data)["data"][0]["spans"][0]["operationName"] == "GET /home"
    assert {p["serviceName"] for p in jget(store, f"/api/traces/{tid(0)}", tenant=data)["data"][0]["processes"]
            .values()} == {"front", "back"}
    jget(store, f"/api/traces/{tid(1)}", status=404)
    st, _, body = call(store, f"/api/traces/{tid(1)}", tenant="bad tenant!")
    assert st == 400


def test_search_by_service_and_min_duration_finds_exactly_the_slow_traces(store, data):
    doc = jget(store, "/api/traces", {"service": "front", "minDuration": "1s", "lookback": "1h", "limit": "20"},
               tenant=data)
    assert sorted(t["traceID"] for t in doc["data"]) == [tid(n) for n in (10, 11, 12)]
    assert all(len(t["spans"]) == 3 for t in doc["data"])
    # Jaeger's µs start/end
    doc = jget(store, "/api/traces", {"service": "front", "minDuration": "1s", "limit": "20",
                                      "start": str((NOW_NS - 19 * 60 * S) // 1000),
                                      "end": str((NOW_NS + 60 * S) // 1000)}, tenant=data)
    assert sorted(t["traceID"] for t in doc["data"]) == [tid(n) for n in (11, 12)]
    doc = jget(store, "/api/traces", {"service": "back", "maxDuration": "30ms", "lookback": "1h"}, tenant=data)
    assert sorted(t["traceID"] for t in doc["data"]) == [tid(n) for n in range(0, 10)] + [tid(14)]
    assert jget(store, "/api/traces", {"service": "front", "minDuration": "1s", "maxDuration": "1.4s",
                                       "lookback": "1h"}, tenant=data)["data"] == []


@pytest.mark.parametrize("params, want", [
    ({"tags": '{"error":"true"}'}, [13]),
    ({"tag": "http.response.status_code:500"}, [13]),
    ({"tag": "user.tier:gold", "minDuration": "1s"}, [11]),
    ({"tags": '{"k8s.namespace.name":"shop"}', "minDuration": "1s"}, [10, 11, 12]),  # resource attribute
    ({"tag": "MeshNamespace:shop", "operation": "GET /home", "minDuration": "1s"}, [10, 11, 12]),  # promoted
    ({"tag": "mesh.namespace:shop", "minDuration": "1s"}, [10, 11, 12]),
    ({"tag": "span.kind:client", "minDuration": "1s"}, [10, 11, 12]),
    ({"tag": "user.tier:' OR 1=1 --"}, []),
])
def test_search_tags(store, data, params, want):
    doc = jget(store, "/api/traces", {"service": "front", "lookback": "2h", **params}, tenant=data)
    assert sorted(t["traceID"] for t in doc["data"]) == [tid(n) for n in want]


def test_search_limits_and_errors(store, data):
    doc = jget(store, "/api/traces", {"lookback": "1h"}, tenant=data, status=400)
    assert doc["errors"] == [{"code": 400, "msg": "parameter 'service' is required"}]
    for params in ({"minDuration": "fast"}, {"limit": "x"}, {"start": "yesterday"}, {"tags": "{"},
                   {"minDuration": "2s", "maxDuration": "1s"}, {"spanKind": "sideways"}):
        doc = jget(store, "/api/traces", {"service": "front", **params}, tenant=data, status=400)
        assert doc["errors"][0]["code"] == 400 and doc["errors"][0]["msg"]
    # Jaeger clients asking for more than 1500 traces get 1500 at most, newest first
    doc = jget(store, "/api/traces", {"service": "front", "limit": "100000", "lookback": "1h"}, tenant=data)
    assert len(doc["data"]) == 15
    doc = jget(store, "/api/traces", {"service": "front", "limit": "2", "lookback": "1h"}, tenant=data)
    assert [t["traceID"] for t in doc["data"]] == [tid(14), tid(13)]
    doc = jget(store, "/api/traces", {"traceID": [tid(1), tid(2)]}, tenant=data)
    assert [t["traceID"] for t in doc["data"]] == [tid(1), tid(2)]


def test_bad_tag_values_are_400_with_the_reason(store, data):
    # values checked only while the SQL is built (error=, span.kind=, otel.status_code=) are the client's mistake
    for tag, reason in (("error=maybe", "tag error takes true or false"), ("span.kind=sideways", "invalid span kind"),
                        ("otel.status_code=purple", "invalid status")):
        st, ctype, body = call(store, "/api/search/traces", {"tag": tag}, tenant=data)
        assert st == 400 and ctype.startswith("text/plain") and reason in body.decode(), (tag, st, body)
        doc = jget(store, "/api/traces", {"service": "front", "tag": tag.replace("=", ":", 1)}, tenant=data,
                   status=400)
        assert reason in doc["errors"][0]["msg"]


def test_trace_capped_with_warning(store, data):
    doc = jget(store, f"/api/traces/{tid(14)}", tenant=data, max_spans=10)
    t = doc["data"][0]
    assert len(t["spans"]) == 10 and t["warnings"] and "30 spans" in t["warnings"][0]
    assert len(jget(store, f"/api/traces/{tid(14)}", tenant=data)["data"][0]["spans"]) == 30


def test_summaries(store, data):
    doc = jget(store, "/api/search/traces", {"service": "back", "since": "1h", "limit": "3"}, tenant=data)
    assert [t["traceID"] for t in doc["traces"]] == [tid(14), tid(13), tid(12)]
    t14, t13 = doc["traces"][:2]
    assert t14["rootServiceName"] == "front" and t14["rootTraceName"] == "GET /home" and not t14["rootMissing"]
    assert t14["spanCount"] == 30 and t14["errorCount"] == 0 and t14["durationMs"] == 50.0
    assert t13["errorCount"] == 1 and t13["services"] == [{"name": "back", "spans": 1, "errors": 0},
                                                          {"name": "front", "spans": 2, "errors": 1}]
    assert int(t13["startTimeUnixNano"]) == NOW_NS - 10 * 60 * S
    doc = jget(store, "/api/search/traces", {"status": "error", "since": "1h"}, tenant=data)
    assert [t["traceID"] for t in doc["traces"]] == [tid(13)]
    doc = jget(store, "/api/search/traces", {"tag": "http.route=/api", "minDuration": "1s", "since": "1h"},
               tenant=data)
    assert sorted(t["traceID"] for t in doc["traces"]) == [tid(n) for n in (10, 11, 12)]
    for params in ({"limit": "1501"}, {"limit": "0"}, {"status": "meh"}, {"since": "forever"}):
        st, ctype, body = call(store, "/api/search/traces", params, tenant=data)
        assert st == 400 and ctype.startswith("text/plain") and body.endswith(b"\n") and body.count(b"\n") == 1


def test_otlp_json(store, data):
    doc = jget(store, f"/api/traces/{tid(13)}/otlp", tenant=data)
    spans = [s for rs in doc["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]]
    assert {s["spanId"] for s in spans} == {sid(13, k) for k in range(3)}
    root = next(s for s in spans if "parentSpanId" not in s)
    assert root["status"]["code"] == 2 and root["kind"] == 2
    assert {"key": "http.response.status_code", "value": {"intValue": "500"}} in root["attributes"]
    assert jget(store, f"/api/v3/traces/{tid(13)}", tenant=data)["result"] == doc
    st, ctype, body = call(store, f"/api/traces/{'e' * 32}/otlp", tenant=data)
    assert st == 404 and ctype.startswith("text/plain")


def test_logs_of_a_trace(store, data):
    doc = jget(store, f"/api/traces/{tid(13)}/logs", tenant=data)
    assert [r["body"] for r in doc["logs"]] == ["failed step 0", "failed step 1", "failed step 2"]
    assert doc["logs"][0]["spanID"] == sid(13, 0) and doc["logs"][0]["severityText"] == "ERROR"
    assert tid(13) in doc["logql"]
    assert jget(store, f"/api/traces/{tid(12)}/logs", tenant=data)["logs"] == []
    assert call(store, "/api/traces/zz/logs", tenant=data)[0] == 400


def test_red(store, data):
    doc = jget(store, "/api/red", {"since": "1h"}, tenant=data)
    rows = {r["service"]: r for r in doc["data"]}
    assert set(rows) == {"front", "back"}
    assert rows["front"]["requests"] == 15 and rows["front"]["errors"] == 1
    assert rows["front"]["errorRate"] == round(1 / 15, 6)
    assert rows["front"]["rate"] == round(15 / 3600, 6)
    assert rows["front"]["p99Ms"] >= 1000 and rows["front"]["p50Ms"] < 100
    doc = jget(store, "/api/red", {"since": "1h", "by": "operation", "service": "back", "spanKind": "all"},
               tenant=data)
    assert {(r["service"], r["operation"]): r["requests"] for r in doc["data"]} == {("back", "GET /api"): 15,
                                                                                     ("back", "work"): 27}
    doc = jget(store, "/api/red/series", {"since": "1h", "step": "10m", "service": "front"}, tenant=data)
    assert doc["step"] == 600 and len(doc["series"]) == 1
    pts = doc["series"][0]["points"]
    assert sum(p["requests"] for p in pts) == 15 and all(p["t"] % 600 == 0 for p in pts)
    for params in ({"by": "pod"}, {"step": "1ms", "since": "7d"}, {"spanKind": "weird"}):
        assert call(store, "/api/red/series", params, tenant=data)[0] == 400
