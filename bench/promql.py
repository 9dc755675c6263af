#!/usr/bin/env python3
"""PromQL benchmark: Kiali's request-rate and latency-quantile queries over one day of Istio metrics.

    python bench/promql.py [--series 10000] [--runs 5] [--data ./bench-data/promql]
                           [--json-out bench/results/promql.json] [--regenerate]

1. **Data** (cached in ``--data``, reused while the manifest matches and is under 6 days old; TTL is 7):
   ``--series`` (10,000) ``istio_requests_total`` series × 1 day of 15 s samples (5,760 each: 57.6M rows in
   ``otel_metrics_sum``), as a collector's Prometheus receiver forwards Istio's counters (cumulative, monotonic,
   resource = the scrape target, 10 Istio labels per point; 100 destination services); plus
   ``istio_request_duration_milliseconds`` histograms with Istio's 19 bounds, sized to the same 10,000 Prometheus
   series: 500 OTel series × 20 ``le`` buckets, 2.88M rows in ``otel_metrics_histogram``. Generated inside
   ClickHouse (``INSERT … SELECT … FROM numbers()``), every value a function of the row number.
2. **Measure**, end of the range = the last sample, 250 steps over the day (step 345.6 s), through the PromQL
   engine over ``StoreSeriesSource`` (what ``/api/v1/query_range`` runs, minus JSON):
   ``sum by (destination_service) (rate(istio_requests_total[1m]))`` and
   ``histogram_quantile(0.95, sum by (le, destination_service) (rate(istio_request_duration_milliseconds_bucket[1m])))``.
   One untimed first run (fills the metric catalogue), then ``--runs`` timed runs; the figure is the median.
   The rate answer is checked against the generator's closed form (every counter grows by a constant per
   sample, so each series' rate is that constant / 15 s).

Figures one per line (``promql.<name> <value> <unit>``), JSON with machine info to ``--json-out``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from benchutil import load_avg, machine_info, open_cached, wait_merges, write_json  # bench/'s shared helpers

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
if REPO not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, REPO)

GEN_VERSION = 1
S = 10**9
DAY_S = 86400
INTERVAL_S = 15
POINTS = DAY_S // INTERVAL_S  # 5760
TENANT = "bench-promql"
BUCKETS = [0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000,
           3600000]
STEPS = 250
Q_RATE = "sum by (destination_service) (rate(istio_requests_total[1m]))"
Q_QUANTILE = ("histogram_quantile(0.95, sum by (le, destination_service) "
              "(rate(istio_request_duration_milliseconds_bucket[1m])))")


def _labels_sql(s: str) -> str:
    """The Istio label set of series number ``s`` (an SQL expression over column ``s``)."""
    return (f"map('reporter', if({s} % 2 = 0, 'source', 'destination'), "
            f"'source_workload', concat('wl-', toString(intDiv({s}, 2) % 50)), "
            f"'source_workload_namespace', 'shop', "
            f"'destination_service', concat('svc-', toString({s} % 100), '.shop.svc.cluster.local'), "
            f"'destination_service_namespace', 'shop', "
            f"'destination_workload', concat('svc-', toString({s} % 100), '-v1'), "
            f"'response_code', ['200', '200', '503', '404'][intDiv({s}, 100) % 4 + 1], "
            f"'request_protocol', 'http', 'response_flags', '-', "
            f"'connection_security_policy', 'mutual_tls')")


def _resource_sql(s: str) -> str:
    return (f"map('service.name', 'kubernetes-pods', 'service.instance.id', "
            f"concat('10.44.', toString(intDiv({s}, 250)), '.', toString({s} % 250), ':15020'))")


def counter_sql(db: str, first: int, count: int, t0_s: int) -> str:
    """Series [first, first+count): value at point i = i × (s % 7 + 1)."""
    return f"""
INSERT INTO {db}.otel_metrics_sum (TenantId, ResourceAttributes, ServiceName, MetricName, Attributes,
    StartTimeUnix, TimeUnix, Value, ValueType, AggregationTemporality, IsMonotonic)
SELECT '{TENANT}', ra, 'kubernetes-pods', 'istio_requests_total', a,
       fromUnixTimestamp64Nano(toInt64({t0_s}) * 1000000000),
       fromUnixTimestamp64Nano((toInt64({t0_s}) + i * {INTERVAL_S}) * 1000000000),
       toFloat64(i) * k, 'int', 2, true
FROM (SELECT s, toFloat64(s % 7 + 1) AS k, {_resource_sql('s')} AS ra, {_labels_sql('s')} AS a
      FROM (SELECT number + {first} AS s FROM numbers({count}))) AS ser
