"""Tests for the LogQL metric evaluator (query/logql/evaluator.py).

A fake SampleSource serves hand-made series keyed by the selector text and, like the real
source, only returns samples inside the fetch range [start - range - offset, end - offset].
Expected values are computed by hand in the comments next to them.
"""
from __future__ import annotations

import json
import math
import random
import time
from decimal import Decimal
from pathlib import Path

import pytest

from meshscope.query.logql import parse
from meshscope.query.logql.evaluator import (EvalError, Evaluator, Matrix, Scalar, Series, Vector,
                                              format_value, labels_string)

S = 10**9
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "conformance" / "logql"


class FakeSource:
    def __init__(self, data: dict[str, list[Series]]):
        self.data = data
        self.calls = []

    def samples(self, node, start_ns, end_ns):
        r = node.range
        lo, hi = start_ns - r.range_ns - r.offset_ns, end_ns - r.offset_ns
        self.calls.append((str(r.query.selector), start_ns, end_ns))
        out = []
        for s in self.data.get(str(r.query.selector), []):
            pairs = [(t, v) for t, v in zip(s.ts, s.values) if lo <= t <= hi]
            if pairs:
                out.append(Series(dict(s.labels), [p[0] for p in pairs], [p[1] for p in pairs]))
        return out


def ser(labels, points):
    """points: [(seconds, value)]"""
    return Series(dict(labels), [int(t * S) for t, _ in points], [float(v) for _, v in points])


def inst(data, q, t_s, **kw):
    res = Evaluator(FakeSource(data), **kw).eval_instant(parse(q), int(t_s * S))
    return res


def inst_map(data, q, t_s, **kw):
    res = inst(data, q, t_s, **kw)
    assert isinstance(res, Vector)
    return {tuple(sorted(l.items())): v for l, _, v in res.samples}


def rng(data, q, start_s, end_s, step_s, **kw):
    res = Evaluator(FakeSource(data), **kw).eval_range(parse(q), int(start_s * S), int(end_s * S), int(step_s * S))
    assert isinstance(res, Matrix)
    return {tuple(sorted(l.items())): [(t / S, v) for t, v in pts] for l, pts in res.series}


def k(**labels):
    return tuple(sorted(labels.items()))


# ---------------------------------------------------------------- conformance corpus
def _range_cases():
    f = CORPUS / "range_cases.jsonl"
    if not f.exists():
        return []
    return [json.loads(line) for line in f.read_text().splitlines() if line.strip()]


@pytest.mark.skipif(not (CORPUS / "range_cases.jsonl").exists(), reason="shared conformance corpus missing")
@pytest.mark.parametrize("case", _range_cases(), ids=lambda c: f"r{c['range_s']}-s{c['step_s']}-o{c['offset_s']}")
def test_range_cases_corpus(case):
    assert case["function"] == "count_over_time"
    ts = [int(Decimal(x) * S) for x in case["sample_ts_s"]]
    data = {'{app=~"foo|bar"}': [Series({"app": "foo"}, ts, [1.0] * len(ts)),
                                 Series({"app": "bar"}, ts, [1.0] * len(ts))]}
    off = f" offset {case['offset_s']}s" if case["offset_s"] else ""
    q = f'count_over_time({{app=~"foo|bar"}}[{case["range_s"]}s]{off})'
    got = rng(data, q, case["start_s"], case["end_s"], case["step_s"])
    want = [(float(t), float(c)) for t, c in case["steps"] if c is not None]
    assert got == {k(app="bar"): want, k(app="foo"): want}


def test_range_cases_corpus_present_and_complete():
    if not (CORPUS / "range_cases.jsonl").exists():
        pytest.skip("shared conformance corpus missing")
    assert len(_range_cases()) == 5


# ---------------------------------------------------------------- range functions
FOO = '{app="foo"}'
UNWRAP = {FOO: [ser({"app": "foo"}, [(10, 2), (20, 4), (30, 4), (40, 8)])]}
COUNTS = {FOO: [ser({"app": "foo"}, [(10, 1), (20, 3), (30, 1), (40, 2)])]}
BYTES = {FOO: [ser({"app": "foo"}, [(10, 100), (20, 50), (30, 25), (40, 5)])]}


