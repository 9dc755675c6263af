"""OTLP → Prometheus series mapping (``query/promql/store_source.py``) against the real embedded store.

Points go in as OTLP protobuf through the collector's own insert statements, so the rows are exactly what
``meshscope serve`` stores; each test uses its own tenant.
"""
from __future__ import annotations

import math
import re
import time
import uuid

import numpy as np
import pytest
from test_otlp_sql import insert as otlp_insert
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from meshscope.query.promql.ast import Matcher
from meshscope.query.promql.store_source import (STALE_NAN, MetricCatalogue, StoreSeriesSource, format_le, is_stale,
                                                 label_name, load_series, normalize_name)

S = 1_000_000_000
T0 = (time.time_ns() // (60 * S) - 30) * 60 * S  # 30 minutes ago, whole minute


def insert(store, tmp_path, req: ExportMetricsServiceRequest, tenant: str) -> None:
    otlp_insert(store, tmp_path, "metrics", req, tenant=tenant)


def request(resource: dict, metrics: list) -> ExportMetricsServiceRequest:
    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    for k, v in resource.items():
        a = rm.resource.attributes.add()
        a.key, a.value.string_value = k, v
    sm = rm.scope_metrics.add()
    sm.scope.name = "test"
    for m in metrics:
        sm.metrics.append(m)
    return req


def _attrs(pt, attrs: dict) -> None:
    for k, v in attrs.items():
        a = pt.attributes.add()
        a.key, a.value.string_value = k, v


def metric(name: str, kind: str, points: list, unit: str = "", monotonic: bool = True, temporality: int = 2,
           description: str = ""):
    """points: (t_ns, value or (count, sum, bucket_counts, bounds) or (count, sum, {q: v}), attrs, flags)."""
    from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric
    m = Metric(name=name, unit=unit, description=description)
    for t, v, attrs, *flags in points:
        if kind == "gauge":
            pt = m.gauge.data_points.add()
            pt.as_double = v
        elif kind == "sum":
            m.sum.is_monotonic, m.sum.aggregation_temporality = monotonic, temporality
            pt = m.sum.data_points.add()
            pt.as_double = v
        elif kind == "histogram":
            m.histogram.aggregation_temporality = temporality
            pt = m.histogram.data_points.add()
            pt.count, pt.sum = v[0], v[1]
            pt.bucket_counts.extend(v[2])
            pt.explicit_bounds.extend(v[3])
        elif kind == "summary":
            pt = m.summary.data_points.add()
            pt.count, pt.sum = v[0], v[1]
            for q, qv in v[2].items():
                qq = pt.quantile_values.add()
                qq.quantile, qq.value = q, qv
        pt.time_unix_nano = t
        pt.start_time_unix_nano = T0 - 60 * S
        if flags:
            pt.flags = flags[0]
        _attrs(pt, attrs)
    return m


_SHARED: dict[int, MetricCatalogue] = {}


def shared_source(store, tenant) -> StoreSeriesSource:
    """A source whose catalogue (and series-identity cache) lives across tests, as one server's does across
    queries: later look-ups read the identities earlier ones cached, with other matchers and components."""
    return StoreSeriesSource(store, tenant, _SHARED.setdefault(id(store), MetricCatalogue(store)))


def select(store, tenant, *matchers, start=T0 - 3600 * S, end=T0 + 3600 * S, shared=False):
    src = shared_source(store, tenant) if shared else StoreSeriesSource(store, tenant)
    return {_key(s.labels): s for s in src.select([Matcher(*m) for m in matchers], start, end)}


def _key(labels: dict) -> str:
    return "{" + ",".join(f"{k}={labels[k]}" for k in sorted(labels)) + "}"


# ------------------------------------------------------------------------------------------------ pure naming
@pytest.mark.parametrize("name, unit, kind, want", [
    ("http.server.request.duration", "s", "histogram", "http_server_request_duration_seconds"),
    ("http.server.duration", "ms", "histogram", "http_server_duration_milliseconds"),
    ("system.network.io", "By", "counter", "system_network_io_bytes_total"),
    ("requests", "{request}", "counter", "requests_total"),
    ("requests.total", "1", "counter", "requests_total"),
    ("cpu.utilization", "1", "gauge", "cpu_utilization_ratio"),
    ("throughput", "By/s", "gauge", "throughput_bytes_per_second"),
    ("process.runtime.duration_seconds", "s", "histogram", "process_runtime_duration_seconds"),
    ("istio_requests_total", "", "counter", "istio_requests_total"),
    ("istio_request_duration_milliseconds", "", "histogram", "istio_request_duration_milliseconds"),
    ("istio_tcp_sent_bytes_total", "", "counter", "istio_tcp_sent_bytes_total"),
    ("queue..depth", "", "sum", "queue_depth"),
    ("2xx.count", "", "gauge", "_2xx_count"),
    ("memory", "MiBy", "sum", "memory_mebibytes"),
    ("temp", "Cel", "gauge", "temp_celsius"),
])
def test_normalize_name(name, unit, kind, want):
    assert normalize_name(name, unit, kind) == want


def test_label_names_and_le():
    assert label_name("http.method") == "http_method"
    assert label_name("k8s.pod.name") == "k8s_pod_name"
    assert label_name("0day") == "key_0day"
    assert label_name("__name__") == "__name__"
    assert [format_le(b) for b in (0.005, 1.0, 1000.0, 2.5e-7, 1e21, math.inf)] == \
        ["0.005", "1", "1000", "0.00000025", "1000000000000000000000", "+Inf"]


# ------------------------------------------------------------------------------------------------ against the store
def test_counter_gauge_units_job_instance(store, tmp_path):
    tenant = "map-basic"
    res = {"service.name": "cart", "service.namespace": "shop", "service.instance.id": "cart-1",
           "k8s.pod.name": "cart-abc", "host.name": "n1"}
    insert(store, tmp_path, request(res, [
        metric("http.server.requests", "sum", [(T0, 5.0, {"http.method": "GET", "job": "ignored"}),
                                               (T0 + 15 * S, 7.0, {"http.method": "GET", "job": "ignored"})],
               unit="{request}"),
        metric("process.cpu.utilization", "gauge", [(T0, 0.25, {})], unit="1"),
        metric("queue.size", "sum", [(T0, 3.0, {}), (T0 + 15 * S, 1.0, {})], monotonic=False),
    ]), tenant)
    got = select(store, tenant, ("__name__", "=~", ".+"))
    assert set(got) == {
        "{__name__=http_server_requests_total,http_method=GET,instance=cart-1,job=shop/cart}",
        "{__name__=process_cpu_utilization_ratio,instance=cart-1,job=shop/cart}",
        "{__name__=queue_size,instance=cart-1,job=shop/cart}",
        "{__name__=target_info,host_name=n1,instance=cart-1,job=shop/cart,k8s_pod_name=cart-abc}",
    }
    c = got["{__name__=http_server_requests_total,http_method=GET,instance=cart-1,job=shop/cart}"]
    assert c.ts.tolist() == [T0, T0 + 15 * S] and c.values.tolist() == [5.0, 7.0]
    assert got["{__name__=queue_size,instance=cart-1,job=shop/cart}"].values.tolist() == [3.0, 1.0]
    ti = got["{__name__=target_info,host_name=n1,instance=cart-1,job=shop/cart,k8s_pod_name=cart-abc}"]
    assert ti.ts.tolist() == [T0, T0 + 15 * S] and ti.values.tolist() == [1.0, 1.0]
    # label matchers: pushed into SQL, including a sanitised attribute key, job and instance
    assert list(select(store, tenant, ("http_method", "=", "GET"), ("job", "=~", "shop/.*"))) == \
        ["{__name__=http_server_requests_total,http_method=GET,instance=cart-1,job=shop/cart}"]
    assert select(store, tenant, ("__name__", "=", "http_server_requests_total"), ("http_method", "!=", "GET")) == {}
    # absent label reads as "" (Prometheus semantics)
    assert list(select(store, tenant, ("__name__", "=~", "queue.*"), ("http_method", "=", ""))) == \
        ["{__name__=queue_size,instance=cart-1,job=shop/cart}"]
    # the raw OTel name is not a Prometheus name
    assert select(store, tenant, ("__name__", "=", "http.server.requests")) == {}


def test_histogram_and_summary_expansion(store, tmp_path):
    tenant = "map-hist"
    res = {"service.name": "api"}
    insert(store, tmp_path, request(res, [
        metric("http.server.request.duration", "histogram",
               [(T0, (10, 2.5, [1, 4, 5], [0.1, 0.5]), {"route": "/a"}),
                (T0 + 15 * S, (12, 3.0, [2, 4, 6], [0.1, 0.5]), {"route": "/a"})], unit="s"),
        metric("rpc.latency", "summary", [(T0, (4, 10.0, {0.5: 2.0, 0.99: 4.5}), {})], unit="ms"),
    ]), tenant)
    # through a warm series-identity cache, components first seen without their bounds: the same answers
    for name in ("sum", "count", "bucket"):
        fresh = select(store, tenant, ("__name__", "=", f"http_server_request_duration_seconds_{name}"))
        warm = select(store, tenant, ("__name__", "=", f"http_server_request_duration_seconds_{name}"), shared=True)
        assert {k: v.values.tolist() for k, v in warm.items()} == {k: v.values.tolist() for k, v in fresh.items()}
        assert len(fresh) == (3 if name == "bucket" else 1)
    got = select(store, tenant, ("__name__", "=~", "http.*"), shared=True)
    base = "job=api,route=/a"
    assert set(got) == {
        "{__name__=http_server_request_duration_seconds_bucket,job=api,le=0.1,route=/a}",
        "{__name__=http_server_request_duration_seconds_bucket,job=api,le=0.5,route=/a}",
        "{__name__=http_server_request_duration_seconds_bucket,job=api,le=+Inf,route=/a}",
        f"{{__name__=http_server_request_duration_seconds_count,{base}}}",
        f"{{__name__=http_server_request_duration_seconds_sum,{base}}}",
    }
    b = lambda le: got[f"{{__name__=http_server_request_duration_seconds_bucket,job=api,le={le},route=/a}}"].values.tolist()
    assert b("0.1") == [1, 2] and b("0.5") == [5, 6] and b("+Inf") == [10, 12]
    assert got[f"{{__name__=http_server_request_duration_seconds_sum,{base}}}"].values.tolist() == [2.5, 3.0]
    assert got[f"{{__name__=http_server_request_duration_seconds_count,{base}}}"].values.tolist() == [10, 12]
    # only the bucket series when asked for them, with an le matcher applied
    assert list(select(store, tenant, ("__name__", "=", "http_server_request_duration_seconds_bucket"),
                       ("le", "=", "0.5"))) == ["{__name__=http_server_request_duration_seconds_bucket,job=api,le=0.5,route=/a}"]
    s = select(store, tenant, ("__name__", "=~", "rpc.*"))
    assert set(s) == {"{__name__=rpc_latency_milliseconds,job=api,quantile=0.5}",
                      "{__name__=rpc_latency_milliseconds,job=api,quantile=0.99}",
                      "{__name__=rpc_latency_milliseconds_sum,job=api}",
                      "{__name__=rpc_latency_milliseconds_count,job=api}"}
    assert s["{__name__=rpc_latency_milliseconds,job=api,quantile=0.99}"].values.tolist() == [4.5]
    src = StoreSeriesSource(store, tenant)
    md = src.metadata()
    assert md["http_server_request_duration_seconds"] == [{"type": "histogram", "help": "", "unit": "seconds"}]
    assert md["rpc_latency_milliseconds"][0]["type"] == "summary"
    assert "le" in src.label_names(T0 - 3600 * S, T0 + 3600 * S)
    assert src.label_values("route", T0 - 3600 * S, T0 + 3600 * S) == ["/a"]
    assert src.label_values("le", T0 - 3600 * S, T0 + 3600 * S) == ["+Inf", "0.1", "0.5"]


def test_istio_names_round_trip(store, tmp_path):
    """Istio metrics forwarded by a collector keep their Prometheus names, labels and scrape job/instance."""
    tenant = "map-istio"
    res = {"service.name": "kubernetes-pods", "service.instance.id": "10.44.1.7:15020", "k8s.pod.name": "p"}
    attrs = {"reporter": "destination", "destination_service": "reviews.default.svc.cluster.local",
             "response_code": "200"}
    insert(store, tmp_path, request(res, [
        metric("istio_requests_total", "sum", [(T0, 10.0, attrs), (T0 + 15 * S, 20.0, attrs)]),
        metric("istio_request_duration_milliseconds", "histogram",
               [(T0, (3, 30.0, [1, 2, 0], [10.0, 25.0]), attrs)]),
    ]), tenant)
    names = StoreSeriesSource(store, tenant).metric_names()
    assert names == ["istio_request_duration_milliseconds_bucket", "istio_request_duration_milliseconds_count",
                     "istio_request_duration_milliseconds_sum", "istio_requests_total"]
    got = select(store, tenant, ("__name__", "=", "istio_requests_total"),
                 ("destination_service", "=~", "^.+\\.default\\..+$"))
    assert list(got) == ["{__name__=istio_requests_total,destination_service=reviews.default.svc.cluster.local,"
                         "instance=10.44.1.7:15020,job=kubernetes-pods,reporter=destination,response_code=200}"]
    les = sorted(s.labels["le"] for s in select(store, tenant, ("__name__", "=",
                                                                  "istio_request_duration_milliseconds_bucket")).values())
    assert les == ["+Inf", "10", "25"]


def test_delta_temporality_and_staleness(store, tmp_path):
    tenant = "map-delta"
    insert(store, tmp_path, request({"service.name": "w"}, [
        metric("jobs.done", "sum", [(T0, 2.0, {}), (T0 + 15 * S, 3.0, {}), (T0 + 30 * S, 5.0, {})], temporality=1),
        metric("jobs.level", "sum", [(T0, 2.0, {})], temporality=1, monotonic=False),  # dropped
        metric("q", "histogram", [(T0, (2, 1.0, [1, 1], [1.0]), {}), (T0 + 15 * S, (3, 2.0, [0, 3], [1.0]), {})],
               temporality=1),
        metric("temp", "gauge", [(T0, 20.0, {}), (T0 + 15 * S, 0.0, {}, 1)]),  # NoRecordedValue → stale
    ]), tenant)
    got = select(store, tenant, ("__name__", "=~", ".+"), ("__name__", "!=", "target_info"))
    assert "{__name__=jobs_level,job=w}" not in got
    assert got["{__name__=jobs_done_total,job=w}"].values.tolist() == [2.0, 5.0, 10.0]
    assert got["{__name__=q_bucket,job=w,le=1}"].values.tolist() == [1.0, 1.0]
    assert got["{__name__=q_bucket,job=w,le=+Inf}"].values.tolist() == [2.0, 5.0]
    assert got["{__name__=q_count,job=w}"].values.tolist() == [2.0, 5.0]
    t = got["{__name__=temp,job=w}"]
    assert t.values[0] == 20.0 and is_stale(t.values).tolist() == [False, True]
    # push-down: increase of deltas = sum of the deltas in (t - 30s, t]
    src = StoreSeriesSource(store, tenant)
    g = src.range_function("increase", [Matcher("__name__", "=", "jobs_done_total")], 30 * S,
                           np.array([T0 + 30 * S]))
    assert [x.values.tolist() for x in g] == [[8.0]]


def test_rate_pushdown_matches_raw(store, tmp_path):
    """``range_function`` (timeSeriesRateToGrid) against Prometheus' algorithm on the raw samples."""
    tenant = "map-rate"
    pts = [(T0 + i * 15 * S, float(v), {"code": "200"}) for i, v in enumerate([0, 3, 9, 10, 2, 5, 11, 20, 22, 30])]
    insert(store, tmp_path, request({"service.name": "r"}, [
        metric("hits", "sum", pts),
        metric("lat", "histogram", [(T0 + i * 15 * S, (i * 3, i * 1.5, [i, i * 2], [0.25]), {}) for i in range(10)]),
    ]), tenant)
    src = StoreSeriesSource(store, tenant)
    times = np.arange(T0 + 60 * S, T0 + 136 * S, 15 * S)
    g = src.range_function("rate", [Matcher("__name__", "=", "hits_total")], 60 * S, times)
    assert len(g) == 1
    raw = src.select([Matcher("__name__", "=", "hits_total")], T0 - 600 * S, T0 + 600 * S)[0]
    want = [_prom_rate(raw.ts, raw.values, t, 60 * S) for t in times]
    np.testing.assert_allclose(g[0].values, want, rtol=1e-9)
    gb = src.range_function("rate", [Matcher("__name__", "=", "lat_bucket")], 60 * S, times)
    assert sorted(x.labels["le"] for x in gb) == ["+Inf", "0.25"]
    for x in gb:
        rb = [s for s in src.select([Matcher("__name__", "=", "lat_bucket"), Matcher("le", "=", x.labels["le"])],
                                    T0 - 600 * S, T0 + 600 * S)][0]
        np.testing.assert_allclose(x.values, [_prom_rate(rb.ts, rb.values, t, 60 * S) for t in times], rtol=1e-9)


def _prom_rate(ts, vals, t, rng):
    """Prometheus' extrapolatedRate for one window (t - rng, t] of a counter (the reference §2.5.2)."""
    m = (ts > t - rng) & (ts <= t)
    x, y = ts[m] / 1e9, vals[m]
    if len(x) < 2:
        return float("nan")
    inc = y[-1] - y[0] + sum(y[i - 1] for i in range(1, len(y)) if y[i] < y[i - 1])
    start, end = (t - rng) / 1e9, t / 1e9
    sampled = x[-1] - x[0]
    avg = sampled / (len(x) - 1)
    ds, de = x[0] - start, end - x[-1]
    if inc > 0 and y[0] >= 0:
        ds = min(ds, sampled * (y[0] / inc))
    thr = avg * 1.1
    ds = ds if ds < thr else avg / 2
    de = de if de < thr else avg / 2
    return inc * (sampled + ds + de) / sampled / (rng / 1e9)


def test_load_series_round_trip(store):
    tenant = "map-load"
    series = [({"__name__": "http_requests", "job": "api", "instance": "0"}, [(T0, 1.0), (T0 + 5 * S, 2.5)]),
              ({"__name__": "metric_total", "a": "b"}, [(T0, 7.0), (T0 + 5 * S, STALE_NAN), (T0 + 10 * S, math.inf)]),
              ({"__name__": "nan_one"}, [(T0, math.nan)])]
    assert load_series(store, tenant, series) == 6
    got = select(store, tenant, ("__name__", "=~", ".+"))
    assert set(got) == {"{__name__=http_requests,instance=0,job=api}", "{__name__=metric_total,a=b}",
                        "{__name__=nan_one}"}
    m = got["{__name__=metric_total,a=b}"]
    assert m.ts.tolist() == [T0, T0 + 5 * S, T0 + 10 * S]
    assert is_stale(m.values).tolist() == [False, True, False] and m.values[2] == math.inf
    n = got["{__name__=nan_one}"].values
    assert math.isnan(n[0]) and not is_stale(n)[0]
    with pytest.raises(ValueError):
        load_series(store, tenant, [({"__name__": "a.b"}, [(T0, 1.0)])])


def test_same_name_two_units_and_summary_rate(store, tmp_path):
    """Rows are told apart by (name, unit, kind): x in s and x in ms are two series names, never mixed up."""
    tenant = "map-units"
    insert(store, tmp_path, request({"service.name": "u"}, [
        metric("x", "gauge", [(T0, 1.0, {})], unit="s"),
        metric("x", "gauge", [(T0, 1000.0, {})], unit="ms"),
        metric("y", "gauge", [(T0, 5.0, {})], unit="ms"),
        metric("rpc", "summary", [(T0 + i * 15 * S, (i * 2, i * 3.0, {0.5: 1.0}), {}) for i in range(5)]),
    ]), tenant)
    got = select(store, tenant, ("__name__", "=~", "x_seconds|y_milliseconds"))
    assert {k: v.values.tolist() for k, v in got.items()} == {"{__name__=x_seconds,job=u}": [1.0],
                                                             "{__name__=y_milliseconds,job=u}": [5.0]}
    src = StoreSeriesSource(store, tenant)
    assert [s["__name__"] for s in src.series([Matcher("__name__", "=~", "x_.*")], T0 - S, T0 + S)] == \
        ["x_milliseconds", "x_seconds"]
    g = src.range_function("rate", [Matcher("__name__", "=", "rpc_count")], 60 * S, np.array([T0 + 60 * S]))
    raw = src.select([Matcher("__name__", "=", "rpc_count")], T0 - S, T0 + 61 * S)[0]
    assert [x.labels["__name__"] for x in g] == ["rpc_count"]
    np.testing.assert_allclose(g[0].values, [_prom_rate(raw.ts, raw.values, T0 + 60 * S, 60 * S)])


# ------------------------------------------------------------------------------------------------ the series index
# Every selection goes through ``otel_metrics_series`` (one row per series and hour, labels once) and then reads
# the samples grouped by ``SeriesId``: these tests hold it to the mapping's label sets and PromQL's matcher rules.
_INDEX_SERIES = [  # (resource, point attributes, the Prometheus labels the mapping gives them)
    ({"service.name": "cart", "service.namespace": "shop", "service.instance.id": "c1"},
     {"http.method": "GET", "code": "200"},
     {"job": "shop/cart", "instance": "c1", "http_method": "GET", "code": "200"}),
    ({"service.name": "cart", "service.namespace": "shop", "service.instance.id": "c1"},
     {"http.method": "POST", "code": "500"},
     {"job": "shop/cart", "instance": "c1", "http_method": "POST", "code": "500"}),
    ({"service.name": "cart", "service.namespace": "shop", "service.instance.id": "c2"},
     {"http.method": "GET", "code": "200"},
     {"job": "shop/cart", "instance": "c2", "http_method": "GET", "code": "200"}),
    ({"service.name": "pay", "service.instance.id": "p1"},  # the resource's job/instance win over attributes
     {"code": "200", "job": "ignored", "instance": "ignored"},
     {"job": "pay", "instance": "p1", "code": "200"}),
    ({"host.name": "batch-host"},  # no service: job and instance from the point's attributes
     {"job": "batch", "instance": "b1", "code": "503"},
     {"job": "batch", "instance": "b1", "code": "503"}),
    ({"service.name": "edge"},  # two keys sanitise to http_method: joined in key order; empty values dropped
     {"http.method": "GET", "http_method": "x", "code": ""},
     {"job": "edge", "http_method": "GET;x"}),
]


@pytest.fixture(scope="module")
def index_tenant(store, tmp_path_factory):
    tenant = f"map-index-{uuid.uuid4().hex[:8]}"
    tmp = tmp_path_factory.mktemp("index")
    for res, attrs, _ in _INDEX_SERIES:
        pts = [(T0 + i * 15 * S, float(i * (len(attrs) + 1)), attrs) for i in range(6)]
        insert(store, tmp, request(res, [metric("reqs", "sum", pts)]), tenant)
    return tenant


@pytest.mark.parametrize("ms", [
    [("job", "=", "shop/cart")], [("job", "=~", "shop/.*|pay")], [("job", "!=", "shop/cart")],
    [("job", "=", "batch")], [("instance", "=", "c1")], [("instance", "=~", "b.*")], [("instance", "=", "")],
    [("http_method", "=", "GET")], [("http_method", "=", "GET;x")], [("http_method", "!~", "GET.*")],
    [("http_method", "=", "")], [("code", "=", "")], [("code", "=~", "5..")],
    [("code", "!=", "200"), ("job", "=~", ".+")],
    [("le", "=", "")], [("key_x", "=", "")], [("nothing", "=", "a")], [("instance", "!~", "c.*"), ("code", "!~", "")],
])
def test_index_matchers_select_what_the_mapping_says(store, index_tenant, ms):
    """Matchers on job, instance and attributes (pushed into SQL on the index's maps, then exact in Python)
    select exactly the series whose mapped labels match, in select(), series() and the rate push-down."""
    matchers = [Matcher("__name__", "=", "reqs_total")] + [Matcher(*m) for m in ms]
    from meshscope.query.promql.matchers import match_labels
    want = sorted(_key(dict(lb, __name__="reqs_total")) for _, _, lb in _INDEX_SERIES
                  if match_labels(matchers, dict(lb, __name__="reqs_total")))
    # a fresh source, then one whose identity cache earlier parameters filled (through other matchers)
    for src in (StoreSeriesSource(store, index_tenant), shared_source(store, index_tenant)):
        got = src.select(matchers, T0 - 60 * S, T0 + 120 * S)
        assert sorted(_key(s.labels) for s in got) == want
        for s in got:  # each series' own samples (the value slope tells the series apart)
            attrs = next(a for _, a, lb in _INDEX_SERIES if _key(dict(lb, __name__="reqs_total")) == _key(s.labels))
            assert s.values.tolist() == [float(i * (len(attrs) + 1)) for i in range(6)]
        assert sorted(_key(lb) for lb in src.series(matchers, T0 - 60 * S, T0 + 120 * S)) == want
        g = src.range_function("rate", matchers, 60 * S, np.array([T0 + 75 * S]))
        assert sorted(_key(x.labels) for x in g) == want


def test_index_target_info_and_label_lookups(store, index_tenant):
    src = StoreSeriesSource(store, index_tenant)
    got = select(store, index_tenant, ("job", "=~", "shop/cart|batch"))  # no name: target_info as well
    # a resource without service and instance (batch-host) has no target_info
    assert sorted(k for k in got if "target_info" in k) == [
        "{__name__=target_info,instance=c1,job=shop/cart}", "{__name__=target_info,instance=c2,job=shop/cart}"]
    ti = got["{__name__=target_info,instance=c1,job=shop/cart}"]
    assert ti.ts.tolist() == [T0 + i * 15 * S for i in range(6)] and ti.values.tolist() == [1.0] * 6
    rng = (T0 - 60 * S, T0 + 120 * S)
    assert src.label_names(*rng) == ["__name__", "code", "http_method", "instance", "job"]
    assert src.label_values("http_method", *rng) == ["GET", "GET;x", "POST"]
    assert src.label_values("job", *rng) == ["batch", "edge", "pay", "shop/cart"]
    assert src.label_values("instance", *rng) == ["b1", "c1", "c2", "p1"]
    # from the series-identity cache once it knows every series in the range: the same values
    warm = shared_source(store, index_tenant)
    warm.series([Matcher("__name__", "=~", ".+")], *rng)
    assert warm._known_label_values("job", *rng) == ["batch", "edge", "pay", "shop/cart"]
    for name in ("http_method", "job", "instance", "code", "nothing"):
        assert warm.label_values(name, *rng) == src.label_values(name, *rng), name
    # outside the points' hours nothing is listed
    assert src.label_names(T0 + 7200 * S, T0 + 9000 * S) == []


def test_label_values_of_escaped_names_are_the_same_once_identities_are_cached(store, tmp_path):
    """``key_*`` names (attribute keys with a leading digit) are answered through series() and include
    target_info's resource labels; the identity cache holds only the series' own labels, so it is not asked."""
    tenant = f"lv-key-{uuid.uuid4().hex[:8]}"
    insert(store, tmp_path, request({"service.name": "w", "0zone": "eu"},
                                    [metric("temp", "gauge", [(T0, 1.0, {"1dc": "x"})])]), tenant)
    src = shared_source(store, tenant)
    lo, hi = T0 - 60 * S, T0 + 60 * S
    cold = [src.label_values(n, lo, hi) for n in ("key_0zone", "key_1dc", "job")]
    src.select([Matcher("__name__", "=", "temp")], lo, hi)  # warms the identity cache
    assert [src.label_values(n, lo, hi) for n in ("key_0zone", "key_1dc", "job")] == cold == [["eu"], ["x"], ["w"]]
    assert src.series([Matcher("__name__", "=", "reqs_total")], T0 + 7200 * S, T0 + 9000 * S) == []


def test_sample_reads_use_series_ids_and_lookups_only_the_index(store, index_tenant):
    """No query over the sample tables reads the attribute maps; /series, /labels and label values read only the
    index (a recording wrapper around the real store)."""
    class Recording:
        def __init__(self, inner):
            self.inner, self.database, self.sql = inner, inner.database, []

        def query(self, sql, parameters=None, settings=None):
            self.sql.append(sql)
            return self.inner.query(sql, parameters=parameters, settings=settings)

    rec = Recording(store)
    src = StoreSeriesSource(rec, index_tenant)
    rng = (T0 - 60 * S, T0 + 120 * S)
    src.catalogue.entries(index_tenant)
    rec.sql.clear()
    src.series([Matcher("__name__", "=", "reqs_total"), Matcher("code", "=", "200")], *rng)
    src.series([Matcher("job", "=", "pay")], *rng)
    src.label_names(*rng)
    src.label_values("code", *rng)
    src.label_values("le", *rng)
    tables = {t for q in rec.sql for t in re.findall(r"FROM\s+\w+\.(\w+)", q)}
    assert tables == {"otel_metrics_series"}
    rec.sql.clear()
    src.select([Matcher("__name__", "=", "reqs_total"), Matcher("http_method", "=", "GET")], *rng)
    src.select([Matcher("job", "=", "shop/cart")], *rng)  # with target_info
    src.range_function("rate", [Matcher("__name__", "=", "reqs_total")], 60 * S, np.array([T0 + 75 * S]))
    sample_sql = [q for q in rec.sql if "otel_metrics_series" not in q]
    assert len(sample_sql) >= 4
    for q in sample_sql:
        assert "Attributes" not in q, q
        assert "GROUP BY" in q and ("SeriesId" in q)
    # matchers that leave out series of the name restrict the sample read to their ids
    assert any("SeriesId IN" in q for q in sample_sql)


def test_sparse_columns_keep_samples_aligned(store, tmp_path):
    """A gauge that is almost always 0 with one NoRecordedValue point: ClickHouse stores Value and Flags as Sparse
    columns, which groupArray would read non-defaults first; values and staleness must stay on their times."""
    tenant = f"map-sparse-{uuid.uuid4().hex[:8]}"
    pts = [(T0 + i * 15 * S, 1.0 if i == 20 else 0.0, {}, 1 if i == 30 else 0) for i in range(40)]
    insert(store, tmp_path, request({"service.name": "s"}, [metric("flag", "gauge", pts)]), tenant)
    kinds = dict(store.query("SELECT column, any(serialization_kind) FROM system.parts_columns "
                             "WHERE table = 'otel_metrics_gauge' AND active AND column IN ('Value', 'Flags') "
                             "AND partition = toString(toDate(fromUnixTimestamp64Nano({t:Int64}))) GROUP BY column",
                             parameters={"t": T0}).rows)
    got = select(store, tenant, ("__name__", "=", "flag"), start=T0 - S, end=T0 + 600 * S)
    [s] = got.values()
    assert s.ts.tolist() == [T0 + i * 15 * S for i in range(40)]
    stale = is_stale(s.values)
    assert np.nonzero(stale)[0].tolist() == [30]
    assert [i for i, v in enumerate(s.values.tolist()) if not stale[i] and v != 0.0] == [20]
    assert kinds  # the columns exist (their serialization depends on the part; the answer must not)


def test_series_of_two_resources_with_one_label_set_are_one_series(store, tmp_path):
    """Two resources that differ only in attributes Prometheus does not show (host.name here) give one series, as
    the grouping by job/instance/attributes did: raw samples merged, and the rate push-down over the merged
    samples (SeriesId mapped to one group in SQL) instead of declining."""
    tenant = f"map-merge-{uuid.uuid4().hex[:8]}"
    base = {"service.name": "m", "service.instance.id": "m-1"}
    insert(store, tmp_path, request(dict(base, **{"host.name": "a"}), [
        metric("hits", "sum", [(T0, 1.0, {"k": "v"}), (T0 + 30 * S, 3.0, {"k": "v"})])]), tenant)
    insert(store, tmp_path, request(dict(base, **{"host.name": "b"}), [
        metric("hits", "sum", [(T0 + 15 * S, 2.0, {"k": "v"}), (T0 + 45 * S, 4.0, {"k": "v"})])]), tenant)
    got = select(store, tenant, ("__name__", "=", "hits_total"))
    [s] = got.values()
    assert s.ts.tolist() == [T0 + i * 15 * S for i in range(4)] and s.values.tolist() == [1.0, 2.0, 3.0, 4.0]
    src = StoreSeriesSource(store, tenant)
    g = src.range_function("rate", [Matcher("__name__", "=", "hits_total")], 60 * S, np.array([T0 + 50 * S]))
    assert g is not None and len(g) == 1
    np.testing.assert_allclose(g[0].values, [_prom_rate(s.ts, s.values, T0 + 50 * S, 60 * S)], rtol=1e-9)


class _NoAggregatePushdown(StoreSeriesSource):
    """The same source without the aggregation push-down: the engine sums the per-series grids itself."""
    aggregate_range_function = None


class _CountingSource(StoreSeriesSource):
    pushed = 0

    def aggregate_range_function(self, *a, **kw):
        out = super().aggregate_range_function(*a, **kw)
        type(self).pushed += out is not None
        return out


@pytest.fixture(scope="module")
def agg_tenant(store, tmp_path_factory):
    """Counters and a histogram with resets, late starts, gaps and both temporalities, for comparing the
    aggregation push-down with the engine's own aggregation of the same per-series grids."""
    tmp = tmp_path_factory.mktemp("agg")
    tenant = f"map-agg-{uuid.uuid4().hex[:8]}"
    rng = np.random.default_rng(7)
    counters, reqs2 = [], []
    for svc in ("a", "b", "c"):
        for code in ("200", "503"):
            v, pts = 0.0, []
            for i in range(40):
                if svc == "c" and i < 12:
                    continue  # starts late: absent in the first steps
                if svc == "b" and code == "503" and 18 <= i < 24:
                    continue  # a gap longer than the range
                v = 0.0 if (svc == "a" and i == 20) else v + float(rng.integers(0, 50))  # one reset
                pts.append((T0 + i * 15 * S, v, {"svc": svc, "code": code}))
            counters += pts
            if svc == "a":
                reqs2 += pts
    hist = []
    for svc in ("a", "b"):
        c = np.zeros(3)
        for i in range(40):
            c += rng.integers(0, 20, size=3)
            hist.append((T0 + i * 15 * S, (int(c.sum()), float(c.sum()) * 0.3, [int(x) for x in c], [0.1, 1.0]),
                         {"svc": svc}))
    deltas = [(T0 + i * 15 * S, float(rng.integers(1, 9)), {"svc": "d", "code": "200"}) for i in range(40)]
    insert(store, tmp, request({"service.name": "shop"}, [
        metric("reqs", "sum", counters), metric("lat", "histogram", hist), metric("reqs2", "sum", reqs2)]), tenant)
    insert(store, tmp, request({"service.name": "edge"}, [metric("reqs", "sum", deltas, temporality=1)]), tenant)
    return tenant


@pytest.mark.parametrize("q", [
    "sum by (svc) (rate(reqs_total[1m]))",
    "sum(rate(reqs_total[1m]))",
    "sum without (code) (increase(reqs_total[2m]))",
    "count by (code) (rate(reqs_total[1m]))",
    'sum by (svc) (rate(reqs_total{code="503"}[1m]))',
    'sum by (job) (rate(reqs_total{svc=~"a|d"}[1m] offset 1m))',
    "sum by (le) (rate(lat_bucket[1m]))",
    "histogram_quantile(0.9, sum by (le, svc) (rate(lat_bucket[1m])))",
    "sum by (svc) ((rate(lat_count[2m])))",
    'sum(rate({__name__=~"reqs_total|lat_count"}[1m]))',
])
def test_aggregation_pushdown_equals_engine_aggregation(store, agg_tenant, q):
    from meshscope.query.promql.engine import PromQLEngine

    start, end, step = T0 + 60 * S, T0 + 600 * S, 15 * S
    _CountingSource.pushed = 0
    pushed = PromQLEngine(lambda t: _CountingSource(store, t)).range(q, start, end, step, agg_tenant)
    assert _CountingSource.pushed == 1, "the aggregation was not pushed down"
    plain = PromQLEngine(lambda t: _NoAggregatePushdown(store, t)).range(q, start, end, step, agg_tenant)
    assert plain.series, "the query selects nothing: the comparison would be empty"
    assert [lb for lb, _ in pushed.series] == [lb for lb, _ in plain.series]
    for (lb, got), (_, want) in zip(pushed.series, plain.series):
        assert [t for t, _ in got] == [t for t, _ in want], lb
        np.testing.assert_allclose([v for _, v in got], [v for _, v in want], rtol=1e-12, err_msg=str(lb))


def test_aggregation_pushdown_leaves_colliding_label_sets_to_the_engine(store, agg_tenant):
    """Two names whose series are equal once ``rate`` drops the name: Prometheus refuses the vector; the
    push-down declines and the engine reports it."""
    from meshscope.query.promql.engine import PromQLEngine
    from meshscope.query.promql.errors import PromQLError

    _CountingSource.pushed = 0
    engine = PromQLEngine(lambda t: _CountingSource(store, t))
    with pytest.raises(PromQLError, match="same labelset"):
        engine.range('sum(rate({__name__=~"reqs_total|reqs2_total"}[1m]))', T0 + 60 * S, T0 + 600 * S, 15 * S,
                     agg_tenant)
    assert _CountingSource.pushed == 0
