"""Prometheus HTTP API (``query/prom_api.py``) end to end: metrics recorded with the real OpenTelemetry SDK, encoded
by its OTLP exporter's encoder and stored by the collector's own insert statements, then queried over HTTP.

Until ``meshscope serve`` mounts the routes, the API runs in-process (an aiohttp app over the session store on a
free port); ``test_serve_*`` drive a real ``meshscope serve`` and are skipped while it answers 404 there.
"""
from __future__ import annotations

import asyncio
import json
import math
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pytest
from test_otlp_sql import insert as otlp_insert
from aiohttp import web
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource

from conftest import free_port
from meshscope.query.prom_api import PromApi, parse_duration, parse_time

S = 1_000_000_000


# ------------------------------------------------------------------------------------------------ harness
class ApiServer:
    """``PromApi`` on a real socket in a thread with its own event loop (as ``meshscope serve`` would mount it)."""

    def __init__(self, store):
        self.api = PromApi(store)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(10)

    def _run(self):
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.add_routes(self.api.routes())
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        self.loop.run_until_complete(web.TCPSite(self.runner, "127.0.0.1", self.port).start())
        self.ready.set()
        self.loop.run_forever()

    def close(self):
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.api.close()


@pytest.fixture(scope="module")
def api(store):
    srv = ApiServer(store)
    yield srv
    srv.close()


def call(base: str, path: str, params=None, tenant: str | None = None, method: str = "GET"):
    """(status, parsed JSON body). POST sends the parameters as a form, as Grafana and Kiali do."""
    data = None
    url = base + path
    if params:
        enc = urllib.parse.urlencode(params, doseq=True)
        if method == "POST":
            data = enc.encode()
        else:
            url += "?" + enc
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/x-www-form-urlencoded")
    if tenant:
        req.add_header("X-Scope-OrgID", tenant)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def insert_sdk(store, tmp_path, reader: InMemoryMetricReader, tenant: str) -> None:
    """Collect the SDK's current cumulative state and store it as ``meshscope serve`` would."""
    otlp_insert(store, tmp_path, "metrics", encode_metrics(reader.get_metrics_data()), tenant=tenant)


def point_times(store, tenant: str, table: str = "otel_metrics_sum") -> list[int]:
    rows = store.query(f"SELECT DISTINCT toUnixTimestamp64Nano(TimeUnix) t FROM otel.{table} "
                       f"WHERE TenantId = {{t:String}} ORDER BY t", parameters={"t": tenant}).rows
    return [r[0] for r in rows]


def fmt_ts(ns: int):
    ms = ns // 1_000_000
    return ms // 1000 if ms % 1000 == 0 else ms / 1000


# ------------------------------------------------------------------------------------------------ parameters
def test_parse_time_and_duration():
    assert parse_time("1700000000") == 1700000000 * S
    assert parse_time("1700000000.123") == 1700000000 * S + 123_000_000
    assert parse_time("2023-11-14T22:13:20Z") == 1700000000 * S
    assert parse_time("2023-11-14T23:13:20.5+01:00") == 1700000000 * S + 500_000_000
    assert parse_time("9999-12-31T23:59:59Z") > parse_time("0001-01-01T00:00:00Z")
    assert parse_duration("5m") == 300 * S and parse_duration("1h30m") == 5400 * S
    assert parse_duration("15") == 15 * S and parse_duration("0.5") == S // 2
    with pytest.raises(ValueError):
        parse_duration("5 minutes")


