"""Loki's query API (``/loki/api/v1/...``) on a real ``meshscope serve``, fed by the real OpenTelemetry SDK log
exporter and by the Loki push API.

One server for the module: the data is written once (in distinct streams per test concern) and every test reads
it. Expected values are written from Loki's documented shapes (shared/reference/logql.md §5.5, §5.6, §6), not
from the implementation.
"""
from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import aiohttp
import pytest
from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource

from conftest import start_server

NS = 1_000_000_000
RUN = uuid.uuid4().hex[:8]
SDK_SVC = f"sdk-{RUN}"
PUSH_APP = f"push-{RUN}"
TENANT_APP = f"tenant-{RUN}"
TAIL_APP = f"tail-{RUN}"
# Whole seconds two minutes ago: inside the default 1 h window, and matrix timestamps come out as integers.
BASE_S = int(time.time()) - 120
BASE = BASE_S * NS
SDK_LEVELS = ["info", "error"] * 3  # line i has level SDK_LEVELS[i], timestamp BASE + i s


# ------------------------------------------------------------------------------------------- helpers
def http(srv, path: str, params=None, headers=None, data: bytes | None = None, method: str | None = None):
    """(status, content type, body text) of one request; errors are answers too."""
    url = srv.http_url + path + ("?" + urllib.parse.urlencode(params, doseq=True) if params else "")
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode()


def ok_json(srv, path: str, params=None, headers=None):
    status, ctype, body = http(srv, path, params, headers)
    assert status == 200, body
    assert ctype.startswith("application/json")
    return json.loads(body)


def push(srv, streams: list[dict], tenant: str | None = None) -> None:
    headers = {"Content-Type": "application/json"}
    if tenant:
        headers["X-Scope-OrgID"] = tenant
    status, _, body = http(srv, "/loki/api/v1/push", data=json.dumps({"streams": streams}).encode(),
                           headers=headers, method="POST")
    assert status == 204, body


def entries(resp: dict) -> list[tuple[str, str]]:
    return [(v[0], v[1]) for s in resp["data"]["result"] for v in s["values"]]