@pytest.mark.parametrize("q,want", [
    # window (10s, 40s] holds the samples at 20, 30, 40 -> values 4, 4, 8
    ('sum_over_time({app="foo"} | unwrap v [30s])', 16.0),
    ('avg_over_time({app="foo"} | unwrap v [30s])', 16 / 3),
    ('min_over_time({app="foo"} | unwrap v [30s])', 4.0),
    ('max_over_time({app="foo"} | unwrap v [30s])', 8.0),
    ('first_over_time({app="foo"} | unwrap v [30s])', 4.0),
    ('last_over_time({app="foo"} | unwrap v [30s])', 8.0),
    ('rate({app="foo"} | unwrap v [30s])', 16 / 30),
    # population variance: mean 16/3, squared deviations 16/9 + 16/9 + 64/9 = 96/9, / 3 = 32/9
    ('stdvar_over_time({app="foo"} | unwrap v [30s])', 32 / 9),
    ('stddev_over_time({app="foo"} | unwrap v [30s])', math.sqrt(32 / 9)),
    # sorted [4, 4, 8]: rank = q * 2
    ('quantile_over_time(0.5, {app="foo"} | unwrap v [30s])', 4.0),
    ('quantile_over_time(0.75, {app="foo"} | unwrap v [30s])', 6.0),
    ('quantile_over_time(1, {app="foo"} | unwrap v [30s])', 8.0),
    ('quantile_over_time(2, {app="foo"} | unwrap v [30s])', math.inf),
    # [40s] window (0, 40] holds all four
    ('sum_over_time({app="foo"} | unwrap v [40s])', 18.0),
])
def test_unwrapped_range_functions(q, want):
    assert inst_map(UNWRAP, q, 40) == {k(app="foo"): pytest.approx(want)}


@pytest.mark.parametrize("data,q,want", [
    # pre-aggregated entry counts 3, 1, 2 in (10, 40]: the SUM of values, never the sample count
    (COUNTS, 'count_over_time({app="foo"}[30s])', 6.0),
    (COUNTS, 'rate({app="foo"}[30s])', 6 / 30),
    (BYTES, 'bytes_over_time({app="foo"}[30s])', 80.0),
    (BYTES, 'bytes_rate({app="foo"}[30s])', 80 / 30),
    (BYTES, 'bytes_rate({app="foo"}[1500ms])', 5 / 1.5),
])
def test_log_range_functions_sum_values(data, q, want):
    assert inst_map(data, q, 40) == {k(app="foo"): pytest.approx(want)}


def test_count_over_time_range_query_steps_and_gaps():
    got = rng(COUNTS, 'count_over_time({app="foo"}[10s])', 10, 40, 10)
    assert got == {k(app="foo"): [(10, 1), (20, 3), (30, 1), (40, 2)]}
    gappy = {FOO: [ser({"app": "foo"}, [(10, 1), (40, 1)])]}
    # no sample in (10,20] or (20,30]: those steps emit no point (not 0)
    assert rng(gappy, 'count_over_time({app="foo"}[10s])', 10, 40, 10) == {k(app="foo"): [(10, 1), (40, 1)]}


def test_offset_shifts_window_not_timestamp():
    # window for t is (t-10-10, t-10]; t=20 -> (0,10] -> 1, t=30 -> (10,20] -> 3, ...
    got = rng(COUNTS, 'count_over_time({app="foo"}[10s] offset 10s)', 20, 50, 10)
    assert got == {k(app="foo"): [(20, 1), (30, 3), (40, 1), (50, 2)]}
    assert inst_map(UNWRAP, 'last_over_time({app="foo"} | unwrap v [10s] offset 20s)', 40) == {k(app="foo"): 4.0}


def test_source_called_with_query_bounds():
    src = FakeSource(COUNTS)
    Evaluator(src).eval_range(parse('count_over_time({app="foo"}[10s])'), 10 * S, 40 * S, 10 * S)
    assert src.calls == [(FOO, 10 * S, 40 * S)]


def test_identical_source_labels_are_merged():
    data = {FOO: [ser({"app": "foo"}, [(5, 1), (9, 1)]), ser({"app": "foo"}, [(7, 2)])]}
    assert inst_map(data, 'count_over_time({app="foo"}[10s])', 10) == {k(app="foo"): 4.0}
    # merged by timestamp: first is t=5 (value 1), last t=9 (value 1); max 2
    assert inst_map(data, 'max_over_time({app="foo"} | unwrap v [10s])', 10) == {k(app="foo"): 2.0}


def test_min_max_nan_handling():
    data = {FOO: [ser({"app": "foo"}, [(1, math.nan), (2, 3), (3, math.nan)])]}
    assert inst_map(data, 'max_over_time({app="foo"} | unwrap v [10s])', 5) == {k(app="foo"): 3.0}
    assert inst_map(data, 'min_over_time({app="foo"} | unwrap v [10s])', 5) == {k(app="foo"): 3.0}
    only_nan = {FOO: [ser({"app": "foo"}, [(1, math.nan)])]}
    v = inst_map(only_nan, 'max_over_time({app="foo"} | unwrap v [10s])', 5)[k(app="foo")]
    assert math.isnan(v)


