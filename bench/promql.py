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
   Data cached before the series index (``deploy/clickhouse/006_metric_series.sql``; the manifest has no
   ``layout``) is upgraded in place first (``upgrade()``: schema applied, index backfilled, ``SeriesId``
   materialized in the old parts), as a store upgraded by ``meshscope serve`` would be once its old parts expire.
2. **Measure**, end of the range = the last sample, through the PromQL engine over ``StoreSeriesSource`` (what
   ``/api/v1/query_range`` runs, minus JSON), 250 steps over the day (step 345.6 s):
   ``sum by (destination_service) (rate(istio_requests_total[1m]))`` and
   ``histogram_quantile(0.95, sum by (le, destination_service) (rate(istio_request_duration_milliseconds_bucket[1m])))``;
   the rate query over the last hour at a 15 s step (a Grafana panel); the rate of one destination service (1 % of
   the series: ``SeriesId IN`` and its skip index); and the index alone: ``series()`` of all 10,000 counters and
   the values of ``destination_service`` over the day (``/api/v1/series``, ``/label/<name>/values``).
   One untimed first run (fills the metric catalogue), then ``--runs`` timed runs; the figure is the median, and
   ``sql_s`` in the JSON is the part of each run spent in store queries (including result conversion).
   Rate answers are checked against the generator's closed form (every counter grows by a constant per
   sample, so each series' rate is that constant / 15 s).

