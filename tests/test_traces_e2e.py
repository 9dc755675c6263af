"""Acceptance: a multi-service trace sent by the real OpenTelemetry SDK over OTLP to ``meshscope serve`` comes back
from ``/api/traces/<id>`` in Jaeger's shape (references, µs timings, typed tags, a process per service), a search by
service and minDuration finds exactly the slow traces, and ``meshscope traces get|search`` print them.
"""
from __future__ import annotations

import argparse
import time
import urllib.error
import urllib.request

import orjson
import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

pytestmark = pytest.mark.slow

MS = 1_000_000
def get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, orjson.loads(r.read())
    except urllib.error.HTTPError as err:
        body = err.read()
        try:
            return err.code, orjson.loads(body)
        except orjson.JSONDecodeError:  # e.g. the server's plain 404 for a route it does not have
            return err.code, body


def providers(endpoint: str):
    out = {}
    for name in ("frontend", "checkout", "payment"):
        tp = TracerProvider(resource=Resource.create({"service.name": name, "service.version": "1.2",
                                                      "k8s.namespace.name": "shop", "host.cores": 8}))
        tp.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=endpoint + "/v1/traces")))
        out[name] = tp
    return out


def send_trace(tps, t0: int, root_ms: int, fail: bool = False) -> tuple[str, dict]:
    """frontend SERVER → frontend CLIENT → checkout SERVER → checkout CLIENT → payment SERVER (+ an INTERNAL span
    linked to the root). Explicit times, so durations are exact."""
    fe, co, pay = (tps[n].get_tracer("e2e", "0.1") for n in ("frontend", "checkout", "payment"))
    root = fe.start_span("GET /checkout", kind=SpanKind.SERVER, start_time=t0, attributes={
        "http.request.method": "GET", "http.response.status_code": 500 if fail else 200, "retry": False,
        "sample.ratio": 0.25, "tags.list": ["a", "b"], "user.id": "007"})
    ctx = trace.set_span_in_context(root)
    cl = fe.start_span("POST", kind=SpanKind.CLIENT, context=ctx, start_time=t0 + 1 * MS,
                       attributes={"server.address": "checkout"})
    srv = co.start_span("POST /orders", kind=SpanKind.SERVER, context=trace.set_span_in_context(cl),
                        start_time=t0 + 2 * MS)
    srv.add_event("order.validated", {"items": 3}, timestamp=t0 + 3 * MS)
    cl2 = co.start_span("POST", kind=SpanKind.CLIENT, context=trace.set_span_in_context(srv), start_time=t0 + 4 * MS)
    pay_srv = pay.start_span("POST /charge", kind=SpanKind.SERVER, context=trace.set_span_in_context(cl2),
                             start_time=t0 + 5 * MS)
    if fail:
        pay_srv.set_status(Status(StatusCode.ERROR, "card declined"))
    else:
        pay_srv.set_status(Status(StatusCode.OK))
    bg = co.start_span("audit", kind=SpanKind.INTERNAL, context=trace.set_span_in_context(srv),
                       links=[Link(root.get_span_context())], start_time=t0 + 6 * MS)
    bg.end(end_time=t0 + 7 * MS)
    pay_srv.end(end_time=t0 + (root_ms - 5) * MS)
    cl2.end(end_time=t0 + (root_ms - 4) * MS)
    srv.end(end_time=t0 + (root_ms - 3) * MS)
    cl.end(end_time=t0 + (root_ms - 2) * MS)
    root.end(end_time=t0 + root_ms * MS)
    ids = {"root": root, "client": cl, "checkout": srv, "client2": cl2, "payment": pay_srv, "audit": bg}
    return f"{root.get_span_context().trace_id:032x}", {k: f"{v.get_span_context().span_id:016x}"
                                                         for k, v in ids.items()}