def test_rate_counter_extrapolates_to_window():
    # Loki TestRateCounterBug19580: samples 0s, 60s, 120s; window (0, 120] keeps 60s (101824) and 120s (104040).
    # increase 2216 over 60s; start gap 60s < 1.1*60 -> extrapolate to 120s -> 4432 / 120
    data = {FOO: [ser({"app": "foo"}, [(0, 99608), (60, 101824), (120, 104040)])]}
    got = inst_map(data, 'rate_counter({app="foo"} | unwrap v [2m])', 120)
    assert got == {k(app="foo"): pytest.approx(4432 / 120)}


def test_rate_counter_resets_and_single_sample():
    # samples 10:5 20:10 30:2 40:6, window (0,40]: increase 6-5 + 10 (reset) = 11
    # to_start 10s < 1.1 * avg(10s) kept; zero point 30*5/11=13.6s > 10s; to_end 0
    # -> 11 * (30+10)/30 / 40
    data = {FOO: [ser({"app": "foo"}, [(10, 5), (20, 10), (30, 2), (40, 6)])]}
    got = inst_map(data, 'rate_counter({app="foo"} | unwrap v [40s])', 40)
    assert got == {k(app="foo"): pytest.approx(11 * 40 / 30 / 40)}
    # far from the edges: start gap 40s >= 1.1*10 -> half interval 5s; end gap 40s -> 5s
    # 11 * (30+5+5)/30 / 120; zero point 13.6s > 5s
    got = inst_map(data, 'rate_counter({app="foo"} | unwrap v [120s])', 80)
    assert got == {k(app="foo"): pytest.approx(11 * 40 / 30 / 120)}
    # zero-point cap: 10:1, 20:11, 30:21 in (0,30]; to_start 10s but counter hits zero 1s before -> 1s
    z = {FOO: [ser({"app": "foo"}, [(10, 1), (20, 11), (30, 21)])]}
    assert inst_map(z, 'rate_counter({app="foo"} | unwrap v [30s])', 30) == \
        {k(app="foo"): pytest.approx(20 * (20 + 1) / 20 / 30)}
    one = {FOO: [ser({"app": "foo"}, [(30, 7)])]}
    assert inst_map(one, 'rate_counter({app="foo"} | unwrap v [30s])', 30) == {k(app="foo"): 0.0}


# ---------------------------------------------------------------- grouping on range aggregations
GROUPED = {FOO: [
    ser({"app": "foo", "a": "1", "b": "x"}, [(10, 5), (20, 1)]),
    ser({"app": "foo", "a": "1", "b": "y"}, [(15, 7)]),
    ser({"app": "foo", "a": "2", "b": "x"}, [(12, 3)]),
]}


def test_range_grouping_by_merges_series():
    q = 'max_over_time({app="foo"} | unwrap v [30s]) by (a)'
    assert inst_map(GROUPED, q, 30) == {k(a="1"): 7.0, k(a="2"): 3.0}
    # a=1 merged in time order: 10s->5, 15s->7, 20s->1
    assert inst_map(GROUPED, 'first_over_time({app="foo"} | unwrap v [30s]) by (a)', 30) == \
        {k(a="1"): 5.0, k(a="2"): 3.0}
    assert inst_map(GROUPED, 'last_over_time({app="foo"} | unwrap v [30s]) by (a)', 30) == \
        {k(a="1"): 1.0, k(a="2"): 3.0}
    assert inst_map(GROUPED, 'max_over_time({app="foo"} | unwrap v [30s]) by ()', 30) == {(): 7.0}


def test_range_grouping_without_and_none():
    q = 'avg_over_time({app="foo"} | unwrap v [30s]) without (b)'
    assert inst_map(GROUPED, q, 30) == {k(app="foo", a="1"): pytest.approx(13 / 3), k(app="foo", a="2"): 3.0}
    q = 'max_over_time({app="foo"} | unwrap v [30s])'
    assert inst_map(GROUPED, q, 30) == {k(app="foo", a="1", b="x"): 5.0, k(app="foo", a="1", b="y"): 7.0,
                                        k(app="foo", a="2", b="x"): 3.0}


# ---------------------------------------------------------------- __error__
ERR_LABELS = {"app": "foo", "a": "1", "__error__": "SampleExtractionErr", "__error_details__": "bad"}