# ------------------------------------------------------------------------------------------------ SDK end to end
def test_sdk_counter_histogram_gauge_query_range_exact(api, store, tmp_path):
    tenant = "prom-sdk"
    reader = InMemoryMetricReader()
    mp = MeterProvider(resource=Resource({"service.name": "checkout", "service.namespace": "shop",
                                          "service.instance.id": "pod-1", "host.name": "node-a"}),
                       metric_readers=[reader],
                       views=[View(instrument_name="http.server.request.duration",
                                   aggregation=ExplicitBucketHistogramAggregation([10, 50, 100]))])
    meter = mp.get_meter("shop.checkout", "1.0")
    orders = meter.create_counter("orders", unit="{order}", description="orders placed")
    lat = meter.create_histogram("http.server.request.duration", unit="ms")
    temp = {"v": 21.5}
    meter.create_observable_gauge("room.temperature", callbacks=[
        lambda options: [__import__("opentelemetry.metrics", fromlist=["Observation"]).Observation(temp["v"])]],
        unit="Cel")

    def record():
        # the same distribution each round: bucket increases stay proportional, so the hand computation below
        # does not depend on extrapolation
        for v, n in ((5, 4), (30, 10), (80, 6)):
            for _ in range(n):
                lat.record(v, {"route": "/pay"})

    orders.add(5, {"payment": "card"})
    record()
    insert_sdk(store, tmp_path, reader, tenant)
    time.sleep(0.05)
    orders.add(3, {"payment": "card"})
    record()
    temp["v"] = 22.0
    insert_sdk(store, tmp_path, reader, tenant)
    mp.shutdown()
    t1, t2 = point_times(store, tenant)

    # counter: the cumulative values, at the step times, through the lookback; Prometheus' exact JSON
    start, step = (t2 // 1_000_000 + 1) * 1_000_000, S  # the first whole ms at or after the last point
    status, body = call(api.url, "/api/v1/query_range", {"query": "orders_total", "start": f"{start / S:.3f}",
                                                         "end": f"{(start + 2 * S) / S:.3f}", "step": "1s"},
                        tenant=tenant)
    assert status == 200, body
    metric = {"__name__": "orders_total", "instance": "pod-1", "job": "shop/checkout", "payment": "card"}
    want_vals = [[fmt_ts(start + i * step), "8"] for i in range(3)]
    assert body == {"status": "success", "data": {"resultType": "matrix",
                                                  "result": [{"metric": metric, "values": want_vals}]}}

    # gauge with a unit, via form POST
    status, body = call(api.url, "/api/v1/query", {"query": "room_temperature_celsius", "time": f"{start / S:.3f}"},
                        tenant=tenant, method="POST")
    assert status == 200
    assert body["data"]["result"] == [{"metric": {"__name__": "room_temperature_celsius", "instance": "pod-1",
                                                  "job": "shop/checkout"},
                                       "value": [fmt_ts(start), "22"]}]

    # histogram_quantile over rate of the buckets, against the hand computation: increases per bucket
    # (<=10: 4, <=50: 10, <=100: 6, +Inf: 0) → cumulative 4, 14, 20, 20; rank 0.95 × 20 = 19 lies in (50, 100]:
    # 50 + 50 × (19 − 14) / (20 − 14)
    want = 50 + 50 * (19 - 14) / (20 - 14)
    q = "histogram_quantile(0.95, sum by (le) (rate(http_server_request_duration_milliseconds_bucket[5m])))"
    status, body = call(api.url, "/api/v1/query", {"query": q, "time": f"{start / S:.3f}"}, tenant=tenant)
    assert status == 200, body
    [res] = body["data"]["result"]
    assert res["metric"] == {}
    assert math.isclose(float(res["value"][1]), want, rel_tol=1e-12)
    # and the mean latency Kiali computes from _sum / _count
    q = ("sum(rate(http_server_request_duration_milliseconds_sum[5m])) / "
         "sum(rate(http_server_request_duration_milliseconds_count[5m]))")
    status, body = call(api.url, "/api/v1/query", {"query": q, "time": f"{start / S:.3f}"}, tenant=tenant)
    assert math.isclose(float(body["data"]["result"][0]["value"][1]), (4 * 5 + 10 * 30 + 6 * 80) / 20, rel_tol=1e-9)

    # metadata, series, labels, label values, target_info join
    status, body = call(api.url, "/api/v1/metadata", tenant=tenant)
    assert body["data"]["orders_total"] == [{"type": "counter", "help": "orders placed", "unit": ""}]
    assert body["data"]["http_server_request_duration_milliseconds"][0]["type"] == "histogram"
    status, body = call(api.url, "/api/v1/series", {"match[]": "orders_total"}, tenant=tenant, method="POST")
    assert body["data"] == [metric]
    status, body = call(api.url, "/api/v1/labels", tenant=tenant)
    assert {"__name__", "job", "instance", "payment", "route", "le"} <= set(body["data"])
    status, body = call(api.url, "/api/v1/label/__name__/values", tenant=tenant)
    assert body["data"] == ["http_server_request_duration_milliseconds_bucket",
                            "http_server_request_duration_milliseconds_count",
                            "http_server_request_duration_milliseconds_sum", "orders_total",
                            "room_temperature_celsius"]
    status, body = call(api.url, "/api/v1/label/payment/values", {"match[]": "orders_total"}, tenant=tenant)
    assert body["data"] == ["card"]
    q = "sum by (host_name) (orders_total * on (job, instance) group_left (host_name) target_info)"
    status, body = call(api.url, "/api/v1/query", {"query": q, "time": f"{start / S:.3f}"}, tenant=tenant)
    assert status == 200, body
    assert body["data"]["result"] == [{"metric": {"host_name": "node-a"}, "value": [fmt_ts(start), "8"]}]


def test_series_and_labels_answer_from_the_series_index(api, store, tmp_path):
    """/api/v1/series, /labels and /label/<name>/values read ``otel_metrics_series`` alone: with the tenant's
    samples deleted they still answer (queries find no samples), with its index rows deleted they answer nothing."""
    tenant = f"prom-index-{uuid.uuid4().hex[:8]}"
    reader = InMemoryMetricReader()
    mp = MeterProvider(resource=Resource({"service.name": "inv", "service.instance.id": "inv-0"}),
                       metric_readers=[reader])
    meter = mp.get_meter("inv")
    meter.create_counter("stock.moves").add(2, {"warehouse": "north"})
    meter.create_histogram("pick.time", unit="s").record(0.3, {"warehouse": "south"})
    insert_sdk(store, tmp_path, reader, tenant)
    mp.shutdown()
    t = point_times(store, tenant)[-1]

    def answers():
        return (call(api.url, "/api/v1/series", {"match[]": '{warehouse=~".+"}'}, tenant=tenant)[1]["data"],
                call(api.url, "/api/v1/labels", tenant=tenant)[1]["data"],
                call(api.url, "/api/v1/label/warehouse/values", tenant=tenant)[1]["data"],
                call(api.url, "/api/v1/label/le/values", tenant=tenant)[1]["data"])

    series, labels, values, les = answers()
    assert sorted(s["__name__"] for s in series) == [
        "pick_time_seconds_bucket"] * 16 + ["pick_time_seconds_count", "pick_time_seconds_sum", "stock_moves_total"]
    assert labels == ["__name__", "instance", "job", "le", "warehouse"]
    assert values == ["north", "south"]
    assert "+Inf" in les and len(les) == 16
    at = {"query": "stock_moves_total", "time": f"{(t // 1_000_000 + 1) / 1000:.3f}"}
    assert len(call(api.url, "/api/v1/query", at, tenant=tenant)[1]["data"]["result"]) == 1
    for table in ("otel_metrics_sum", "otel_metrics_histogram"):
        store.command(f"ALTER TABLE {store.database}.{table} DELETE WHERE TenantId = {{t:String}}",
                      parameters={"t": tenant}, settings={"mutations_sync": 2})
    assert answers() == (series, labels, values, les)
    assert call(api.url, "/api/v1/query", at, tenant=tenant)[1]["data"]["result"] == []
    store.command(f"ALTER TABLE {store.database}.otel_metrics_series DELETE WHERE TenantId = {{t:String}}",
                  parameters={"t": tenant}, settings={"mutations_sync": 2})
    assert answers() == ([], [], [], [])


# ------------------------------------------------------------------------------------------------ Grafana
def test_grafana_save_and_test(api):
    status, body = call(api.url, "/api/v1/query", {"query": "1+1", "time": "4"}, method="POST")
    assert (status, body) == (200, {"status": "success", "data": {"resultType": "scalar", "result": [4, "2"]}})
    status, body = call(api.url, "/api/v1/status/buildinfo")
    assert status == 200 and body["status"] == "success"
    assert "features" not in body["data"] and body["data"]["version"].split(".")[0].isdigit()
    for path, key in (("/api/v1/status/config", "yaml"), ("/api/v1/status/runtimeinfo", "storageRetention"),
                      ("/api/v1/status/flags", "query.lookback-delta"), ("/api/v1/rules", "groups")):
        status, body = call(api.url, path)
        assert status == 200 and key in body["data"], path
    assert call(api.url, "/api/v1/query_exemplars", {"query": "test", "start": "1", "end": "2"}) == \
        (200, {"status": "success", "data": []})


def test_errors_and_limits(api):
    status, body = call(api.url, "/api/v1/query", {"query": "sum(", "time": "1"})
    assert status == 400 and body["status"] == "error" and body["errorType"] == "bad_data"
    assert body["error"].startswith('invalid parameter "query": ')
    status, body = call(api.url, "/api/v1/query_range", {"query": "up", "start": "0", "end": "11001", "step": "1"})
    assert status == 400 and "11,000 points" in body["error"]
    status, body = call(api.url, "/api/v1/query_range", {"query": "up", "start": "10", "end": "0", "step": "1"})
    assert status == 400 and "end timestamp must not be before start time" in body["error"]
    status, body = call(api.url, "/api/v1/query_range", {"query": "up", "start": "0", "end": "10", "step": "0"})
    assert status == 400 and "zero or negative" in body["error"]
    status, body = call(api.url, "/api/v1/query", {"query": "up", "time": "yesterday"})
    assert status == 400 and body["error"].startswith('invalid parameter "time"')
    status, body = call(api.url, "/api/v1/series")
    assert status == 400 and body["error"] == "no match[] parameter provided"
    status, body = call(api.url, "/api/v1/query", {"query": "nonexistent_metric_name", "time": "100"})
    assert (status, body["data"]) == (200, {"resultType": "vector", "result": []})
    status, body = call(api.url, "/api/v1/query", {"query": "rate(up[5m])[1m]", "time": "100"})
    assert status == 400
    status, body = call(api.url, "/api/v1/query", {"query": "x" * 200_000, "time": "1"}, method="POST")
    assert status == 400 and "too long" in body["error"]


# ------------------------------------------------------------------------------------------------ Kiali
ISTIO_BUCKETS = [0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000,
                 1800000, 3600000]


def _istio(reporter, src, dst, code, **extra):
    labels = {"reporter": reporter, "source_workload": src, "source_workload_namespace": "bookinfo",
              "source_canonical_service": src.rsplit("-", 1)[0], "source_canonical_revision": "v1",
              "destination_workload": dst, "destination_workload_namespace": "bookinfo",
              "destination_service": f"{dst.rsplit('-', 1)[0]}.bookinfo.svc.cluster.local",
              "destination_service_name": dst.rsplit("-", 1)[0], "destination_service_namespace": "bookinfo",
              "destination_canonical_service": dst.rsplit("-", 1)[0], "destination_canonical_revision": "v1",
              "request_protocol": "http", "response_code": code, "response_flags": "-",
              "connection_security_policy": "mutual_tls" if reporter == "destination" else "unknown",
              "grpc_response_status": "", "destination_cluster": "Kubernetes", "source_cluster": "Kubernetes"}
    labels.update(extra)
    return labels


@pytest.fixture(scope="module")
def istio_tenant(store, tmp_path_factory):
    """Demo-shaped Istio data: one MeterProvider per proxy with the scrape target as resource (as
    ``meshscope demo`` sends it), two collections 10 s apart."""
    tenant = "prom-kiali"
    tmp = tmp_path_factory.mktemp("istio")
    readers, flows = [], []
    for pod, ip in (("productpage-v1-abc", "10.44.1.10"), ("reviews-v1-def", "10.44.1.11")):
        reader = InMemoryMetricReader()
        mp = MeterProvider(resource=Resource({"service.name": "kubernetes-pods",
                                              "service.instance.id": f"{ip}:15020", "k8s.pod.name": pod,
                                              "k8s.namespace.name": "bookinfo"}), metric_readers=[reader],
                           views=[View(instrument_name="istio_request_duration_milliseconds",
                                       aggregation=ExplicitBucketHistogramAggregation(ISTIO_BUCKETS))])
        m = mp.get_meter("otelcol/prometheusreceiver", "0.130.0")
        readers.append((reader, m.create_counter("istio_requests_total"),
                        m.create_histogram("istio_request_duration_milliseconds")))
    pp, rv = readers
    flows = [(pp, _istio("source", "productpage-v1", "reviews-v1", "200"), 20, 12.0),
             (rv, _istio("destination", "productpage-v1", "reviews-v1", "200"), 20, 10.0),
             (rv, _istio("destination", "productpage-v1", "reviews-v1", "503"), 4, 3.0)]
    for _round in range(2):
        for (reader, req, dur), labels, n, ms in flows:
            req.add(n, labels)
            for _ in range(n):
                dur.record(ms, labels)
        for reader, _, _ in readers:
            insert_sdk(store, tmp, reader, tenant)
        time.sleep(0.02)
    return tenant, point_times(store, tenant)[-1]


def test_kiali_graph_queries(api, istio_tenant):
    tenant, t_last = istio_tenant
    at = f"{(t_last // 1_000_000 + 1) / 1000:.3f}"
    labels = ("source_cluster,source_workload_namespace,source_workload,source_canonical_service,"
              "source_canonical_revision,destination_cluster,destination_service_namespace,destination_service,"
              "destination_service_name,destination_workload_namespace,destination_workload,"
              "destination_canonical_service,destination_canonical_revision,request_protocol,response_code,"
              "grpc_response_status,response_flags")
    # Kiali's graph query shape: space before the range, anchored regex, long by-list, > 0, round(…, 0.001)
    q = (f'round(sum(rate(istio_requests_total{{reporter="destination",source_workload_namespace!="bookinfo",'
         f'destination_service_namespace="bookinfo"}} [600s])) by ({labels}) > 0,0.001)')
    status, body = call(api.url, "/api/v1/query", {"query": q, "time": at}, tenant=tenant, method="POST")
    assert status == 200 and body["data"]["result"] == []  # source is inside the namespace: not an inbound edge
    q = (f'round(sum(rate(istio_requests_total{{reporter="destination",'
         f'destination_service=~"^.+\\\\.bookinfo\\\\..+$"}} [600s])) by ({labels}) > 0,0.001)')
    status, body = call(api.url, "/api/v1/query", {"query": q, "time": at}, tenant=tenant, method="POST")
    assert status == 200, body
    res = {r["metric"]["response_code"]: float(r["value"][1]) for r in body["data"]["result"]}
    assert set(res) == {"200", "503"} and all(v > 0 for v in res.values())
    assert math.isclose(res["200"] / res["503"], 5.0, rel_tol=1e-6)
    assert "__name__" not in body["data"]["result"][0]["metric"]
    # response time: histogram_quantile over the destination's buckets (all samples 10 ms / 3 ms)
    q = ('round(histogram_quantile(0.95, sum(rate(istio_request_duration_milliseconds_bucket{reporter="destination"}'
         '[600s])) by (le,destination_workload,response_code)) > 0,0.001)')
    status, body = call(api.url, "/api/v1/query", {"query": q, "time": at}, tenant=tenant)
    got = {r["metric"]["response_code"]: r["value"][1] for r in body["data"]["result"]}
    # 0.95 quantile of samples all in (5, 10] → 5 + 5 × 0.95 = 9.75; all in (1, 5] → 1 + 4 × 0.95 = 4.8
    assert got == {"200": "9.75", "503": "4.8"}
    # the count of time series Kiali uses to list the metrics a namespace has, and the metric-name lookup
    status, body = call(api.url, "/api/v1/query",
                        {"query": 'count({__name__=~"istio_.*", destination_workload_namespace="bookinfo"}) by (__name__)',
                         "time": at}, tenant=tenant)
    names = {r["metric"]["__name__"]: r["value"][1] for r in body["data"]["result"]}
    assert names["istio_requests_total"] == "3"
    status, body = call(api.url, "/api/v1/label/__name__/values",
                        {"start": "1970-01-01T00:00:00Z", "end": "9999-12-31T23:59:59Z"}, tenant=tenant)
    assert "istio_requests_total" in body["data"] and "istio_request_duration_milliseconds_bucket" in body["data"]


def test_kiali_metrics_range_queries(api, istio_tenant):
    tenant, t_last = istio_tenant
    end = t_last // S + 1
    params = {"start": str(end - 60), "end": str(end), "step": "15"}
    q = ('sum(rate(istio_requests_total{reporter="destination",destination_workload="reviews-v1"}[1m])) '
         'by (response_code) OR sum(rate(istio_requests_total{reporter="source",destination_workload="reviews-v1"}'
         '[1m])) by (response_code)')
    status, body = call(api.url, "/api/v1/query_range", dict(params, query=q), tenant=tenant, method="POST")
    assert status == 200, body
    assert body["data"]["resultType"] == "matrix"
    codes = [r["metric"] for r in body["data"]["result"]]
    assert codes == [{"response_code": "200"}, {"response_code": "503"}]
    for r in body["data"]["result"]:
        ts = [v[0] for v in r["values"]]
        assert ts == sorted(ts) and all((t - (end - 60)) % 15 == 0 for t in ts)
    for quant in ("0.5", "0.95", "0.99", "0.999"):
        q = (f'histogram_quantile({quant}, sum(rate(istio_request_duration_milliseconds_bucket{{reporter="source"}}'
             f'[1m])) by (le,source_workload))')
        status, body = call(api.url, "/api/v1/query_range", dict(params, query=q), tenant=tenant)
        assert status == 200
        vals = {v[1] for r in body["data"]["result"] for v in r["values"]}
        assert vals and all(5 < float(v) <= 25 for v in vals)  # every source sample is 12 ms: bucket (10, 25]
    status, body = call(api.url, "/api/v1/series", {"match[]": ['istio_requests_total{reporter="source"}'],
                                                    "start": str(end - 600), "end": str(end)}, tenant=tenant)
    assert len(body["data"]) == 1 and body["data"][0]["job"] == "kubernetes-pods"
    assert body["data"][0]["instance"] == "10.44.1.10:15020"


# ------------------------------------------------------------------------------------------------ real serve
def test_serve_demo_answers_kiali(server_factory):
    """``meshscope serve`` + ``meshscope demo``: Kiali's request-rate query over the demo's istio_* series."""
    import subprocess
    import sys
    srv = server_factory("--flush-interval", "0.2")
    subprocess.run([sys.executable, "-m", "meshscope", "demo", "--otlp", srv.otlp_url, "--rate", "20",
                    "--duration", "4"], check=True, timeout=120, capture_output=True)
    q = 'sum(rate(istio_requests_total{reporter="destination"}[1m])) by (destination_service) > 0'
    deadline = time.time() + 30
    while time.time() < deadline:
        status, body = call(srv.http_url, "/api/v1/query", {"query": q}, method="POST")
        if status == 200 and body["data"]["result"]:
            break
        time.sleep(0.5)
    assert status == 200 and body["data"]["result"], body
    services = {r["metric"]["destination_service"] for r in body["data"]["result"]}
    assert any(s.startswith("productpage.") for s in services)