def test_sdk_trace_through_jaeger_api(server_factory, capsys):
    srv = server_factory("--flush-interval", "0.2")
    tps = providers(srv.otlp_url)
    now = time.time_ns() - 60 * 1_000_000_000
    fast = [send_trace(tps, now + i * 10 * MS, 20) for i in range(4)]
    slow = [send_trace(tps, now + (100 + i * 10) * MS, 1500 + i, fail=(i == 0)) for i in range(2)]
    for tp in tps.values():
        tp.shutdown()

    base = srv.http_url
    # wait until the spans are stored (a running server flushes every 0.2 s)
    deadline = time.time() + 60
    while True:
        status, doc = get(f"{base}/api/traces/{slow[0][0]}")
        if status == 200 and len(doc["data"][0]["spans"]) == 6:
            break
        assert time.time() < deadline, doc
        time.sleep(0.3)

    assert get(base + "/api/services")[1]["data"] == ["checkout", "frontend", "payment"]
    assert get(base + "/api/services/checkout/operations")[1]["data"] == ["POST", "POST /orders", "audit"]

    trace_id, sids = slow[0]
    t = doc["data"][0]
    assert t["traceID"] == trace_id
    spans = {s["spanID"]: s for s in t["spans"]}
    assert set(spans) == set(sids.values())
    procs = t["processes"]
    assert sorted(p["serviceName"] for p in procs.values()) == ["checkout", "frontend", "payment"]
    for p in procs.values():
        ptags = {x["key"]: (x["type"], x["value"]) for x in p["tags"]}
        assert ptags["service.version"] == ("string", "1.2") and ptags["host.cores"] == ("int64", 8)
        assert ptags["telemetry.sdk.name"] == ("string", "opentelemetry")
    svc_of = {sid: procs[s["processID"]]["serviceName"] for sid, s in spans.items()}
    assert svc_of[sids["root"]] == "frontend" and svc_of[sids["checkout"]] == "checkout"
    assert svc_of[sids["payment"]] == "payment"

    def child_of(k):
        return [r for r in spans[sids[k]]["references"] if r["refType"] == "CHILD_OF"]

    assert child_of("root") == []
    for k, parent in (("client", "root"), ("checkout", "client"), ("client2", "checkout"),
                      ("payment", "client2"), ("audit", "checkout")):
        assert child_of(k) == [{"refType": "CHILD_OF", "traceID": trace_id, "spanID": sids[parent]}]
    assert {"refType": "FOLLOWS_FROM", "traceID": trace_id, "spanID": sids["root"]} in \
        spans[sids["audit"]]["references"]

    root = spans[sids["root"]]
    t0 = now + 100 * MS
    assert root["startTime"] == t0 // 1000 and root["duration"] == 1_500_000
    assert spans[sids["checkout"]]["startTime"] == (t0 + 2 * MS) // 1000
    rtags = {x["key"]: (x["type"], x["value"]) for x in root["tags"]}
    assert rtags["http.request.method"] == ("string", "GET")
    assert rtags["http.response.status_code"] == ("int64", 500)
    assert rtags["retry"] == ("bool", False)
    assert rtags["sample.ratio"] == ("float64", 0.25)
    assert rtags["tags.list"] == ("string", '["a","b"]')
    assert rtags["user.id"] == ("string", "007")
    assert rtags["span.kind"] == ("string", "server")
    assert rtags["otel.scope.name"] == ("string", "e2e") and rtags["otel.scope.version"] == ("string", "0.1")
    ptags = {x["key"]: (x["type"], x["value"]) for x in spans[sids["payment"]]["tags"]}
    assert ptags["otel.status_code"] == ("string", "ERROR") and ptags["error"] == ("bool", True)
    assert ptags["otel.status_description"] == ("string", "card declined")
    ev = spans[sids["checkout"]]["logs"]
    assert ev == [{"timestamp": (t0 + 3 * MS) // 1000,
                   "fields": [{"key": "event", "type": "string", "value": "order.validated"},
                              {"key": "items", "type": "int64", "value": 3}]}]
    assert {x["value"] for x in spans[sids["client"]]["tags"] if x["key"] == "span.kind"} == {"client"}
    assert {x["value"] for x in spans[sids["audit"]]["tags"] if x["key"] == "span.kind"} == {"internal"}

    # search by service + minDuration finds exactly the slow traces (Jaeger API, µs window)
    start_us, end_us = (now - 60 * 1_000_000_000) // 1000, (now + 60 * 1_000_000_000) // 1000
    status, found = get(f"{base}/api/traces?service=frontend&minDuration=1s&start={start_us}&end={end_us}"
                        f"&limit=20")
    assert status == 200
    assert sorted(x["traceID"] for x in found["data"]) == sorted(t for t, _ in slow)
    status, found = get(f"{base}/api/traces?service=payment&minDuration=100ms&tags=%7B%22error%22%3A%22true"
                        f"%22%7D&start={start_us}&end={end_us}")
    assert [x["traceID"] for x in found["data"]] == [slow[0][0]]
    status, found = get(f"{base}/api/traces?service=frontend&maxDuration=100ms&start={start_us}&end={end_us}")
    assert sorted(x["traceID"] for x in found["data"]) == sorted(t for t, _ in fast)
    assert get(f"{base}/api/traces/{'1' * 32}")[0] == 404
    assert get(f"{base}/api/traces/not-hex")[0] == 400

    # the CLI against the same routes
    from meshscope.query.tracecli import add_traces_subparser, run_traces

    ap = argparse.ArgumentParser()
    add_traces_subparser(ap.add_subparsers(dest="command"))
    capsys.readouterr()
    assert run_traces(ap.parse_args(["traces", "get", trace_id, "--addr", base])) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"trace {trace_id}") and "6 spans, 3 services, 1 errors" in out[0]
    assert out[1].startswith("frontend: GET /checkout") and "1.50s" in out[1]
    assert out[2].startswith("  frontend: POST")
    assert out[3].startswith("    checkout: POST /orders")
    assert any(line.startswith("        payment: POST /charge !") for line in out)
    assert run_traces(ap.parse_args(["traces", "search", "-s", "frontend", "--min-duration", "1s", "--since",
                                     "1h", "--addr", base])) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["TRACE", "ID", "START"] and len(out) == 3
    assert {line.split()[0] for line in out[1:]} == {t for t, _ in slow}
    assert run_traces(ap.parse_args(["traces", "get", "zz", "--addr", base])) == 1
    assert "invalid trace id" in capsys.readouterr().err