def test_pipeline_error_fails_query():
    data = {FOO: [ser({"app": "foo", "a": "1"}, [(20, 1)]), ser(ERR_LABELS, [(25, 0)])]}
    for q in ('sum_over_time({app="foo"} | unwrap v [30s])', 'max_over_time({app="foo"} | unwrap v [30s]) by (a)',
              'sum(count_over_time({app="foo"}[30s]))'):
        with pytest.raises(EvalError) as ei:
            inst(data, q, 30)
        assert str(ei.value).startswith(
            "pipeline error: 'SampleExtractionErr' for series: "
            "'{__error__=\"SampleExtractionErr\", __error_details__=\"bad\", a=\"1\", app=\"foo\"}'")
        with pytest.raises(EvalError):
            rng(data, q, 10, 50, 10)


def test_pipeline_error_only_when_sample_in_a_window():
    # windows (5,10], (25,30], (45,50]: the errored sample at 20s is fetched but in no window
    data = {FOO: [ser({"app": "foo"}, [(30, 1)]), ser(ERR_LABELS, [(20, 0)])]}
    assert rng(data, 'count_over_time({app="foo"}[5s])', 10, 50, 20) == {k(app="foo"): [(30, 1)]}
    preserved = dict(ERR_LABELS, __preserve_error__="true")
    data = {FOO: [ser(preserved, [(20, 1)])]}
    assert inst_map(data, 'count_over_time({app="foo"}[30s])', 30) == {tuple(sorted(preserved.items())): 1.0}


# ---------------------------------------------------------------- vector aggregations
JOB = '{job="j"}'
L = 'last_over_time({job="j"} | unwrap v [1m])'
VEC = {
    JOB: [ser({"job": "j", "inst": "a", "zone": "z1"}, [(50, 1)]),
          ser({"job": "j", "inst": "b", "zone": "z1"}, [(50, 4)]),
          ser({"job": "j", "inst": "c", "zone": "z2"}, [(50, 10)])],
    '{job="r"}': [ser({"job": "r", "inst": "a", "zone": "z1"}, [(50, 2)]),
                  ser({"job": "r", "inst": "b", "zone": "z1"}, [(50, 3)])],
    '{job="m"}': [ser({"job": "m", "zone": "z1", "team": "t1"}, [(50, 2)])],
}
R = 'last_over_time({job="r"} | unwrap v [1m])'
M = 'last_over_time({job="m"} | unwrap v [1m])'
A_, B_, C_ = k(job="j", inst="a", zone="z1"), k(job="j", inst="b", zone="z1"), k(job="j", inst="c", zone="z2")


@pytest.mark.parametrize("q,want", [
    (f"sum({L})", {(): 15.0}),
    (f"sum by (zone) ({L})", {k(zone="z1"): 5.0, k(zone="z2"): 10.0}),
    (f"sum({L}) by (zone)", {k(zone="z1"): 5.0, k(zone="z2"): 10.0}),
    (f"sum without (inst) ({L})", {k(job="j", zone="z1"): 5.0, k(job="j", zone="z2"): 10.0}),
    (f"avg by (zone) ({L})", {k(zone="z1"): 2.5, k(zone="z2"): 10.0}),
    (f"min({L})", {(): 1.0}),
    (f"max by (zone) ({L})", {k(zone="z1"): 4.0, k(zone="z2"): 10.0}),
    (f"count by (zone) ({L})", {k(zone="z1"): 2.0, k(zone="z2"): 1.0}),
    # [1, 4, 10]: mean 5, squared deviations 16 + 1 + 25 = 42, population variance 14
    (f"stdvar({L})", {(): pytest.approx(14.0)}),
    (f"stddev({L})", {(): pytest.approx(math.sqrt(14.0))}),
    (f"topk(2, {L})", {B_: 4.0, C_: 10.0}),
    (f"topk(1, {L}) by (zone)", {B_: 4.0, C_: 10.0}),
    (f"bottomk(1, {L}) by (zone)", {A_: 1.0, C_: 10.0}),
    (f"bottomk(5, {L})", {A_: 1.0, B_: 4.0, C_: 10.0}),
])
def test_vector_aggregations(q, want):
    assert inst_map(VEC, q, 60) == want


def test_instant_ordering_sort_and_labels():
    def order(q):
        return [(dict(l)["inst"], v) for l, _, v in inst(VEC, q, 60).samples]
    assert order(f"sort_desc({L})") == [("c", 10.0), ("b", 4.0), ("a", 1.0)]
    assert order(f"sort({L})") == [("a", 1.0), ("b", 4.0), ("c", 10.0)]
    # without sort anywhere, instant vectors come back sorted by label set
    assert order(f"topk(2, {L})") == [("b", 4.0), ("c", 10.0)]
    assert order(f"sort_desc({L}) * 2") == [("c", 20.0), ("b", 8.0), ("a", 2.0)]


