"""The range-query results cache (``query/promql/results_cache.py``) and the series-identity cache of the store source.

The cache's whole claim is that a range query answered in pieces (cached steps plus freshly evaluated ones) equals
the same query evaluated at once. The differential test checks that over queries with resets, gaps, staleness,
subqueries, offsets and aggregations, with the engine over in-memory series (the property is the evaluator's) and
again over the real store through the HTTP API.
"""
from __future__ import annotations

import json
import random
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest

from meshscope.query.promql.engine import PromQLEngine
from meshscope.query.promql.errors import PromQLError
from meshscope.query.promql.parser import parse
from meshscope.query.promql.results_cache import RangeResultsCache, cacheable
from meshscope.query.promql.source import STALE_NAN, MemorySource

S = 1_000_000_000
T0 = 1_700_000_000 * S
STEP = 30 * S

QUERIES = [
    "up",
    "rate(requests_total[1m])",
    "sum by (svc) (rate(requests_total[2m]))",
    "increase(requests_total[5m]) > bool 3",
    "max_over_time(temperature[3m]) - min_over_time(temperature[3m])",
    "avg_over_time(rate(requests_total[1m])[5m:30s])",
    "requests_total offset 2m",
    "topk(2, temperature)",
    "histogram_quantile(0.9, sum by (le) (rate(latency_bucket[2m])))",
    "time()",
    "vector(1) + scalar(sum(up))",
    "temperature and on (svc) up",
    "label_replace(temperature, \"x\", \"$1\", \"svc\", \"(.*)\")",
    "absent(nonexistent)",
    "count_values(\"v\", up)",
]


def _source(seed: int = 7) -> MemorySource:
    rnd = random.Random(seed)
    src = MemorySource()
    for svc in ("a", "b", "c"):
        total = 0.0
        for i in range(240):
            t = T0 + i * 15 * S + rnd.randint(0, 2) * S
            if rnd.random() < 0.03:
                total = 0.0  # counter reset
            total += rnd.randint(0, 9)
            if not (svc == "b" and 80 <= i < 100):  # a gap
                src.add({"__name__": "requests_total", "svc": svc}, t, total)
            src.add({"__name__": "temperature", "svc": svc}, t, rnd.uniform(10, 30))
            if svc != "c" or i < 150:
                src.add({"__name__": "up", "svc": svc}, t, 1.0)
            elif i == 150:
                src.add({"__name__": "up", "svc": svc}, t, STALE_NAN)
        acc = [0.0] * 4
        for i in range(240):
            t = T0 + i * 15 * S
            for j in range(4):
                acc[j] += rnd.randint(0, 3)
            for j, le in enumerate(("0.1", "1", "10", "+Inf")):
                src.add({"__name__": "latency_bucket", "svc": svc, "le": le}, t, sum(acc[:j + 1]))
    return src


def _json(m) -> str:
    return json.dumps(m.to_prom_json(), sort_keys=True)


@pytest.mark.parametrize("query", QUERIES)
def test_pieces_equal_the_whole(query):
    """Windows sliding forward, backward and zooming: every answer equals the uncached one, and steps are reused."""
    engine = PromQLEngine(lambda tenant: _source())
    cache = RangeResultsCache(engine, clock=lambda: T0 + 10**6 * S)  # everything is old enough to keep
    windows = [(10, 70), (12, 72), (14, 80), (13, 80), (13, 81), (5, 60), (30, 40), (0, 119), (100, 119)]
    for a, b in windows:
        start, end = T0 + a * STEP, T0 + b * STEP
        assert _json(cache.range(query, start, end, STEP)) == _json(engine.range(query, start, end, STEP)), (a, b)
    assert cache.hits > 0