Figures one per line (``promql.<name> <value> <unit>``), JSON with machine info to ``--json-out``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from benchutil import (load_avg, machine_info, open_cached, wait_merges, write_json,  # bench/'s shared helpers
                       write_manifest)

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
    return {"gen_version": GEN_VERSION, "layout": LAYOUT, "series": n_series, "anchor_ns": anchor_s * S,
            "t0_ns": t0_s * S, "histogram_series": hist_series, "rows": rows, "generate_s": round(gen_s, 1),
            "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


LAYOUT = "006-series-index"  # the schema layout the cached data was brought to (see upgrade())
EXPERIMENT_TABLE = "bench_promql_series"  # the --series-index experiment of the first runs (not shipped)


def upgrade(store, log) -> dict:
    """Bring data generated under an older schema to the shipped layout in place (what a store upgraded to
    ``006_metric_series.sql`` gets, plus the rewrite a freshly generated store has for free): drop the old
    ``--series-index`` experiment (its ``SeriesId`` hashed fewer fields), apply the schema (adds ``SeriesId``
    and its index, creates ``otel_metrics_series`` and its views, backfills it from the cached rows), then write
    ``SeriesId`` and its index into the old parts (``MATERIALIZE``: a product store computes it on read until
    its old parts expire). Returns the seconds each step took."""
    from meshscope.schema import apply_schema

    db = store.database
    steps = {}
    t = time.perf_counter()
    store.command(f"DROP TABLE IF EXISTS {db}.{EXPERIMENT_TABLE}")
    tables = ("otel_metrics_sum", "otel_metrics_histogram")
    have = {r[0] for r in store.query(f"SELECT table FROM system.columns WHERE database = '{db}' "
                                      f"AND name = 'SeriesId'").rows}
    series_exists = store.query(f"EXISTS TABLE {db}.otel_metrics_series").rows[0][0]
    if not series_exists:
        for tbl in sorted(have):  # the experiment's column: not the shipped expression
            log(f"# dropping the experimental SeriesId of {tbl}")
            store.command(f"ALTER TABLE {db}.{tbl} DROP COLUMN SeriesId", settings={"mutations_sync": 2})
    steps["drop_experiment_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    log("# applying the schema (SeriesId, otel_metrics_series, backfill)")
    apply_schema(store)
    steps["apply_schema_backfill_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    for tbl in tables:
        log(f"# materializing SeriesId and its index in {tbl}")
        store.command(f"ALTER TABLE {db}.{tbl} MATERIALIZE COLUMN SeriesId", settings={"mutations_sync": 2})
        store.command(f"ALTER TABLE {db}.{tbl} MATERIALIZE INDEX idx_series_id", settings={"mutations_sync": 2})
    steps["materialize_s"] = round(time.perf_counter() - t, 1)
    return steps


class _TimedStore:
    """The store with the wall time spent in its queries added up (how much of a figure is SQL), and ClickHouse's
    query condition cache off: it remembers which granules a filter rejected, so repeating one query (as the
    timed runs do) would skip them, while a dashboard's sliding time range is a new filter at every refresh."""

    def __init__(self, store, box: list):
        self._store, self._box = store, box
        self.database = store.database

    def query(self, sql, parameters=None, settings=None):
        t = time.perf_counter()
        try:
            return self._store.query(sql, parameters=parameters,
                                     settings=dict(settings or {}, use_query_condition_cache=0))
        finally:
            self._box[0] += time.perf_counter() - t

    def __getattr__(self, name):
        return getattr(self._store, name)


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
    details: dict = {}
    if man.get("layout") != LAYOUT:
        log(f"# cached data predates the {LAYOUT} layout: upgrading it in place")
        details["upgrade"] = upgrade(store, log)
        log(f"# upgraded: {details['upgrade']}")
        man["layout"] = LAYOUT
        man["upgraded_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        write_manifest(args.data, man)
    merge_wait_s = wait_merges(store, log)
    # index rows as readers see them (one per series, hour and kind): the physical count of an AggregatingMergeTree
    # depends on how far background merges have got
    details["index_rows"] = int(store.query(
        f"SELECT count() FROM (SELECT DISTINCT MetricName, Kind, MetricUnit, SeriesId, Hour "
        f"FROM {store.database}.otel_metrics_series WHERE TenantId = '{TENANT}')").rows[0][0])
    sql_time = [0.0]
    timed_store = _TimedStore(store, sql_time)
    catalogue = MetricCatalogue(timed_store, ttl_s=3600)
    engine = PromQLEngine(lambda tenant: StoreSeriesSource(timed_store, tenant, catalogue))
    end = man["anchor_ns"]
    step = DAY_S * S // STEPS
    start = end - (STEPS - 1) * step
    figures: dict = {}
    warnings: list[str] = []

    def fig(name: str, value, unit: str = "s") -> None:
        figures[name] = value
        print(f"promql.{name} {value} {unit}", flush=True)

    def warn(msg: str) -> None:
        warnings.append(msg)
        print(f"WARNING {msg}", flush=True)

    def measure(name: str, fn, **info):
        t = time.perf_counter()
        res = fn()
        first = time.perf_counter() - t
        times, sql = [], []
        for _ in range(args.runs):
            sql_time[0] = 0.0
            t = time.perf_counter()
            res = fn()
            times.append(time.perf_counter() - t)
            sql.append(sql_time[0])
        details[name] = dict(info, first_s=round(first, 4), runs_s=[round(x, 4) for x in times],
                             sql_s=[round(x, 4) for x in sql])
        fig(f"{name}_s", round(statistics.median(times), 4))
        return res

    def query(name: str, q: str, q_start: int = start, q_step: int = step):
        res = measure(name, lambda: engine.range(q, q_start, end, q_step, TENANT), query=q)
        details[name].update(series_out=len(res.series), points_out=sum(len(p) for _, p in res.series))
        return res

    want = expected_rates(args.series)

    def check_rates(res, services) -> None:
        got = {lb.get("destination_service"): pts for lb, pts in res.series}
        bad = [svc for svc in services
               if svc not in got or any(abs(x - want[svc]) > 1e-9 * max(1.0, want[svc]) for _, x in got[svc])]
        if bad or len(got) != len(services):
            warn(f"rate answer differs from the closed form for {len(bad)} of {len(services)} services")

    res = query("rate_sum_by_250steps", Q_RATE)
    check_rates(res, list(want))
    # the same on a server that has not seen these series yet: the series-identity cache empty (the runs above
    # read the identities the first run cached, as every later query of a running server does)
    res = measure("rate_sum_by_250steps_cold", lambda: PromQLEngine(lambda tenant: StoreSeriesSource(
        timed_store, tenant, MetricCatalogue(timed_store, ttl_s=3600))).range(Q_RATE, start, end, step, TENANT),
        query=Q_RATE)
    check_rates(res, list(want))
    res = query("histogram_quantile_250steps", Q_QUANTILE)
    vals = {round(x, 6) for _, pts in res.series for _, x in pts}
    # observations spread evenly over buckets (1, 5], (5, 10], (10, 25], (25, 50]: rank 0.95 × 4c lies in
    # (25, 50], 0.8 of the way
    want_q = 25 + 25 * (0.95 * 4 - 3)
    if vals != {round(want_q, 6)}:
        warn(f"histogram_quantile answers {sorted(vals)[:5]}, expected {want_q}")
    # a dashboard refresh through the results cache: the previous request was the window one step earlier, made
    # 30 s after its last step; now the window has slid by a step. The steps of the last 10 minutes (the cache's
    # freshness) and the new one are evaluated, the rest comes from the cache.
    from meshscope.query.promql.results_cache import RangeResultsCache

    def same_answer(a: dict, b: dict) -> bool:
        """Equal series and steps, values to a relative 1e-12: ClickHouse sums the pushed-down groups in whatever
        order its threads finish, so even two uncached runs can differ in the last bits."""
        if [r["metric"] for r in a["result"]] != [r["metric"] for r in b["result"]]:
            return False
        for ra, rb in zip(a["result"], b["result"]):
            if [t for t, _ in ra["values"]] != [t for t, _ in rb["values"]]:
                return False
            for (_, x), (_, y) in zip(ra["values"], rb["values"]):
                x, y = float(x), float(y)
                if abs(x - y) > 1e-12 * max(abs(x), abs(y)) and not (x != x and y != y):
                    return False
        return True

    def refresh(name: str, q: str) -> None:
        times, sql, steps_evaluated = [], [], []
        whole = engine.range(q, start, end, step, TENANT).to_prom_json()
        for _ in range(args.runs):
            now = [end - step + 30 * S]
            cache = RangeResultsCache(engine, clock=lambda: now[0])
            cache.range(q, start - step, end - step, step, TENANT)
            now[0] = end + 30 * S
            misses = cache.misses
            sql_time[0] = 0.0
            t = time.perf_counter()
            got = cache.range(q, start, end, step, TENANT)
            times.append(time.perf_counter() - t)
            sql.append(sql_time[0])
            steps_evaluated.append(cache.misses - misses)
            if not same_answer(got.to_prom_json(), whole):
                warn(f"{name}: the refreshed answer differs from the uncached one")
        details[name] = dict(query=q, runs_s=[round(x, 4) for x in times], sql_s=[round(x, 4) for x in sql],
                             steps_evaluated=steps_evaluated[0])
        fig(f"{name}_s", round(statistics.median(times), 4))

    refresh("rate_sum_by_250steps_refresh", Q_RATE)
    refresh("histogram_quantile_250steps_refresh", Q_QUANTILE)
    # a Grafana "last hour" panel: the same rate query, 1 h at a 15 s step (241 steps)
    res = query("rate_sum_by_1h_15s", Q_RATE, end - 3600 * S, 15 * S)
    check_rates(res, list(want))
    # a selective matcher: one destination service (1 % of the series) through SeriesId IN and its skip index
    svc = "svc-7.shop.svc.cluster.local"
    res = query("rate_one_service_250steps", f'sum by (destination_service) '
                                             f'(rate(istio_requests_total{{destination_service="{svc}"}}[1m]))')
    check_rates(res, [svc])
    # the index alone: /api/v1/series and /api/v1/label/<name>/values over the day
    src = StoreSeriesSource(timed_store, TENANT, catalogue)
    from meshscope.query.promql.ast import Matcher
    got = measure("series_all_istio_requests_1d", lambda: src.series(
        [Matcher("__name__", "=", "istio_requests_total")], end - DAY_S * S, end))
    if len(got) != args.series:
        warn(f"series() answered {len(got)} label sets, expected {args.series}")
    got = measure("label_values_destination_service_1d", lambda: src.label_values(
        "destination_service", end - DAY_S * S, end))
    if len(got) != 100:
        warn(f"label_values answered {len(got)} values, expected 100")
    fig("samples_in_range", man["rows"]["otel_metrics_sum"], "rows")
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
    args = ap.parse_args(argv)
    if not 1 <= args.runs <= 11 or args.chunk < 1 or args.series < 100:
        ap.error("--runs 1..11, --chunk >= 1, --series >= 100")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
