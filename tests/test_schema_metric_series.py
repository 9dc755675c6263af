"""The PromQL series index (``deploy/clickhouse/006_metric_series.sql``): ``SeriesId`` on the five metric tables,
``otel_metrics_series`` filled by materialized views at insert, and the one-time backfill ``meshscope.schema``
runs for stores whose metric tables existed before the index.

Points go in as OTLP protobuf through the collector's own insert statements (what ``meshscope serve`` stores). The
upgrade test builds a pre-006 store in its own database of the session's embedded store (chDB opens one directory
per process), so it runs the real schema files and the real backfill."""
from __future__ import annotations

import copy
import time
import uuid

import pytest
from test_promql_store import _attrs, insert
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric

from meshscope.query.promql.ast import Matcher
from meshscope.query.promql.store_source import MetricCatalogue, StoreSeriesSource
from meshscope.schema import BACKFILL_PENDING, BACKFILLED, apply_schema, render, schema_files, split_statements

S = 1_000_000_000
HOUR = 3600 * S
# two hours back, on a whole hour, so the points below span three index hours
T0 = (time.time_ns() // HOUR - 2) * HOUR
METRIC_TABLES = ("otel_metrics_gauge", "otel_metrics_sum", "otel_metrics_histogram",
                 "otel_metrics_exponential_histogram", "otel_metrics_summary")
INDEX_COLUMNS = ("TenantId, MetricName, Kind, MetricUnit, SeriesId, toUnixTimestamp(Hour), any(ServiceName), "
                 "any(ResourceAttributes), any(Attributes), any(IsMonotonic), any(AggregationTemporality), "
                 "any(ExplicitBounds), any(Quantiles), any(MetricDescription), toUnixTimestamp64Nano(min(MinTime)), "
                 "toUnixTimestamp64Nano(max(MaxTime)), max(HasStale), any(ServiceNamespace), any(ServiceInstanceId)")


def every_kind(service: str = "api") -> ExportMetricsServiceRequest:
    """One metric of each OTLP kind at three points an hour apart; the sum twice (cumulative GETs, delta POSTs)."""
    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    _attrs(rm.resource, {"service.name": service, "service.namespace": "shop", "service.instance.id": "i-1",
                         "host.name": "node-a"})
    sm = rm.scope_metrics.add()
    sm.scope.name = "test"
    times = [T0 + 5 * S, T0 + HOUR + 10 * S, T0 + 2 * HOUR + 15 * S]
    g = Metric(name="queue.depth", unit="{item}", description="items waiting")
    for i, t in enumerate(times):
        pt = g.gauge.data_points.add(time_unix_nano=t, as_double=float(i), flags=1 if i == 1 else 0)
        _attrs(pt, {"queue": "q1"})
    sums = []
    for temporality, method in ((2, "GET"), (1, "POST")):
        m = Metric(name="http.requests", unit="{request}")
        m.sum.is_monotonic, m.sum.aggregation_temporality = True, temporality
        for i, t in enumerate(times):
            _attrs(m.sum.data_points.add(time_unix_nano=t, start_time_unix_nano=T0, as_double=1.0 + i),
                   {"http.method": method})
        sums.append(m)
    h = Metric(name="latency", unit="ms")
    h.histogram.aggregation_temporality = 2
    for i, t in enumerate(times):
        pt = h.histogram.data_points.add(time_unix_nano=t, start_time_unix_nano=T0, count=3 + i, sum=10.0,
                                         bucket_counts=[1, 2, i], explicit_bounds=[5.0, 50.0])
        _attrs(pt, {"route": "/a"})
    e = Metric(name="latency.exp", unit="ms")
    e.exponential_histogram.aggregation_temporality = 2
    for t in times:
        e.exponential_histogram.data_points.add(time_unix_nano=t, start_time_unix_nano=T0, count=4, sum=8.0, scale=2,
                                                zero_count=1, positive=dict(offset=1, bucket_counts=[1, 2]))
    q = Metric(name="rpc.duration", unit="s")
    for t in times:
        pt = q.summary.data_points.add(time_unix_nano=t, start_time_unix_nano=T0, count=2, sum=3.0)
        for quantile, v in ((0.5, 1.0), (0.99, 2.0)):
            qv = pt.quantile_values.add()
            qv.quantile, qv.value = quantile, v
    sm.metrics.extend([g, *sums, h, e, q])
    return req


def index_rows(store, tenant: str, db: str | None = None) -> list[tuple]:
    """The index rows of a tenant as the queries see them (aggregated per key: merges do not matter)."""
    db = db or store.database
    return store.query(f"SELECT {INDEX_COLUMNS} FROM {db}.otel_metrics_series WHERE TenantId = {{t:String}} "
                       f"GROUP BY TenantId, MetricName, Kind, MetricUnit, SeriesId, Hour ORDER BY ALL",
                       parameters={"t": tenant}).rows


def test_views_fill_the_index_for_every_kind(store, tmp_path):
    tenant = f"idx-{uuid.uuid4().hex[:8]}"
    insert(store, tmp_path, every_kind(), tenant)
    rows = index_rows(store, tenant)
    by_kind: dict[str, list] = {}
    for r in rows:
        by_kind.setdefault(r[2], []).append(r)
    assert sorted(by_kind) == ["exponential_histogram", "gauge", "histogram", "sum", "summary"]
    hours = [T0 // S, T0 // S + 3600, T0 // S + 7200]
    for kind, table in zip(("gauge", "sum", "histogram", "exponential_histogram", "summary"), METRIC_TABLES):
        # the index holds exactly the sample rows' series ids, one row per series and hour
        ids = sorted(r[0] for r in store.query(f"SELECT DISTINCT SeriesId FROM {store.database}.{table} "
                                               f"WHERE TenantId = {{t:String}}", parameters={"t": tenant}).rows)
        assert sorted({r[4] for r in by_kind[kind]}) == ids
        assert len(by_kind[kind]) == 3 * len(ids)
        assert sorted({r[5] for r in by_kind[kind]}) == hours
        for r in by_kind[kind]:
            assert (r[6], r[7]) == ("api", {"service.name": "api", "service.namespace": "shop",
                                            "service.instance.id": "i-1", "host.name": "node-a"})
            assert (r[17], r[18]) == ("shop", "i-1")  # job and instance without reading the resource map
            assert r[14] == r[15]  # one point per hour: first and last point coincide
            assert r[15] // HOUR * HOUR == r[5] * S
    (g0, g1, g2) = by_kind["gauge"]
    assert (g0[1], g0[3], g0[8], g0[13]) == ("queue.depth", "{item}", {"queue": "q1"}, "items waiting")
    assert [g[16] for g in (g0, g1, g2)] == [0, 1, 0]  # the NoRecordedValue point is in the second hour
    # the sum flags are kept per series
    assert sorted({(r[8]["http.method"], bool(r[9]), r[10]) for r in by_kind["sum"]}) == \
        [("GET", True, 2), ("POST", True, 1)]
    assert {tuple(r[11]) for r in by_kind["histogram"]} == {(5.0, 50.0)}
    assert {tuple(r[12]) for r in by_kind["summary"]} == {(0.5, 0.99)}
    assert {r[10] for r in by_kind["exponential_histogram"]} == {2}


def test_series_id_covers_identity_but_not_values(store, tmp_path):
    """Same labels and new values: same id. Another bound, attribute or resource: another id."""
    tenant = f"idx-id-{uuid.uuid4().hex[:8]}"

    def hist(bounds, attrs, host, t):
        req = ExportMetricsServiceRequest()
        rm = req.resource_metrics.add()
        _attrs(rm.resource, {"service.name": "api", "host.name": host})
        m = Metric(name="lat", unit="ms")
        m.histogram.aggregation_temporality = 2
        pt = m.histogram.data_points.add(time_unix_nano=t, count=len(bounds) + 1, sum=1.0,
                                         bucket_counts=[1] * (len(bounds) + 1), explicit_bounds=bounds)
        _attrs(pt, attrs)
        rm.scope_metrics.add().metrics.append(m)
        return req

    for args in (([1.0], {"a": "x"}, "n1", T0), ([1.0], {"a": "x"}, "n1", T0 + S), ([2.0], {"a": "x"}, "n1", T0),
                 ([1.0], {"a": "y"}, "n1", T0), ([1.0], {"a": "x"}, "n2", T0)):
        insert(store, tmp_path, hist(*args), tenant)
    ids = store.query(f"SELECT SeriesId FROM {store.database}.otel_metrics_histogram WHERE TenantId = {{t:String}} "
                      f"ORDER BY TimeUnix, _part", parameters={"t": tenant}).rows
    assert len({r[0] for r in ids}) == 4


def _pre_006(store, db: str) -> None:
    """A store as the schema files before 006 left it."""
    for name, text in schema_files():
        if name < "006":
            for stmt in split_statements(render(text, db, 7)):
                store.command(stmt)


def test_upgrade_backfills_the_index_once(store, tmp_path):
    """Metric tables that existed before 006 get SeriesId (computed on read for their old parts) and a backfilled
    index equal to what the views write for the same data; later starts do not backfill again, and a start that
    finds the backfill still pending (stopped half-way) does it again without changing the answers."""
    tenant = "upgrade"
    old = copy.copy(store)
    old.database = f"upgrade_{uuid.uuid4().hex[:8]}"
    fresh = copy.copy(store)
    fresh.database = f"fresh_{uuid.uuid4().hex[:8]}"
    db = old.database
    try:
        _pre_006(old, db)
        insert(old, tmp_path, every_kind(), tenant)
        cols = {r[0] for r in old.query(f"SELECT DISTINCT name FROM system.columns WHERE database = '{db}'").rows}
        assert "SeriesId" not in cols
        assert not old.query(f"EXISTS TABLE {db}.otel_metrics_series").rows[0][0]

        ran = apply_schema(old)
        backfills = [s for s in ran if s.startswith(f"INSERT INTO {db}.otel_metrics_series ")]
        assert len(backfills) == 5, "one backfill per metric table"
        assert old.query(f"SELECT comment FROM system.tables WHERE database = '{db}' "
                         f"AND name = 'otel_metrics_series'").rows == [(BACKFILLED,)]
        # the same request into a store that had the index from the start: views and backfill agree exactly
        apply_schema(fresh)
        insert(fresh, tmp_path, every_kind(), tenant)
        want = index_rows(fresh, tenant)
        assert len(want) == 18  # 6 series x 3 hours
        assert index_rows(old, tenant) == want

        # a second start: nothing to backfill (physical rows unchanged while merges are stopped)
        old.command(f"SYSTEM STOP MERGES {db}.otel_metrics_series")
        physical = old.query(f"SELECT count() FROM {db}.otel_metrics_series").rows[0][0]
        ran = apply_schema(old)
        assert not [s for s in ran if s.startswith("INSERT")]
        assert old.query(f"SELECT count() FROM {db}.otel_metrics_series").rows[0][0] == physical
        # a start interrupted before it marked the backfill done: it runs again, the aggregates count once
        old.command(f"ALTER TABLE {db}.otel_metrics_series MODIFY COMMENT '{BACKFILL_PENDING}'")
        ran = apply_schema(old)
        assert len([s for s in ran if s.startswith("INSERT")]) == 5
        assert old.query(f"SELECT count() FROM {db}.otel_metrics_series").rows[0][0] == 2 * physical
        assert index_rows(old, tenant) == want
        old.command(f"SYSTEM START MERGES {db}.otel_metrics_series")

        # new points after the upgrade go through the views; PromQL reads old and new rows alike
        insert(old, tmp_path, every_kind("web"), tenant)
        src = StoreSeriesSource(old, tenant, MetricCatalogue(old))
        got = src.select([Matcher("__name__", "=", "http_requests_total"), Matcher("job", "=~", "shop/.*")],
                         T0, T0 + 3 * HOUR)
        assert sorted((s.labels["job"], s.labels["http_method"], s.values.tolist()) for s in got) == \
            [("shop/api", "GET", [1.0, 2.0, 3.0]), ("shop/api", "POST", [1.0, 3.0, 6.0]),
             ("shop/web", "GET", [1.0, 2.0, 3.0]), ("shop/web", "POST", [1.0, 3.0, 6.0])]
        assert {s["job"] for s in src.series([Matcher("__name__", "=", "latency_milliseconds_bucket")],
                                             T0, T0 + 3 * HOUR)} == {"shop/api", "shop/web"}
    finally:
        for st in (old, fresh):
            st.command(f"DROP DATABASE IF EXISTS {st.database}")


def test_schema_file_marks_the_index_for_backfill():
    text = dict(schema_files())["006_metric_series.sql"]
    assert f"COMMENT '{BACKFILL_PENDING}'" in text
    assert text.count("CREATE MATERIALIZED VIEW IF NOT EXISTS") == 5
    for table in METRIC_TABLES:
        assert f"FROM ${{DB}}.{table} AS src\n" in text and f"ALTER TABLE ${{DB}}.{table} ${{ON_CLUSTER}}" in text


@pytest.mark.parametrize("cluster", ["", "main"])
def test_index_statements_render_for_both_modes(cluster):
    stmts = split_statements(render(dict(schema_files())["006_metric_series.sql"], "otel", 7, cluster))
    create = [s for s in stmts if s.startswith("CREATE TABLE")]
    assert len(create) == 1
    engine = "ReplicatedAggregatingMergeTree" if cluster else "AggregatingMergeTree"
    assert f"ENGINE = {engine}" in create[0]
    assert all(("ON CLUSTER main" in s) == bool(cluster) for s in stmts)