def test_fresh_steps_are_evaluated_again():
    src = _source()
    engine = PromQLEngine(lambda tenant: src)
    now = T0 + 60 * STEP
    cache = RangeResultsCache(engine, max_freshness_s=300, clock=lambda: now)
    q = "sum(up)"
    first = cache.range(q, T0, now, STEP)
    # a sample lands in the fresh tail (the last 5 minutes) and one, too late, in the kept part
    src.add({"__name__": "up", "svc": "late"}, now - 60 * S, 1.0)
    src.add({"__name__": "up", "svc": "later"}, T0 + 10 * STEP, 1.0)
    second = dict(cache.range(q, T0, now, STEP).series[0][1])
    whole = dict(engine.range(q, T0, now, STEP).series[0][1])
    assert second[now] == whole[now] == dict(first.series[0][1])[now] + 1
    fresh_from = now - 300 * S
    assert all(second[t] == whole[t] for t in second if t > fresh_from)
    # the late sample older than the freshness window is not seen until the entry is dropped (documented)
    assert second[T0 + 10 * STEP] == whole[T0 + 10 * STEP] - 1
    cache.clear()
    assert _json(cache.range(q, T0, now, STEP)) == _json(engine.range(q, T0, now, STEP))


def test_queries_bound_to_the_request_are_not_cached():
    for q in ("up @ start()", "up @ end()", "up @ 1700000000", "up offset -1m", "sum(up) + start()",
              "rate(requests_total[1m] @ end())"):
        assert not cacheable(parse(q)), q
    for q in ("up offset 1m", "rate(requests_total[1m])", "max_over_time(up[5m:1m] offset 1m)"):
        assert cacheable(parse(q)), q
    engine = PromQLEngine(lambda tenant: _source())
    cache = RangeResultsCache(engine, clock=lambda: T0 + 10**6 * S)
    for a, b in ((10, 40), (20, 50)):
        got = cache.range("up @ start()", T0 + a * STEP, T0 + b * STEP, STEP)
        assert _json(got) == _json(engine.range("up @ start()", T0 + a * STEP, T0 + b * STEP, STEP))
    assert cache.hits == 0


def test_tenants_steps_and_lookbacks_do_not_share_entries():
    srcs = {"t1": _source(1), "t2": _source(2)}
    engine = PromQLEngine(lambda tenant: srcs[tenant])
    cache = RangeResultsCache(engine, clock=lambda: T0 + 10**6 * S)
    q, start, end = "sum(temperature)", T0 + 10 * STEP, T0 + 50 * STEP
    for tenant in ("t1", "t2", "t1", "t2"):
        for step, lb in ((STEP, None), (2 * STEP, None), (STEP, 60 * S)):
            assert _json(cache.range(q, start, end, step, tenant, lookback_ns=lb)) == \
                _json(engine.range(q, start, end, step, tenant, lookback_ns=lb))
    # grids of another phase (start not a whole number of steps later) are another entry, and still right
    off = start + 7 * S
    assert _json(cache.range(q, off, end, STEP, "t1")) == _json(engine.range(q, off, end, STEP, "t1"))


def test_bounds_errors_and_disabling():
    engine = PromQLEngine(lambda tenant: _source())
    cache = RangeResultsCache(engine, max_points=400, clock=lambda: T0 + 10**6 * S)
    cache.range("temperature", T0, T0 + 119 * STEP, STEP)   # 360 points: more than a quarter, not kept
    assert cache._points == 0
    cache.range("sum(temperature)", T0, T0 + 60 * STEP, STEP)  # 61 points: kept
    cache.range("max(temperature)", T0, T0 + 60 * STEP, STEP)
    assert 0 < cache._points <= 400
    with pytest.raises(PromQLError):
        cache.range("sum(", T0, T0 + STEP, STEP)
    with pytest.raises(PromQLError):
        cache.range("up[5m]", T0, T0 + STEP, STEP)   # a range vector is not a range query's type
    with pytest.raises(PromQLError):
        cache.range("up", T0, T0 + STEP, 0)
    off = RangeResultsCache(engine, max_freshness_s=0)
    assert not off.enabled
    off.range("up", T0, T0 + 10 * STEP, STEP)
    off.range("up", T0, T0 + 10 * STEP, STEP)
    assert off.hits == 0 and off._points == 0