def wait_for(srv, query: str, n: int, headers=None, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    got = -1
    while time.time() < deadline:
        resp = ok_json(srv, "/loki/api/v1/query_range", {"query": query, "limit": 1000, "start": BASE - 600 * NS},
                       headers)
        got = len(entries(resp))
        if got >= n:
            return
        time.sleep(0.3)
    raise AssertionError(f"{query}: {got} of {n} entries after {timeout}s\n{srv.log()[-3000:]}")


# ------------------------------------------------------------------------------------------- the server
@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    server = start_server(str(tmp_path_factory.mktemp("lokiapi") / "data"), "--flush-interval", "0.2")
    try:
        # Logs through the OpenTelemetry SDK's OTLP/HTTP exporter.
        lp = LoggerProvider(resource=Resource.create({"service.name": SDK_SVC, "k8s.namespace.name": "shop"}))
        lp.add_log_record_processor(SimpleLogRecordProcessor(
            OTLPLogExporter(endpoint=server.otlp_url + "/v1/logs", timeout=10)))
        logger = lp.get_logger("meshscope.tests.loki_api")
        for i, level in enumerate(SDK_LEVELS):
            logger.emit(LogRecord(timestamp=BASE + i * NS, body=f"sdk line {i} <&>",
                                  severity_number=SeverityNumber.INFO if level == "info" else SeverityNumber.ERROR,
                                  severity_text=level.upper(), attributes={"order_id": f"o-{i}"}))
        lp.shutdown()
        # Streams through Loki push, one with structured metadata.
        push(server, [
            {"stream": {"app": PUSH_APP, "env": "prod"},
             "values": [[str(BASE + 100), "GET /a 200"], [str(BASE + 2 * NS), "GET /b 500", {"trace_id": "t-1"}],
                        [str(BASE + 4 * NS), "GET /c 200"]]},
            {"stream": {"app": PUSH_APP, "env": "dev"},
             "values": [[str(BASE + 1 * NS), "dev one"], [str(BASE + 3 * NS), "dev two"]]},
        ])
        push(server, [{"stream": {"app": TENANT_APP}, "values": [[str(BASE), "secret of team-b"]]}], tenant="team-b")
        wait_for(server, f'{{service_name="{SDK_SVC}"}}', 6)
        wait_for(server, f'{{app="{PUSH_APP}"}}', 5)
        wait_for(server, f'{{app="{TENANT_APP}"}}', 1, headers={"X-Scope-OrgID": "team-b"})
        yield server
    finally:
        server.stop()


def qr(srv, query: str, headers=None, **params):
    p = {"query": query, "start": BASE - 60 * NS, "end": BASE + 60 * NS}
    p.update(params)
    return ok_json(srv, "/loki/api/v1/query_range", p, headers)


SDK_SEL = f'{{service_name="{SDK_SVC}"}}'
PUSH_SEL = f'{{app="{PUSH_APP}"}}'


# ------------------------------------------------------------------------------------------- log queries
def test_sdk_logs_found_by_logql_backward_default(srv):
    resp = qr(srv, SDK_SEL)
    assert resp["status"] == "success"
    data = resp["data"]
    assert data["resultType"] == "streams"
    assert data["stats"]["summary"]["totalEntriesReturned"] == 6
    # without categorize-labels a stream is the full label set: stream labels + structured metadata
    for s in data["result"]:
        assert s["stream"]["service_name"] == SDK_SVC
        assert s["stream"]["k8s_namespace_name"] == "shop"
        assert s["stream"]["level"] in ("info", "error")
        i = int(s["stream"]["order_id"][2:])
        assert s["values"] == [[str(BASE + i * NS), f"sdk line {i} <&>"]]
        assert SDK_LEVELS[i] == s["stream"]["level"]
    keys = [json.dumps(sorted(s["stream"].items())) for s in data["result"]]
    assert len(keys) == 6
    # streams are sorted by their label string
    strings = ["{" + ", ".join(f'{k}="{v}"' for k, v in sorted(s["stream"].items())) + "}" for s in data["result"]]
    assert strings == sorted(strings)


def test_direction_and_limit(srv):
    back = qr(srv, SDK_SEL, limit=2)
    assert sorted(e[1] for e in entries(back)) == ["sdk line 4 <&>", "sdk line 5 <&>"]
    fwd = qr(srv, SDK_SEL, limit=2, direction="FORWARD")
    assert sorted(e[1] for e in entries(fwd)) == ["sdk line 0 <&>", "sdk line 1 <&>"]


def test_start_inclusive_end_exclusive(srv):
    resp = qr(srv, SDK_SEL, start=BASE + NS, end=BASE + 3 * NS)
    assert sorted(e[1] for e in entries(resp)) == ["sdk line 1 <&>", "sdk line 2 <&>"]


def test_interval(srv):
    resp = qr(srv, SDK_SEL, direction="forward", interval="2s")
    assert sorted(e[0] for e in entries(resp)) == [str(BASE + i * NS) for i in (0, 2, 4)]
    resp = qr(srv, SDK_SEL, direction="forward", interval="2")  # float seconds work too
    assert len(entries(resp)) == 3


def test_categorize_labels(srv):
    resp = qr(srv, SDK_SEL, headers={"X-Loki-Response-Encoding-Flags": "categorize-labels"})
    data = resp["data"]
    assert data["encodingFlags"] == ["categorize-labels"]
    assert [s["stream"]["level"] for s in data["result"]] == ["error", "info"]  # sorted by label string
    for s in data["result"]:
        assert "order_id" not in s["stream"]
        ts = [int(v[0]) for v in s["values"]]
        assert ts == sorted(ts, reverse=True)  # backward inside each stream
        for v in s["values"]:
            i = (int(v[0]) - BASE) // NS
            assert v[1] == f"sdk line {i} <&>"
            # log attributes and the resource attributes that are not stream labels (Loki's OTLP convention)
            assert set(v[2]) == {"structuredMetadata"}
            assert v[2]["structuredMetadata"]["order_id"] == f"o-{i}"
            assert v[2]["structuredMetadata"]["telemetry_sdk_language"] == "python"


def test_categorize_labels_with_parsed_labels(srv):
    resp = qr(srv, PUSH_SEL + ' | regexp "(?P<method>[A-Z]+) (?P<path>\\\\S+)"',
              headers={"X-Loki-Response-Encoding-Flags": "categorize-labels"}, direction="forward")
    by_line = {v[1]: (s["stream"], v) for s in resp["data"]["result"] for v in s["values"]}
    stream, v = by_line["GET /b 500"]
    assert stream == {"app": PUSH_APP, "env": "prod", "service_name": PUSH_APP}
    assert v[2] == {"structuredMetadata": {"trace_id": "t-1"}, "parsed": {"method": "GET", "path": "/b"}}
    _, v = by_line["GET /a 200"]
    assert v[2] == {"parsed": {"method": "GET", "path": "/a"}}


def test_loki_pushed_streams_with_their_labels(srv):
    resp = qr(srv, PUSH_SEL, direction="forward")
    got = {(json.dumps(s["stream"], sort_keys=True), tuple(map(tuple, s["values"]))) for s in resp["data"]["result"]}
    prod = {"app": PUSH_APP, "env": "prod", "service_name": PUSH_APP}
    dev = {"app": PUSH_APP, "env": "dev", "service_name": PUSH_APP}
    assert got == {
        (json.dumps(prod, sort_keys=True), ((str(BASE + 100), "GET /a 200"), (str(BASE + 4 * NS), "GET /c 200"))),
        (json.dumps({**prod, "trace_id": "t-1"}, sort_keys=True), ((str(BASE + 2 * NS), "GET /b 500"),)),
        (json.dumps(dev, sort_keys=True), ((str(BASE + NS), "dev one"), (str(BASE + 3 * NS), "dev two"))),
    }


def test_line_filter_and_post_form(srv):
    body = urllib.parse.urlencode({"query": PUSH_SEL + ' |= "500"', "start": BASE - NS, "end": BASE + 60 * NS})
    status, _, text = http(srv, "/loki/api/v1/query_range", data=body.encode(), method="POST",
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200, text
    assert entries(json.loads(text)) == [(str(BASE + 2 * NS), "GET /b 500")]


def test_timestamp_formats(srv):
    rfc = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(BASE_S + 1)) + ".000000000Z"
    for start in (str(BASE_S + 1), f"{BASE_S + 1}.0", rfc, str(BASE + NS)):
        resp = qr(srv, SDK_SEL, start=start, end=BASE + 2 * NS)
        assert entries(resp) and {e[1] for e in entries(resp)} == {"sdk line 1 <&>"}, start
    # since: the window ends at `end`
    resp = qr(srv, SDK_SEL, start="", end=BASE + 6 * NS, since="2s")
    assert {e[1] for e in entries(resp)} == {"sdk line 4 <&>", "sdk line 5 <&>"}


# ------------------------------------------------------------------------------------------- metric queries
def test_metric_query_range_matrix(srv):
    resp = qr(srv, f"sum by (level) (count_over_time({SDK_SEL}[10s]))", start=BASE, end=BASE + 10 * NS, step="5s")
    data = resp["data"]
    assert data["resultType"] == "matrix"
    assert "stats" in data
    # windows (t-10s, t]: t=BASE holds line 0; BASE+5s lines 0-5; BASE+10s lines 1-5
    assert data["result"] == [
        {"metric": {"level": "error"}, "values": [[BASE_S + 5, "3"], [BASE_S + 10, "3"]]},
        {"metric": {"level": "info"}, "values": [[BASE_S, "1"], [BASE_S + 5, "3"], [BASE_S + 10, "2"]]},
    ]


def test_metric_query_range_count_over_time_labels_and_ms_step(srv):
    resp = qr(srv, f"count_over_time({PUSH_SEL}[1m])", start=BASE + 60 * NS, end=BASE + 60 * NS, step="1000ms")
    result = {json.dumps(r["metric"], sort_keys=True): r["values"] for r in resp["data"]["result"]}
    prod = {"app": PUSH_APP, "env": "prod", "service_name": PUSH_APP}
    assert result == {
        json.dumps(prod, sort_keys=True): [[BASE_S + 60, "2"]],
        json.dumps({**prod, "trace_id": "t-1"}, sort_keys=True): [[BASE_S + 60, "1"]],
        json.dumps({**prod, "env": "dev"}, sort_keys=True): [[BASE_S + 60, "2"]],
    }


def test_fractional_values_and_timestamps(srv):
    resp = qr(srv, f"sum(rate({SDK_SEL}[4s]))", start=BASE + 2500 * 10**6, end=BASE + 2500 * 10**6, step="1")
    assert resp["data"]["result"] == [{"metric": {}, "values": [[BASE_S + 2.5, "0.75"]]}]


def test_instant_query_vector(srv):
    resp = ok_json(srv, "/loki/api/v1/query",
                   {"query": f"sum by (level) (count_over_time({SDK_SEL}[1h]))", "time": BASE + 60 * NS})
    data = resp["data"]
    assert data["resultType"] == "vector"
    assert data["result"] == [{"metric": {"level": "error"}, "value": [BASE_S + 60, "3"]},
                              {"metric": {"level": "info"}, "value": [BASE_S + 60, "3"]}]
    assert "summary" in data["stats"]


def test_grafana_health_check(srv):
    """Grafana's "Save & test": vector(1)+vector(1) at time=4000000000 must come back as one sample of value 2.
    Loki reads a timestamp of up to 10 digits as seconds, so the answer's time is 4000000000 s."""
    resp = ok_json(srv, "/loki/api/v1/query", {"query": "vector(1)+vector(1)", "time": "4000000000"})
    assert resp["status"] == "success"
    assert resp["data"]["resultType"] == "vector"
    assert resp["data"]["result"] == [{"metric": {}, "value": [4000000000, "2"]}]
    # 4 s written in ns (more than 10 digits) is 4 s
    resp = ok_json(srv, "/loki/api/v1/query", {"query": "vector(1)+vector(1)", "time": "4000000000000"})
    assert resp["data"]["result"] == [{"metric": {}, "value": [4000, "2"]}]


def test_literal_is_scalar_instant_and_matrix_range(srv):
    resp = ok_json(srv, "/loki/api/v1/query", {"query": "1+1", "time": "4.5"})
    assert resp["data"]["resultType"] == "scalar"
    assert resp["data"]["result"] == [4.5, "2"]
    resp = qr(srv, "1+1", start=10, end=12, step=1)
    assert resp["data"]["resultType"] == "matrix"
    assert resp["data"]["result"] == [{"metric": {}, "values": [[10, "2"], [11, "2"], [12, "2"]]}]


# ------------------------------------------------------------------------------------------- errors
def assert_400(srv, path, params, expect: str, headers=None):
    status, ctype, body = http(srv, path, params, headers)
    assert status == 400, body
    assert ctype.startswith("text/plain")
    assert expect in body, body
    return body


def test_syntax_error_is_400_with_the_parsers_message(srv):
    body = assert_400(srv, "/loki/api/v1/query_range", {"query": '{app="x"'}, "parse error at line 1, col 9")
    assert body.endswith("\n") and body.count("\n") == 1


def test_log_query_at_instant_endpoint(srv):
    body = assert_400(srv, "/loki/api/v1/query", {"query": SDK_SEL}, "")
    assert body == ("log queries are not supported as an instant query type, please change your query to a range "
                    "query type\n")


@pytest.mark.parametrize("params, expect", [
    ({"start": "yesterday"}, "could not parse 'start' parameter"),
    ({"end": "12:00"}, "could not parse 'end' parameter"),
    ({"since": "an hour"}, "could not parse 'since' parameter"),
    ({"limit": "0"}, "limit must be a positive value"),
    ({"limit": "ten"}, "limit"),
    ({"limit": "5001"}, "max entries limit per query exceeded"),
    ({"direction": "sideways"}, "invalid direction 'sideways'"),
    ({"step": "0"}, "zero or negative query resolution step widths are not accepted"),
    ({"step": "fast"}, "to a valid duration"),
    ({"start": str(BASE + NS), "end": str(BASE)}, "end timestamp must not be before"),
    ({"interval": "-1"}, "interval must be >= 0"),
    ({"start": str(BASE - 86400 * NS), "end": str(BASE), "step": "1"}, "exceeded maximum resolution of 11,000"),
])
def test_bad_parameters(srv, params, expect):
    p = {"query": SDK_SEL, **params}
    assert_400(srv, "/loki/api/v1/query_range", p, expect)


def test_query_too_long(srv):
    body = urllib.parse.urlencode({"query": '{a="' + "x" * 70000 + '"}'}).encode()
    status, _, text = http(srv, "/loki/api/v1/query_range", data=body, method="POST",
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 400 and text.startswith("query too long"), text


def test_invalid_tenant_header(srv):
    assert_400(srv, "/loki/api/v1/labels", {}, "X-Scope-OrgID", headers={"X-Scope-OrgID": "bad tenant/../"})


def test_bad_line_filter_regex_is_400(srv):
    assert_400(srv, "/loki/api/v1/query_range", {"query": SDK_SEL + ' |~ "("'}, "error parsing regexp")


# ------------------------------------------------------------------------------------------- metadata
def test_labels_and_values(srv):
    win = {"start": BASE - 60 * NS, "end": BASE + 60 * NS}
    names = ok_json(srv, "/loki/api/v1/labels", win)["data"]
    assert {"app", "env", "service_name", "level", "k8s_namespace_name"} <= set(names)
    assert names == sorted(names)
    assert "order_id" not in names  # structured metadata is not a label
    apps = ok_json(srv, "/loki/api/v1/label/app/values", win)["data"]
    assert PUSH_APP in apps and TENANT_APP not in apps
    envs = ok_json(srv, "/loki/api/v1/label/env/values", {**win, "query": PUSH_SEL})["data"]
    assert envs == ["dev", "prod"]
    only = ok_json(srv, "/loki/api/v1/labels", {**win, "query": PUSH_SEL})["data"]
    assert only == ["app", "env", "service_name"]
    # outside the window: nothing
    assert ok_json(srv, "/loki/api/v1/label/env/values", {"start": 1, "end": 2})["data"] == []


def test_series(srv):
    win = {"start": BASE - 60 * NS, "end": BASE + 60 * NS}
    data = ok_json(srv, "/loki/api/v1/series", {**win, "match[]": PUSH_SEL})["data"]
    assert data == [{"app": PUSH_APP, "env": "dev", "service_name": PUSH_APP},
                    {"app": PUSH_APP, "env": "prod", "service_name": PUSH_APP}]
    both = ok_json(srv, "/loki/api/v1/series", {**win, "match[]": f'{{app="{PUSH_APP}", env="dev"}}',
                                                "match": SDK_SEL})["data"]
    assert {s.get("env", s.get("level")) for s in both} == {"dev", "info", "error"}
    body = urllib.parse.urlencode({**win, "match[]": PUSH_SEL})
    status, _, text = http(srv, "/loki/api/v1/series", data=body.encode(), method="POST",
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200 and json.loads(text)["data"] == data
    everything = ok_json(srv, "/loki/api/v1/series", {**win, "match[]": "{}"})["data"]
    assert len(everything) >= 4
    assert_400(srv, "/loki/api/v1/series", {"match[]": ["{a=\"b\"}"] * 101}, "too many match[]")
    assert_400(srv, "/loki/api/v1/series", {"match[]": "{a="}, "parse error")


def test_index_stats(srv):
    st = ok_json(srv, "/loki/api/v1/index/stats", {"query": PUSH_SEL, "start": BASE - 60 * NS,
                                                     "end": BASE + 60 * NS})
    lines = ["GET /a 200", "GET /b 500", "GET /c 200", "dev one", "dev two"]
    assert st == {"streams": 2, "chunks": st["chunks"], "entries": 5, "bytes": sum(len(x) for x in lines)}


def test_index_volume(srv):
    win = {"start": BASE - 60 * NS, "end": BASE + 60 * NS}
    vol = ok_json(srv, "/loki/api/v1/index/volume", {**win, "query": PUSH_SEL, "targetLabels": "env"})
    assert vol["data"]["resultType"] == "vector"
    assert [(r["metric"], r["value"][1]) for r in vol["data"]["result"]] == [
        ({"env": "prod"}, str(len("GET /a 200GET /b 500GET /c 200"))), ({"env": "dev"}, str(len("dev onedev two")))]
    rng = ok_json(srv, "/loki/api/v1/index/volume_range", {**win, "query": PUSH_SEL, "step": "60s"})
    assert rng["data"]["resultType"] == "matrix"
    assert [r["metric"] for r in rng["data"]["result"]] == [{"app": PUSH_APP}]
    assert_400(srv, "/loki/api/v1/index/volume", {**win, "query": PUSH_SEL, "targetLabels": "a)"}, "targetLabels")


def test_buildinfo_format_query_detected_labels(srv):
    info = ok_json(srv, "/loki/api/v1/status/buildinfo")
    assert set(info) >= {"version", "revision", "branch", "goVersion"}
    fq = ok_json(srv, "/loki/api/v1/format_query", {"query": '{app="a"}|="x"'})
    assert fq == {"status": "success", "data": '{app="a"} |= "x"'}
    status, _, _ = http(srv, "/loki/api/v1/detected_labels", {"start": 1, "end": 2})
    assert status == 404  # Grafana falls back to /labels on any error


# ------------------------------------------------------------------------------------------- tenants
def test_tenant_isolation(srv):
    sel = f'{{app="{TENANT_APP}"}}'
    assert entries(qr(srv, sel)) == []
    got = entries(qr(srv, sel, headers={"X-Scope-OrgID": "team-b"}))
    assert got == [(str(BASE), "secret of team-b")]
    assert entries(qr(srv, SDK_SEL, headers={"X-Scope-OrgID": "team-b"})) == []
    win = {"start": BASE - 60 * NS, "end": BASE + 60 * NS}
    assert ok_json(srv, "/loki/api/v1/label/app/values", win, {"X-Scope-OrgID": "team-b"})["data"] == [TENANT_APP]


# ------------------------------------------------------------------------------------------- tail
def test_tail_receives_a_line_pushed_after_connecting(srv):
    async def run() -> list[dict]:
        frames = []
        url = srv.http_url.replace("http", "ws") + "/loki/api/v1/tail"
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(url, params={"query": f'{{app="{TAIL_APP}"}} |= "live"',
                                                       "limit": "10"}) as ws:
                await asyncio.sleep(0.5)
                now = time.time_ns()
                await asyncio.to_thread(push, srv, [{"stream": {"app": TAIL_APP, "k": "v"},
                                                     "values": [[str(now), "live one"], [str(now + 1), "not it"]]}])
                deadline = time.time() + 20
                while time.time() < deadline:
                    msg = await ws.receive(timeout=deadline - time.time())
                    assert msg.type == aiohttp.WSMsgType.TEXT, msg
                    frames.append(json.loads(msg.data))
                    if any(v[1] == "live one" for f in frames for s in f["streams"] for v in s["values"]):
                        break
                await ws.close()
        return frames

    frames = asyncio.run(run())
    lines = [(s["stream"], v) for f in frames for s in f["streams"] for v in s["values"]]
    assert [v[1] for _, v in lines] == ["live one"]
    assert lines[0][0] == {"app": TAIL_APP, "k": "v", "service_name": TAIL_APP}
    assert "dropped_entries" not in frames[0]


def test_tail_sends_history_then_stops_when_the_client_leaves(srv):
    async def run():
        url = srv.http_url.replace("http", "ws") + "/loki/api/v1/tail"
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(url, params={"query": PUSH_SEL, "limit": "2",
                                                       "start": str(BASE - NS)}) as ws:
                msg = await ws.receive(timeout=10)
                await ws.close()
                return json.loads(msg.data)

    frame = asyncio.run(run())
    got = sorted(v[0] for s in frame["streams"] for v in s["values"])
    assert got == [str(BASE + 3 * NS), str(BASE + 4 * NS)]  # the newest `limit` lines
    # the server is still fine
    assert ok_json(srv, "/loki/api/v1/labels")["status"] == "success"


def test_tail_sends_a_line_the_store_took_late(srv):
    """A line that reaches the store 90 s after its timestamp (a batching collector, a loaded machine) is still sent,
    once, although the tail had long passed that time."""
    app = f"late-{RUN}"

    async def run() -> list[list]:
        url = srv.http_url.replace("http", "ws") + "/loki/api/v1/tail"
        got = []
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(url, params={"query": f'{{app="{app}"}}',
                                                       "start": str(time.time_ns() - 200 * NS)}) as ws:
                await asyncio.sleep(1.5)  # the tail is polling, its cursor at now
                late = time.time_ns() - 90 * NS
                await asyncio.to_thread(push, srv, [{"stream": {"app": app}, "values": [[str(late), "late one"]]}])
                deadline = time.time() + 20
                while time.time() < deadline:
                    try:
                        msg = await ws.receive(timeout=3 if got else deadline - time.time())
                    except asyncio.TimeoutError:
                        break  # three quiet seconds after the line: no repeat came
                    assert msg.type == aiohttp.WSMsgType.TEXT, msg
                    got += [v for s in json.loads(msg.data)["streams"] for v in s["values"]]
                await ws.close()
        return got

    got = asyncio.run(run())
    assert [v[1] for v in got] == ["late one"]


def test_tail_history_cut_by_limit_stays_cut(srv):
    """The look-back for late lines does not send the lines that the history left out because of `limit`."""
    app = f"cut-{RUN}"
    base = (time.time_ns() // NS - 60) * NS  # well inside the tail's look-back, so the look-back does read them
    push(srv, [{"stream": {"app": app}, "values": [[str(base + i * NS), f"line {i}"] for i in range(5)]}])
    def stored() -> int:
        res = qr(srv, f'{{app="{app}"}}', start=str(base - NS), end=str(time.time_ns()))["data"]["result"]
        return sum(len(s["values"]) for s in res)

    deadline = time.time() + 30
    while stored() < 5 and time.time() < deadline:
        time.sleep(0.2)  # until the store has them: the tail's history must see all five

    async def run() -> list[list]:
        url = srv.http_url.replace("http", "ws") + "/loki/api/v1/tail"
        got = []
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(url, params={"query": f'{{app="{app}"}}', "limit": "2",
                                                       "start": str(base - NS)}) as ws:
                first = await ws.receive(timeout=15)  # the history, however slow the machine
                assert first.type == aiohttp.WSMsgType.TEXT, first
                got += [v for s in json.loads(first.data)["streams"] for v in s["values"]]
                deadline = time.time() + 3.5  # then three polls, each with the look-back
                while time.time() < deadline:
                    try:
                        msg = await ws.receive(timeout=deadline - time.time())
                    except asyncio.TimeoutError:
                        break
                    got += [v for s in json.loads(msg.data)["streams"] for v in s["values"]]
                await ws.close()
        return got

    got = asyncio.run(run())
    assert sorted(v[0] for v in got) == [str(base + 3 * NS), str(base + 4 * NS)]


def test_tail_categorized_by_query_parameter(srv):
    """A browser's WebSocket cannot send Loki's encoding-flags header; the same flag as a query parameter works."""
    async def run():
        url = srv.http_url.replace("http", "ws") + "/loki/api/v1/tail"
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(url, params={"query": PUSH_SEL, "limit": "5", "start": str(BASE - NS),
                                                       "encodingFlags": "categorize-labels"}) as ws:
                msg = await ws.receive(timeout=10)
                await ws.close()
                return json.loads(msg.data)

    frame = asyncio.run(run())
    assert frame["encodingFlags"] == ["categorize-labels"]
    by_line = {v[1]: (s["stream"], v) for s in frame["streams"] for v in s["values"]}
    stream, v = by_line["GET /b 500"]
    assert stream == {"app": PUSH_APP, "env": "prod", "service_name": PUSH_APP}  # trace_id is not a stream label
    assert v[2] == {"structuredMetadata": {"trace_id": "t-1"}}
    assert by_line["GET /a 200"][1][2] == {}
    # the query-range endpoint takes the parameter too
    resp = qr(srv, PUSH_SEL, encodingFlags="categorize-labels")
    assert resp["data"]["encodingFlags"] == ["categorize-labels"]


def test_tail_bad_parameters(srv):
    assert_400(srv, "/loki/api/v1/tail", {"query": PUSH_SEL, "delay_for": "6"}, "delay_for can't be greater than 5")
    assert_400(srv, "/loki/api/v1/tail", {"query": f"count_over_time({PUSH_SEL}[1m])"}, "log query")
    assert_400(srv, "/loki/api/v1/tail", {"query": "{"}, "parse error")
