"""Self-monitoring: meshscope's own registry stored as OTLP metrics through the real ingest path, read back with SQL
and with PromQL (the names must match what ``/metrics`` shows, so dashboards can use either)."""

from __future__ import annotations

import asyncio
import time
import uuid

from opentelemetry.proto.metrics.v1 import metrics_pb2 as pb

from meshscope.collector.batcher import Batcher, FlushPolicy
from meshscope.query.promql.engine import PromQLEngine
from meshscope.query.promql.store_source import StoreSeriesSource
from meshscope.selfmetrics import SelfMetrics
from meshscope.selfscrape import SelfScrape, build_request


def _metrics_by_name(req):
    (rm,) = req.resource_metrics
    (sm,) = rm.scope_metrics
    return {m.name: m for m in sm.metrics}, {kv.key: kv.value.string_value for kv in rm.resource.attributes}


def _attrs(dp):
    return {kv.key: kv.value.string_value for kv in dp.attributes}


def test_build_request_maps_types():
    m = SelfMetrics()
    m.received.labels("traces", "http").inc(7)
    m.buffered.labels("logs").set(42)
    for v in (0.003, 0.3, 0.3, 99.0):  # 99 s lands in the +Inf bucket
        m.insert_seconds.labels("logs").observe(v)
    req, points = build_request(m.registry, 5_000_000_000_000_000_000, instance="host-a")
    by_name, resource = _metrics_by_name(req)
    assert resource == {"service.name": "meshscope", "service.instance.id": "host-a"}
    assert points == 3
    # untouched labelled counters have no series on /metrics, so none here either
    assert "meshscope_rejected_items" not in by_name

    c = by_name["meshscope_received_items"]
    assert c.WhichOneof("data") == "sum" and c.sum.is_monotonic
    assert c.sum.aggregation_temporality == pb.AGGREGATION_TEMPORALITY_CUMULATIVE
    (dp,) = c.sum.data_points
    assert _attrs(dp) == {"signal": "traces", "protocol": "http"} and dp.as_double == 7
    # start time from the counter's _created sample, i.e. close to now and before the point
    assert abs(dp.start_time_unix_nano - time.time_ns()) < 60e9 and dp.time_unix_nano == 5_000_000_000_000_000_000

    g = by_name["meshscope_buffered_rows"]
    assert g.WhichOneof("data") == "gauge" and g.gauge.data_points[0].as_double == 42

    h = by_name["meshscope_insert_duration_seconds"]
    assert h.unit == "s" and h.WhichOneof("data") == "histogram"
    assert h.histogram.aggregation_temporality == pb.AGGREGATION_TEMPORALITY_CUMULATIVE
    (hp,) = h.histogram.data_points
    assert list(hp.explicit_bounds) == [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
    assert len(hp.bucket_counts) == len(hp.explicit_bounds) + 1
    # per-bucket counts, not Prometheus' cumulative ones
    assert list(hp.bucket_counts) == [1, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 1]
    assert hp.count == 4 and abs(hp.sum - 99.603) < 1e-9


def test_scrape_through_batcher_into_store_and_promql(store, tmp_path):
    tenant = f"self-{uuid.uuid4().hex[:8]}"

    async def scenario():
        metrics = SelfMetrics()
        batcher = Batcher(store, str(tmp_path / "data"), FlushPolicy(interval=0.2), metrics)
        await batcher.start()
        try:
            scrape = SelfScrape(metrics, batcher, interval=3600, tenant=tenant, instance="test-host")
            metrics.received.labels("traces", "http").inc(5)
            metrics.buffered.labels("traces").set(12)
            metrics.insert_seconds.labels("traces").observe(0.3)
            first = await scrape.scrape_once()
            await asyncio.sleep(0.05)
            metrics.received.labels("traces", "http").inc(2)
            metrics.buffered.labels("traces").set(3)
            metrics.insert_seconds.labels("traces").observe(0.3)
            second = await scrape.scrape_once()
            # the scrape's own points are counted under protocol="self"
            assert metrics.received.labels("metrics", "self")._value.get() == first + second
        finally:
            assert await batcher.stop() == 0
        return first, second

    first, second = asyncio.run(scenario())
    assert first >= 3 and second > first  # the second scrape also carries the first one's received{protocol=self}

    rows = store.query(
        "SELECT MetricName, Attributes['signal'], Attributes['protocol'], Value, IsMonotonic, AggregationTemporality, "
        "ServiceName FROM otel.otel_metrics_sum WHERE TenantId = {t:String} AND MetricName = 'meshscope_received_items'"
        " ORDER BY TimeUnix", {"t": tenant}).rows
    http_rows = [r for r in rows if r[2] == "http"]
    assert [r[3] for r in http_rows] == [5.0, 7.0]
    assert all(r[4] and r[5] == 2 and r[6] == "meshscope" for r in http_rows)
    gauges = store.query("SELECT Value FROM otel.otel_metrics_gauge WHERE TenantId = {t:String} AND "
                         "MetricName = 'meshscope_buffered_rows' AND Attributes['signal'] = 'traces' ORDER BY TimeUnix", {"t": tenant}).rows
    assert [r[0] for r in gauges] == [12.0, 3.0]

    engine = PromQLEngine(lambda t: StoreSeriesSource(store, t))
    now = time.time_ns()

    def instant(q):
        return {tuple(sorted(s.labels.items())): s.value for s in engine.instant(q, now, tenant).samples}

    got = instant('meshscope_received_items_total{signal="traces"}')
    assert got == {(("__name__", "meshscope_received_items_total"), ("instance", "test-host"), ("job", "meshscope"),
                    ("protocol", "http"), ("signal", "traces")): 7.0}
    assert instant('sum(meshscope_buffered_rows{signal="traces"})') == {(): 3.0}
    assert instant('sum(meshscope_received_items_total{protocol="self"})')[()] > 0
    # both observations (0.3 s) are in the (0.25, 0.5] bucket: the median interpolates inside it
    p50 = instant('histogram_quantile(0.5, sum by (le) (meshscope_insert_duration_seconds_bucket{signal="traces"}))')
    assert 0.25 < p50[()] <= 0.5
    assert instant('meshscope_insert_duration_seconds_count{signal="traces"}') and \
        list(instant('meshscope_insert_duration_seconds_count{signal="traces"}').values()) == [2.0]
    # the queries the self-monitoring dashboard uses work over these series
    inc = instant('sum by (signal) (increase(meshscope_received_items_total{protocol="http"}[10m]))')
    assert list(inc) == [(("signal", "traces"),)] and inc[(("signal", "traces"),)] > 0


def test_run_scrapes_at_once_and_stops(store, tmp_path):
    async def scenario():
        metrics = SelfMetrics()
        metrics.buffered.labels("logs").set(1)
        batcher = Batcher(store, str(tmp_path / "data"), FlushPolicy(interval=0.2), metrics)
        await batcher.start()
        stop = asyncio.Event()
        task = asyncio.create_task(SelfScrape(metrics, batcher, interval=3600, tenant="self-run").run(stop))
        try:
            deadline = time.monotonic() + 10
            while batcher.buffers["metrics"].buffered_rows == 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert batcher.buffers["metrics"].buffered_rows > 0, "run() did not scrape at start"
            stop.set()
            await asyncio.wait_for(task, 5)  # ends at stop, not after the hour-long interval
        finally:
            stop.set()
            await batcher.stop()

    asyncio.run(scenario())