CROSS JOIN (SELECT number AS i FROM numbers({POINTS})) AS pts
"""


def histogram_sql(db: str, count: int, t0_s: int) -> str:
    """Histogram series s: per 15 s, (s % 5 + 1) observations in each of buckets 2..5 of Istio's bounds."""
    nb = len(BUCKETS) + 1
    per = "toUInt64(s % 5 + 1)"
    counts = f"arrayMap(j -> if(j >= 3 AND j <= 6, {per} * i, toUInt64(0)), range(1, {nb + 1}))"
    return f"""
INSERT INTO {db}.otel_metrics_histogram (TenantId, ResourceAttributes, ServiceName, MetricName, Attributes,
    StartTimeUnix, TimeUnix, Count, Sum, BucketCounts, ExplicitBounds, AggregationTemporality)
SELECT '{TENANT}', ra, 'kubernetes-pods', 'istio_request_duration_milliseconds', a,
       fromUnixTimestamp64Nano(toInt64({t0_s}) * 1000000000),
       fromUnixTimestamp64Nano((toInt64({t0_s}) + i * {INTERVAL_S}) * 1000000000),
       4 * {per} * i, toFloat64(4 * {per} * i) * 12.5, {counts}, {BUCKETS}, 2
FROM (SELECT s, {_resource_sql('s')} AS ra, {_labels_sql('s')} AS a
      FROM (SELECT number AS s FROM numbers({count}))) AS ser
CROSS JOIN (SELECT toUInt64(number) AS i FROM numbers({POINTS})) AS pts
"""