def test_topk_range_query_per_step_and_nan():
    data = {'{job="k"}': [ser({"s": "x"}, [(10, 1), (20, 5)]), ser({"s": "y"}, [(10, 3), (20, 2)])]}
    got = rng(data, 'topk(1, last_over_time({job="k"} | unwrap v [5s]))', 10, 20, 10)
    assert got == {k(s="x"): [(20, 5.0)], k(s="y"): [(10, 3.0)]}
    nan = {'{job="k"}': [ser({"s": "x"}, [(10, math.nan)]), ser({"s": "y"}, [(10, 1)])]}
    assert inst_map(nan, 'topk(1, last_over_time({job="k"} | unwrap v [5s]))', 10) == {k(s="y"): 1.0}
    got = inst_map(nan, 'bottomk(1, last_over_time({job="k"} | unwrap v [5s]))', 10)
    assert got == {k(s="y"): 1.0}
    assert len(inst_map(nan, 'topk(2, last_over_time({job="k"} | unwrap v [5s]))', 10)) == 2


def test_vector_agg_range_query_with_partial_presence():
    data = {'{job="k"}': [ser({"s": "x"}, [(10, 1), (20, 5)]), ser({"s": "y"}, [(20, 2)])]}
    got = rng(data, 'sum(last_over_time({job="k"} | unwrap v [5s]))', 10, 30, 10)
    assert got == {(): [(10, 1.0), (20, 7.0)]}  # nothing at 30: no input sample -> no group
    got = rng(data, 'avg(last_over_time({job="k"} | unwrap v [5s]))', 10, 20, 10)
    assert got == {(): [(10, 1.0), (20, 3.5)]}


# ---------------------------------------------------------------- binary operators: scalar legs
@pytest.mark.parametrize("q,want", [
    (f"{L} * 2", {A_: 2.0, B_: 8.0, C_: 20.0}),
    (f"1 - {L}", {A_: 0.0, B_: -3.0, C_: -9.0}),
    (f"{L} - 1", {A_: 0.0, B_: 3.0, C_: 9.0}),
    (f"20 / {L}", {A_: 20.0, B_: 5.0, C_: 2.0}),
    (f"{L} % 3", {A_: 1.0, B_: 1.0, C_: 1.0}),
    (f"{L} ^ 2", {A_: 1.0, B_: 16.0, C_: 100.0}),
    (f"2 ^ {L}", {A_: 2.0, B_: 16.0, C_: 1024.0}),
    # comparisons filter and keep the vector's value whichever side the scalar is on
    (f"{L} > 3", {B_: 4.0, C_: 10.0}),
    (f"3 < {L}", {B_: 4.0, C_: 10.0}),
    (f"{L} <= 4", {A_: 1.0, B_: 4.0}),
    (f"{L} == 4", {B_: 4.0}),
    (f"{L} != 4", {A_: 1.0, C_: 10.0}),
    (f"{L} > bool 3", {A_: 0.0, B_: 1.0, C_: 1.0}),
    (f"3 >= bool {L}", {A_: 1.0, B_: 0.0, C_: 0.0}),
    (f"{L} + 2 * 3", {A_: 7.0, B_: 10.0, C_: 16.0}),
])
def test_scalar_vector_binops(q, want):
    assert inst_map(VEC, q, 60) == want


@pytest.mark.parametrize("q", [f"{L} / 0", f"{L} % 0", f"{L} / on(inst) ({R} * 0)"])
def test_division_by_zero_is_nan(q):
    got = inst_map(VEC, q, 60)
    assert got and all(math.isnan(v) for v in got.values())


def test_pow_go_semantics():
    data = {FOO: [ser({"app": "foo"}, [(1, 0)])]}
    assert inst_map(data, 'last_over_time({app="foo"} | unwrap v [5s]) ^ -1', 2) == {k(app="foo"): math.inf}
    neg = {FOO: [ser({"app": "foo"}, [(1, -8)])]}
    assert math.isnan(inst_map(neg, 'last_over_time({app="foo"} | unwrap v [5s]) ^ 0.5', 2)[k(app="foo")])


