"""PromQL engine over an in-memory source: Prometheus semantics, result JSON, limits, the pushdown seam."""
from __future__ import annotations

import math

import numpy as np
import pytest

from meshscope.query.promql.engine import Matrix, PromQLEngine, Scalar, StringValue, Vector
from meshscope.query.promql.errors import PromQLError
from meshscope.query.promql.source import STALE_NAN, GridSeries, MemorySource, is_stale

S = 10**9


def _engine(series: dict[tuple, list[tuple[int, float]]]) -> tuple[PromQLEngine, MemorySource]:
    src = MemorySource()
    for labels, pts in series.items():
        for t, v in pts:
            src.add(dict(labels), t * S, v)
    return PromQLEngine(lambda tenant: src), src


def _counter(name="req_total", **labels):
    return tuple(sorted({"__name__": name, **labels}.items()))


def test_stale_nan_bit_pattern():
    assert is_stale(np.array([STALE_NAN, math.nan, 1.0])).tolist() == [True, False, False]


def test_rate_extrapolation_matches_prometheus():
    # 0,10,...,100 every 15s: rate over 1m at t=150s -> 10/15 per second (full extrapolation)
    eng, _ = _engine({_counter(job="a"): [(i * 15, i * 10.0) for i in range(11)]})
    v = eng.instant("rate(req_total[1m])", 150 * S)
    assert isinstance(v, Vector) and v.samples[0].labels == {"job": "a"}
    assert v.samples[0].value == pytest.approx(10 / 15)
    assert eng.instant("increase(req_total[1m])", 150 * S).samples[0].value == pytest.approx(40.0)


def test_lookback_and_staleness():
    eng, _ = _engine({_counter("g"): [(0, 1.0), (10, STALE_NAN), (20, 2.0)]})
    assert eng.instant("g", 5 * S).samples[0].value == 1.0
    assert eng.instant("g", 15 * S).samples == []           # stale marker ends the series
    assert eng.instant("g", 319 * S).samples[0].value == 2.0
    assert eng.instant("g", 320 * S).samples == []          # lookback (t-5m, t] is left-open


def test_binary_semantics_and_name_dropping():
    eng, _ = _engine({_counter("a", x="1"): [(0, 4.0)], _counter("b", x="1"): [(0, 0.0)]})
    v = eng.instant("a / b", 0)
    assert v.samples[0].value == math.inf and "__name__" not in v.samples[0].labels  # PromQL: x/0 = +Inf
    v = eng.instant("a > 1", 0)
    assert v.samples[0].labels["__name__"] == "a"  # comparisons keep the name
    assert eng.instant("a > bool 10", 0).samples[0].value == 0.0
    assert isinstance(eng.instant("1 + 1", 0), Scalar)
    assert isinstance(eng.instant('"x"', 0), StringValue)


def test_matching_errors():
    eng, _ = _engine({_counter("m", job="j", i="1"): [(0, 1.0)], _counter("m", job="j", i="2"): [(0, 2.0)],
                      _counter("o", job="j"): [(0, 1.0)]})
    with pytest.raises(PromQLError, match="many-to-one matching must be explicit"):
        eng.instant("m * on (job) o", 0)
    assert len(eng.instant("m * on (job) group_left o", 0).samples) == 2
    with pytest.raises(PromQLError, match="found duplicate series for the match group"):
        eng.instant("o * on (job) m", 0)


def test_aggregations_and_histogram_quantile():
    series = {}
    for le, c in (("0.1", 1.0), ("0.5", 3.0), ("1", 4.0), ("+Inf", 4.0)):
        series[_counter("h_bucket", le=le, job="a")] = [(0, c)]
    series[_counter("x", g="1")] = [(0, 1.0)]
    series[_counter("x", g="2")] = [(0, 3.0)]
    eng, _ = _engine(series)
    assert eng.instant("histogram_quantile(0.5, h_bucket)", 0).samples[0].value == pytest.approx(0.3)
    assert eng.instant("sum(x)", 0).samples[0].value == 4.0
    assert eng.instant("avg by (g) (x)", 0).samples[0].labels == {"g": "1"}
    top = eng.instant("topk(1, x)", 0).samples
    assert [s.labels["g"] for s in top] == ["2"]


def test_range_query_and_json():
    eng, _ = _engine({_counter("g"): [(0, 1.0), (60, 2.5)]})
    m = eng.range("g * 2", 0, 120 * S, 60 * S)
    assert isinstance(m, Matrix)
    assert m.to_prom_json() == {"resultType": "matrix",
                                "result": [{"metric": {}, "values": [[0, "2"], [60, "5"], [120, "5"]]}]}
    j = eng.instant("g / 0", 60_500 * 10**6).to_prom_json()
    assert j["result"][0]["value"] == [60.5, "+Inf"]
    assert eng.instant("vector(1e21)", 0).to_prom_json()["result"][0]["value"][1] == "1000000000000000000000"


def test_limits_and_unsupported():
    eng, _ = _engine({_counter("g"): [(0, 1.0)]})
    with pytest.raises(PromQLError) as ei:
        eng.range("g", 0, 20000 * S, 1 * S)
    assert ei.value.error_type == "bad_data" and "11,000" in ei.value.message
    with pytest.raises(PromQLError) as ei:
        eng.range("g[5m]", 0, 10 * S, S)
    assert ei.value.error_type == "bad_data"
    with pytest.raises(PromQLError) as ei:
        eng.instant("limit_ratio(0.5, g)", 0)
    assert ei.value.error_type == "unsupported"
    small = PromQLEngine(lambda t: eng.source_factory(t), max_samples=0)
    with pytest.raises(PromQLError, match="too many samples"):
        small.instant("g", 0)


class _PushSource(MemorySource):
    """A source that computes rate() itself: the evaluator must use its grid and skip raw samples."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def range_function(self, fn, matchers, range_ns, times_ns):
        self.calls.append((fn, range_ns, times_ns.tolist()))
        if fn != "rate":
            return None
        return [GridSeries({"__name__": "req_total", "job": "p"}, np.full(len(times_ns), 7.0),
                           np.ones(len(times_ns), dtype=bool))]


def test_pushdown_seam():
    src = _PushSource()
    src.add({"__name__": "req_total", "job": "raw"}, 0, 1.0)
    eng = PromQLEngine(lambda t: src)
    v = eng.instant("sum(rate(req_total[1m] offset 1m))", 120 * S)
    assert v.samples[0].value == 7.0
    assert src.calls == [("rate", 60 * S, [60 * S])]  # window ends after offset
    v = eng.instant("increase(req_total[1m])", 0)     # declined -> raw samples
    assert v.samples == []


def test_native_histograms_are_unsupported():
    src = MemorySource()
    src.add_native({"__name__": "nh"}, 0)
    eng = PromQLEngine(lambda t: src)
    with pytest.raises(PromQLError) as ei:
        eng.instant("nh", 0)
    assert ei.value.error_type == "unsupported"