def generate(store, n_series: int, chunk: int, log) -> dict:
    from meshscope.schema import apply_schema

    apply_schema(store)
    db = store.database
    anchor_s = int(time.time()) // 60 * 60
    t0_s = anchor_s - (POINTS - 1) * INTERVAL_S
    t = time.perf_counter()
    for first in range(0, n_series, chunk):
        n = min(chunk, n_series - first)
        store.command(counter_sql(db, first, n, t0_s), settings={"max_insert_threads": 2})
        log(f"# counters {first + n:,}/{n_series:,} series ({time.perf_counter() - t:.0f}s)")
    hist_series = max(1, n_series // (len(BUCKETS) + 1))
    store.command(histogram_sql(db, hist_series, t0_s), settings={"max_insert_threads": 2})
    gen_s = time.perf_counter() - t
    log(f"# histograms {hist_series:,} series ({gen_s:.0f}s)")
    rows = {tbl: int(store.query(f"SELECT count() FROM {db}.{tbl} WHERE TenantId = '{TENANT}'").rows[0][0])
            for tbl in ("otel_metrics_sum", "otel_metrics_histogram")}
    return {"gen_version": GEN_VERSION, "series": n_series, "anchor_ns": anchor_s * S, "t0_ns": t0_s * S,
            "histogram_series": hist_series, "rows": rows, "generate_s": round(gen_s, 1),
            "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


SERIES_TABLE = "bench_promql_series"


def add_series_index(store, log) -> float:
    """The layout this benchmark argues for (not shipped): a ``SeriesId`` column on the metric tables and a small
    series table holding each series' labels once, as Prometheus' index does. Built on the cached data (a
    mutation plus one INSERT … SELECT); in the product the column would be MATERIALIZED at insert and the series
    table fed by a materialized view."""
    db = store.database
    t = time.perf_counter()
    store.command(f"CREATE TABLE IF NOT EXISTS {db}.{SERIES_TABLE} (TenantId LowCardinality(String), "
                  f"MetricName LowCardinality(String), MetricUnit LowCardinality(String), SeriesId UInt64, "
                  f"ServiceName LowCardinality(String), ResourceAttributes Map(LowCardinality(String), String), "
                  f"Attributes Map(LowCardinality(String), String), ExplicitBounds Array(Float64)) "
                  f"ENGINE = ReplacingMergeTree ORDER BY (TenantId, MetricName, SeriesId)")
    for tbl in ("otel_metrics_sum", "otel_metrics_histogram"):
        cols = {r[0] for r in store.query(f"SELECT name FROM system.columns WHERE database = '{db}' "
                                          f"AND table = '{tbl}'").rows}
        if "SeriesId" in cols:
            continue
        log(f"# adding SeriesId to {tbl}")
        store.command(f"ALTER TABLE {db}.{tbl} ADD COLUMN SeriesId UInt64 MATERIALIZED "
                      f"cityHash64(ServiceName, MetricName, MetricUnit, ResourceAttributes, Attributes)")
        store.command(f"ALTER TABLE {db}.{tbl} MATERIALIZE COLUMN SeriesId", settings={"mutations_sync": 2})
        bounds = "any(ExplicitBounds)" if tbl == "otel_metrics_histogram" else "[]"
        store.command(f"INSERT INTO {db}.{SERIES_TABLE} SELECT TenantId, MetricName, MetricUnit, SeriesId, "
                      f"any(ServiceName), any(ResourceAttributes), any(Attributes), {bounds} FROM {db}.{tbl} "
                      f"WHERE TenantId = '{TENANT}' GROUP BY TenantId, MetricName, MetricUnit, SeriesId")
    return time.perf_counter() - t


def series_index_query(store, metric: str, table: str, start: int, end: int, step: int, rng: int,
                       buckets: bool) -> dict:
    """``sum by (destination_service) (rate(metric[rng]))`` (or, with ``buckets``, the 0.95 quantile by
    destination_service) on the series-index layout: labels from the series table, grids grouped by SeriesId."""
    import numpy as np

    from meshscope.query.promql.store_source import _dec_literal, _dt_literal

    db = store.database
    labels = {sid: dict(a) for sid, a in store.query(
        f"SELECT SeriesId, Attributes FROM {db}.{SERIES_TABLE} WHERE TenantId = {{t:String}} "
        f"AND MetricName = {{m:String}}", parameters={"t": TENANT, "m": metric}).rows}
    grid = f"{_dt_literal(start)}, {_dt_literal(end)}, {_dec_literal(step)}, {_dec_literal(rng)}"
    if buckets:
        agg = (f"timeSeriesRateToGridForEach({grid})(arrayResize(CAST([] AS Array(DateTime64(9))), "
               f"length(BucketCounts), TimeUnix), arrayMap(x -> toFloat64(x), arrayCumSum(BucketCounts)))")
    else:
        agg = f"timeSeriesRateToGrid({grid})(TimeUnix, Value)"
    rows = store.query(
        f"SELECT SeriesId, {agg} FROM {db}.{table} PREWHERE TenantId = {{t:String}} AND MetricName = {{m:String}} "
        f"AND TimeUnix > fromUnixTimestamp64Nano({{lo:Int64}}) AND TimeUnix <= fromUnixTimestamp64Nano({{hi:Int64}}) "
        f"AND ({{hi:Int64}} - toUnixTimestamp64Nano(TimeUnix)) % {{step:Int64}} < {{rng:Int64}} "
        f"GROUP BY SeriesId", parameters={"t": TENANT, "m": metric, "lo": start - rng, "hi": end, "step": step,
                                          "rng": rng}, settings={"allow_experimental_ts_to_grid_aggregate_function": 1}).rows
    n = (end - start) // step + 1
    out: dict = {}
    for sid, g in rows:
        svc = labels[sid].get("destination_service", "")
        arr = np.array([[np.nan if v is None else v for v in b] for b in g] if buckets
                       else [np.nan if v is None else v for v in g], dtype=np.float64)
        out[svc] = arr if svc not in out else np.nansum([out[svc], arr], axis=0)
    if buckets:  # quantile per service over the summed bucket rates (Istio's bounds, +Inf last)
        bounds = np.array(BUCKETS + [np.inf])
        for svc, arr in out.items():
            cum = arr  # already cumulative per bucket
            q = np.full(n, np.nan)
            for k in range(n):
                c = cum[:, k]
                total = c[-1]
                if not total > 0:
                    continue
                rank = 0.95 * total
                i = int(np.searchsorted(c, rank, side="left"))
                lo_b, lo_c = (0.0, 0.0) if i == 0 else (bounds[i - 1], c[i - 1])
                q[k] = bounds[i - 1] if i == len(bounds) - 1 else lo_b + (bounds[i] - lo_b) * (rank - lo_c) / (c[i] - lo_c)
            out[svc] = q
    return out


def expected_rates(n_series: int) -> dict[str, float]:
    """Closed form of Q_RATE: each series grows by (s % 7 + 1) per 15 s."""
    out: dict[str, float] = {}
    for s in range(n_series):
        svc = f"svc-{s % 100}.shop.svc.cluster.local"
        out[svc] = out.get(svc, 0.0) + (s % 7 + 1) / INTERVAL_S
    return out


def run(args) -> int:
    from meshscope.query.promql.engine import PromQLEngine
    from meshscope.query.promql.store_source import MetricCatalogue, StoreSeriesSource

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    info = machine_info()
    log(f"# {info['nproc']} CPUs ({info['cpu_model']}), {info['mem_gib']} GiB, python {info['python']}; "
        f"load average {load_avg()}")

    def gen(store):
        log(f"# generating {args.series:,} series × {POINTS:,} samples into {args.data}")
        return generate(store, args.series, args.chunk, log)

    store, man, generated = open_cached(args.data, {"gen_version": GEN_VERSION, "series": args.series}, gen, log,
                                        args.regenerate)
    merge_wait_s = wait_merges(store, log)
    catalogue = MetricCatalogue(store, ttl_s=3600)
    engine = PromQLEngine(lambda tenant: StoreSeriesSource(store, tenant, catalogue))
    end = man["anchor_ns"]
    step = DAY_S * S // STEPS
    start = end - (STEPS - 1) * step
    figures: dict = {}
    details: dict = {}
    warnings: list[str] = []

    def fig(name: str, value, unit: str = "s") -> None:
        figures[name] = value
        print(f"promql.{name} {value} {unit}", flush=True)

    def measure(name: str, query: str):
        t = time.perf_counter()
        res = engine.range(query, start, end, step, TENANT)
        first = time.perf_counter() - t
        times = []
        for _ in range(args.runs):
            t = time.perf_counter()
            res = engine.range(query, start, end, step, TENANT)
            times.append(time.perf_counter() - t)
        details[name] = dict(query=query, first_s=round(first, 4), runs_s=[round(x, 4) for x in times],
                             series_out=len(res.series), points_out=sum(len(p) for _, p in res.series))
        fig(f"{name}_s", round(statistics.median(times), 4))
        return res

    res = measure("rate_sum_by_250steps", Q_RATE)
    want = expected_rates(args.series)
    got = {lb.get("destination_service"): pts for lb, pts in res.series}
    bad = [svc for svc, v in want.items()
           if svc not in got or any(abs(x - v) > 1e-9 * max(1.0, v) for _, x in got[svc])]
    if bad or len(got) != len(want):
        warnings.append(f"rate answer differs from the closed form for {len(bad)} of {len(want)} services")
        print(f"WARNING {warnings[-1]}", flush=True)
    res = measure("histogram_quantile_250steps", Q_QUANTILE)
    vals = {round(x, 6) for _, pts in res.series for _, x in pts}
    # observations spread evenly over buckets (1, 5], (5, 10], (10, 25], (25, 50]: rank 0.95 × 4c lies in
    # (25, 50], 0.8 of the way
    want_q = 25 + 25 * (0.95 * 4 - 3)
    if vals != {round(want_q, 6)}:
        warnings.append(f"histogram_quantile answers {sorted(vals)[:5]}, expected {want_q}")
        print(f"WARNING {warnings[-1]}", flush=True)
    fig("samples_in_range", man["rows"]["otel_metrics_sum"], "rows")
    if args.series_index:
        details["series_index_build_s"] = round(add_series_index(store, log), 1)
        wait_merges(store, log)
        rng = 60 * S

        def timed(name, fn):
            fn()
            times = []
            for _ in range(args.runs):
                t = time.perf_counter()
                res = fn()
                times.append(time.perf_counter() - t)
            details[name] = dict(runs_s=[round(x, 4) for x in times])
            fig(f"{name}_s", round(statistics.median(times), 4))
            return res

        res = timed("rate_sum_by_250steps_series_index", lambda: series_index_query(
            store, "istio_requests_total", "otel_metrics_sum", start, end, step, rng, False))
        if any(abs(res[svc][-1] - v) > 1e-9 * v for svc, v in want.items()):
            warnings.append("series-index rate answer differs from the closed form")
            print(f"WARNING {warnings[-1]}", flush=True)
        res = timed("histogram_quantile_250steps_series_index", lambda: series_index_query(
            store, "istio_request_duration_milliseconds", "otel_metrics_histogram", start, end, step, rng, True))
        if {round(float(x), 6) for a in res.values() for x in a} != {round(want_q, 6)}:
            warnings.append("series-index quantile answer differs")
            print(f"WARNING {warnings[-1]}", flush=True)
    store.close()
    out = dict(figures=figures, details=details, machine=info, warnings=warnings,
               data=dict(man, generated_now=generated, merge_wait_s=round(merge_wait_s, 1)),
               config=dict(series=args.series, runs=args.runs, steps=STEPS, step_s=step / S,
                           data=os.path.abspath(args.data)),
               load_average_end=load_avg())
    write_json(args.json_out, out)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--series", type=int, default=10_000, help="istio_requests_total series (default 10000)")
    ap.add_argument("--runs", type=int, default=5, help="timed runs per figure, after one first run (default 5)")
    ap.add_argument("--data", default=os.path.join(".", "bench-data", "promql"),
                    help="cache dir for the store (default ./bench-data/promql)")
    ap.add_argument("--json-out", default=os.path.join(HERE, "results", "promql.json"))
    ap.add_argument("--chunk", type=int, default=1000, help="series per generating INSERT (default 1000)")
    ap.add_argument("--regenerate", action="store_true", help="ignore cached data")
    ap.add_argument("--series-index", action="store_true",
                    help="also measure the proposed layout (SeriesId column + series table), added to the cached "
                         "data in place; --regenerate afterwards to measure the shipped schema alone again")
    args = ap.parse_args(argv)
    if not 1 <= args.runs <= 11 or args.chunk < 1 or args.series < 100:
        ap.error("--runs 1..11, --chunk >= 1, --series >= 100")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