# ---------------------------------------------------------------- binary operators: vector matching
@pytest.mark.parametrize("q,want", [
    (f"{L} + {R}", {}),  # job label differs: full-label matching finds nothing
    (f"{L} + ignoring(job) {R}", {k(inst="a", zone="z1"): 3.0, k(inst="b", zone="z1"): 7.0}),
    (f"{L} + on(inst) {R}", {k(inst="a"): 3.0, k(inst="b"): 7.0}),
    (f"{L} > on(inst) {R}", {k(inst="b"): 4.0}),  # 1>2 dropped, 4>3 keeps the LHS value
    (f"{L} > bool on(inst) {R}", {k(inst="a"): 0.0, k(inst="b"): 1.0}),
    (f"{L} * on(zone) group_left sum by (zone) ({R})", {A_: 5.0, B_: 20.0}),
    (f"{L} * on(zone) group_left(team) {M}",
     {k(job="j", inst="a", zone="z1", team="t1"): 2.0, k(job="j", inst="b", zone="z1", team="t1"): 8.0}),
    (f"{M} * on(zone) group_right(team) {L}",
     {k(job="j", inst="a", zone="z1", team="t1"): 2.0, k(job="j", inst="b", zone="z1", team="t1"): 8.0}),
    # group_right comparison: filter on 2 < L, value kept is the LHS (one side) value
    (f"{M} < on(zone) group_right(team) {L}", {k(job="j", inst="b", zone="z1", team="t1"): 2.0}),
    (f"{M} - on(zone) group_right {L}", {A_: 1.0, B_: -2.0}),
    (f"{L} and on(inst) {R}", {A_: 1.0, B_: 4.0}),
    (f"{L} unless on(inst) {R}", {C_: 10.0}),
    (f"{R} or on(inst) {L}", {k(job="r", inst="a", zone="z1"): 2.0, k(job="r", inst="b", zone="z1"): 3.0,
                              C_: 10.0}),
    (f"{L} and {R}", {}),
    (f"{L} or {R}", {A_: 1.0, B_: 4.0, C_: 10.0, k(job="r", inst="a", zone="z1"): 2.0,
                     k(job="r", inst="b", zone="z1"): 3.0}),
    (f"{L} unless ignoring(job) {R}", {C_: 10.0}),
])
def test_vector_vector_matching(q, want):
    assert inst_map(VEC, q, 60) == want


@pytest.mark.parametrize("q,msg", [
    (f"{L} * on(zone) sum by (zone) ({R})",
     "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)"),
    (f"{L} * on(zone) group_left {R}",
     "found duplicate series on the right hand-side;many-to-many matching not allowed: "
     "matching labels must be unique on one side"),
    (f"{L} + on(zone) group_right {R}",
     "found duplicate series on the left hand-side;many-to-many matching not allowed: "
     "matching labels must be unique on one side"),
    (f"{L} + on(zone) {R}",
     "found duplicate series on the right hand-side;many-to-many matching not allowed: "
     "matching labels must be unique on one side"),
    (f'label_replace({L}, "inst", "", "inst", ".*") + on(zone) group_left sum by (zone) ({R})',
     "multiple matches for labels: grouping labels must ensure unique matches"),
])
def test_vector_matching_errors(q, msg):
    with pytest.raises(EvalError) as ei:
        inst(VEC, q, 60)
    assert str(ei.value) == msg
    with pytest.raises(EvalError):
        rng(VEC, q, 55, 65, 5)


def test_matching_errors_are_per_step():
    # the two "one"-side series never coexist in a step, so on(zone) stays one-to-one
    data = {'{job="r"}': [ser({"job": "r", "inst": "a", "zone": "z1"}, [(10, 2)]),
                          ser({"job": "r", "inst": "b", "zone": "z1"}, [(20, 3)])],
            JOB: [ser({"job": "j", "inst": "a", "zone": "z1"}, [(10, 1), (20, 1)])]}
    q = 'last_over_time({job="j"} | unwrap v [5s]) + on(zone) last_over_time({job="r"} | unwrap v [5s])'
    assert rng(data, q, 10, 20, 10) == {k(zone="z1"): [(10, 3.0), (20, 4.0)]}


def test_or_vector_fallback():
    none = 'sum(last_over_time({job="none"} | unwrap v [1m]))'
    assert inst_map(VEC, f"{none} or vector(0)", 60) == {(): 0.0}
    assert inst_map(VEC, f"sum({L}) or vector(0)", 60) == {(): 15.0}
    got = rng(VEC, 'sum(last_over_time({job="j"} | unwrap v [5s])) or vector(0)', 45, 60, 5)
    # [5s] windows: only (45, 50] holds the samples at 50s
    assert got == {(): [(45, 0.0), (50, 15.0), (55, 0.0), (60, 0.0)]}