# ------------------------------------------------------------------------------------------- the real store
def test_http_query_range_repeats_from_the_cache(store):
    """Through ``/api/v1/query_range`` over the store: a repeated, slid window answers what the engine does, and the
    series-identity cache fills once."""
    from test_prom_api import ApiServer
    from meshscope.query.promql.store_source import load_series

    tenant = "results-cache"
    t0 = (time.time_ns() // (3600 * S) - 3) * 3600 * S  # recent: the store's retention would drop 2023
    rnd = np.random.default_rng(3)
    series = []
    for svc in range(20):
        vals = np.cumsum(rnd.integers(0, 5, 200)).astype(float)
        pts = [(t0 + i * 15 * S, float(v)) for i, v in enumerate(vals)]
        series.append(({"__name__": "rc_requests_total", "svc": f"s{svc}", "zone": f"z{svc % 3}"}, pts))
    load_series(store, tenant, series)
    srv = ApiServer(store)
    try:
        def ask(q, a, b):
            qs = urllib.parse.urlencode({"query": q, "start": (t0 + a * STEP) / S, "end": (t0 + b * STEP) / S,
                                         "step": STEP / S})
            req = urllib.request.Request(f"{srv.url}/api/v1/query_range?{qs}", headers={"X-Scope-OrgID": tenant})
            with urllib.request.urlopen(req, timeout=30) as r:
                return json.loads(r.read())["data"]

        for q in ("sum by (zone) (rate(rc_requests_total[2m]))", "rate(rc_requests_total{zone=\"z1\"}[1m])"):
            for a, b in ((4, 60), (6, 62), (4, 99)):
                got = ask(q, a, b)
                want = srv.api.engine.range(q, t0 + a * STEP, t0 + b * STEP, STEP, tenant).to_prom_json()
                assert got == json.loads(json.dumps(want)), (q, a, b)
                assert got["result"]
        assert srv.api.ranges.hits > 0
        assert len(srv.api.catalogue.series_info) >= 20
    finally:
        srv.close()


def test_duplicate_label_sets_over_the_whole_range_are_still_refused():
    """rate() drops the name; two names that never overlap in time still collide over the whole range, which
    Prometheus refuses. Pieces would each pass, so such selectors are not cached."""
    src = MemorySource()
    for i in range(100):
        src.add({"__name__": "a_total" if i < 50 else "b_total", "job": "x"}, T0 + i * 15 * S, float(i))
    engine = PromQLEngine(lambda tenant: src)
    cache = RangeResultsCache(engine, clock=lambda: T0 + 10**6 * S)
    q, step = 'rate({__name__=~"a_total|b_total"}[1m])', 60 * S
    assert len(cache.range(q, T0, T0 + 12 * step, step).series) == 1
    with pytest.raises(PromQLError, match="same labelset"):
        engine.range(q, T0, T0 + 24 * step, step)
    with pytest.raises(PromQLError, match="same labelset"):
        cache.range(q, T0, T0 + 24 * step, step)
    assert not cacheable(parse(q)) and not cacheable(parse('{job="x"}'))


def test_delta_series_read_raw_are_evaluated_whole(store, tmp_path):
    """Delta counters read raw become running totals from the first sample read, so a piece's values depend on
    where it starts: such answers are evaluated whole and not kept. The rate push-down (sums per window) is
    independent of the start and still cached."""
    from test_promql_store import T0 as T, insert, metric, request
    from meshscope.query.promql.store_source import MetricCatalogue, StoreSeriesSource

    tenant = "results-cache-delta"
    pts = [(T + i * 15 * S, 1.0, {}) for i in range(80)]  # +1 every 15 s, delta temporality
    insert(store, tmp_path, request({"service.name": "w"}, [metric("jobs.done", "sum", pts, temporality=1)]), tenant)
    cat = MetricCatalogue(store)
    engine = PromQLEngine(lambda t: StoreSeriesSource(store, t, cat))
    cache = RangeResultsCache(engine, clock=lambda: T + 10**6 * S)
    step = 60 * S
    for q in ("jobs_done_total", "rate(jobs_done_total[2m])"):
        cache.range(q, T + 5 * step, T + 15 * step, step, tenant)
        got = cache.range(q, T + 10 * step, T + 19 * step, step, tenant)
        want = engine.range(q, T + 10 * step, T + 19 * step, step, tenant)
        assert _json(got) == _json(want), q
        assert got.series
    assert cache.hits == 6  # steps 10..15 of the rate, none of the raw totals
