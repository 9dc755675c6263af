"""Hostile and malformed requests to the query port of a running ``meshscope serve --demo``: each gets a clear 4xx
(never a 5xx, a traceback or a hang) and the server stays ready. The cases are those an API probe found answering
500/503 (see the commit that added this file)."""
from __future__ import annotations

import http.client
import json
import urllib.parse

import pytest

from meshscope.query.logql.engine import LogQLEngine, QueryError
from meshscope.store import StoreError


def request(srv, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
            timeout: float = 60) -> tuple[int, bytes]:
    """``path`` is sent as given (already percent-encoded), so tests can send bytes no client library would."""
    u = urllib.parse.urlsplit(srv.http_url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def q(text: str) -> str:
    return urllib.parse.quote(text, safe="")


DEEP_LOGQL = "(" * 1000 + 'count_over_time({service_name=~".+"}[1m])' + ")" * 1000
BAD = [
    # LogQL: a stream selector regex RE2 rejects, nesting, too many selectors, durations past int64
    ("GET", "/loki/api/v1/query_range?query=" + q('{a=~"("}'), "invalid regex"),
    ("GET", "/loki/api/v1/series?match[]=" + q('{a=~"(?<=a)b"}'), "invalid regex"),
    ("GET", "/loki/api/v1/labels?query=" + q('{a=~"a{1001}"}'), "invalid regex"),
    ("GET", "/loki/api/v1/query_range?query=" + q(DEEP_LOGQL), "nested too deeply"),
    ("GET", "/loki/api/v1/query?query=" + q("sum(" * 250 + 'count_over_time({a="b"}[1m])' + ")" * 250),
     "nested too deeply"),
    ("GET", "/loki/api/v1/query_range?query=" + q('rate({service_name=~".+"}[1000y])'), "out of range"),
    ("GET", "/loki/api/v1/query_range?query=" + q('rate({service_name=~".+"}[5m] offset 1000y)'), "out of range"),
    # PromQL: a subquery grid refused before it is allocated; offsets, @ and ranges past int64
    ("GET", "/api/v1/query?query=" + q("vector(1)[3d:1ms]"), "too many steps"),
    ("GET", "/api/v1/query?query=" + q("x[1y:1ms]"), "too many steps"),
    ("GET", "/api/v1/query?query=" + q("x offset 1000y"), "out of range"),
    ("GET", "/api/v1/query?query=" + q("x @ 1e30"), "out of bounds"),
    ("GET", "/api/v1/query?query=" + q("absent_over_time(x[1000y])"), "out of range"),
    # escapes that make text no UTF-8 encoder takes (half a surrogate pair) in JSON tags and LogQL strings
    ("GET", "/api/traces?service=productpage&tags=" + q('{"\\ud800":"x"}'), "UTF-8"),
    ("GET", "/api/search/traces?tags=" + q('{"k":"\\udc80"}'), "UTF-8"),
    ("GET", "/loki/api/v1/query_range?query=" + q('{service_name="\\ud800"}'), "invalid syntax"),
    ("GET", "/loki/api/v1/format_query?query=" + q('{service_name="\\ud800"}'), "invalid syntax"),
    ("GET", "/loki/api/v1/query_range?query=" + q('{service_name=~".+"} | json a="\\ud800"'), "invalid syntax"),
    ("GET", "/loki/api/v1/query_range?query=" + q('{service_name="\\U00110000"}'), "invalid syntax"),
    # a tail with a bad stream selector regex is refused before the WebSocket opens; exemplars check their input
    ("GET", "/loki/api/v1/tail?query=" + q('{a=~"("}'), "invalid regex"),
    ("GET", "/api/v1/query_exemplars?query=" + q("bad("), "parse error"),
    ("GET", "/api/v1/query_exemplars?query=up&start=10&end=abc", "cannot parse"),
    ("GET", "/api/v1/query_exemplars?query=up&start=10&end=5", "before start"),
]


@pytest.mark.parametrize("method,path,why", BAD, ids=[f"{i}" for i in range(len(BAD))])
def test_bad_query_input_is_a_4xx_that_says_why(demo_server, method, path, why):
    status, body = request(demo_server, method, path)
    assert 400 <= status < 500, (status, body[:300])
    assert why.lower() in body.decode("utf-8", "replace").lower(), body[:300]
    assert request(demo_server, "GET", "/ready")[0] == 200


@pytest.mark.parametrize("path", ["/api/v1/query", "/loki/api/v1/query_range"])
def test_a_broken_multipart_body_is_a_400(demo_server, path):
    status, body = request(demo_server, "POST", path, body=b"--x\r\nbad",
                           headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert status == 400, (status, body[:300])


def test_edges_of_time_and_names_are_not_errors_of_ours(demo_server):
    """Inputs Prometheus answers: the Go client's "all time", a label name escape past U+10FFFF, a string escape
    that makes a label value that is not UTF-8 (written with U+FFFD, as Go's JSON encoder does)."""
    for path in ("/api/v1/query?query=up&time=-1e30",
                 "/api/v1/query?query=up&time=" + q("-292273086-05-16T16:47:06Z"),
                 "/api/v1/query_range?query=up&start=" + q("-292273086-05-16T16:47:06Z") + "&end=0&step=1y",
                 "/api/v1/label/U___110000_/values",
                 "/api/v1/series?match[]=" + q('{a="\\xff"}'),
                 "/api/v1/query_exemplars?query=up&start=0&end=10"):
        status, body = request(demo_server, "GET", path)
        assert status == 200 and json.loads(body)["status"] == "success", (path, status, body[:300])
    status, body = request(demo_server, "GET", "/api/v1/query?query=" + q('label_replace(vector(1), "a", "\\xc3", "", "")'))
    assert status == 200, body[:300]
    assert json.loads(body)["data"]["result"][0]["metric"] == {"a": "\ufffd"}
    for query in ('label_replace(vector(1), "\\xff", "a", "", "")', '{__name__="\\xff"} + on("\\xff") vector(1)'):
        status, body = request(demo_server, "GET", "/api/v1/query?query=" + q(query))
        assert 400 <= status < 500 and json.loads(body)["status"] == "error", (query, status, body[:300])


@pytest.mark.parametrize("path", ["/static/" + "a" * 5000, "/static/%00"])
def test_impossible_static_file_names_are_404(demo_server, path):
    assert request(demo_server, "GET", path)[0] == 404


def test_a_logql_query_past_its_deadline_is_a_504(store):
    """Every store query of one request shares one deadline: past it, the request ends with 504."""
    eng = LogQLEngine(store, timeout_s=1e-9)
    with pytest.raises(QueryError) as err:
        eng.query_range('count_over_time({service_name=~".+"}[1m])', 0, 60 * 10**9, 10**9)
    assert err.value.status == 504 and "timed out" in err.value.message
    with pytest.raises(QueryError) as err:
        eng.labels(0, 60 * 10**9)
    assert err.value.status == 504
    assert LogQLEngine(store).labels(0, 60 * 10**9) == []  # the deadline is per request, not left behind


def test_a_promql_store_query_past_the_request_deadline_is_not_sent(store):
    """PromApi's worker threads run each request under its deadline: the series source's store queries carry
    max_execution_time and, once the deadline has passed, are not sent at all."""
    import time

    from meshscope.query.deadline import DeadlineExceeded, DeadlineStore, deadline, store_settings
    from meshscope.query.promql.store_source import MetricCatalogue, StoreSeriesSource

    recording = RecordingStore(store)
    src = StoreSeriesSource(DeadlineStore(recording), "deadline-test", MetricCatalogue(store))
    assert src.label_names(0, 10**9) == []  # an index query; outside any request: no deadline
    assert recording.limits() == [None]
    with deadline(60):
        assert store_settings()["max_execution_time"] == 60
        with deadline(3600):  # a nested call keeps the request's deadline
            assert store_settings()["max_execution_time"] == 60
        assert src.label_names(0, 10**9) == []
    assert recording.limits() == [None, 60]  # what reached the store
    assert store_settings() is None
    with deadline(1e-6):
        time.sleep(0.01)
        with pytest.raises(DeadlineExceeded):
            src.label_names(0, 10**9)


class RecordingStore:
    """The real store, remembering the settings each query was sent with."""

    def __init__(self, store, fail: Exception | None = None):
        self._store, self.fail, self.settings = store, fail, []
        self.database = store.database

    def query(self, sql, parameters=None, settings=None):
        self.settings.append(dict(settings or {}))
        if self.fail is not None:
            raise self.fail
        return self._store.query(sql, parameters=parameters, settings=settings)

    def limits(self) -> list:
        return [s.get("max_execution_time") for s in self.settings]

    def __getattr__(self, name):
        return getattr(self._store, name)


STORE_TIMEOUT = "Code: 159. DB::Exception: Timeout exceeded: elapsed 1.0 seconds, maximum: 1. (TIMEOUT_EXCEEDED)"


def test_prom_api_requests_carry_their_deadline_and_report_store_timeouts(store):
    """Through PromApi itself: its worker runs the request under the request's timeout, every store query of the
    series source is sent with it, and a store that gives up at max_execution_time is a "timeout" answer."""
    import asyncio

    from meshscope.query.prom_api import PromApi

    recording = RecordingStore(store)
    api = PromApi(recording)
    asyncio.run(api._run(30, api.source("deadline-api").label_names, 0, 10**9))
    assert recording.limits() and all(x is not None and 0 < x <= 30 for x in recording.limits())

    import urllib.error
    import urllib.request

    from test_prom_api import ApiServer

    srv = ApiServer(RecordingStore(store, fail=StoreError(STORE_TIMEOUT)))
    try:
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{srv.url}/api/v1/labels?start=0&end=1", timeout=30)
    finally:
        srv.close()
    assert err.value.code == 503 and json.loads(err.value.read())["errorType"] == "timeout"


def test_logql_store_queries_carry_the_deadline_and_store_timeouts_are_504(store):
    recording = RecordingStore(store)
    assert LogQLEngine(recording, timeout_s=30).labels(0, 60 * 10**9) == []
    assert recording.limits() and all(x is not None and 0 < x <= 30 for x in recording.limits())
    eng = LogQLEngine(RecordingStore(store, fail=StoreError(STORE_TIMEOUT)))
    with pytest.raises(QueryError) as err:
        eng.labels(0, 60 * 10**9)
    assert err.value.status == 504