# ---------------------------------------------------------------- label_replace
@pytest.mark.parametrize("q,want", [
    (f'label_replace({L}, "dst", "$1-${{name}}", "inst", "(?P<name>[a-b])")',
     {k(job="j", inst="a", zone="z1", dst="a-a"): 1.0,
                         k(job="j", inst="b", zone="z1", dst="b-b"): 4.0, C_: 10.0}),
    # empty replacement deletes the destination label; regex is anchored ("a" does not match "ab")
    (f'label_replace({L}, "zone", "", "inst", "a")', {k(job="j", inst="a"): 1.0, B_: 4.0, C_: 10.0}),
    (f'label_replace({L}, "x", "$1", "zone", "z")', {A_: 1.0, B_: 4.0, C_: 10.0}),
    (f'label_replace({L}, "x", "$1", "zone", "z(.)")',
     {k(job="j", inst="a", zone="z1", x="1"): 1.0, k(job="j", inst="b", zone="z1", x="1"): 4.0,
      k(job="j", inst="c", zone="z2", x="2"): 10.0}),
    # a missing source label reads as "" (matches the empty regex)
    (f'label_replace({L}, "x", "v", "missing", "")',
     {k(job="j", inst="a", zone="z1", x="v"): 1.0, k(job="j", inst="b", zone="z1", x="v"): 4.0,
      k(job="j", inst="c", zone="z2", x="v"): 10.0}),
    # Go Expand: "$1x" names group "1x" (absent -> ""), "$$" is "$", a malformed "${1" stays literal
    (f'label_replace({L}, "x", "$1x|$$|${{1", "inst", "(c)")',
     {A_: 1.0, B_: 4.0, k(job="j", inst="c", zone="z2", x="|$|${1"): 10.0}),
    (f'label_replace({L}, "inst", "${{1}}9", "inst", "(.)")',
     {k(job="j", inst="a9", zone="z1"): 1.0, k(job="j", inst="b9", zone="z1"): 4.0,
      k(job="j", inst="c9", zone="z2"): 10.0}),
])
def test_label_replace(q, want):
    assert inst_map(VEC, q, 60) == want


# ---------------------------------------------------------------- vector(), literals
def test_vector_function():
    res = inst({}, "vector(3)", 60)
    assert isinstance(res, Vector) and res.samples == [({}, 60 * S, 3.0)]
    assert rng({}, "vector(3)", 0, 20, 10) == {(): [(0, 3.0), (10, 3.0), (20, 3.0)]}
    assert rng({}, "vector(3) * 2", 0, 10, 10) == {(): [(0, 6.0), (10, 6.0)]}


def test_literals():
    res = inst({}, "1 + 1", 60)
    assert res == Scalar(60 * S, 2.0)
    m = Evaluator(FakeSource({})).eval_range(parse("2 * 3"), 0, 25 * S, 10 * S)
    assert m == Matrix([({}, [(0, 6.0), (10 * S, 6.0), (20 * S, 6.0)])])
    assert rng({}, "1 > 2", 0, 10, 10) == {(): [(0, 0.0), (10, 0.0)]}


def test_literal_where_vector_needed_is_error():
    with pytest.raises(EvalError):
        inst({}, "sum(1)", 60)


# ---------------------------------------------------------------- absent_over_time
ABSENT_Q = 'absent_over_time({job="none", env=~"p.*", app="x", app="y"}[10s])'


def test_absent_over_time_labels_and_steps():
    # labels: job from "=", env dropped (regex), app dropped (used twice)
    assert inst_map({}, ABSENT_Q, 60) == {k(job="none"): 1.0}
    sel = '{job="none", env=~"p.*", app="x", app="y"}'
    data = {sel: [ser({"job": "none"}, [(30, 1)])]}
    assert inst_map(data, ABSENT_Q, 30) == {}
    # windows (0,10] (10,20] (20,30] (30,40]: only the third holds data
    assert rng(data, ABSENT_Q, 10, 40, 10) == {k(job="none"): [(10, 1.0), (20, 1.0), (40, 1.0)]}
    assert inst_map({}, 'absent_over_time({job="none"} | unwrap v [10s])', 5) == {k(job="none"): 1.0}


# ---------------------------------------------------------------- limits
def test_step_and_points_limits():
    ev = Evaluator(FakeSource({}))
    with pytest.raises(EvalError) as ei:
        ev.eval_range(parse("vector(1)"), 0, 11001 * S, S)
    assert str(ei.value) == ("exceeded maximum resolution of 11,000 points per time series. "
                             "Try increasing the value of the step parameter")
    assert len(ev.eval_range(parse("vector(1)"), 0, 11000 * S, S).series[0][1]) == 11001
    for step in (0, -S):
        with pytest.raises(EvalError) as ei:
            ev.eval_range(parse("vector(1)"), 0, 10 * S, step)
        assert str(ei.value) == "zero or negative query resolution step widths are not accepted. Try a positive integer"
    with pytest.raises(EvalError):
        ev.eval_range(parse("vector(1)"), 10 * S, 0, S)
    with pytest.raises(EvalError) as ei:
        Evaluator(FakeSource({}), max_points=100).eval_range(parse("vector(1)"), 0, 101 * S, S)
    assert "maximum resolution of 100 points" in str(ei.value)


def test_max_series_limit():
    msg = ("maximum number of series (2) reached for a single query; consider reducing query cardinality by "
           "adding more specific stream selectors, reducing the time range, or aggregating results with "
           "functions like sum(), count() or topk()")
    for call in (lambda: inst(VEC, L, 60, max_series=2), lambda: rng(VEC, L, 50, 60, 5, max_series=2)):
        with pytest.raises(EvalError) as ei:
            call()
        assert str(ei.value) == msg
    assert inst_map(VEC, f"sum({L})", 60, max_series=2) == {(): 15.0}
    assert len(inst_map(VEC, L, 60, max_series=3)) == 3


def test_log_query_instant_rejected():
    with pytest.raises(EvalError) as ei:
        inst({}, '{app="foo"}', 60)
    assert str(ei.value).startswith("log queries are not supported as an instant query type")


# ---------------------------------------------------------------- formatting helpers
def test_format_value_and_labels_string():
    assert [format_value(v) for v in (1.0, 0.5, 1e21, 1e-7, -0.0, math.nan, math.inf, -math.inf, 137.95)] == \
        ["1", "0.5", "1000000000000000000000", "0.0000001", "-0", "NaN", "+Inf", "-Inf", "137.95"]
    assert labels_string({"b": 'q"x', "a": "1\n"}) == '{a="1\\n", b="q\\"x"}'


# ---------------------------------------------------------------- kernels vs. a naive reference, speed
def _naive(op, ts, vals, t, rng_ns, q=None):
    w = [v for x, v in zip(ts, vals) if t - rng_ns < x <= t]
    if not w:
        return None
    if op == "sum_over_time":
        return sum(w)
    if op == "max_over_time":
        return max(w)
    if op == "min_over_time":
        return min(w)
    if op == "first_over_time":
        return w[0]
    if op == "last_over_time":
        return w[-1]
    if op == "avg_over_time":
        return sum(w) / len(w)
    if op == "stdvar_over_time":
        m = sum(w) / len(w)
        return sum((x - m) ** 2 for x in w) / len(w)
    if op == "quantile_over_time":
        s = sorted(w)
        r = q * (len(s) - 1)
        lo = math.floor(r)
        hi = min(len(s) - 1, lo + 1)
        return s[lo] * (1 - (r - lo)) + s[hi] * (r - lo)


@pytest.mark.parametrize("op", ["sum_over_time", "max_over_time", "min_over_time", "first_over_time",
                                "last_over_time", "avg_over_time", "stdvar_over_time", "quantile_over_time"])
def test_window_kernels_match_naive(op):
    rnd = random.Random(7)
    ts = sorted(rnd.sample(range(0, 200 * S, S // 4), 300))
    vals = [rnd.uniform(-50, 50) for _ in ts]
    data = {FOO: [Series({"app": "foo"}, ts, vals)]}
    for rng_s, step_s in ((7, 3), (3, 7), (10, 10)):
        param = "0.3," if op == "quantile_over_time" else ""
        got = rng(data, f'{op}({param}{{app="foo"}} | unwrap v [{rng_s}s])', 5, 195, step_s)
        want = []
        t = 5
        while t <= 195:
            v = _naive(op, ts, vals, t * S, rng_s * S, 0.3)
            if v is not None:
                want.append((t, v))
            t += step_s
        pts = got[k(app="foo")]
        assert [p[0] for p in pts] == [w[0] for w in want]
        assert [p[1] for p in pts] == pytest.approx([w[1] for w in want], rel=1e-9, abs=1e-9)


def test_many_points_are_fast():
    n = 1_000_000
    ts = list(range(0, n * 10**6, 10**6))  # one entry per ms over 1000 s
    data = {FOO: [Series({"app": "foo"}, ts, [1.0] * n)]}
    t0 = time.perf_counter()
    got = rng(data, 'count_over_time({app="foo"}[60s])', 60, 999, 1)
    elapsed = time.perf_counter() - t0
    assert got[k(app="foo")][0] == (60, 60000.0) and got[k(app="foo")][-1] == (999, 60000.0)
    assert elapsed < 5.0


def test_approx_topk_is_exact_topk_and_sort_in_range_query():
    assert inst_map(VEC, f"approx_topk(1, {L})", 60) == {C_: 10.0}
    # sort only orders instant vectors; a range query still returns every series, sorted by labels
    got = rng(VEC, f"sort_desc({L})", 55, 60, 5)
    assert got == {A_: [(55, 1.0), (60, 1.0)], B_: [(55, 4.0), (60, 4.0)], C_: [(55, 10.0), (60, 10.0)]}
